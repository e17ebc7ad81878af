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

from bench.report import markdown_table, write_json  # noqa: E402
from pipeline import catalog  # noqa: E402
from pipeline.describe.backends import LLMSettings, make_backend  # noqa: E402
from pipeline.describe.cache import ChoiceCache  # noqa: E402
from pipeline.describe.measure import accuracy_rows, selection_accuracy  # noqa: E402
from pipeline.describe.scoring import (  # noqa: E402
    RULES,
    SCORING_RULE,
    OptionLikelihoods,
    OptionScores,
    choose,
)
from pipeline.describe.select import (  # noqa: E402
    gather_options,
    read_candidates,
    select_descriptions,
)
from pipeline.ingest import IngestSettings, ingest_dataset  # noqa: E402
from pipeline.lake import Lake  # noqa: E402
from pipeline.wikidata import WikidataSettings, build_wikidata_candidates  # noqa: E402
from synthetic.demo import ensure_demo_dataset  # noqa: E402


def markdown(rows: list[dict]) -> str:
    return markdown_table(list(rows[0]), [list(row.values()) for row in rows])


def prepare_lake(lake: Lake, limit: int | None) -> None:
    dataset = ensure_demo_dataset(lake.demo_dataset_dir)
    ingest_dataset(lake, IngestSettings(dataset))
    if limit:
        mentions = lake.read_table(catalog.MENTIONS)
        keep = pa.concat_tables([mentions.filter(pc.equal(mentions["split"], split)).slice(0, limit)
                                 for split in ("train", "dev", "test")])
        lake.write_table(catalog.MENTIONS, keep, f"{lake.table_fingerprint(catalog.MENTIONS)}-first-{limit}")
    dump = next((dataset / "wikidata").glob("*.json*"))
    build_wikidata_candidates(lake, WikidataSettings(source="dump", dump_path=str(dump)))


def rule_comparison(lake: Lake) -> list[dict]:
    """LLM accuracy under each scoring rule, recomputed from the raw scores in the choice cache."""
    options, _ = gather_options(lake.read_table(catalog.MENTIONS), read_candidates(lake))
    with ChoiceCache(lake.duckdb_path(catalog.LLM_CHOICES_CACHE)) as cache:
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


def lake_prompts(lake: Lake) -> list:
    options, _ = gather_options(lake.read_table(catalog.MENTIONS), read_candidates(lake))
    return [item.prompt for item in options if item.prompt is not None]


def question_encodings(backend, prompts: list) -> list:
    """The questions' token ids (the baselines are alike), as the scorers take them."""
    from pipeline.describe.prompts import encode_prompt

    return [encode_prompt(backend.tokenizer, p)[0] for p in prompts]


def scorer_speeds(backend, encoded: list) -> list[dict]:
    """Seconds for the same prompts with each scorer: the trie (in use), the previous one, packed, one by one."""
    from pipeline.describe.transformers_backend import score_grouped, score_one_by_one

    model, pad = backend.model, backend.pad_id
    timings = []
    for name, run in (
        ("token trie, shared prefix once, grouped by length (in use)", lambda: score_grouped(model, encoded, pad)),
        ("KV-cache reuse per prompt, 8 per batch (previous)",
         lambda: [s for i in range(0, len(encoded), 8) for s in score_kv_reuse(model, encoded[i:i + 8], pad)]),
        ("prompt+option packed, 8 prompts per batch", lambda: score_packed(model, encoded, pad)),
        ("one sequence at a time (reference)", lambda: [score_one_by_one(model, e) for e in encoded]),
    ):
        started = time.perf_counter()
        scores = run()
        seconds = time.perf_counter() - started
        if name.endswith("(in use)"):
            reference, in_use_seconds = scores, seconds
        drift = max(abs(a - b) for s, r in zip(scores, reference) for a, b in zip(s.sums, r.sums))
        timings.append({"scorer": name, "prompts": len(encoded), "seconds": round(seconds, 2),
                        "prompts/s": round(len(encoded) / seconds, 3), "time / in use": f"{seconds / in_use_seconds:.2f}x",
                        "tokens through the model": tokens_through(name, encoded),
                        "max abs Δ log-lik vs in use": f"{drift:.1e}"})
    return timings


def time_shares(backend, encoded: list) -> list[dict]:
    """Where the scorer in use spends its CPU time on those prompts (torch.profiler, self time per operator kind):
    the ceiling on what removing everything but the model's matrix products could still gain."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pipeline.describe.transformers_backend import score_grouped

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as profiler:
        score_grouped(backend.model, encoded, backend.pad_id)
    kinds = {"matrix products (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
             "attention (sdpa kernels)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                                          "aten::_scaled_dot_product_attention_math"),
             "log-sum-exp over the vocabulary": ("aten::logsumexp", "aten::amax", "aten::exp", "aten::exp_",
                                                 "aten::sub", "aten::log")}
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares = {kind: sum(e.self_cpu_time_total for e in events if e.key in names) / total for kind, names in kinds.items()}
    rows = [{"operators": kind, "share of CPU time": f"{share:.1%}"} for kind, share in shares.items()]
    rows.append({"operators": "everything else (norms, activations, copies, indexing)",
                 "share of CPU time": f"{1 - sum(shares.values()):.1%}"})
    ceiling = 1 / shares["matrix products (mm, addmm, bmm)"]
    rows.append({"operators": "ceiling if all but the matrix products cost nothing", "share of CPU time": f"{ceiling:.2f}x"})
    return rows


def previous_scorer_agreement(backend, prompts: list, lake: Lake) -> dict:
    """Every prompt scored again with the previous scorer (and its baselines): the stage's choices?"""
    from pipeline.describe.scoring import score_prompts

    with ChoiceCache(lake.duckdb_path(catalog.LLM_CHOICES_CACHE)) as cache, cache.connect() as con:
        in_use = {prompt: (index, list(sums)) for prompt, index, sums in
                  con.execute("SELECT prompt, chosen_index, logprob_sums FROM choices").fetchall()}
    memo, same, drift = {}, 0, 0.0
    started = time.perf_counter()
    for start in range(0, len(prompts), 8):
        batch = prompts[start:start + 8]
        scores = score_prompts(batch, backend.tokenizer,
                               lambda encoded: score_kv_reuse(backend.model, encoded, backend.pad_id), memo)
        for prompt, score in zip(batch, scores):
            index, sums = in_use[prompt.key_text()]
            same += choose(score).index == index
            drift = max(drift, *(abs(a - b) for a, b in zip(score.logprob_sums, sums)))
    return {"prompts": len(prompts), "same choice": same, "max abs Δ log-lik": f"{drift:.1e}",
            "previous scorer s": round(time.perf_counter() - started, 1)}


def score_kv_reuse(model, prompts, pad_id) -> list[OptionLikelihoods]:
    """The previous scorer: each prompt's KV cache computed once and copied for each of its options."""
    import torch

    from pipeline.describe.transformers_backend import cache_argument

    with torch.inference_mode():
        width = max(len(p.prefix_ids) for p in prompts)
        prefix = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        prefix_mask = torch.zeros_like(prefix)
        for row, p in enumerate(prompts):
            prefix[row, width - len(p.prefix_ids):] = torch.tensor(p.prefix_ids)
            prefix_mask[row, width - len(p.prefix_ids):] = 1
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        first = model(input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True,
                      logits_to_keep=1)
        owner = torch.tensor([row for row, p in enumerate(prompts) for _ in p.option_ids])
        options = [ids for p in prompts for ids in p.option_ids]
        cache = first.cache if hasattr(first, "cache") else first.past_key_values
        cache.batch_select_indices(owner)
        longest = max(len(ids) for ids in options)
        tokens = torch.full((len(options), longest), pad_id, dtype=torch.long)
        token_mask = torch.zeros_like(tokens)
        for row, ids in enumerate(options):
            tokens[row, : len(ids)] = torch.tensor(ids)
            token_mask[row, : len(ids)] = 1
        start = prefix_mask.sum(-1)[owner]
        second = model(input_ids=tokens, attention_mask=torch.cat([prefix_mask[owner], token_mask], dim=1),
                       position_ids=start[:, None] + torch.arange(longest), use_cache=True,
                       **{cache_argument(model): cache})
        logits = torch.cat([first.logits[owner, -1:], second.logits[:, :-1]], dim=1).float()
        token_logprobs = logits.log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1) * token_mask
        sums, counts = token_logprobs.sum(-1).tolist(), token_mask.sum(-1).tolist()
    results, at = [], 0
    for p in prompts:
        n = len(p.option_ids)
        results.append(OptionLikelihoods(sums[at : at + n], counts[at : at + n]))
        at += n
    return results


def tokens_through(name: str, encoded) -> int:
    if name.startswith("token trie"):
        from pipeline.describe.transformers_backend import (
            PromptTree,
            shared_prefix_length,
        )

        shared = shared_prefix_length(encoded)
        return shared + sum(len(PromptTree.of(e, shared).tokens) for e in encoded)
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
    parser.add_argument("--speeds", action="store_true", help="also time the transformers scorers side by side")
    parser.add_argument("--speed-prompts", type=int, default=48, help="prompts the scorers are timed on")
    parser.add_argument("--compare-previous", action="store_true",
                        help="score every prompt again with the previous scorer and count identical choices")
    parser.add_argument("--json", help="also write the results here (bench/report.py's format)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    lake = Lake(args.lake)
    started = time.perf_counter()
    prepare_lake(lake, args.limit)
    print(f"prepared the demo lake in {time.perf_counter() - started:.1f} s", flush=True)
    settings = LLMSettings(backend=args.backend, model_path=args.model_path, vllm_python=args.vllm_python,
                           dtype=args.dtype, batch_size=args.batch_size, max_model_len=1024,
                           vllm_enforce_eager=args.enforce_eager)
    started = time.perf_counter()
    report = select_descriptions(lake, settings, force=True)
    wall = time.perf_counter() - started
    stats = report.stats
    table = report.tables[catalog.MENTION_DESCRIPTIONS]
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
    tables = [{"title": "Selection accuracy per split", "rows": accuracy_rows(stats["accuracy"])},
              {"title": f"The stage, cold choice cache ({stats['backend']}, {stats['model']})",
               "rows": [{"mentions": table.num_rows, **{k: counts[k] for k in (
                   "prompts_scored", "model_load_seconds", "scoring_seconds", "prompts_per_second")},
                   "wall s": round(wall, 1)}]}]
    if (args.speeds or args.compare_previous) and args.backend == "transformers":
        backend = make_backend(settings)  # one model for the measurements side by side
        backend.ensure_loaded()
        prompts = lake_prompts(lake)
        if args.speeds:
            encoded = question_encodings(backend, prompts[:args.speed_prompts])
            speeds = scorer_speeds(backend, encoded)
            print("\nscorers on the same prompts:\n")
            print(markdown(speeds))
            tables.append({"title": "Scorers on the same prompts (questions), side by side in this run",
                           "rows": speeds})
            tables.append({"title": "Where the scorer in use spends its time on those prompts (torch.profiler)",
                           "rows": time_shares(backend, encoded)})
        if args.compare_previous:
            agreement = previous_scorer_agreement(backend, prompts, lake)
            print("\n" + json.dumps(agreement))
            tables.append({"title": "Every prompt rescored with the previous scorer", "rows": [agreement]})
        backend.close()
    if args.json:
        write_json(args.json, "Description choice", f"{table.num_rows} demo mentions, {os.cpu_count()} CPUs, "
                   f"load average {os.getloadavg()[0]:.1f}, torch threads {args.threads or 'default'}",
                   [{"title": t["title"], "columns": list(t["rows"][0]), "rows": [list(r.values()) for r in t["rows"]]}
                    for t in tables])
    return 0


if __name__ == "__main__":
    sys.exit(main())
