"""The Dagster code location: every asset, resource, job, schedule, sensor and check of mmoe-mel."""

import dagster as dg

from assets import descriptions, features, index, ingest, linking, retrieval, training, wikidata
from assets.resources import DatasetResource, LakeResource

# One step at a time: the heavy steps (LLM, CLIP, training) each want the whole GPU or every CPU core,
# and the stages form a chain anyway. A run can raise it in its config
# (execution: config: multiprocess: max_concurrent: N).
ONE_STEP_AT_A_TIME = dg.multiprocess_executor.configured({"max_concurrent": 1})

defs = dg.Definitions(
    assets=[
        ingest.dataset_files,
        ingest.mimic_dataset,
        wikidata.wikidata_candidates,
        descriptions.mention_descriptions,
        features.entity_feature_shards,
        features.entity_features,
        features.mention_features,
        index.entity_index,
        index.mention_candidates,
        retrieval.retrieval_index,
        retrieval.retrieval_candidates,
        training.mmoe_model,
        training.evaluation,
        linking.links,
    ],
    asset_checks=[
        ingest.quarantine_rate,
        wikidata.wikidata_lookup_failures,
        features.entity_features_cover_entities,
        features.mention_features_cover_mentions,
        features.entity_features_finite_and_shaped,
        features.mention_features_finite_and_shaped,
        index.index_matches_features,
        index.candidate_recall_floor,
        retrieval.retrieval_index_matches_model,
        training.mmoe_beats_zero_shot,
        training.evaluation_covers_every_test_mention,
    ],
    jobs=[ingest.refresh_job, ingest.kb_refresh_job, features.embed_kb_shards_job, features.kb_features_job,
          linking.link_job],
    schedules=[features.weekly_kb_features],
    sensors=[ingest.dataset_change_sensor, features.kb_shards_sensor, linking.inbox_sensor, linking.relink_sensor],
    executor=ONE_STEP_AT_A_TIME,
    resources={
        "lake": LakeResource(),
        "dataset": DatasetResource(),
        "wikidata": wikidata.WikidataResource(),
        "llm": descriptions.LLMResource(),
        "clip": features.ClipResource(),
        "index": index.IndexResource(),
        "training": training.TrainingResource(),
        "inbox": linking.InboxResource(),
    },
)
