"""Evaluation cost: reranking the FAISS top-100 (of the zero-shot or of the trained index) vs scoring the full
KB, with the same trained matcher, on a synthetic 100k-entity feature store.

    python bench/mmoe_eval.py                                   # 100k entities, small widths, CPU
    python bench/mmoe_eval.py --entities 20000                  # a quicker look
    python bench/mmoe_eval.py --dims vit-b-32 --device cuda     # ViT-B-32 widths on a GPU (~24 GB of store)
    python bench/mmoe_eval.py --threads 1 --test-mentions 40    # what bench/mmoe.md reports (shared 2-core box)
    python bench/mmoe_eval.py --dims demo --modes rerank        # peak RSS of reranking against a 10 GB store

What runs: `pipeline.training.synthetic` writes the stores with the pipeline's StoreWriter, builds the entity
index and `mention_candidates` (top-100) with the pipeline's FAISS stage, and `train_mmoe` trains a matcher for
one epoch (the cost does not depend on its quality). Then each evaluation mode runs in its own child process,
so that its peak RSS (VmHWM) is its own, through the pipeline's `EncodedEntities` and `rank_mentions`:

  rerank    encode the union of the test mentions' top-100 candidates once, then rank each mention's top-100
  trained   build the trained retrieval index (the matcher's vectors of every entity, once per model), then per
            mention: its query vector, one FAISS search for the top-100, and the rerank of those
  full      encode every KB entity once, then rank all of them for each mention (the public code's protocol)

Figures: `encode s` (one-off, per matcher: the entity encodings), `rank ms/mention` (per query, encodings
ready; the fastest of `--repeat` passes over the test mentions), `total ms/mention` (encode + rank, spread
over the test mentions of the run), Hits@1 of each, and on the mentions whose gold is in the top-100 how
many disagree on Hits@1. Peak RSS is VmHWM, which counts the
memory-mapped store pages the process touched as well as its own memory; `anon MB` is the peak of private
memory alone (RssAnon, sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIMS = {  # store widths, matcher hidden width
    "small": ({"D": 64, "L": 16, "Wt": 64, "P1": 17, "Wv": 64}, 32),
    "demo": ({"D": 256, "L": 50, "Wt": 256, "P1": 50, "Wv": 256}, 96),  # the demo's mel-tiny-clip encoder
    "vit-b-32": ({"D": 512, "L": 50, "Wt": 512, "P1": 50, "Wv": 768}, 96),
}


MODES = ("rerank", "trained", "full")


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """Samples RssAnon (private memory, page cache excluded) in a background thread."""

    def __init__(self, every: float = 0.05):
        self.peak, self.every, self._stop = 0.0, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, status_mb("RssAnon"))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_mb("RssAnon"))


def prepare(args) -> dict:
    """Build the synthetic lake and train a matcher on it, unless a previous run left them."""
    from pipeline.lake import Lake
    from pipeline.training.settings import TrainingSettings
    from pipeline.training.synthetic import SyntheticWorld, build_synthetic_lake
    from pipeline.training.train import train_mmoe

    dims, hidden = DIMS[args.dims]
    lake = Lake(args.lake)
    marker = lake.root / "bench-params.json"
    params = {"entities": args.entities, "test": args.test_mentions, "dims": args.dims}
    built_seconds = None
    if not marker.is_file() or json.loads(marker.read_text()) != params:
        started = time.perf_counter()
        world = SyntheticWorld(entities=args.entities, dims=dims, top_k=100, noise=2.0,
                               mentions={"train": 512, "dev": 64, "test": args.test_mentions})
        build_synthetic_lake(lake, world)
        built_seconds = time.perf_counter() - started
        marker.write_text(json.dumps(params))
    settings = TrainingSettings(hidden_dim=hidden, epochs=1, rerank_k=100, progress=False, device=args.device,
                                retrieval_rounds=1)
    report = train_mmoe(lake, settings)
    return {"built_seconds": built_seconds, "checkpoint": report.checkpoint, "hidden": hidden}


def run_mode(args) -> dict:
    """One evaluation mode in this (child) process."""
    import torch

    from model import load_checkpoint
    from pipeline.lake import Lake
    from pipeline.training.data import Inputs
    from pipeline.training.scoring import EncodedEntities, candidate_union, rank_mentions

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with AnonPeak() as anon:
        inputs = Inputs.open(Lake(args.lake))
        matcher = load_checkpoint(args.checkpoint, device=device).model.eval()
        mentions = inputs.mentions
        test = mentions.select("test")
        full = args.mode == "full"
        started = time.perf_counter()
        search = trained_search(args, matcher, inputs, device) if args.mode == "trained" else None
        index_seconds = time.perf_counter() - started
        if search is not None:
            mentions = search()  # the candidates the timed passes find again
        rows = np.arange(len(inputs.entities)) if full else candidate_union(mentions, test, 100)
        started = time.perf_counter()
        encoded = EncodedEntities.build(matcher, inputs.entities, rows, device)
        _sync(device)
        encode_seconds = time.perf_counter() - started + index_seconds
        rank_seconds = search_seconds = float("inf")
        for _ in range(args.repeat):  # best of N: the box is shared, the slowest runs measure the neighbours
            started = time.perf_counter()
            if search is not None:
                mentions = search()
                search_seconds = min(search_seconds, time.perf_counter() - started)
            ranking = rank_mentions(matcher, mentions, inputs.mentions_store, inputs.entities, test, device, 100,
                                    full_kb=full, batch_size=args.batch, entities=encoded)
            _sync(device)
            rank_seconds = min(rank_seconds, time.perf_counter() - started)
    in_top_k = np.array([mentions.gold_row[p] in mentions.candidates[p][:100] for p in test])
    return {
        "mode": args.mode, "mentions": len(test), "entities_encoded": len(encoded), "encode_seconds": encode_seconds,
        "rank_seconds": rank_seconds, "ranks": ranking.gold_rank.tolist(), "gold_in_top_k": in_top_k.tolist(),
        "peak_rss_mb": status_mb("VmHWM"), "anon_peak_mb": anon.peak, "index_seconds": index_seconds,
        "search_seconds": search_seconds if search is not None else 0.0,
        "store_mb": inputs.entities.disk_bytes()["total"] / 2**20,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def trained_search(args, matcher, inputs, device):
    """Build the trained index of the matcher (every entity's vector, once), and return a function that searches
    the test mentions' top-100 in it: their query vectors and one FAISS search each, as linking does."""
    from dataclasses import replace

    from pipeline.index import EntityIndex, IndexSettings, search_mentions, update_entity_index
    from pipeline.training.data import kb_rows
    from pipeline.training.retrieval import TrainedEntityVectors, TrainedMentionQueries

    directory = Path(args.lake) / "bench-trained-index"
    identity = f"bench:{args.checkpoint}"
    update_entity_index(TrainedEntityVectors(matcher, identity, inputs.entities, device), directory, IndexSettings())
    index = EntityIndex.load(directory)
    queries = TrainedMentionQueries(matcher, identity, inputs.mentions_store, device)
    mentions, test = inputs.mentions, inputs.mentions.select("test")
    ids = [str(mentions.ids[p]) for p in test.tolist()]
    lookup = kb_rows(inputs.entities).lookup

    def search():
        found, _, _, _ = search_mentions(index, queries, ids, 100, IndexSettings(), use_gpu=False)
        candidates = list(mentions.candidates)
        for position, kb_indices in zip(test.tolist(), found):
            candidates[position] = lookup(np.asarray(kb_indices, dtype=np.int64))
        return replace(mentions, candidates=candidates)

    return search


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--test-mentions", type=int, default=200)  # full-KB scoring costs seconds per mention on a CPU
    parser.add_argument("--dims", choices=sorted(DIMS), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64, help="mentions per scoring call")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="rank each mode this many times, keep the fastest")
    parser.add_argument("--lake", default="/tmp/mmoe-eval-bench")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # child process
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    prepared = prepare(args)
    results = {}
    for mode in args.modes:
        command = [sys.executable, __file__, "--mode", mode, "--checkpoint", prepared["checkpoint"], "--lake",
                   args.lake, "--device", args.device, "--batch", str(args.batch), "--threads", str(args.threads),
                   "--repeat", str(args.repeat)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    report(args, prepared, results)


def report(args, prepared: dict, results: dict) -> None:
    from model import ranking_metrics

    first = next(iter(results.values()))
    m = first["mentions"]
    linkable = np.array(first["ranks"]) > 0
    inside = np.array(first["gold_in_top_k"]) & linkable
    rank_ms = {mode: 1000 * r["rank_seconds"] / m for mode, r in results.items()}
    total_ms = {mode: 1000 * (r["rank_seconds"] + r["encode_seconds"]) / m for mode, r in results.items()}
    print(f"# {args.entities} entities ({args.dims} widths, matcher hidden {prepared['hidden']}), {m} test mentions, "
          f"device {first['device']} ({first['threads']} threads), store {first['store_mb']:.0f} MB on disk, "
          f"load average {os.getloadavg()[0]:.1f}")
    if prepared["built_seconds"]:
        print(f"synthetic lake built in {prepared['built_seconds']:.0f} s")
    print("| mode | entities encoded | encode s (once per model) | search ms/mention | rank ms/mention (search "
          "included) | total ms/mention | recall@100 | Hits@1 | MRR | peak RSS MB | anon MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        metrics = ranking_metrics(np.array(r["ranks"])[linkable])
        recall = float(np.mean(np.array(r["gold_in_top_k"])[linkable])) if mode != "full" else 1.0
        print(f"| {mode} | {r['entities_encoded']} | {r['encode_seconds']:.1f} | "
              f"{1000 * r['search_seconds'] / m:.2f} | {rank_ms[mode]:.2f} | {total_ms[mode]:.1f} | {recall:.4f} | "
              f"{metrics['hits@1']:.4f} | {metrics['mrr']:.4f} | {r['peak_rss_mb']:.0f} | {r['anon_peak_mb']:.0f} |")
    if "full" not in results:
        return
    full_ranks = np.array(results["full"]["ranks"])
    for mode in [mode for mode in results if mode != "full"]:
        ranks = np.array(results[mode]["ranks"])
        disagree = int(((ranks[inside] == 1) != (full_ranks[inside] == 1)).sum())
        print(f"\n{mode}: rank time ratio full/{mode}: {rank_ms['full'] / rank_ms[mode]:.0f}x; total (with "
              f"encoding) ratio: {total_ms['full'] / total_ms[mode]:.1f}x; Hits@1 disagreements with full KB on the "
              f"{int(inside.sum())} of {int(linkable.sum())} mentions whose gold is in the zero-shot top-100: "
              f"{disagree}")


if __name__ == "__main__":
    main()
