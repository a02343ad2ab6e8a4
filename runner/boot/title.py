"""Set this process's title, as ``ps``, ``top`` and ``htop`` show it, as PostgreSQL and
gunicorn do: ``dagster-code-runner: server team_a.sales gen 3``.

Runs in a file's environment, which holds no ``setproctitle``: the title is written over the
process's own command line (the memory ``/proc/self/cmdline`` reads, whose bounds
``/proc/self/stat`` gives), padded with NULs, and its first 15 bytes, without the prefix,
become the thread's name (``comm``: ``top``'s default column). A title longer than the
command line it replaces is cut. Python keeps a copy of its arguments (``sys.argv``), so
nothing reads the old ones.
"""

import ctypes
import sys

PREFIX = "dagster-code-runner: "
#: prctl(2): the calling thread's name (16 bytes with its NUL).
PR_SET_NAME = 15


def set_title(title):
    """True if the title was set (Linux only; anything else leaves it as it was)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
        libc = ctypes.CDLL(None, use_errno=True)
        name = title.removeprefix(PREFIX).encode()[:15]
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, ValueError, IndexError, AttributeError):
        return False
    size = end - start
    if size < 2:
        return False
    data = title.encode()[: size - 1]
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
    return True
