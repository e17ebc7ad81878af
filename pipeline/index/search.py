"""The searchers of an entity index: exact top-k as one matrix product on the CPU, and FAISS on the GPU.

``EntityIndex.searcher`` picks one: the GPU (faiss with GPU support, ``IndexSettings.gpu``) clones the index
there for searching, while it is always kept and serialised on the CPU; on the CPU an IVF index searches
itself, and a flat one is searched by ``exact_search`` over its own vectors (why: ``faiss_index``, Kinds).
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

EXACT_QUERY_CHUNK = 256  # queries per matrix product: 256 x 200k entities of float32 scores = 200 MB


def matmul_searcher(index: faiss.Index):
    """Exact top-k on the CPU over the flat index's own vectors (a view, not a copy), by `exact_search`."""
    flat = faiss.downcast_index(index.index)
    if flat.ntotal == 0:
        return index.search
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
    ids = faiss.vector_to_array(index.id_map)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, positions = exact_search(vectors, queries, k)
        return scores, np.where(positions >= 0, ids[np.maximum(positions, 0)], -1)

    search.index = index  # the vectors are a view of the index's memory: keep it alive with the searcher
    return search


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of `queries` [n, d] against `vectors` [N, d] float32: (scores [n, k], rows [n, k];
    -1 past N), as FAISS returns them. One matrix product and a top-k per chunk of queries (torch): FAISS's
    flat search gives the same rows, 2.9x slower here for k = 100 of 100k (bench/retrieval_search.py)."""
    matrix = torch.from_numpy(np.ascontiguousarray(vectors, np.float32))
    found = min(k, len(matrix))
    scores = np.full((len(queries), k), -np.finfo(np.float32).max, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(queries), EXACT_QUERY_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(queries[start:start + EXACT_QUERY_CHUNK], np.float32))
        top, positions = (chunk @ matrix.T).topk(found, dim=1)
        scores[start:start + len(chunk), :found] = top.numpy()
        rows[start:start + len(chunk), :found] = positions.numpy()
    return scores, rows


_GPU_RESOURCES = None


def gpu_resources():
    """The process's one faiss GPU resource object (scratch memory, streams), made on first use."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        _GPU_RESOURCES = faiss.StandardGpuResources()
    return _GPU_RESOURCES


def gpu_searcher(index: faiss.Index, kind: str, nprobe: int):
    if kind == "ivf":
        gpu_index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
        return gpu_index.search
    # Clone the flat storage alone and map its row numbers to KB indices on the CPU:
    # this does not depend on the GPU cloner's support for IndexIDMap2.
    id_map = faiss.vector_to_array(index.id_map)
    gpu_flat = faiss.index_cpu_to_gpu(gpu_resources(), 0, faiss.downcast_index(index.index))

    def search(queries: np.ndarray, k: int):
        scores, positions = gpu_flat.search(queries, k)
        return scores, np.where(positions >= 0, id_map[positions], -1)

    return search
