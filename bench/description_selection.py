"""Description selection on the demo dataset: accuracy against baselines, and throughput.

    python bench/description_selection.py [--lake DIR] [--limit N] [--threads N] [--speeds]
           [--backend transformers|vllm] [--model-path PATH] [--vllm-python PY] [--enforce-eager]
           [--dtype D] [--batch-size N]

Runs the real stages into a bench lake (default /tmp/mel-bench-describe): the demo
dataset, `mentions`, `wikidata_candidates` from the demo's WikiData dump, then
`mention_descriptions` with the chosen backend. Prints, as markdown:

* selection accuracy per split of the LLM choice, first search hit, random
  (expected and one seeded draw), and the share of mentions whose gold description is
  offered;
* LLM accuracy under each scoring rule ("pmi" in use; plain "mean" and "sum"),
  recomputed from the raw option log-likelihoods kept in the choice cache;
* throughput of the scoring (distinct prompts per second, model load apart);
* (transformers) speed of the three scorers on the same prompts: KV-cache reuse (in
  use), prompt+option packed in one padded batch, and one sequence at a time.

`--limit N` keeps the first N mentions of each split (a quick run). The choice cache
lives in the bench lake: delete it (or pass a fresh --lake) to time scoring again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from pipeline.demo import ensure_demo_dataset  # noqa: E402
from pipeline.describe.backends import LLMConfig, make_backend  # noqa: E402
from pipeline.describe.cache import ChoiceCache  # noqa: E402
from pipeline.describe.measure import accuracy_rows, selection_accuracy  # noqa: E402
from pipeline.describe.scoring import RULES, SCORING_RULE, OptionLikelihoods, OptionScores, choose  # noqa: E402
from pipeline.describe.select import TABLE, gather_options, read_candidates, select_descriptions  # noqa: E402
from pipeline.lake import Lake  # noqa: E402
from pipeline.mimic import ingest_dataset  # noqa: E402
from pipeline.wikidata.stage import WikidataSettings, build_wikidata_candidates  # noqa: E402


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row[c] is None else str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def prepare_lake(lake: Lake, limit: int | None) -> None:
    dataset = ensure_demo_dataset(lake.demo_dataset_dir)
    ingest_dataset(dataset, lake)
    if limit:
        mentions = lake.read_table("mentions")
        keep = pa.concat_tables([mentions.filter(pc.equal(mentions["split"], split)).slice(0, limit)
                                 for split in ("train", "dev", "test")])
        lake.write_table("mentions", keep, f"{lake.table_fingerprint('mentions')}-first-{limit}")
    dump = next((dataset / "wikidata").glob("*.json*"))
    build_wikidata_candidates(lake, WikidataSettings(source="dump", dump_path=str(dump)))


def rule_comparison(lake: Lake) -> list[dict]:
    """LLM accuracy under each scoring rule, recomputed from the raw scores in the choice cache."""
    options, _ = gather_options(lake.read_table("mentions"), read_candidates(lake))
    with ChoiceCache(lake.duckdb_path("llm_choices")) as cache:
        with cache.connect() as con:
            rows = con.execute("SELECT prompt, logprob_sums, baseline_sums, token_counts FROM choices").fetchall()
    by_prompt = {prompt: OptionScores(list(s), list(b), list(n)) for prompt, s, b, n in rows}
    results = []
    for rule in RULES:
        choices = {}
        for item in options:
            if item.prompt is not None:
                item.key = item.prompt.key_text()
                choices[item.key] = SimpleNamespace(chosen_index=choose(by_prompt[item.key], rule).index)
        accuracy = selection_accuracy(options, choices)
        results.append({"rule": rule + (" (in use)" if rule == SCORING_RULE else ""),
                        **{split: accuracy[split]["llm"] for split in accuracy}})
    return results


def scorer_speeds(config: LLMConfig, lake: Lake, prompts_to_time: int = 16) -> list[dict]:
    """Seconds for the same prompts with KV reuse (in use), packed sequences, and one by one."""
    from pipeline.describe.prompts import encode_prompt
    from pipeline.describe.transformers_backend import score_batch, score_one_by_one

    backend = make_backend(config)
    backend.ensure_loaded()
    options, _ = gather_options(lake.read_table("mentions"), read_candidates(lake))
    prompts = [item.prompt for item in options if item.prompt is not None][:prompts_to_time]
    encoded = [encode_prompt(backend.tokenizer, p)[0] for p in prompts]  # the questions (baselines alike)
    timings = []
    for name, run in (
        ("KV-cache reuse, 8 prompts per batch (in use)",
         lambda: [s for i in range(0, len(encoded), 8) for s in score_batch(backend.model, encoded[i:i + 8], backend.pad_id)]),
        ("prompt+option packed, 8 prompts per batch", lambda: score_packed(backend.model, encoded, backend.pad_id)),
        ("one sequence at a time (reference)", lambda: [score_one_by_one(backend.model, e) for e in encoded]),
    ):
        started = time.perf_counter()
        scores = run()
        seconds = time.perf_counter() - started
        timings.append({"scorer": name, "prompts": len(encoded), "seconds": round(seconds, 2),
                        "prompts/s": round(len(encoded) / seconds, 3),
                        "tokens through the model": tokens_through(name, encoded)})
        if name.startswith("KV"):
            reference = scores
        else:
            drift = max(abs(a - b) for s, r in zip(scores, reference) for a, b in zip(s.sums, r.sums))
            timings[-1]["max |Δ log-lik| vs in use"] = f"{drift:.1e}"
    timings[0]["max |Δ log-lik| vs in use"] = "0"
    return timings


def tokens_through(name: str, encoded) -> int:
    if name.startswith("KV"):
        return sum(len(e.prefix_ids) + sum(len(o) for o in e.option_ids) for e in encoded)
    return sum(len(e.prefix_ids) * len(e.option_ids) + sum(len(o) for o in e.option_ids) for e in encoded)


def score_packed(model, encoded, pad_id, prompts_per_batch: int = 8) -> list[OptionLikelihoods]:
    """The alternative to KV reuse: every prompt+option as its own right-padded row."""
    import torch

    results = []
    with torch.inference_mode():
        for start in range(0, len(encoded), prompts_per_batch):
            batch = encoded[start:start + prompts_per_batch]
            rows = [(e.prefix_ids + ids, len(ids)) for e in batch for ids in e.option_ids]
            width = max(len(r) for r, _ in rows)
            tokens = torch.full((len(rows), width), pad_id)
            mask = torch.zeros_like(tokens)
            for i, (ids, _) in enumerate(rows):
                tokens[i, :len(ids)] = torch.tensor(ids)
                mask[i, :len(ids)] = 1
            logprobs = model(input_ids=tokens, attention_mask=mask).logits.float().log_softmax(-1)
            sums = []
            for i, (ids, n) in enumerate(rows):
                positions = torch.arange(len(ids) - n, len(ids))
                sums.append(logprobs[i, positions - 1].gather(-1, tokens[i, positions, None]).sum().item())
            at = 0
            for e in batch:
                k = len(e.option_ids)
                results.append(OptionLikelihoods(sums[at:at + k], [len(o) for o in e.option_ids]))
                at += k
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lake", default="/tmp/mel-bench-describe")
    parser.add_argument("--limit", type=int, help="first N mentions of each split")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--backend", default="transformers")
    parser.add_argument("--model-path", default="")
    parser.add_argument("--vllm-python", default="")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM: no torch.compile / CUDA graphs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--speeds", action="store_true", help="also time the three transformers scorers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lake = Lake(args.lake)
    started = time.perf_counter()
    prepare_lake(lake, args.limit)
    print(f"prepared the demo lake in {time.perf_counter() - started:.1f} s", flush=True)
    config = LLMConfig(backend=args.backend, model_path=args.model_path, vllm_python=args.vllm_python,
                       dtype=args.dtype, batch_size=args.batch_size, max_model_len=1024,
                       vllm_enforce_eager=args.enforce_eager)
    started = time.perf_counter()
    report = select_descriptions(lake, config, force=True)
    wall = time.perf_counter() - started
    stats = report.stats
    table = lake.read_table(TABLE)
    print(f"\n## {platform.node()} ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}), "
          f"backend {stats['backend']}, model {stats['model']}\n")
    print(markdown(accuracy_rows(stats["accuracy"])))
    print("\nscoring rule (LLM accuracy):\n")
    print(markdown(rule_comparison(lake)))
    counts = {k: stats.get(k) for k in ("chosen", "none_of_these", "no_candidates", "prompts", "cache_hits",
                                         "prompts_scored", "llm_calls", "model_load_seconds", "scoring_seconds",
                                         "prompts_per_second", "candidates_without_description",
                                         "duplicate_descriptions_merged")}
    print("\n" + json.dumps({**counts, "mentions": table.num_rows, "wall_seconds": round(wall, 1)}, indent=1))
    if args.speeds and args.backend == "transformers":
        print("\nscorers on the same prompts:\n")
        print(markdown(scorer_speeds(config, lake)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
