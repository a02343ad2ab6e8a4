"""What ran a run: the file's version, its environment and the lock it was built from.

Dagster records only a run's location (``dagster/code_location``). The runner tags every
run, from the process that executes it, with the digest of the file's bytes (what
``sha256sum FILE`` prints), the environment's id and the digest of the lock its packages
were installed from, so a result is traced to the exact code and packages; the location's
metadata in the UI shows the same. The tags are written by the run's own process
(``boot/codeserver.py``, from ``RUNNER_PROVENANCE``): what executed is what is recorded,
even when the file changed between the launch and the start.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.envs.env import Resolution
    from runner.share.scan import LocationSpec

PREFIX = "dagster-code-runner/"
#: The variable a code server's runs read their tags from (JSON).
VARIABLE = "RUNNER_PROVENANCE"


def facts(spec: LocationSpec, environment: str, resolved: Resolution | None) -> dict[str, str]:
    """The provenance of a location's version ``spec`` served from ``environment``, by name."""
    found = {"file": spec.relpath, "sha256": spec.sha256, "environment": environment}
    if resolved is not None and resolved.lock_sha256:
        found["lock-sha256"] = resolved.lock_sha256
    return found


def tags(facts: dict[str, str]) -> dict[str, str]:
    """The run tags for ``facts``: under the runner's own prefix, as Dagster's are under
    ``dagster/``."""
    return {PREFIX + name: value for name, value in facts.items()}


def variable(facts: dict[str, str]) -> str:
    return json.dumps(tags(facts), sort_keys=True)
