"""The workspace entries for the locations the runner holds: pure, from what it holds.

A location whose current version serves gets its entry (pointing at that server); a failed
new version is shown beside it as ``<name>~new-version-failed``; a location with nothing
serving shows its error in its own place, or as ``<name>~name-collision`` when the static
workspace uses its name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from runner.dagster_side import provenance
from runner.dagster_side.workspace import Entry
from runner.envs.env import Resolution
from runner.lifecycle.model import Location, Server, ignored_warning

#: Suffix of the extra entry that shows a failed new version while the last good one serves.
#: "~" never occurs in a location name, so it cannot collide with a file's location.
FAILED_SUFFIX = "~new-version-failed"
#: Suffix of the entry that explains why a file whose name the static workspace uses is
#: not served.
COLLISION_SUFFIX = "~name-collision"


def entries(
    locations: Iterable[Location],
    *,
    host: str,
    static_names: frozenset[str],
    file_of: Callable[[Location], str],
    resolution: Callable[[str], Resolution | None],
    error_server: Callable[[str], Server | None],
) -> list[Entry]:
    out = []
    for loc in locations:
        current, shown = loc.current, error_server(loc.name)
        if current is not None and current.server is not None and current.alive():
            broken, file = current.load_error is not None, current.spec.relpath
            warning = ignored_warning(current.ignored) if current.ignored else ""
            resolved = resolution(current.env.key)
            facts = provenance.facts(current.spec, current.env.key, resolved)
            out.append(
                Entry(
                    loc.name,
                    getattr(current.server, "reach", None) or host,
                    current.server.port,
                    broken,
                    file,
                    current.server.server_id,
                    warning,
                    resolved.describe() if resolved else "",
                    current.server.socket or "",
                    tuple(facts.items()),
                )
            )
            if shown is not None:
                out.append(
                    Entry(
                        loc.name + FAILED_SUFFIX,
                        host,
                        shown.port,
                        True,
                        file,
                        shown.server_id,
                        socket=shown.socket or "",
                    )
                )
        elif shown is not None:
            name = loc.name + (COLLISION_SUFFIX if loc.name in static_names else "")
            out.append(
                Entry(
                    name,
                    host,
                    shown.port,
                    True,
                    file_of(loc),
                    shown.server_id,
                    socket=shown.socket or "",
                )
            )
    return sorted(out)
