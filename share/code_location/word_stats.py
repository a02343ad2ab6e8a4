# /// script
# requires-python = ">=3.11"
# dependencies = ["dagster", "humanize>=4"]
# ///
"""An asset that needs a package the runner itself does not have, and a sensor."""

import dagster as dg
import humanize


@dg.asset
def big_number() -> int:
    return 123_456_789


@dg.asset
def big_number_in_words(context: dg.AssetExecutionContext, big_number: int) -> str:
    words = humanize.intword(big_number)
    context.log.info(f"{big_number} is {words}")
    return words


stats_job = dg.define_asset_job("stats_job", selection=[big_number, big_number_in_words])


@dg.sensor(job=stats_job, minimum_interval_seconds=3600)
def hourly_check(context: dg.SensorEvaluationContext):
    # Asks for one run per hour; a real sensor would look at the outside world.
    return dg.RunRequest(run_key=context.cursor or None)


defs = dg.Definitions(
    assets=[big_number, big_number_in_words], jobs=[stats_job], sensors=[hourly_check]
)
