"""Memory and CPU limits for a location's runs and its code server: in its own PEP 723 block,
with service defaults.

    # /// script
    # dependencies = ["dagster"]
    # [tool.dagster-code-runner]
    # run-memory = "2g"
    # run-cpus = 1.5
    # server-memory = "512m"
    # ///

``RUNNER_RUN_MEMORY`` and ``RUNNER_RUN_CPUS`` (``RUNNER_SERVER_MEMORY``,
``RUNNER_SERVER_CPUS``) set the defaults for files that say nothing. The container engine
enforces them on each run's container (see :mod:`container_runs`) and on each server's
container (``RUNNER_SERVERS=docker`` or ``k8s``); with the default launcher, runs are
processes of their code server, and local servers have no limits.
Memory is written as Docker writes it: a number of bytes, or with a unit b, k, m, g or t
(powers of 1024, with or without ``i``/``b``: ``512m``, ``512MiB``, ``2G`` and ``2GB`` alike).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The file's own table: ``[tool.dagster-code-runner]``.
TOOL = "dagster-code-runner"
MEMORY_KEY, CPUS_KEY = "run-memory", "run-cpus"
SERVER_MEMORY_KEY, SERVER_CPUS_KEY = "server-memory", "server-cpus"
_KEYS = (MEMORY_KEY, CPUS_KEY, SERVER_MEMORY_KEY, SERVER_CPUS_KEY)
#: The smallest memory limit Docker accepts.
MIN_MEMORY = 6 * 1024 * 1024

_UNITS = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_MEMORY = re.compile(r"(?i)^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$")


@dataclass(frozen=True)
class RunLimits:
    memory: int | None = None  # bytes
    cpus: float | None = None

    def over(self, defaults: RunLimits) -> RunLimits:
        """These limits, with ``defaults`` where these say nothing."""
        return RunLimits(
            memory=self.memory if self.memory is not None else defaults.memory,
            cpus=self.cpus if self.cpus is not None else defaults.cpus,
        )

    def describe(self) -> str:
        """``memory 512 MiB, 1.5 CPUs``, or ``none``."""
        parts = []
        if self.memory is not None:
            parts.append(f"memory {human_bytes(self.memory)}")
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}")
        return ", ".join(parts) or "none"


def from_tool(tool: Mapping[str, Any], of: str = "run") -> RunLimits:
    """The limits of its runs (``of="run"``) or its server (``"server"``) in a file's
    ``[tool]`` table; raises ``ValueError`` for its author."""
    table = tool.get(TOOL, {})
    if not isinstance(table, Mapping):
        raise ValueError(f"[tool.{TOOL}] must be a table")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) in [tool.{TOOL}]: {', '.join(unknown)} (known: {', '.join(_KEYS)})"
        )
    where = f"[tool.{TOOL}] "
    memory = table.get(f"{of}-memory")
    cpus = table.get(f"{of}-cpus")
    return RunLimits(
        memory=None if memory is None else parse_memory(memory, f"{where}{of}-memory"),
        cpus=None if cpus is None else parse_cpus(cpus, f"{where}{of}-cpus"),
    )


def service_defaults(environ: Mapping[str, str], of: str = "run") -> RunLimits:
    """``RUNNER_RUN_MEMORY`` and ``RUNNER_RUN_CPUS`` (``of="server"``: ``RUNNER_SERVER_...``);
    raises ``ValueError`` naming the one."""
    names = f"RUNNER_{of.upper()}_MEMORY", f"RUNNER_{of.upper()}_CPUS"
    memory = environ.get(names[0]) or None
    cpus = environ.get(names[1]) or None
    return RunLimits(
        memory=None if memory is None else parse_memory(memory, names[0]),
        cpus=None if cpus is None else parse_cpus(cpus, names[1]),
    )


def parse_memory(value: object, what: str = "memory") -> int:
    """Bytes from ``value`` (an int, or a string such as ``512m`` or ``2GiB``)."""
    if isinstance(value, bool):
        raise ValueError(f'{what} must be a size such as "512m" or "2g", not {value!r}')
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str) and (match := _MEMORY.match(value)):
        number, unit = match.groups()
        amount = math.floor(float(number) * 1024 ** _UNITS[unit.lower()])
    else:
        raise ValueError(f'{what} must be a size such as "512m" or "2g", not {value!r}')
    if amount < MIN_MEMORY:
        raise ValueError(f"{what} must be at least 6m (the engine's minimum), not {value!r}")
    return amount


def parse_cpus(value: object, what: str = "cpus") -> float:
    """A positive number of CPUs (``0.5``, ``2``), as ``docker run --cpus`` takes."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number of CPUs such as 1 or 0.5, not {value!r}")
    if not math.isfinite(value) or value < 0.01:
        raise ValueError(f"{what} must be at least 0.01 CPUs, not {value!r}")
    return float(value)


def human_bytes(amount: int) -> str:
    """``512 MiB``, ``1.5 GiB``."""
    for unit, power in (("TiB", 4), ("GiB", 3), ("MiB", 2), ("KiB", 1)):
        if amount >= 1024**power:
            return f"{amount / 1024**power:.4g} {unit}"
    return f"{amount} B"
