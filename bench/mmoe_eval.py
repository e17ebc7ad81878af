"""Evaluation cost: reranking the FAISS top-100 (of the zero-shot or of the trained index) vs scoring the full
KB, with the same trained matcher, on a synthetic 100k-entity feature store.

    python bench/mmoe_eval.py                                   # 100k entities, small widths, CPU
    python bench/mmoe_eval.py --entities 20000                  # a quicker look
    python bench/mmoe_eval.py --dims vit-b-32 --device cuda     # ViT-B-32 widths on a GPU (~24 GB of store)
    python bench/mmoe_eval.py --threads 1 --test-mentions 40    # what bench/mmoe.md reports (shared 2-core box)
    python bench/mmoe_eval.py --dims demo --modes rerank        # peak RSS of reranking against a 10 GB store
    python bench/mmoe_eval.py --top-k 10,50,100                 # rerank the first K of the top-100, each K

What runs: `synthetic.stores` writes the stores with the pipeline's StoreWriter, builds the entity
index and `mention_candidates` (top-100) with the pipeline's FAISS stage, and `train_mmoe` trains a matcher for
one epoch (the cost does not depend on its quality). Then each evaluation mode runs in its own child process,
so that its peak RSS (VmHWM) is its own, through the pipeline's `EncodedEntities` and `rank_mentions`:

  rerank    encode the union of the test mentions' first K candidates once, then rank each mention's first K
  trained   build the trained retrieval index (the matcher's vectors of every entity, once per model), then per
            mention: its query vector, one FAISS search for the top-100, and the rerank of the first K of those
  full      encode every KB entity once, then rank all of them for each mention (the public code's protocol)

K runs through `--top-k` (each at most 100, the candidates' depth) in the same child of rerank and trained;
full runs once.

Figures: `encode s` (one-off, per matcher: the entity encodings), `rank ms/mention` (per query, encodings
ready; the fastest of `--repeat` passes over the test mentions), `total ms/mention` (encode + rank, spread
over the test mentions of the run), recall@K (gold among the first K), Hits@1 and MRR of each (a gold past K
ranks K+1), and on the mentions whose gold is in the top-100 how many disagree with full-KB scoring on Hits@1.
Peak RSS is VmHWM of the mode's child (all its K), which counts the memory-mapped store pages the process
touched as well as its own memory; `anon MB` is the peak of private memory alone (RssAnon, sampled every 50 ms).
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

from bench.report import markdown_table, write_json  # noqa: E402

DIMS = {  # store widths, matcher hidden width
    "small": ({"D": 64, "L": 16, "Wt": 64, "P1": 17, "Wv": 64}, 32),
    "demo": ({"D": 256, "L": 50, "Wt": 256, "P1": 50, "Wv": 256}, 96),  # the demo's mel-tiny-clip encoder
    "vit-b-32": ({"D": 512, "L": 50, "Wt": 512, "P1": 50, "Wv": 768}, 96),
}


MODES = ("rerank", "trained", "full")
DEPTH = 100  # candidates per mention in the lake; --top-k reranks a prefix of them


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
    from pipeline.training.train import train_mmoe
    from synthetic.stores import SyntheticWorld, build_synthetic_lake

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
    return {"built_seconds": built_seconds, "checkpoint": report.checkpoint, "hidden": hidden,
            "training": f"training: {report.train_mentions} train mentions, {report.samples_per_second:.1f} "
                        f"samples/s on {report.device} (one epoch, hard negatives among the top-100)"}


def run_mode(args) -> dict:
    """One evaluation mode in this (child) process."""
    import torch

    from model import load_checkpoint
    from pipeline.lake import Lake
    from pipeline.training.data import Inputs

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    with AnonPeak() as anon:
        inputs = Inputs.open(Lake(args.lake))
        matcher = load_checkpoint(args.checkpoint, device=device).model.eval()
        test = inputs.mentions.select("test")
        started = time.perf_counter()
        search = trained_search(args, matcher, inputs, device) if args.mode == "trained" else None
        index_seconds = time.perf_counter() - started
        mentions = search() if search is not None else inputs.mentions  # the candidates the timed passes find again
        runs = [ranked_at(args, matcher, inputs, mentions, test, search, k, device)
                for k in ([None] if args.mode == "full" else args.top_k)]
    for run in runs:
        run["encode_seconds"] += index_seconds  # the trained index is part of what every K needs
    return {
        "mode": args.mode, "mentions": len(test), "runs": runs, "gold_in_top_100": in_first(mentions, test, DEPTH),
        "peak_rss_mb": status_mb("VmHWM"), "anon_peak_mb": anon.peak, "index_seconds": index_seconds,
        "store_mb": inputs.entities.disk_bytes()["total"] / 2**20,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }


def ranked_at(args, matcher, inputs, mentions, test, search, k, device) -> dict:
    """Encode what ranking the first ``k`` candidates needs (every entity when k is None: full KB), then rank the
    test mentions, the fastest of ``--repeat`` passes."""
    from pipeline.training.encodings import EncodedEntities
    from pipeline.training.scoring import candidate_union, rank_mentions

    full = k is None
    rows = np.arange(len(inputs.entities)) if full else candidate_union(mentions, test, k)
    started = time.perf_counter()
    encoded = EncodedEntities.build(matcher, inputs.entities, rows, device)
    _sync(device)
    encode_seconds = time.perf_counter() - started
    rank_seconds = search_seconds = float("inf")
    for _ in range(args.repeat):  # best of N: the box is shared, the slowest runs measure the neighbours
        started = time.perf_counter()
        if search is not None:
            mentions = search()
            search_seconds = min(search_seconds, time.perf_counter() - started)
        ranking = rank_mentions(matcher, mentions, inputs.mentions_store, inputs.entities, test, device, k or DEPTH,
                                full_kb=full, batch_size=args.batch, entities=encoded)
        _sync(device)
        rank_seconds = min(rank_seconds, time.perf_counter() - started)
    return {"k": k, "entities_encoded": len(encoded), "encode_seconds": encode_seconds, "rank_seconds": rank_seconds,
            "search_seconds": search_seconds if search is not None else 0.0, "ranks": ranking.gold_rank.tolist(),
            "gold_in_top_k": in_first(mentions, test, k or DEPTH)}


def in_first(mentions, test, k: int) -> list[bool]:
    return [bool(mentions.gold_row[p] in mentions.candidates[p][:k]) for p in test]


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


def top_k_list(text: str) -> list[int]:
    ks = sorted({int(k) for k in text.split(",")})
    if ks[0] < 1 or ks[-1] > DEPTH:
        raise argparse.ArgumentTypeError(f"each K must be 1 to {DEPTH} (the candidates' depth)")
    return ks


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
    parser.add_argument("--top-k", type=top_k_list, default=[DEPTH], help="comma list: rerank the first K candidates")
    parser.add_argument("--json", help="also write the results here (bench/report.py's format)")
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
                   "--repeat", str(args.repeat), "--top-k", ",".join(map(str, args.top_k))]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    report(args, prepared, results)


COLUMNS = ["mode", "K", "entities encoded", "encode s (once per model)", "search ms/mention",
           "rank ms/mention (search included)", "total ms/mention", "recall@K", "Hits@1", "MRR", "peak RSS MB",
           "anon MB"]


def report(args, prepared: dict, results: dict) -> None:
    first = next(iter(results.values()))
    setup = (f"{args.entities} entities ({args.dims} widths, matcher hidden {prepared['hidden']}), "
             f"{first['mentions']} test mentions, device {first['device']} ({first['threads']} threads), "
             f"store {first['store_mb']:.0f} MB on disk, load average {os.getloadavg()[0]:.1f}")
    notes = [f"synthetic lake built in {prepared['built_seconds']:.0f} s"] if prepared["built_seconds"] else []
    notes.append(prepared["training"])
    linkable = np.array(first["runs"][0]["ranks"]) > 0  # NIL mentions rank 0 in every mode
    tables = [{"title": "Time per mention and quality, per mode and K", "columns": COLUMNS,
               "rows": mode_rows(results, linkable)}]
    print(f"# {setup}")
    print(*notes, sep="\n")
    print(markdown_table(tables[0]["columns"], tables[0]["rows"]))
    if "full" in results:
        tables.append(against_full(results, linkable))
        for row in tables[1]["rows"]:
            print(f"\n{row[0]}@{row[1]}: rank time ratio full/{row[0]}@{row[1]}: {row[2]}; total (with encoding) "
                  f"ratio: {row[3]}; {tables[1]['columns'][4]}: {row[4]}")
    if args.json:
        write_json(args.json, "Evaluation: rerank@K against scoring the full KB", setup, tables, notes)


def mode_rows(results: dict, linkable: np.ndarray) -> list[list]:
    from model import ranking_metrics

    rows = []
    for mode, r in results.items():
        m = r["mentions"]
        for run in r["runs"]:
            metrics = ranking_metrics(np.array(run["ranks"])[linkable])
            recall = float(np.mean(np.array(run["gold_in_top_k"])[linkable])) if run["k"] else 1.0
            rows.append([mode, run["k"] or "all", run["entities_encoded"], f"{run['encode_seconds']:.1f}",
                         f"{1000 * run['search_seconds'] / m:.2f}", f"{1000 * run['rank_seconds'] / m:.2f}",
                         f"{1000 * (run['rank_seconds'] + run['encode_seconds']) / m:.1f}", f"{recall:.4f}",
                         f"{metrics['hits@1']:.4f}", f"{metrics['mrr']:.4f}", f"{r['peak_rss_mb']:.0f}",
                         f"{r['anon_peak_mb']:.0f}"])
    return rows


def against_full(results: dict, linkable: np.ndarray) -> dict:
    """Each rerank run against full-KB scoring: time ratios, and Hits@1 disagreements where the zero-shot top-100
    holds the gold (full runs on the zero-shot candidates)."""
    full = results["full"]["runs"][0]
    inside = np.array(results["full"]["gold_in_top_100"]) & linkable
    full_hit = np.array(full["ranks"])[inside] == 1
    full_total = full["rank_seconds"] + full["encode_seconds"]
    rows = []
    for mode, r in results.items():
        for run in r["runs"] if mode != "full" else []:
            disagree = int(((np.array(run["ranks"])[inside] == 1) != full_hit).sum())
            rows.append([mode, run["k"], times(full["rank_seconds"] / run["rank_seconds"]),
                         times(full_total / (run["rank_seconds"] + run["encode_seconds"])), disagree])
    columns = ["mode", "K", "rank time ratio full/this", "total (with encoding) ratio full/this",
               (f"Hits@1 disagreements with full KB on the {int(inside.sum())} of {int(linkable.sum())} mentions "
                "whose gold is in the zero-shot top-100")]
    return {"title": "Against scoring the full KB", "columns": columns, "rows": rows}


def times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"  # a ratio under 1 (at toy sizes) stays visible




if __name__ == "__main__":
    main()
