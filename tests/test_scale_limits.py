"""What lets one service hold hundreds of locations: open files, the instance handed over by
the entrypoint, and how often a large share is rescanned."""

from __future__ import annotations

import resource
from pathlib import Path

from runner.base import process
from runner.dagster_side import instance
from runner.share.scan import SCAN_CPU_SHARE, RescanPace


def test_the_soft_open_file_limit_is_raised_within_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, after = process.raise_open_file_limit(wanted=min(4096, hard))
        assert before == min(256, hard)
        assert after == min(4096, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_instance_handed_over_is_used_only_as_it_was_configured(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    ready = instance.Ready(("dagster-postgres",), "docker", sqlite=False)
    value = instance.hand_over(tmp_path, ready, "postgresql://db/x")
    assert instance.handed_over(tmp_path, value, "postgresql://db/x") == ready
    assert instance.handed_over(tmp_path, value, "postgresql://db/other") is None
    assert instance.handed_over(tmp_path / "elsewhere", value, "postgresql://db/x") is None
    assert instance.handed_over(tmp_path, "not json", None) is None
    assert instance.handed_over(tmp_path, None, None) is None
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    assert instance.handed_over(tmp_path, value, "postgresql://db/x") is None


def test_rescans_of_a_large_share_stay_under_their_share_of_a_core() -> None:
    pace = RescanPace(2.0)
    pace.measured(0.001)
    assert pace.period == 2.0  # a small share: every 2 s
    for _ in range(5):
        pace.measured(0.042)  # 10,000 files
    assert pace.period == 0.042 / SCAN_CPU_SHARE
    assert 0.042 / pace.period <= SCAN_CPU_SHARE < 0.01
