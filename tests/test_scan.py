from __future__ import annotations

import os
from pathlib import Path

from runner.share.scan import SETTLE, LocationSpec, Scanner, SpecError

SCRIPT = "# /// script\n# dependencies = ['dagster']\n# ///\nimport dagster\n"


def write(path: Path, text: str, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_file_counts_once_stable(tmp_path: Path) -> None:
    scanner = Scanner(tmp_path, stable_for=1.0)
    write(tmp_path / "a.py", SCRIPT)

    first = scanner.scan(now=100.0)
    assert first.desired == {} and first.pending == ["a.py"] and first.next_due == 101.0
    assert scanner.scan(now=100.5).desired == {}
    later = scanner.scan(now=101.0)
    assert isinstance(later.desired["a"], LocationSpec) and later.pending == []


def test_a_file_a_local_writer_finished_counts_after_a_short_settle(tmp_path: Path) -> None:
    scanner = Scanner(tmp_path, stable_for=1.0)
    write(tmp_path / "a.py", SCRIPT, mtime_ns=1)
    scanner.mark_written(str(tmp_path / "a.py"))  # closed after writing, or renamed in
    first = scanner.scan(now=100.0)
    assert first.desired == {} and first.next_due == 100.0 + SETTLE
    assert isinstance(first.early["a"], LocationSpec)  # prepared while it settles
    assert isinstance(scanner.scan(now=100.0 + SETTLE).desired["a"], LocationSpec)

    write(tmp_path / "a.py", SCRIPT + "# appended by a second writer\n", mtime_ns=2)
    assert scanner.scan(now=101.0).next_due == 102.0  # no sign this time: the whole window
    assert "appended" not in scanner.scan(now=101.5).desired["a"].source.decode()


def test_a_file_still_being_written_keeps_its_last_stable_version(tmp_path: Path) -> None:
    scanner = Scanner(tmp_path, stable_for=1.0)
    write(tmp_path / "a.py", SCRIPT, mtime_ns=1)
    scanner.scan(now=0.0)
    stable = scanner.scan(now=1.0).desired["a"]

    write(tmp_path / "a.py", SCRIPT + "# half of an edit", mtime_ns=2)  # a chunk arrives
    assert scanner.scan(now=2.0).desired["a"] == stable
    write(tmp_path / "a.py", SCRIPT + "# half of an edit, and the rest\n", mtime_ns=3)
    assert scanner.scan(now=2.5).desired["a"] == stable  # the window restarts on every change
    edited = scanner.scan(now=3.5).desired["a"]
    assert edited.digest != stable.digest


def test_noise_and_helpers_are_not_locations(tmp_path: Path) -> None:
    for name in [
        ".hidden.py",
        "notes.txt",
        "a.py~",
        ".#a.py",
        "#a.py#",
        "__pycache__/c.py",
        ".git/x.py",
        "a.pyc",
    ]:
        write(tmp_path / name, SCRIPT)
    write(tmp_path / "helpers.py", "def f():\n    return 1\n")
    write(tmp_path / "sub/job.py", SCRIPT)
    scanner = Scanner(tmp_path, stable_for=0)
    assert set(scanner.scan(now=0).desired) == {"sub.job"}


def test_bad_metadata_is_an_error_not_a_crash(tmp_path: Path) -> None:
    write(tmp_path / "bad.py", "# /// script\n# dependencies = [\n# ///\n")
    (tmp_path / "binary.py").write_bytes(b"# /// script\n\xff\xfe\n# ///\n")
    desired = Scanner(tmp_path, stable_for=0).scan(now=0).desired
    assert isinstance(desired["bad"], SpecError) and "TOML" in desired["bad"].message
    assert isinstance(desired["binary"], SpecError) and "UTF-8" in desired["binary"].message


def test_deleted_files_leave_the_desired_set(tmp_path: Path) -> None:
    scanner = Scanner(tmp_path, stable_for=0)
    write(tmp_path / "a.py", SCRIPT)
    assert "a" in scanner.scan(now=0).desired
    (tmp_path / "a.py").unlink()
    assert scanner.scan(now=1).desired == {}


def test_network_file_systems_are_polled() -> None:
    from runner.share.watch import choose_mode, fs_type

    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "//files.example/share /mnt/share cifs rw 0 0\n"
        "server:/export /mnt/my\\040nfs nfs4 rw 0 0\n"
    )
    assert fs_type(Path("/mnt/share/code_location"), mounts) == "cifs"
    assert fs_type(Path("/mnt/my nfs/x"), mounts) == "nfs4"
    assert fs_type(Path("/mnt/shared"), mounts) == "ext4"  # a prefix is not a parent
    assert choose_mode(Path("/tmp"), "poll") == "poll"
    assert choose_mode(Path("/tmp"), "events") == "events"


def test_editing_a_helper_changes_the_digest_of_the_locations_beside_it(tmp_path: Path) -> None:
    write(tmp_path / "team/job.py", SCRIPT)
    write(tmp_path / "team/helpers.py", "X = 1\n")
    write(tmp_path / "other/job.py", SCRIPT)
    scanner = Scanner(tmp_path, stable_for=0)
    before = scanner.scan(now=0).desired
    write(tmp_path / "team/helpers.py", "X = 2\n")
    after = scanner.scan(now=1).desired
    assert after["team.job"].digest != before["team.job"].digest
    assert after["other.job"].digest == before["other.job"].digest
