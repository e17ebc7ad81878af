"""How the trained index is searched: exact search (one matrix product + top-k) against FAISS's flat search,
and IVF against exact search over a trained matcher's vectors.

    python bench/mmoe_eval.py --entities 100000 --test-mentions 40 --threads 1   # writes the lake and model
    python bench/retrieval_search.py --lake /tmp/mmoe-eval-bench --threads 1

Part 1 times `pipeline.index.search.exact_search` and `faiss.IndexFlatIP.search` on the same random
100k x 160 float32 vectors and 39 queries, k = 100 (best of 3), and checks that they return the same rows.
Part 2 builds, with the pipeline's `update_entity_index`, an exact and an IVF index of the lake model's
retrieval vectors (`TrainedEntityVectors`), and searches the dev and test mentions' query vectors in both:
gold recall@100, the share of the exact top-100 that IVF returns, and ms per query for several nprobe.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def best_of(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def exact_against_faiss(entities: int, dim: int, queries: int, k: int) -> None:
    import faiss

    from pipeline.index.search import exact_search

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((entities, dim), dtype=np.float32)
    query = rng.standard_normal((queries, dim), dtype=np.float32)
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    ours, (_, our_rows) = best_of(lambda: exact_search(vectors, query, k))
    theirs, (_, their_rows) = best_of(lambda: flat.search(query, k))
    print(f"\n{entities} x {dim} vectors, {queries} queries, k={k}, faiss threads {faiss.omp_get_max_threads()}")
    print("| search | ms/query |\n|---|---|")
    print(f"| exact_search (torch matmul + top-k) | {1000 * ours / queries:.2f} |")
    print(f"| faiss IndexFlatIP | {1000 * theirs / queries:.2f} |")
    print(f"same rows: {float((our_rows == their_rows).mean()):.4f} of all (ties may order differently)")


def ivf_against_exact(lake_root: str, nprobes: list[int]) -> None:
    import torch

    from model import load_checkpoint
    from pipeline.index import EntityIndex, IndexSettings, update_entity_index
    from pipeline.lake import Lake
    from pipeline.training.data import Inputs
    from pipeline.training.retrieval import TrainedEntityVectors, encode_vectors
    from pipeline.training.trained import current_model

    lake = Lake(lake_root)
    inputs = Inputs.open(lake)
    checkpoint = current_model(lake)["checkpoint"]
    matcher = load_checkpoint(checkpoint).model.eval()
    cpu = torch.device("cpu")
    indexes = {}
    for kind in ("flat", "ivf"):
        directory = lake.root / f"bench-search-{kind}"
        report = update_entity_index(TrainedEntityVectors(matcher, f"bench:{checkpoint}", inputs.entities, cpu),
                                     directory, IndexSettings(kind=kind))
        indexes[kind] = (EntityIndex.load(directory), report.nlist)
    mentions = inputs.mentions
    positions = np.concatenate([mentions.select("dev"), mentions.select("test")])
    queries, _ = encode_vectors(matcher, inputs.mentions_store, mentions.mention_row[positions], cpu, False)
    gold = inputs.entities.ids.astype(np.int64)[mentions.gold_row[positions]]
    flat, _ = indexes["flat"]
    _, exact = flat.searcher(1, False)(queries, 100)
    ivf, nlist = indexes["ivf"]
    print(f"\n{len(inputs.entities)} entities, {len(positions)} dev+test mentions, IVF nlist {nlist}")
    print("| search | gold recall@100 | overlap with the exact top-100 | ms/query |\n|---|---|---|---|")
    seconds, _ = best_of(lambda: flat.searcher(1, False)(queries, 100))
    print(f"| exact | {np.mean([g in row for g, row in zip(gold, exact)]):.4f} | 1.0000 | "
          f"{1000 * seconds / len(queries):.2f} |")
    for nprobe in nprobes:
        seconds, (_, found) = best_of(lambda: ivf.searcher(nprobe, False)(queries, 100))
        overlap = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(exact, found)])
        print(f"| IVF nprobe {nprobe} | {np.mean([g in row for g, row in zip(gold, found)]):.4f} | {overlap:.4f} | "
              f"{1000 * seconds / len(queries):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lake", default="/tmp/mmoe-eval-bench", help="a lake bench/mmoe_eval.py wrote")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    exact_against_faiss(100_000, 160, 39, 100)
    ivf_against_exact(args.lake, args.nprobe)


if __name__ == "__main__":
    main()
