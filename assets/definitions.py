"""The Dagster code location: every asset, resource, job, schedule, sensor and check of mmoe-mel."""

import dagster as dg

from assets import descriptions, features, index, ingest, training, wikidata
from assets.resources import DatasetResource, LakeResource

defs = dg.Definitions(
    assets=[
        ingest.mimic_dataset,
        wikidata.wikidata_candidates,
        descriptions.mention_descriptions,
        features.entity_features,
        features.mention_features,
        index.entity_index,
        index.mention_candidates,
        training.mmoe_model,
        training.evaluation,
    ],
    asset_checks=[
        ingest.quarantine_rate,
        wikidata.wikidata_lookup_failures,
        features.entity_features_cover_entities,
        features.mention_features_cover_mentions,
        training.mmoe_beats_zero_shot,
    ],
    jobs=[ingest.refresh_job, features.kb_features_job],
    schedules=[features.weekly_kb_features],
    sensors=[ingest.dataset_change_sensor],
    resources={
        "lake": LakeResource(),
        "dataset": DatasetResource(),
        "wikidata": wikidata.WikidataResource(),
        "llm": descriptions.LLMResource(),
        "clip": features.ClipResource(),
        "index": index.IndexResource(),
        "training": training.TrainingResource(),
    },
)
