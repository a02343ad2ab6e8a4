"""Start a Dagster run worker in a location's environment, in the run's own container.

Dagster's container launchers start ``<entry point> api execute_run ...``; for a location the
runner serves, the entry point is ``<the file's python> run.py <run env file>``. This script
imports only the standard library (and Dagster, after a failure):

* it gives the run what its code server has: the variables and the working folder the
  runner wrote to the run env file (settings and secrets stay out of the run's origin,
  which is stored with every run);
* it runs ``dagster api execute_run ...`` as its child (through ``codeserver.py``, which keeps
  the location's outputs in a folder of their own) and waits, passing on
  a stop request;
* when the container's memory limit killed a process of the run (the kernel's OOM
  killer), it says so on the run: as the run's failure if the worker itself was killed, as
  an event beside the step's failure otherwise.
"""

import json
import os
import signal
import subprocess
import sys

CGROUP = "/sys/fs/cgroup"


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def oom_kills():
    """Processes the OOM killer stopped in this container's cgroup (v2, else v1)."""
    for path in (f"{CGROUP}/memory.events", f"{CGROUP}/memory/memory.oom_control"):
        text = _read(path)
        if text is not None:
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def memory_limit():
    """The container's memory limit in bytes, or None."""
    for path in (f"{CGROUP}/memory.max", f"{CGROUP}/memory/memory.limit_in_bytes"):
        text = _read(path)
        if text is not None and text.strip().isdigit():
            limit = int(text)
            return limit if limit < 2**60 else None
    return None


def human(amount):
    for unit, power in (("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if amount >= 1024**power:
            return f"{amount / 1024**power:.4g} {unit}"
    return f"{amount} B"


def report_oom(args, killed):
    """Say on the run that it went over its memory limit."""
    from dagster import DagsterInstance, deserialize_value
    from dagster._grpc.types import ExecuteRunArgs, ResumeRunArgs

    limit = memory_limit()
    message = (
        f"Out of memory: the run's container went over its memory limit"
        f"{f' of {human(limit)}' if limit else ''} and the kernel killed {killed} of its "
        "processes (OOM-killed). Raise run-memory in the file's [tool.dagster-code-runner] "
        "table (or RUNNER_RUN_MEMORY for every file), or make the run use less memory."
    )
    run_args = deserialize_value(args[-1], as_type=(ExecuteRunArgs, ResumeRunArgs))
    with DagsterInstance.from_ref(run_args.instance_ref) as instance:
        run = instance.get_run_by_id(run_args.run_id)
        if run is None:
            return
        if run.is_finished:
            instance.report_engine_event(message, run)
        else:  # the run worker itself was killed: nothing else will end the run
            instance.report_run_failed(run, message)


def main():
    env_file, args = sys.argv[1], sys.argv[2:]
    with open(env_file) as f:
        spec = json.load(f)
    env = {**os.environ, **spec["env"]}
    os.chdir(spec["cwd"])
    before = oom_kills()
    # Through codeserver.py: the run keeps its location's outputs in their own folder.
    boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "codeserver.py")
    child = subprocess.Popen([sys.executable, boot, "--dagster", *args], env=env)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: child.send_signal(s))
    code = child.wait()
    killed = oom_kills() - before
    if killed > 0 and args[:2] in (["api", "execute_run"], ["api", "resume_run"]):
        os.environ.update(spec["env"])  # the instance's settings (e.g. its database URL)
        try:
            report_oom(args, killed)
        except Exception as exc:  # the run still ends; its container's state tells the rest
            print(f"runner: could not report the OOM kill on the run: {exc!r}", file=sys.stderr)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
