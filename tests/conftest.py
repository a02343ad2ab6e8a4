from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import docker_images
from tests.service import Service

# A script asking for a Python we do not have must fail clearly instead of downloading one.
os.environ["UV_PYTHON_DOWNLOADS"] = "never"


def passable(path: Path) -> Path:
    """Let other users pass through ``path`` and the folders pytest made above it (not list
    them): as root, the service runs each location as a user of its own, who must reach its
    environment in the state folder and its file on the share."""
    if os.geteuid() == 0:
        for folder in [path, *path.parents]:
            if folder == Path(tempfile.gettempdir()):
                break
            folder.chmod(folder.stat().st_mode | 0o711)
    return path


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment store for the whole session: built environments are reused."""
    return passable(tmp_path_factory.mktemp("runner-state"))


@pytest.fixture(scope="module")
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, state_dir: Path
) -> Iterator[Service]:
    """The whole service on a fresh share; a module may set SERVICE_ENV for its settings
    (``{tmp}`` in a value: a fresh folder of the module's own, e.g. for settings files)."""
    share = passable(tmp_path_factory.mktemp("share"))
    share.chmod(0o755)  # a share the teams may read, as they usually can
    tmp = tmp_path_factory.mktemp("service-files")
    env = {
        key: value.format(tmp=tmp)
        for key, value in getattr(request.module, "SERVICE_ENV", {}).items()
    }
    svc = Service(share, state_dir, log=share.parent / f"{share.name}-service.log", env=env)
    try:
        yield svc
    finally:
        if svc.proc.poll() is None:
            svc.kill()
        print(f"--- service log ({svc.log_path}) ---\n" + svc.log_text()[-20000:])


@pytest.fixture(scope="session")
def runner_image() -> str:
    """The project's image, built with ``docker build`` once per session."""
    docker_images.require_engine()
    return docker_images.build_runner_image()


@pytest.fixture(scope="session")
def postgres_image() -> str:
    docker_images.require_engine()
    return docker_images.build_postgres_image()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    """pytest's, open to every user: files the tests drop have their code write markers
    here, and (as root) that code runs as its location's own user."""
    if os.geteuid() == 0:
        passable(tmp_path).chmod(0o1777)
    return tmp_path
