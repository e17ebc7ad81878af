"""The Dagster code location: every asset, resource, job, sensor and check of mmoe-mel."""

import dagster as dg

from assets import ingest
from assets.resources import DatasetResource, LakeResource

defs = dg.Definitions(
    assets=[ingest.mimic_dataset],
    asset_checks=[ingest.quarantine_rate],
    jobs=[ingest.refresh_job],
    sensors=[ingest.dataset_change_sensor],
    resources={
        "lake": LakeResource(),
        "dataset": DatasetResource(),
    },
)
