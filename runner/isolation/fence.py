"""The service's own TCP ports, closed to the locations' users where the host allows it.

A code server on a Unix socket is reachable by the service's roles only; a TCP port is
reachable by every process of the machine, a location's code included. The webserver's
port matters most (its GraphQL launches any location's job), then the runner's metrics, and
code servers on TCP (``RUNNER_SERVER_HOST`` set for other hosts). Where the runner may
change the host's packet filter (``iptables`` and ``ip6tables`` with the owner match, and
CAP_NET_ADMIN), it rejects TCP connections from the locations' ids to those ports for as
long as it runs, and removes its rules when it stops (and, at start, those a runner that
died left). Elsewhere it says, once, what stays open to them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

COMMENT = "dagster-code-runner"


@dataclass(frozen=True)
class Target:
    """Connections to ``address`` (an IP; ``None``: any address of this host) on ``ports``
    (``"3000"`` or ``"32768:60999"``), and what is there."""

    address: str | None
    ports: str
    what: str

    @property
    def v6(self) -> bool:
        return self.address is not None and ":" in self.address


def addresses(host: str) -> list[str]:
    """The IPs ``host`` names (a wildcard: ``None``, every address of this host)."""
    if host in ("", "0.0.0.0", "::"):
        return []
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return sorted({str(info[4][0]) for info in found})
    except OSError:
        return []


def targets(
    *,
    webserver_url: str | None,
    metrics: str | None,
    servers_on_tcp: bool,
    resolve: Callable[[str], list[str]] = addresses,
    local_ports: str = "32768:60999",
) -> list[Target]:
    """What to close: the webserver, the metrics endpoint, and with ``servers_on_tcp`` the
    ports code servers take (the kernel's local range, on this host's addresses)."""
    out: list[Target] = []
    if webserver_url:
        parts = urlsplit(webserver_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        out += [Target(ip, str(port), "the webserver") for ip in resolve(parts.hostname or "")]
    if metrics:
        host, _, port = metrics.rpartition(":")
        ips = resolve(host) if host else ["127.0.0.1"]
        out += [Target(ip, port, "the runner's metrics") for ip in ips] or [
            Target(None, port, "the runner's metrics")
        ]
    if servers_on_tcp:
        out.append(Target(None, local_ports, "the code servers' ports"))
    return out


def rule(target: Target, ids: tuple[int, int], tag: str) -> list[str]:
    """The OUTPUT rule (after ``-A`` or ``-D``) that rejects ``target`` for ``ids``."""
    where = ["-d", target.address] if target.address else ["-m", "addrtype", "--dst-type", "LOCAL"]
    # --syn: new connections only, never the replies of a location's own server.
    return [
        "OUTPUT",
        "-p",
        "tcp",
        "--syn",
        *where,
        "--dport",
        target.ports,
        "-m",
        "owner",
        "--uid-owner",
        f"{ids[0]}-{ids[1]}",
        "-m",
        "comment",
        "--comment",
        tag,
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ]


def local_port_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> str:
    try:
        low, high = path.read_text().split()
        return f"{low}:{high}"
    except (OSError, ValueError):
        return "32768:60999"


class Fence:
    """Rules in the host's packet filter, held while the runner runs."""

    def __init__(
        self,
        wanted: Sequence[Target],
        ids: tuple[int, int],
        *,
        run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    ) -> None:
        self.wanted = list(wanted)
        self.ids = ids
        self.tag = f"{COMMENT}:{os.getpid()}"
        self._run = run
        self._added: list[tuple[str, list[str]]] = []

    def close(self) -> str | None:
        """Add the rules; ``None``, or what stays open and why."""
        if not self.wanted:
            return None
        tools = {False: shutil.which("iptables"), True: shutil.which("ip6tables")}
        self._remove_stale(tools)
        failed: list[str] = []
        for target in self.wanted:
            tool = tools[target.v6]
            spec = rule(target, self.ids, self.tag)
            done = self._iptables(tool, ["-A", *spec]) if tool else "iptables is not installed"
            if done is None:
                self._added.append((tool, spec))  # type: ignore[arg-type]
            else:
                failed.append(
                    f"{target.what} ({target.address or 'this host'} port {target.ports}): {done}"
                )
        if failed:
            return (
                "the locations' users can still connect to "
                + "; ".join(failed)
                + " (the runner needs iptables with the owner match and CAP_NET_ADMIN "
                "to close them, or put those ports where they cannot reach)"
            )
        return None

    def open(self) -> None:
        """Remove the rules this runner added."""
        for tool, spec in self._added:
            self._iptables(tool, ["-D", *spec])
        self._added.clear()

    def _remove_stale(self, tools: dict[bool, str | None]) -> None:
        """Rules of runners whose process is gone (killed before they could remove them)."""
        for tool in {t for t in tools.values() if t}:
            listed = self._run([tool, "-w", "-S", "OUTPUT"], capture_output=True, text=True)
            for line in listed.stdout.splitlines() if listed.returncode == 0 else []:
                found = re.search(rf"--comment \"?{COMMENT}:(\d+)\"?", line)
                gone = found and not os.path.exists(f"/proc/{found.group(1)}")
                if gone and line.startswith("-A "):
                    self._iptables(tool, ["-D", *line[3:].replace('"', "").split()])

    def _iptables(self, tool: str, args: list[str]) -> str | None:
        try:
            done = self._run([tool, "-w", *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if done.returncode != 0:
            return (done.stderr.strip().splitlines() or ["it failed"])[-1]
        return None
