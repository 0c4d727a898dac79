"""Inner-product search over L2-normalised vectors: FAISS where installed, numpy otherwise.

* :class:`InnerProductIndex` answers "the k most similar database vectors" for batches of
  queries. Up to :data:`EXACT_UP_TO` database vectors it is exact (``faiss.IndexFlatIP``, on the
  GPU with ``faiss-gpu`` and CUDA); above it an IVF index whose coarse quantiser is an HNSW graph
  (``IndexIVFFlat`` over ``IndexHNSWFlat``), the FAISS recipe for millions of vectors; its recall
  against exact search is measured on a sample of queries by :func:`measured_recall` and
  reported, never assumed.
* Without FAISS the same answers come from blocked numpy matrix products (exact).

Identity centres are few (10K-60K per dataset), so searches against centres stay exact; the
approximate index is for image-level k-NN over millions of images.
Pure Python + numpy (+ optional faiss): nothing here imports FiftyOne.
"""

from __future__ import annotations

import numpy as np

#: database size up to which search is exact (IndexFlatIP); above it: IVF + HNSW quantiser
EXACT_UP_TO = 2_000_000
#: queries per block in the numpy fallback (bounds the (block x database) score matrix)
NUMPY_BLOCK = 4096

try:  # optional: faiss-cpu (or faiss-gpu) from PyPI
    import faiss  # type: ignore
except ImportError:  # pragma: no cover - the extra is installed in CI
    faiss = None


def gpu_count() -> int:
    """GPUs FAISS can use (0 for faiss-cpu or without CUDA)."""
    if faiss is None or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA set-up means CPU
        return 0


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class InnerProductIndex:
    """k-NN by inner product over ``vectors`` (n, d); see the module's notes for the kind."""

    def __init__(self, vectors: np.ndarray, backend: str = "auto", exact_up_to: int = EXACT_UP_TO,
                 nlist: int | None = None, nprobe: int = 32, seed: int = 0):
        self.vectors = _f32(vectors)
        n, d = self.vectors.shape
        if backend == "auto":
            backend = "faiss" if faiss is not None else "numpy"
        if backend == "faiss" and faiss is None:
            raise ValueError("backend: faiss is not installed (pip install faiss-cpu)")
        self.backend = backend
        self.exact = n <= exact_up_to or backend == "numpy"
        self.kind = "numpy exact" if backend == "numpy" else "IndexFlatIP (exact)"
        self.index = None
        if backend != "faiss":
            return
        if self.exact:
            index = faiss.IndexFlatIP(d)
        else:
            nlist = nlist or int(4 * np.sqrt(n))
            quantiser = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexIVFFlat(quantiser, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = self.vectors[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))]
            index.train(train)
            index.nprobe = nprobe
            self.kind = f"IndexIVFFlat(nlist={nlist}, nprobe={nprobe}) over an HNSW quantiser (approximate)"
        if self.exact and gpu_count() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
            self.kind += " on GPU"
        index.add(self.vectors)
        self.index = index

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, indices), each (m, k), most similar first (-1 / -inf where fewer)."""
        queries = _f32(queries)
        k = max(1, min(k, len(self.vectors)))
        if self.index is not None:
            return self.index.search(queries, k)
        return exact_search(queries, self.vectors, k)


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int = 1,
                 block: int = NUMPY_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN by inner product in numpy, in blocks of queries."""
    m = len(queries)
    k = max(1, min(k, len(vectors)))
    sims = np.empty((m, k), np.float32)
    idx = np.empty((m, k), np.int64)
    for start in range(0, m, block):
        s = queries[start:start + block] @ vectors.T
        if k == 1:
            best = s.argmax(1)[:, None]
        else:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
            best = np.take_along_axis(part, order, 1)
        idx[start:start + block] = best
        sims[start:start + block] = np.take_along_axis(s, best, 1)
    return sims, idx


def measured_recall(index: InnerProductIndex, queries: np.ndarray, k: int = 10, sample: int = 1000,
                    seed: int = 0) -> float:
    """Recall@k of ``index`` against exact search on ``sample`` of ``queries`` (seeded): the share
    of the exact k nearest found by the index."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(queries), min(sample, len(queries)), replace=False))
    q = _f32(queries[pick])
    _, got = index.search(q, k)
    _, truth = exact_search(q, index.vectors, k)
    hits = sum(len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth))
    return hits / truth.size
