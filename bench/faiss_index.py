"""Benchmark of the entity index: exact Flat vs IVF on a synthetic, clustered 100k-entity KB.

Each index kind runs in its own child process so that its peak RSS (VmHWM) is its own;
both children read the same memory-mapped float16 vectors (as the feature store hands
them out), run through the pipeline's own code (``update_entity_index``, the searcher and
the query rule), and the parent compares their top-100 lists side by side.

    python bench/faiss_index.py                       # 100k entities, 512+512 dims, 2000 queries
    python bench/faiss_index.py --entities 20000      # a quicker look

Synthetic data: entities belong to fine topics grouped in coarse topics (cluster centres);
text and image vectors are the fine topic's centre plus noise, image vectors share a common
direction (CLIP's image cone),
15% of entities have no image. Each query is a noisy copy of a random "gold" entity;
30% of queries have no image. Figures:
  queries/s        top-100 searches per second, batches of 4096 queries, all CPU threads,
                   best of 3 runs
  recall@100 vs exact   share of the exact top-100 that the index returns (mean over queries)
  gold recall@100  share of queries whose gold entity is in the returned top-100
  build s          update_entity_index from nothing (content keys, IVF training, adding)
  sync 1% s        update_entity_index after 1% of the entities changed (removes + adds)
  IndexIVFFlat     the same IVF centroids and vectors with float32 lists instead of float16 (the
                   alternative the pipeline did not take), searched with the same queries
  peak RSS         VmHWM of the child process over build + search (the rest runs after it is read),
                   which includes the memory-mapped store pages it touched; "above imports" subtracts
                   the RSS the child had after importing the pipeline (numpy, faiss, pyarrow)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

K = 100
REPEATS = 3


def generate(folder: Path, entities: int, dim: int, queries: int, topics: int, seed: int = 0) -> None:
    """Two-level clusters (20 subtopics per topic) in each modality, written as float16 .npy files."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def noise(rows):
        return unit(rng.standard_normal((rows, dim), dtype=np.float32))

    def centres():
        coarse = noise(max(1, topics // 20))
        return unit(coarse[rng.integers(0, len(coarse), topics)] + 0.8 * noise(topics))

    text_centres, image_centres = centres(), centres()
    cone = noise(1)[0]  # CLIP image embeddings share a dominant direction
    topic = rng.integers(0, topics, entities)
    text = np.lib.format.open_memmap(folder / "text.npy", "w+", np.float16, (entities, dim))
    image = np.lib.format.open_memmap(folder / "image.npy", "w+", np.float16, (entities, dim))
    for start in range(0, entities, 10_000):
        part = topic[start:start + 10_000]
        text[start:start + len(part)] = text_centres[part] + 0.9 * noise(len(part))
        image[start:start + len(part)] = 1.2 * cone + image_centres[part] + 0.9 * noise(len(part))
    text.flush(), image.flush()
    np.save(folder / "has_image.npy", rng.random(entities) >= 0.15)

    gold = rng.choice(entities, queries, replace=False)
    query_text = unit(np.asarray(text[gold], np.float32)) + 0.7 * noise(queries)
    query_image = unit(np.asarray(image[gold], np.float32)) + 0.7 * noise(queries)
    np.save(folder / "query_text.npy", query_text.astype(np.float16))
    np.save(folder / "query_image.npy", query_image.astype(np.float16))
    np.save(folder / "query_has_image.npy", rng.random(queries) >= 0.3)
    np.save(folder / "gold.npy", gold)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def child(folder: Path, kind: str, nprobes: list[int], nlist: int) -> dict:
    from pipeline.index import IndexSettings, ItemVectors, update_entity_index
    from pipeline.index.faiss_index import EntityIndex
    from pipeline.index.vectors import query_matrix, read_checked

    baseline_mb = current_rss_mb()
    text = np.load(folder / "text.npy", mmap_mode="r")
    image = np.load(folder / "image.npy", mmap_mode="r")
    has_image = np.load(folder / "has_image.npy")
    ids = np.arange(len(text), dtype=np.int64)
    encoder = {"architecture": "synthetic", "dim": text.shape[1]}
    items = ItemVectors(ids, text, image, has_image, encoder, "v1", str(folder))
    settings = IndexSettings(kind=kind, nlist=nlist)
    index_dir = folder / f"index-{kind}"

    started = time.perf_counter()
    report = update_entity_index(items, index_dir, settings)
    build_seconds = time.perf_counter() - started
    index = EntityIndex.load(index_dir)

    queries = ItemVectors(np.arange(len(np.load(folder / "gold.npy"))), np.load(folder / "query_text.npy"),
                          np.load(folder / "query_image.npy"), np.load(folder / "query_has_image.npy"),
                          encoder, "q", "queries")
    query_vectors = query_matrix(read_checked(queries, np.arange(len(queries))))
    searches = []
    for nprobe in (nprobes if kind == "ivf" else [0]):
        found, queries_per_s = timed_search(index.searcher(max(nprobe, 1), use_gpu=False), query_vectors)
        np.save(folder / f"found-{kind}-{nprobe}.npy", found)
        searches.append({"nprobe": nprobe or None, "queries_per_s": queries_per_s})
    peak_mb = peak_rss_mb()  # build + search; what follows holds extra copies of its own
    index_mb = (index_dir / index.config["generation"] / "index.faiss").stat().st_size / 2**20
    float32_lists = ivf_with_float32_lists(index, items, nprobes, query_vectors, folder) if kind == "ivf" else []
    del index
    changed_text = np.array(text)  # a copy with 1% of the entities changed
    rng = np.random.default_rng(1)
    changed = rng.choice(len(ids), len(ids) // 100, replace=False)
    changed_text[changed] += rng.standard_normal((len(changed), text.shape[1])).astype(np.float16) * 0.05
    started = time.perf_counter()
    sync = update_entity_index(ItemVectors(ids, changed_text, image, has_image, encoder, "v2", str(folder)),
                               index_dir, settings)
    sync_seconds = time.perf_counter() - started
    assert sync.action == "synced" and sync.counts.updated == len(changed), sync
    return {"kind": report.kind, "nlist": report.nlist, "build_seconds": build_seconds, "searches": searches,
            "sync_seconds": sync_seconds, "peak_rss_mb": peak_mb, "baseline_rss_mb": baseline_mb,
            "index_mb": index_mb, "float32_lists": float32_lists}


def timed_search(search, query_vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """Top-K ids of every query and queries/s, the best of a few runs (other processes share the cores)."""
    seconds = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        found = np.concatenate([search(query_vectors[s:s + 4096], K)[1] for s in range(0, len(query_vectors), 4096)])
        seconds = min(seconds, time.perf_counter() - started)
    return found, len(query_vectors) / seconds


def ivf_with_float32_lists(index, items, nprobes, query_vectors, folder) -> list[dict]:
    """The road not taken: IndexIVFFlat with the very same centroids and vectors, float32 lists."""
    import faiss

    from pipeline.index.vectors import entity_matrix, read_checked

    trained = faiss.extract_index_ivf(index.index)
    ivf = faiss.IndexIVFFlat(faiss.clone_index(trained.quantizer), trained.d, trained.nlist,
                             faiss.METRIC_INNER_PRODUCT)
    for start in range(0, len(items), 8192):
        rows = np.arange(start, min(start + 8192, len(items)))
        ivf.add_with_ids(entity_matrix(read_checked(items, rows), index.fill), items.ids[rows])
    results = []
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        found, queries_per_s = timed_search(ivf.search, query_vectors)
        np.save(folder / f"found-ivf32-{nprobe}.npy", found)
        results.append({"nprobe": nprobe, "queries_per_s": queries_per_s})
    return results


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, exact)]))


def gold_recall(found: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean([g in row for row, g in zip(found, gold)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, help="per modality (ViT-B-32: 512)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=2000, help="fine topics (20 per coarse topic)")
    parser.add_argument("--nprobe", default="16,32,64,128")
    parser.add_argument("--nlist", type=int, default=0, help="0 = the index's automatic choice")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    nprobes = [int(n) for n in args.nprobe.split(",")]
    if args.child:
        print(json.dumps(child(Path(args.folder), args.child, nprobes, args.nlist)))
        return

    with tempfile.TemporaryDirectory(prefix="faiss-bench-") as temp:
        folder = Path(temp)
        generate(folder, args.entities, args.dim, args.queries, args.topics)
        results = {}
        for kind in ("flat", "ivf"):
            command = [sys.executable, __file__, "--child", kind, "--folder", temp, "--nprobe", args.nprobe,
                       "--nlist", str(args.nlist)]
            finished = subprocess.run(command, capture_output=True, text=True)
            if finished.returncode:
                sys.exit(f"The {kind} child failed:\n{finished.stderr}")
            results[kind] = json.loads(finished.stdout)
        gold = np.load(folder / "gold.npy")
        exact = np.load(folder / "found-flat-0.npy")
        rows = []
        for kind in ("flat", "ivf"):
            result = results[kind]
            for search in result["searches"]:
                found = np.load(folder / f"found-{kind}-{search['nprobe'] or 0}.npy")
                name = f"ivf nlist={result['nlist']} nprobe={search['nprobe']}" if search["nprobe"] else kind
                rows.append([name,
                             f"{search['queries_per_s']:.0f}", f"{overlap(found, exact):.4f}",
                             f"{gold_recall(found, gold):.4f}", f"{result['build_seconds']:.1f}",
                             f"{result['sync_seconds']:.1f}", f"{result['peak_rss_mb']:.0f}",
                             f"{result['peak_rss_mb'] - result['baseline_rss_mb']:.0f}", f"{result['index_mb']:.0f}"])
        for search in results["ivf"]["float32_lists"]:
            found = np.load(folder / f"found-ivf32-{search['nprobe']}.npy")
            rows.append([f"(IndexIVFFlat, float32 lists) nprobe={search['nprobe']}", f"{search['queries_per_s']:.0f}",
                         f"{overlap(found, exact):.4f}", f"{gold_recall(found, gold):.4f}", "", "", "", "", ""])

    print(f"{args.entities} entities, {args.dim}+{args.dim} dims, {args.queries} queries, k={K}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), faiss threads: all")
    header = ["index", "queries/s", "recall@100 vs exact", "gold recall@100", "build s", "sync 1% s",
              "peak RSS MB", "above imports MB", "index file MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
