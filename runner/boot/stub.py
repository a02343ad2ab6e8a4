"""A small file of definitions, loaded (never served) by a warm template so that what
loading definitions imports is imported once, before the template forks its servers."""

import dagster as dg


@dg.asset
def upstream() -> int:
    return 1


@dg.asset
def downstream(upstream: int) -> int:
    return upstream + 1


@dg.op
def noop() -> None:
    pass


@dg.job
def a_job() -> None:
    noop()


defs = dg.Definitions(
    assets=[upstream, downstream],
    jobs=[a_job, dg.define_asset_job("all_assets")],
    schedules=[dg.ScheduleDefinition(name="daily", job_name="all_assets", cron_schedule="@daily")],
    sensors=[dg.SensorDefinition(name="watch", evaluation_fn=lambda _: None, job=a_job)],
)
