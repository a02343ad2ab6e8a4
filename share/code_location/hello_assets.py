# /// script
# requires-python = ">=3.11"
# dependencies = ["dagster"]
# ///
"""Two assets, a job that materializes them, and a daily schedule."""

import dagster as dg


@dg.asset
def greeting() -> str:
    return "hello"


@dg.asset
def shout(greeting: str) -> str:
    return greeting.upper() + "!"


hello_job = dg.define_asset_job("hello_job", selection=[greeting, shout])

defs = dg.Definitions(
    assets=[greeting, shout],
    jobs=[hello_job],
    schedules=[dg.ScheduleDefinition(job=hello_job, cron_schedule="0 6 * * *")],
)
