"""Sorting build failures by cause (a host down, the disk full), not by uv's wording."""

from __future__ import annotations

from pathlib import Path

from runner.envs import causes, pythons


def test_the_hosts_a_build_needs_come_from_metadata_environment_and_uv_output() -> None:
    metadata = {
        "dependencies": ["dagster", "tool @ git+https://git.team.example/t.git@v1"],
        "tool": {
            "uv": {
                "index": [{"name": "team", "url": "https://pkgs.team.example/simple"}],
                "sources": {"lib": {"git": "ssh://git@code.example:2222/lib.git"}},
            }
        },
    }
    output = "error: Failed to fetch: `https://files.example/x.whl`"
    hosts = causes.hosts_needed(metadata, output, {"UV_EXTRA_INDEX_URL": "http://mirror:8080/s"})
    assert hosts == [
        "https://pkgs.team.example",
        "ssh://code.example:2222",
        "http://mirror:8080",
        "https://pypi.org",
        "https://git.team.example",
        "https://files.example",
    ]
    replaced = {"tool": {"uv": {"index-url": "https://only.example/simple"}}}
    assert "https://pypi.org" not in causes.hosts_needed(replaced, "", {})


def test_a_host_down_makes_a_failure_transient_and_the_first_cause_is_named(
    tmp_path: Path,
) -> None:
    down = {"https://git.example": "git.example could not be reached (Name or service not known)"}
    probe = down.get
    assert (
        causes.outside_cause(["https://pypi.org", "https://git.example"], tmp_path, "", probe=probe)
        == down["https://git.example"]
    )
    assert causes.outside_cause(["https://pypi.org"], tmp_path, "", probe=probe) is None
    disk = causes.outside_cause([], tmp_path, "error: No space left on device (os error 28)")
    assert disk is not None and "MiB free" in disk


def test_a_real_probe_of_a_closed_port_says_unreachable() -> None:
    why = causes.probe("http://127.0.0.1:9", timeout=2)
    assert why is not None and "127.0.0.1" in why


def test_shims_give_way_to_real_interpreter_folders(tmp_path: Path) -> None:
    root = tmp_path / "pyenv"
    for version in ("2.7.18", "3.11.7", "3.13.0", "3.12-dev"):
        (root / "versions" / version / "bin").mkdir(parents=True)
    (root / "version").write_text("3.11.7\n")
    environ = {"PATH": f"/usr/local/bin:{root}/shims:/usr/bin", "PYENV_ROOT": str(root)}
    assert pythons.search_path(environ).split(":") == [
        "/usr/local/bin",
        f"{root}/versions/3.11.7/bin",
        "/usr/bin",
        f"{root}/versions/3.13.0/bin",
    ]


def test_the_missing_python_message_lists_what_there_is() -> None:
    listed = (
        '[{"implementation": "cpython", "version": "3.11.7"},'
        ' {"implementation": "cpython", "version": "3.13.0"},'
        ' {"implementation": "pypy", "version": "3.10.14"}]'
    )
    versions = pythons.installed_versions(listed)
    assert versions == ["3.13.0", "3.11.7"]
    text = pythons.missing_message(">=3.14", versions, downloads=False, why="")
    assert "'>=3.14'" in text and "installed: 3.13.0, 3.11.7" in text
    assert "UV_PYTHON_DOWNLOADS=never" in text and "\n" not in text
    assert not pythons.downloads_allowed({"UV_PYTHON_DOWNLOADS": "never"})
    assert pythons.downloads_allowed({})
