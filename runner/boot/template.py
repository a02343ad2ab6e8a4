"""A warm template of one environment: Dagster imported once, a code server forked per start.

Run by the environment's interpreter as ``python -S template.py``; like ``codeserver.py`` it
imports only the standard library and Dagster. It imports what a code server needs (and
rehearses loading a stub file, which pulls in what loading definitions imports lazily), but
never user code and never starts a thread: forking a process that runs threads (gRPC's) is
unsafe. No location's code runs in it: ``-S`` keeps the environment's ``.pth`` files and
``sitecustomize`` out, and ``guard.py`` lets it import nothing of the environment but Dagster
and what Dagster requires. Started as root with ``RUNNER_TEMPLATE_USER=uid:gid:low:high``, it
first becomes that user, keeping only the right to fork into ids from low to high
(``drop.py``). Then it waits for requests on stdin, one JSON object a line::

    {"id": 7, "argv": [...codeserver.py arguments], "cwd": "...", "parent": pid,
     "user": [uid, gid] or null, "settings": "FIFO path"}

and forks a child for each. The child becomes its location's user (no groups, no
capabilities), reads its environment from the FIFO (the template never sees it: a later
child of another location would inherit its memory), and becomes what ``python
codeserver.py <argv>`` started in ``cwd`` with that environment would be (environment,
working directory, signal dispositions, stdin, ``sys.path`` with the ``.pth`` files and
``sitecustomize`` applied), in a session of its own, and runs ``codeserver.main()``. Only
``sys.flags.no_site`` tells it from a cold server. Pages of the imported modules stay
shared, copy-on-write, between the template and its children.

Replies go, one JSON object a line, to the file descriptor named by
``RUNNER_TEMPLATE_REPLIES``: ``{"ready": seconds, "merge": bool}`` or ``{"unusable": why}``
once after start-up, ``{"forked": id, "pid": pid}`` per request, ``{"exited": pid,
"status": code}`` when a child ends (negative: killed by that signal, as :mod:`subprocess` says it).
A child outlives its template and dies with ``parent`` (the runner), as a cold server does.

A server copies a page it shares with its template whenever it writes to it, and CPython
writes to an object each time it takes or drops a reference to it: most pages a server
copies end up as they were. Where the host runs the kernel's same-page merging (KSM), the
template offers its pages (and so its children's) for merging, and such pages are shared
again.
"""

import ctypes
import gc
import json
import os
import runpy
import select
import signal
import site
import sys
import threading
import time

import drop  # this folder is sys.path[0]
import guard
import title

BOOT_DIR = os.path.dirname(os.path.abspath(__file__))
#: The modules of this folder the template imports: gone from ``sys.modules`` before a
#: child runs codeserver.py, as they are in a cold server.
OWN_MODULES = ("codeserver", "drop", "guard", "title", "stub")
#: What a location's processes create is theirs and the service's group's, never others'.
LOCATION_UMASK = 0o007


def _warm_up():
    """Import what a code server imports, and load a stub file the way it loads a file."""
    import codeserver  # noqa: F401  (this folder is sys.path[0])
    import dagster
    import dagster._cli.api
    import dagster._grpc.impl
    import dagster._grpc.server  # noqa: F401
    from dagster._cli import main  # noqa: F401

    try:
        _rehearse()
    except Exception as exc:  # only less warm: what it would have imported loads in the child
        print(f"runner template: rehearsal skipped: {exc!r}", file=sys.stderr)


def _rehearse():
    from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._grpc.server import LoadedRepositories

    path, modules = list(sys.path), set(sys.modules)
    stub = os.path.join(BOOT_DIR, "stub.py")
    origin = LoadableTargetOrigin(python_file=stub, working_directory=BOOT_DIR)
    try:
        loaded = LoadedRepositories(origin, None, [sys.executable], None)
        for repo in loaded.definitions_by_name.values():
            RepositorySnap.from_def(repo)
    finally:
        # Nothing of the stub stays: the children load their own file into a clean slate.
        DefinitionsLoadContext._instance = None
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if getattr(sys.modules[name], "__file__", None) == stub:
                del sys.modules[name]


def _reply(fd, **message):
    os.write(fd, (json.dumps(message) + "\n").encode())


def _started_with(env, boot_environ):
    """``env``, plus what this interpreter's start-up added to its own environment (PEP 538
    sets LC_CTYPE under the C locale): a cold interpreter given ``env`` adds the same, as
    the template was started with the same start-up variables (``warm.startup_variables``)."""
    startup = ("PYTHON", "DAGSTER_", "GRPC_", "LC_", "LANG", "TZ")
    added = {k: v for k, v in boot_environ.items() if k.startswith(startup) and k not in env}
    return {**env, **added}


def _become(request, closing, boot_environ, import_guard):
    """Turn this forked child into the server ``request`` describes (see the docstring)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for fd in closing:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.setsid()
    if request.get("user"):
        drop.to_location(*request["user"])
        os.umask(LOCATION_UMASK)
    _die_with(request["parent"])
    with open(request["settings"], "rb") as f:  # as the location's user: its own FIFO
        env = json.loads(f.read())
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(_started_with(env, boot_environ))
    sys.meta_path.remove(import_guard)
    for name in OWN_MODULES:  # the file may import a helper of the same name from its own
        sys.modules.pop(name, None)
    _site()
    gc.enable()
    # Run as ``__main__`` from its path, as ``python codeserver.py`` does: multiprocessing's
    # spawn (a run's subprocess) finds the main module by that path.
    path = os.path.join(BOOT_DIR, "codeserver.py")
    sys.argv = [path, *request["argv"]]
    runpy.run_path(path, run_name="__main__")


def _site():
    """What ``site`` does as an interpreter starts, done now the location's user runs: the
    environment's ``.pth`` files, ``sitecustomize``, the user's site folder. A run's process
    (multiprocessing) is started with the interpreter's flags: not with ``-S``."""
    import subprocess

    site.main()
    flags = subprocess._args_from_interpreter_flags
    subprocess._args_from_interpreter_flags = lambda: [a for a in flags() if a != "-S"]


def _die_with(pid):
    """SIGKILL this process when ``pid`` ends, as the parent-death signal does for a cold
    server (the template is this child's parent, and may end first)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)

    def watch():
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="runner-watch", daemon=True).start()


def _reap(replies):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reply(replies, exited=pid, status=os.waitstatus_to_exitcode(status))


#: prctl(2): let KSM merge this process's anonymous pages, and its children's (Linux 6.4+).
PR_SET_MEMORY_MERGE = 67


def _offer_pages_for_merging():
    """True if the kernel took the offer (it has effect only where KSM runs on the host:
    ``/sys/kernel/mm/ksm/run`` is 1); older kernels refuse it, and nothing changes."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _environment_on_path():
    """What ``site`` does for a virtual environment (``sys.prefix``, its ``site-packages`` on
    ``sys.path``), without running any ``.pth`` file; the folders it added."""
    before = list(sys.path)
    process_pth = site.addpackage
    site.addpackage = lambda *args, **kwargs: None
    try:
        site.venv(set())
    finally:
        site.addpackage = process_pth
    return [d for d in sys.path if d not in before]


def _give_up_rights(rights, replies):
    """Become the template's own user (``uid:gid:low:high``), able to fork into ids from low
    to high only, and die with the runner again (a credential change cleared the
    parent-death signal)."""
    uid, gid, lowest, highest = map(int, rights.split(":"))
    parent = os.getppid()
    drop.to_template(uid, gid, allowed=(lowest, highest))
    drop.die_with_parent()
    if os.getppid() != parent:  # the runner ended before the signal was armed again
        os._exit(1)


def main():
    replies = int(os.environ.pop("RUNNER_TEMPLATE_REPLIES"))
    rights = os.environ.pop("RUNNER_TEMPLATE_USER", "")
    boot_environ = dict(os.environ)
    started = time.monotonic()
    if rights:
        try:
            _give_up_rights(rights, replies)
        except OSError as exc:
            _reply(replies, unusable=f"it could not give up the runner's rights: {exc}")
            return 1
    import_guard = guard.install(_environment_on_path())
    title.set_title(f"{title.PREFIX}template {os.path.basename(sys.prefix)[:12]}")
    gc.disable()  # no collections while importing: fewer pages touched, faster
    try:
        _warm_up()
    except Exception as exc:
        _reply(replies, unusable=f"importing Dagster failed: {exc!r}")
        return 1
    if threading.active_count() != 1:
        main_thread = threading.main_thread()
        names = ", ".join(t.name for t in threading.enumerate() if t is not main_thread)
        why = f"a thread runs after importing Dagster ({names}): forking is unsafe"
        _reply(replies, unusable=why)
        return 1
    gc.freeze()  # what is imported now is never collected: its pages stay shared
    merge = _offer_pages_for_merging()

    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _reply(
        replies,
        ready=round(time.monotonic() - started, 3),
        merge=merge,
        refused=sorted(set(import_guard.refused)),
    )
    pending = b""
    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            while True:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    break
            _reap(replies)
        if 0 in readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the runner closed our stdin: we are done (children live on)
                return 0
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    # From here on this process is the server: it exits as a cold one does.
                    _become(request, (replies, wake_r, wake_w), boot_environ, import_guard)
                    return 0
                _reply(replies, forked=request["id"], pid=pid)


if __name__ == "__main__":
    sys.exit(main())
