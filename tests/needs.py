"""A component the machine lacks: skip, naming what to install; under ``CI=true``, fail.

``.ci/run`` installs and starts every component, so in CI a missing one is a defect of the
machine's setup, never a reason for a test not to run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI=true: .ci/run provides it)")
    pytest.skip(why)
