"""Give up the rights a process started with (Linux): a template's, then its servers'.

Imported by ``template.py`` in a file's environment, so it uses the standard library only.

* :func:`to_template`: a template starts as root, and must fork each code server into its
  location's own user. It keeps exactly that power and nothing else: it becomes the
  template's own unprivileged user, holding only CAP_SETUID, CAP_SETGID and CAP_SETPCAP,
  with ``no_new_privs`` and a seccomp filter that lets it (and every child) change its ids
  only to ids in the locations' range, never to root, the runner or the service, and never
  create a user namespace (where ids could be mapped at will).
* :func:`to_location`: a forked child becomes its location's user and group, with no
  supplementary groups and no capabilities left in any set, so it can never regain them.

The order is the kernel's: capabilities are dropped from the bounding set while they can be
(CAP_SETPCAP), groups before the gid, the gid before the uid; a credential change clears the
parent-death signal, so a caller re-arms its own after :func:`to_location`.
"""

import ctypes
import os
import platform
import struct

CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 6, 7, 8
_PR_SET_PDEATHSIG = 1
_PR_SET_KEEPCAPS = 8
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_SECCOMP_MODE_FILTER = 2
_CAP_VERSION_3 = 0x20080522
_CLONE_NEWUSER = 0x10000000

#: Per architecture: the audit id seccomp sees, and the numbers of the calls the filter
#: looks at (``asm/unistd.h``).
_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        {
            "setuid": 105,
            "setgid": 106,
            "setreuid": 113,
            "setregid": 114,
            "setgroups": 116,
            "setresuid": 117,
            "setresgid": 119,
            "setfsuid": 122,
            "setfsgid": 123,
            "clone": 56,
            "unshare": 272,
            "setns": 308,
            "clone3": 435,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "setuid": 146,
            "setgid": 144,
            "setreuid": 145,
            "setregid": 143,
            "setgroups": 159,
            "setresuid": 147,
            "setresgid": 149,
            "setfsuid": 151,
            "setfsgid": 152,
            "clone": 220,
            "unshare": 97,
            "setns": 268,
            "clone3": 435,
        },
    ),
}

_libc = ctypes.CDLL(None, use_errno=True)


class DropError(OSError):
    """A right could not be given up (the process must not go on)."""


def supported() -> bool:
    """This machine's architecture has a seccomp table here."""
    return platform.machine() in _SYSCALLS


def _prctl(option, arg2=0, arg3=0, arg4=0, arg5=0):
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    if _libc.prctl(ctypes.c_int(option), *args) != 0:
        errno = ctypes.get_errno()
        raise DropError(errno, f"prctl({option}): {os.strerror(errno)}")


def _last_cap():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def _capset(caps):
    """Set the effective, permitted and inheritable sets to exactly ``caps``."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    header = struct.pack("II", _CAP_VERSION_3, 0)
    low, high = mask & 0xFFFFFFFF, mask >> 32
    data = struct.pack("IIIIII", low, low, 0, high, high, 0)  # effective, permitted, inheritable
    hbuf, dbuf = ctypes.create_string_buffer(header, 8), ctypes.create_string_buffer(data, 24)
    if _libc.capset(hbuf, dbuf) != 0:
        errno = ctypes.get_errno()
        raise DropError(errno, f"capset: {os.strerror(errno)}")


def _drop_bounding(keep):
    for cap in range(_last_cap() + 1):
        if cap not in keep:
            _prctl(_PR_CAPBSET_DROP, cap)


def _become(uid, gid):
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def to_template(uid, gid, *, allowed):
    """Become ``uid``:``gid`` (from root), keeping only the power to fork servers into the
    ids ``allowed`` (``(lowest, highest)``, inclusive) and never another."""
    keep = (CAP_SETUID, CAP_SETGID, CAP_SETPCAP)
    _drop_bounding(keep)
    _prctl(_PR_SET_KEEPCAPS, 1)
    _become(uid, gid)
    _capset(keep)
    _prctl(_PR_SET_KEEPCAPS, 0)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _install(_filter(*allowed))


def to_location(uid, gid):
    """Become ``uid``:``gid`` with no supplementary groups and no capabilities."""
    try:
        _drop_bounding(())
    except DropError:
        if os.geteuid() == 0:  # root without CAP_SETPCAP cannot empty it: no way on
            raise
    _become(uid, gid)
    _capset(())
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent():
    """SIGKILL this process when its parent ends (the parent-death signal)."""
    _prctl(_PR_SET_PDEATHSIG, 9)


# --- the seccomp filter -----------------------------------------------------------------

_LD_ABS, _RET, _TAX = 0x20, 0x06, 0x07  # BPF: load a word, return, copy A to X
_JEQ, _JGE, _JGT, _JSET, _JEQ_X = 0x15, 0x35, 0x25, 0x45, 0x1D  # jumps on A against K (or X)
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS = 1, 38


def _arg(i, high=False):
    return 16 + 8 * i + (4 if high else 0)  # seccomp_data.args[i], little endian


class _Program:
    """A little assembler: instructions with symbolic jump targets."""

    def __init__(self):
        self.code, self.labels = [], {}

    def label(self, name):
        self.labels[name] = len(self.code)

    def op(self, code, k=0, jt=None, jf=None):
        self.code.append((code, jt, jf, k))

    def assemble(self):
        out = b""
        for at, (code, jt, jf, k) in enumerate(self.code):
            offsets = [0 if t is None else self.labels[t] - at - 1 for t in (jt, jf)]
            out += struct.pack("HBBI", code, offsets[0], offsets[1], k)
        return out


def _filter(lowest, highest):
    """Deny every id change but ``set[res]{u,g}id(x, x, x)`` with x in the range and
    ``setgroups(0, ...)``; deny new user namespaces; allow everything else."""
    arch, nr = _SYSCALLS[platform.machine()]
    p = _Program()
    p.op(_LD_ABS, 4)
    p.op(_JEQ, arch, None, "deny")
    p.op(_LD_ABS, 0)
    if platform.machine() == "x86_64":
        p.op(_JGE, 0x40000000, "deny", None)  # the x32 ABI
    for name in ("setuid", "setgid", "setreuid", "setregid", "setfsuid", "setfsgid", "setns"):
        p.op(_JEQ, nr[name], "deny", None)
    p.op(_JEQ, nr["clone3"], "nosys", None)  # flags behind a pointer: glibc falls back to clone
    p.op(_JEQ, nr["setgroups"], "groups", None)
    p.op(_JEQ, nr["setresuid"], "ids", None)
    p.op(_JEQ, nr["setresgid"], "ids", None)
    p.op(_JEQ, nr["unshare"], "flags", None)
    p.op(_JEQ, nr["clone"], "flags", None)
    p.op(_RET, _ALLOW)
    p.label("groups")
    p.op(_LD_ABS, _arg(0))
    p.op(_JEQ, 0, "allow", "deny")
    p.label("flags")
    p.op(_LD_ABS, _arg(0))
    p.op(_JSET, _CLONE_NEWUSER, "deny", "allow")
    p.label("ids")
    p.op(_LD_ABS, _arg(0))
    p.op(_JGE, lowest, None, "deny")
    p.op(_JGT, highest, "deny", None)
    p.op(_TAX)
    for i in range(3):
        if i:
            p.op(_LD_ABS, _arg(i))
            p.op(_JEQ_X, 0, None, "deny")
        p.op(_LD_ABS, _arg(i, high=True))
        p.op(_JEQ, 0, None, "deny")
    p.label("allow")
    p.op(_RET, _ALLOW)
    p.label("deny")
    p.op(_RET, _ERRNO | _EPERM)
    p.label("nosys")
    p.op(_RET, _ERRNO | _ENOSYS)
    return p.assemble()


def _install(program):
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fbuf))
