"""Benchmark of the entity index: exact Flat vs IVF vs HNSW on a synthetic, clustered 100k-entity KB.

Each index kind runs in its own child process so that its peak RSS (VmHWM) is its own;
the children read the same memory-mapped float16 vectors (as the feature store hands
them out), flat and IVF run through the pipeline's own code (``update_entity_index``, the
searcher and the query rule), and the parent compares their top-100 lists side by side.
HNSW is not a pipeline kind (it cannot remove ids, so it could not be kept in sync): its
child builds ``IndexHNSWFlat`` (M=32, efConstruction 40, faiss's default) with faiss directly,
on the index vectors the pipeline's rule makes of the same store, and searches the same queries.

    python bench/faiss_index.py                       # 100k entities, 512+512 dims, 2000 queries
    python bench/faiss_index.py --entities 20000      # a quicker look
    python bench/faiss_index.py --entities 1000000 --dim 64 --kinds flat,hnsw   # where HNSW would pay

Synthetic data: entities belong to fine topics grouped in coarse topics (cluster centres);
text and image vectors are the fine topic's centre plus noise, image vectors share a common
direction (CLIP's image cone),
15% of entities have no image. Each query is a noisy copy of a random "gold" entity;
30% of queries have no image. Figures:
  queries/s        top-100 searches per second, batches of 4096 queries, all CPU threads,
                   best of 3 runs
  recall@100 vs exact   share of the exact top-100 that the index returns (mean over queries)
  gold recall@100  share of queries whose gold entity is in the returned top-100
  build s          update_entity_index from nothing (content keys, IVF training, adding); for HNSW,
                   combining the vectors and adding them (no content keys: nothing syncs it)
  sync 1% s        update_entity_index after 1% of the entities changed (removes + adds)
  efSearch         HNSW's search beam; below k=100 it is narrower than the list asked for
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

from bench.report import markdown_table, write_json  # noqa: E402

K = 100
REPEATS = 3
KINDS = ("flat", "ivf", "hnsw")
HNSW_M = 32
NOTES = (
    ("flat and ivf are the pipeline's index (update_entity_index, its searcher); hnsw is IndexHNSWFlat "
     "built with faiss directly on the same index vectors, searched with the same "
     "queries: it has no sync (faiss cannot remove ids from it), and its build s leaves out the content keys"),
    (f"recall@{K} vs exact: share of the flat index's top-{K} returned; gold recall: share of queries whose gold "
     f"entity is in the top-{K}; queries/s: best of {REPEATS} runs, all faiss threads"),
    f"efSearch below k={K} searches a narrower beam than the list it returns",
    ("peak RSS: the kind's child process over build + search (VmHWM, memory-mapped store pages included); "
     "above imports: less its RSS after importing numpy, faiss and the pipeline"),
)


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


def load_vectors(folder: Path):
    """The entities (memory-mapped float16, as the store hands them out) and the queries under the pipeline's rule."""
    from pipeline.index import ItemVectors
    from pipeline.index.vectors import query_matrix, read_checked

    text = np.load(folder / "text.npy", mmap_mode="r")
    image = np.load(folder / "image.npy", mmap_mode="r")
    encoder = {"architecture": "synthetic", "dim": text.shape[1]}
    items = ItemVectors(np.arange(len(text), dtype=np.int64), text, image, np.load(folder / "has_image.npy"),
                        encoder, "v1", str(folder))
    queries = ItemVectors(np.arange(len(np.load(folder / "gold.npy"))), np.load(folder / "query_text.npy"),
                          np.load(folder / "query_image.npy"), np.load(folder / "query_has_image.npy"),
                          encoder, "q", "queries")
    return items, query_matrix(read_checked(queries, np.arange(len(queries))))


def child(folder: Path, kind: str, nprobes: list[int], nlist: int) -> dict:
    from dataclasses import replace

    from pipeline.index import EntityIndex, IndexSettings, update_entity_index

    baseline_mb = current_rss_mb()
    items, query_vectors = load_vectors(folder)
    settings = IndexSettings(kind=kind, nlist=nlist)
    index_folder = folder / f"index-{kind}"

    started = time.perf_counter()
    report = update_entity_index(items, index_folder, settings)
    build_seconds = time.perf_counter() - started
    index = EntityIndex.load(index_folder)

    searches = []
    for nprobe in (nprobes if kind == "ivf" else [0]):
        found, queries_per_s = timed_search(index.searcher(max(nprobe, 1), use_gpu=False), query_vectors)
        name = f"found-{kind}-{nprobe}.npy"
        np.save(folder / name, found)
        searches.append({"name": f"ivf nlist={report.nlist} nprobe={nprobe}" if nprobe else kind,
                         "found": name, "queries_per_s": queries_per_s})
    peak_mb = peak_rss_mb()  # build + search; what follows holds extra copies of its own
    index_mb = (index_folder / index.config["generation"] / "index.faiss").stat().st_size / 2**20
    float32_lists = ivf_with_float32_lists(index, items, nprobes, query_vectors, folder) if kind == "ivf" else []
    del index
    changed_text = np.array(items.text)  # a copy with 1% of the entities changed
    rng = np.random.default_rng(1)
    changed = rng.choice(len(items), len(items) // 100, replace=False)
    changed_text[changed] += rng.standard_normal((len(changed), items.dim)).astype(np.float16) * 0.05
    started = time.perf_counter()
    sync = update_entity_index(replace(items, text=changed_text, fingerprint="v2"), index_folder, settings)
    sync_seconds = time.perf_counter() - started
    assert sync.action == "synced" and sync.counts.updated == len(changed), sync
    return {"build_seconds": build_seconds, "searches": searches, "sync_seconds": sync_seconds, "peak_rss_mb": peak_mb,
            "baseline_rss_mb": baseline_mb, "index_mb": index_mb, "float32_lists": float32_lists}


def hnsw_child(folder: Path, ef_searches: list[int]) -> dict:
    """IndexHNSWFlat with faiss directly, over the vectors the pipeline's flat index holds (same rule, same fill)."""
    import faiss

    from pipeline.index.vectors import BATCH_ROWS, ClipEntityVectors, row_batches

    baseline_mb = current_rss_mb()
    items, query_vectors = load_vectors(folder)
    source = ClipEntityVectors(items)
    scan = source.scan()
    assert len(scan.keys) == len(items), "unusable rows: HNSW labels would no longer be the KB indices"
    fill = source.fill(scan)  # the mean image that stands in for a missing one, as a build freezes it
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(source.index_dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    for rows in row_batches(len(items), BATCH_ROWS):
        index.add(source.vectors(rows, fill))  # labels are rows, which are the KB indices here
    build_seconds = time.perf_counter() - started
    searches = []
    for ef in ef_searches:
        index.hnsw.efSearch = ef
        found, queries_per_s = timed_search(index.search, query_vectors)
        name = f"found-hnsw-{ef}.npy"
        np.save(folder / name, found)
        searches.append({"name": f"hnsw M={HNSW_M} efConstruction={index.hnsw.efConstruction} efSearch={ef}",
                         "found": name, "queries_per_s": queries_per_s})
    peak_mb = peak_rss_mb()
    faiss.write_index(index, str(folder / "index-hnsw.faiss"))
    return {"build_seconds": build_seconds, "searches": searches, "sync_seconds": None, "peak_rss_mb": peak_mb,
            "baseline_rss_mb": baseline_mb, "index_mb": (folder / "index-hnsw.faiss").stat().st_size / 2**20,
            "float32_lists": []}


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
        name = f"found-ivf32-{nprobe}.npy"
        np.save(folder / name, found)
        results.append({"name": f"(IndexIVFFlat, float32 lists) nprobe={nprobe}", "found": name,
                        "queries_per_s": queries_per_s})
    return results


def overlap(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, exact)]))


def gold_recall(found: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean([g in row for row, g in zip(found, gold)]))


def run_child(kind: str, folder: str, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--folder", folder, "--nprobe", args.nprobe,
               "--nlist", str(args.nlist), "--ef-search", args.ef_search]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode:
        sys.exit(f"The {kind} child failed:\n{finished.stderr}")
    return json.loads(finished.stdout)


def table_rows(folder: Path, results: dict) -> list[list[str]]:
    """One row per search; recall vs exact needs the flat kind's lists (blank without it)."""
    gold = np.load(folder / "gold.npy")
    exact = np.load(folder / "found-flat-0.npy") if "flat" in results else None

    def quality(search):
        found = np.load(folder / search["found"])
        return [f"{search['queries_per_s']:.0f}", "" if exact is None else f"{overlap(found, exact):.4f}",
                f"{gold_recall(found, gold):.4f}"]

    rows = []
    for result in results.values():
        sync = "" if result["sync_seconds"] is None else f"{result['sync_seconds']:.1f}"
        for search in result["searches"]:
            rows.append([search["name"], *quality(search), f"{result['build_seconds']:.1f}", sync,
                         f"{result['peak_rss_mb']:.0f}", f"{result['peak_rss_mb'] - result['baseline_rss_mb']:.0f}",
                         f"{result['index_mb']:.0f}"])
        rows += [[search["name"], *quality(search), "", "", "", "", ""] for search in result["float32_lists"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, help="per modality (ViT-B-32: 512)")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--topics", type=int, default=2000, help="fine topics (20 per coarse topic)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma list of " + ", ".join(KINDS))
    parser.add_argument("--nprobe", default="16,32,64,128")
    parser.add_argument("--nlist", type=int, default=0, help="0 = the index's automatic choice")
    parser.add_argument("--ef-search", default="64,128,256", help="HNSW efSearch values")
    parser.add_argument("--json", help="also write the results here (bench/report.py's format)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    if set(kinds) - set(KINDS):
        parser.error(f"--kinds: {', '.join(sorted(set(kinds) - set(KINDS)))} is not one of {', '.join(KINDS)}")
    if args.child == "hnsw":
        print(json.dumps(hnsw_child(Path(args.folder), [int(n) for n in args.ef_search.split(",")])))
        return
    if args.child:
        print(json.dumps(child(Path(args.folder), args.child, [int(n) for n in args.nprobe.split(",")], args.nlist)))
        return

    import faiss

    with tempfile.TemporaryDirectory(prefix="faiss-bench-") as temp:
        generate(Path(temp), args.entities, args.dim, args.queries, args.topics)
        rows = table_rows(Path(temp), {kind: run_child(kind, temp, args) for kind in kinds})

    setup = (f"{args.entities} entities, {args.dim}+{args.dim} dims, {args.queries} queries, k={K}, "
             f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), CPU only, "
             f"faiss threads: {faiss.omp_get_max_threads()}, load average {os.getloadavg()[0]:.1f}")
    header = ["index", "queries/s", "recall@100 vs exact", "gold recall@100", "build s", "sync 1% s",
              "peak RSS MB", "above imports MB", "index file MB"]
    print(setup)
    print(markdown_table(header, rows))
    if args.json:
        write_json(args.json, "FAISS candidate index: Flat, IVF, HNSW", setup,
                   [{"title": f"top-{K} search of {args.queries} queries in {args.entities} entities",
                     "columns": header, "rows": rows}], NOTES)


if __name__ == "__main__":
    main()
