"""Start ``dagster api grpc`` in a location's own environment, with two additions.

Run by the environment's interpreter as ``python codeserver.py <dagster api grpc args>``;
it imports only the standard library and Dagster (the runner itself is not installed in a
file's environment), and behaves exactly like ``python -m dagster api grpc`` otherwise:

* The UI's Reload on a location asks its server to reload its code. ``dagster api grpc``
  cannot (it logs a warning and carries on); here it leaves a request in the file named by
  ``RUNNER_RELOAD_REQUEST``, and the runner starts a fresh server for the location, the way
  ``dagster code-server start`` restarts its child.
* A file without a ``Definitions`` gets only its loose assets from Dagster: its jobs,
  schedules and sensors are dropped without a word. What was dropped is written, as JSON, to
  the file named by ``RUNNER_LOAD_REPORT``, for the runner to show on the location.
* With ``--use-python-environment-entry-point``, runs are started with the command in
  ``RUNNER_RUN_ENTRY_POINT`` (JSON), if set: the file's interpreter running ``run.py``
  (runs in containers; see ``runner/dagster_side/container_runs.py``), instead of
  ``python -m dagster``.

* ``codeserver.py --dagster ARGS`` is ``python -m dagster ARGS`` with the hook below: how
  ``run.py`` starts a run's worker in its container.
* With ``RUNNER_OUTPUTS`` (a folder), the default I/O manager keeps the location's outputs
  there, in a folder of the location's own, not in the instance's ``storage/`` that every
  location's runs write: one location's runs cannot replace another's, nor fail on a file
  another location wrote for an asset of the same name. This one applies in the server's
  runs too: their processes import this file again as ``__mp_main__`` (multiprocessing).

* With ``RUNNER_PROVENANCE`` (JSON), every run it executes is tagged with what ran it, as
  the run starts (see ``runner/dagster_side/provenance.py``); in the server's runs too.

* A file that imports a package its environment lacks is told, before Dagster's own text,
  to add it to its ``dependencies`` (see ``missing.py``).

* ``RUNNER_PROCESS_TITLE`` becomes its process title (``ps``, ``top``; see ``title.py``).
* A file that fails to load is said once in the service's log, by the runner (the UI shows
  the whole traceback): the server does not log its own copy of it.

Either addition is skipped if this Dagster version does not have what it hooks into.
"""

import json
import os
import sys


def _write(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _hook_reload(request_file):
    from dagster._grpc.__generated__ import dagster_api_pb2
    from dagster._grpc.server import DagsterApiServer

    def ReloadCode(self, request, context):
        _write(request_file, "reload\n")
        return dagster_api_pb2.ReloadCodeReply()

    DagsterApiServer.ReloadCode = ReloadCode


def _hook_entry_point(entry_point):
    from dagster._cli import api

    command = json.loads(entry_point)
    api.get_python_environment_entry_point = lambda _executable: command


def _hook_autodiscovery(report_file):
    from dagster import JobDefinition, ScheduleDefinition, SensorDefinition
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )
    from dagster._core.workspace import autodiscovery

    found = autodiscovery.loadable_targets_from_loaded_module
    whole = tuple(
        cls
        for cls in (autodiscovery.Definitions, autodiscovery.RepositoryDefinition)
        if isinstance(cls, type)
    )
    kinds = (
        ("job", (JobDefinition, UnresolvedAssetJobDefinition)),
        ("schedule", (ScheduleDefinition,)),
        ("sensor", (SensorDefinition,)),
    )

    def loadable_targets_from_loaded_module(module):
        targets = found(module)
        picked = {id(t.target_definition) for t in targets}
        dropped = []
        if not any(isinstance(t.target_definition, whole) for t in targets) and not any(
            type(t.target_definition).__name__ == "LazyDefinitions" for t in targets
        ):
            for kind, classes in kinds:
                for name, value in sorted(vars(module).items()):
                    if isinstance(value, classes) and id(value) not in picked:
                        dropped.append({"kind": kind, "name": name})
        _write(report_file, json.dumps({"ignored": dropped}))
        return targets

    autodiscovery.loadable_targets_from_loaded_module = loadable_targets_from_loaded_module


def _hook_outputs(folder):
    from dagster import DagsterInstance

    DagsterInstance.storage_directory = lambda self: folder


def _hook_missing(advice):
    """Say first what to do when the file imports a package its environment lacks."""
    from dagster._core import code_pointer
    from dagster._core.errors import DagsterImportError
    from dagster._core.workspace import autodiscovery

    load = code_pointer.load_python_file

    def load_python_file(python_file, working_directory, *args, **kwargs):
        try:
            return load(python_file, working_directory, *args, **kwargs)
        except DagsterImportError as exc:
            cause = exc.__cause__
            said = None
            if isinstance(cause, ModuleNotFoundError):
                said = advice(cause.name, os.path.dirname(os.path.abspath(python_file)))
            if said is None:
                raise
            raise DagsterImportError(f"{said}\n\n{exc}") from cause

    code_pointer.load_python_file = autodiscovery.load_python_file = load_python_file


#: What Dagster's code server logs, with the traceback, when the file fails to load.
LOAD_ERROR = "Error while importing code"


def _quiet_load_error():
    import logging

    class NotTheLoadError(logging.Filter):
        def filter(self, record):
            return record.msg != LOAD_ERROR

    logging.getLogger("dagster.code_server").addFilter(NotTheLoadError())


def _hook_provenance(tags):
    """Tag each run this process executes, as it starts: Dagster's run worker
    (``dagster api execute_run``, ``resume_run``) and a code server's run process both
    execute a run through ``core_execute_run``."""
    from dagster._cli import api
    from dagster._grpc import impl

    tags = json.loads(tags)
    execute = impl.core_execute_run

    def core_execute_run(recon_job, dagster_run, instance, *args, **kwargs):
        instance.add_run_tags(dagster_run.run_id, tags)
        yield from execute(recon_job, dagster_run, instance, *args, **kwargs)

    impl.core_execute_run = api.core_execute_run = core_execute_run


def _for_runs():
    """What the server's runs need too (kept in the environment: their processes read it)."""
    for variable, hook in (
        ("RUNNER_OUTPUTS", _hook_outputs),
        ("RUNNER_PROVENANCE", _hook_provenance),
    ):
        value = os.environ.get(variable)
        if value:
            try:
                hook(value)
            except Exception as exc:  # another Dagster version: runs go without it
                print(f"runner: {variable} not available: {exc!r}", file=sys.stderr)


def _own(name):
    """A module of this file's folder (still ``sys.path[0]``; a run's processes lack it), not
    left in ``sys.modules``: the file may import a helper of the same name from its own."""
    import importlib

    module = importlib.import_module(name)
    del sys.modules[name]
    return module


def main():
    named = os.environ.pop("RUNNER_PROCESS_TITLE", "")
    if named:
        _own("title").set_title(named)
    missing = _own("missing")
    sys.path[0] = os.getcwd()  # as ``python -m`` has it, not this file's folder
    if sys.argv[1:2] == ["--dagster"]:  # a run in a container: ``dagster ARGS`` (run.py)
        from dagster._cli import main as dagster_main

        sys.argv = ["dagster", *sys.argv[2:]]
        sys.exit(dagster_main())
    for variable, hook in (
        ("RUNNER_RELOAD_REQUEST", _hook_reload),
        ("RUNNER_LOAD_REPORT", _hook_autodiscovery),
        ("RUNNER_RUN_ENTRY_POINT", _hook_entry_point),
    ):
        path = os.environ.pop(variable, None)  # not for the user's code, nor its runs
        if path:
            try:
                hook(path)
            except Exception as exc:  # another Dagster version: serve without it
                print(f"runner: {variable} not available: {exc!r}", file=sys.stderr)
    try:
        _hook_missing(missing.advice)
    except Exception as exc:  # another Dagster version: its own text only
        print(f"runner: missing-package advice not available: {exc!r}", file=sys.stderr)
    from dagster._cli import main as dagster_main

    _quiet_load_error()
    sys.argv = ["dagster", "api", "grpc", *sys.argv[1:]]
    sys.exit(dagster_main())


if __name__ == "__main__":
    _for_runs()
    main()
elif __name__ == "__mp_main__":  # a run's process (multiprocessing's spawn)
    _for_runs()
