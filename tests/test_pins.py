"""How a file's lock and the runner's resolutions enter an environment's identity: pure, fast."""

from __future__ import annotations

from pathlib import Path

from runner.envs import env
from runner.share import script
from runner.share.scan import LocationSpec, Scanner

FILE = '# /// script\n# dependencies = ["dagster", "Six>=1"]\n# ///\nimport dagster\n'
LOCK = """version = 1
requires-python = ">=3.11"

[manifest]
requirements = [{ name = "dagster" }, { name = "six", specifier = ">=1" }]

[[package]]
name = "Six"
version = "1.16.0"

[[package]]
name = "dagster"
version = "1.13.27"
"""


def meta() -> script.ScriptMetadata:
    parsed = script.parse_metadata(FILE)
    assert parsed is not None
    return parsed


def test_a_lock_is_part_of_the_environments_identity_and_the_metadata_stays_the_files() -> None:
    unlocked = env.spec_for(meta(), ("dagster-postgres",))
    locked = env.spec_for(meta(), ("dagster-postgres",), lock=LOCK)
    relocked = env.spec_for(meta(), ("dagster-postgres",), lock=LOCK.replace("1.16.0", "1.17.0"))
    assert len({unlocked.key, locked.key, relocked.key}) == 3
    assert env.spec_for(meta(), ("dagster-postgres",), lock=LOCK).key == locked.key
    # uv checks the lock against the file's own metadata: the runner's additions stay aside.
    assert locked.metadata["dependencies"] == ["dagster", "Six>=1"]
    assert locked.added == ("dagster-postgres",)
    assert unlocked.metadata["dependencies"] == ["dagster", "Six>=1", "dagster-postgres"]
    assert locked.direct == ("dagster", "six")


def test_locked_versions_and_how_a_resolution_is_described() -> None:
    assert env.locked_versions(LOCK) == {"six": "1.16.0", "dagster": "1.13.27"}
    assert env.locked_versions("not = [toml") == {}
    described = env.Resolution("own", {"dagster": "1.13.27", "six": "1.16.0"}).describe()
    assert described == "dagster 1.13.27, six 1.16.0 (as the file's own lockfile pins them)"


def test_adding_editing_and_removing_a_lock_changes_the_files_version(tmp_path: Path) -> None:
    (tmp_path / "pipe.py").write_text(FILE)
    scanner = Scanner(tmp_path, stable_for=0)

    def scanned() -> LocationSpec:
        spec = scanner.scan(now=0).desired["pipe"]
        assert isinstance(spec, LocationSpec)
        return spec

    plain = scanned()
    (tmp_path / "pipe.py.lock").write_text(LOCK)
    locked = scanned()
    assert locked.lock == LOCK and locked.digest != plain.digest
    (tmp_path / "pipe.py.lock").write_text(LOCK + "\n")
    assert scanned().digest not in (plain.digest, locked.digest)
    (tmp_path / "pipe.py.lock").unlink()
    again = scanned()
    assert again.lock is None and again.digest == plain.digest


def test_status_says_how_a_file_is_pinned_and_its_versions() -> None:
    from runner.service import status

    row = status.FileStatus(
        file="pipe.py",
        location="pipe",
        state="serving",
        pins="kept",
        versions={"dagster": "1.13.27", "six": "1.16.0"},
    )
    snapshot = status.Snapshot(
        {"pid": 1, "host": "h", "files": [status._jsonable(row)]}, running=True, why_not=None
    )
    text = status.render(snapshot)
    assert (
        "pipe versions: dagster 1.13.27, six 1.16.0 (as the runner locked them when it "
        "first built this metadata)"
    ) in text


def test_dagsters_libraries_beside_a_lock_are_the_release_of_its_dagster() -> None:
    assert env.lockstep("dagster-postgres", "1.13.27") == "dagster-postgres==0.29.27"
    assert env.lockstep("dagster-docker", "1.9.0") == "dagster-docker==0.25.0"
    assert env.lockstep("dagster-postgres", None) == "dagster-postgres"
    assert env.lockstep("dagster-postgres", "1.13.0rc1") == "dagster-postgres"
    assert env.lockstep("dagster==1.13.27", "1.13.27") == "dagster==1.13.27"
    assert env.lockstep("psycopg2-binary", "1.13.27") == "psycopg2-binary"
