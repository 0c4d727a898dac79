"""Identity audit speed: every metric and tag set in one run vs the floor of reading the vectors once.

Builds N unit vectors (default 1,000,000, 512-d) in 20,000 identities with planted structure:
half the identities real, half synthetic; each identity a random centre, its images the centre
plus noise (genuine cosine ~0.7, impostor ~0); planted: synthetic identities that are a real
identity (leaks), pairs of synthetic identities on one centre (collisions), images of another
identity inside an identity (wrong faces). The vectors go to a float32 ``.npy`` file and are
streamed from it in chunks (as the adapter streams them from MongoDB).

Measures, core level (no FiftyOne):

* floor: reading every vector once from the file, chunk by chunk;
* the audit: :func:`faceaudit.identity.run_audit` (genuine every pair, impostor sample of
  ``--max-pairs``, EER / FNMR / d' / FDR, uniqueness, consistency, packing, collisions, per-sample
  identity similarity, leakage per sample and per identity) plus the tag sets; ratio to the floor
  (target <= 3x);
* leakage search: ``--queries`` synthetic images against 20,000 real centres, FAISS IndexFlatIP
  vs the same exact search in numpy (ratio);
* recall@10 of the approximate index (IVF over an HNSW quantiser) against exact search on a
  sample of 1,000 queries, over ``--ann`` image vectors;
* with ``--db N``: the same audit through FiftyOne/MongoDB on N samples (reads, per-sample writes,
  tags, no Brain index) against the floor of reading the N vectors once with pymongo.

Usage: .venv/bin/python bench/identity.py [--n 1000000] [--identities 20000] [--queries 1000000]
       [--ann 200000] [--db 0] [--db-only]   (the shared 2-core machine: --n 200000 --queries 100000)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from faceaudit import identity as core
from faceaudit import search

DIM = 512
CHUNK = 8192


def build(path: str, n: int, identities: int, dim: int, seed: int = 0):
    """Write the vectors to ``path``; returns (identity per row, source per row, planted facts)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(identities, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    half = identities // 2
    planted_leaks = np.arange(half, half + 10)  # synthetic identity k copies real identity k - half
    centres[planted_leaks] = centres[planted_leaks - half]
    planted_collisions = (half + 20, half + 21)
    centres[planted_collisions[1]] = centres[planted_collisions[0]]
    labels = np.sort(rng.integers(0, identities, n))  # sorted: the stream comes by identity
    wrong = rng.choice(n, 10, replace=False)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, CHUNK):
        lab = labels[start:start + CHUNK].copy()
        base = centres[lab]
        hit = np.isin(np.arange(start, start + len(lab)), wrong)
        base[hit] = centres[(lab[hit] + 7) % half]  # another identity's face
        v = base + 0.028 * rng.normal(size=base.shape).astype(np.float32)  # cosine ~0.7 within
        out[start:start + len(lab)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    out.flush()
    del out
    return labels, labels >= half, {"leaks": planted_leaks, "collision": planted_collisions, "wrong": wrong}


def chunks(vectors, labels, rows):
    for start in range(rows.start, rows.stop, CHUNK):
        stop = min(rows.stop, start + CHUNK)
        yield core.Chunk(range(start, stop), [f"id{x:06d}" for x in labels[start:stop]],
                         np.asarray(vectors[start:stop]))


def floor(path: str) -> float:
    vectors = np.load(path, mmap_mode="r")
    t = time.perf_counter()
    total = 0.0
    for start in range(0, len(vectors), CHUNK):
        total += float(np.asarray(vectors[start:start + CHUNK]).sum())  # touches every value
    return time.perf_counter() - t


def audit(path, labels, synthetic, max_pairs):
    vectors = np.load(path, mmap_mode="r")
    cut = int(np.argmax(synthetic)) if synthetic.any() else len(labels)
    rows = {"real": range(0, cut), "synth": range(cut, len(labels))}
    plans = {}
    for name, r in rows.items():
        ids, counts = np.unique(labels[r.start:r.stop], return_counts=True)
        plans[name] = core.SourcePlan("real" if name == "real" else "synthetic",
                                      {f"id{i:06d}": int(c) for i, c in zip(ids, counts)}, len(r))
    outliers = {"n": 0}

    def write(source, chunk, sim, nearest):  # the tag rule, as the adapter applies it
        outliers["n"] += int((sim < 0.3).sum())

    t = time.perf_counter()
    outcome = core.run_audit(plans, lambda s: chunks(vectors, labels, rows[s]),
                             core.audit_options(threshold=0.3, max_pairs_=max_pairs), "iresnet", write)
    return time.perf_counter() - t, outcome, outliers["n"]


def leakage_search(queries: int, centres: int, dim: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    times = {}
    for backend in ("faiss", "numpy"):
        index = search.InnerProductIndex(c, backend=backend)
        t = time.perf_counter()
        for start in range(0, queries, 65536):
            q = rng.normal(size=(min(65536, queries - start), dim)).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            index.search(q, 1)
        times[backend] = time.perf_counter() - t
    return times


def recall(path: str, n: int):
    vectors = np.asarray(np.load(path, mmap_mode="r")[:n])
    t = time.perf_counter()
    index = search.InnerProductIndex(vectors, exact_up_to=0)
    build_s = time.perf_counter() - t
    return index.kind, build_s, search.measured_recall(index, vectors, k=10, sample=1000)


def _mongod_processes():
    """The mongod processes serving FIFTYONE_DATABASE_DIR (all mongods when it is not set)."""
    import psutil

    folder = os.environ.get("FIFTYONE_DATABASE_DIR", "")
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] == "mongod" and folder in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


class _Clock:
    """Wall seconds and CPU seconds (this process, all its threads; and the mongods) of a phase:
    on a machine of C cores a CPU-bound phase cannot take less than (process + mongod) / C."""

    def __init__(self):
        self.mongods = _mongod_processes()

    def _cpu(self) -> tuple[float, float]:
        mongod = 0.0
        for p in self.mongods:
            try:
                t = p.cpu_times()
                mongod += t.user + t.system
            except Exception:  # noqa: BLE001 - a mongod that went away counts nothing more
                pass
        return time.process_time(), mongod

    def __enter__(self):
        self.wall, (self.proc, self.mongod) = time.perf_counter(), self._cpu()
        return self

    def __exit__(self, *exc):
        proc, mongod = self._cpu()
        self.wall = time.perf_counter() - self.wall
        self.proc, self.mongod = proc - self.proc, mongod - self.mongod

    def cpu_text(self) -> str:
        cores = os.cpu_count() or 1
        return (f"CPU {self.proc:.1f} s audit process + {self.mongod:.1f} s mongod: at least "
                f"{(self.proc + self.mongod) / cores:.1f} s on {cores} cores")


def db_audit(path, labels, synthetic, n, max_pairs):
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    import fiftyone as fo

    from fiftyone_plugin import bulk, schema
    from fiftyone_plugin import embed as stored
    from fiftyone_plugin import identity as adapter

    name = "faceaudit-bench-identity"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = schema.open_dataset(name)
    ds.add_sample_field(adapter.EMBEDDING_FIELD, fo.VectorField)
    vectors = np.load(path, mmap_mode="r")
    pick = np.sort(np.random.default_rng(2).choice(len(labels), n, replace=False))
    coll = ds._sample_collection
    now = schema.utc_now()
    for start in range(0, n, 10_000):
        rows = pick[start:start + 10_000]
        ids = bulk.new_object_ids(len(rows))
        coll.insert_many([{"_id": i, "filepath": f"/bench/{r}.jpg", "tags": [], "_rand": 0.9995,
                           "created_at": now, "last_modified_at": now, "_dataset_id": ds._doc.id,
                           schema.SOURCE: "synth" if synthetic[r] else "real",
                           schema.DOMAIN: "synthetic" if synthetic[r] else "real",
                           schema.IDENTITY: f"id{labels[r]:06d}",
                           adapter.EMBEDDING_FIELD: stored.vector_bytes(vectors[r])}
                          for i, r in zip(ids, rows)], ordered=False)
    schema.set_info(ds, "embedding", {"model": "iresnet", "dim": DIM})
    with _Clock() as read:
        for source in ("real", "synth"):
            for _ in adapter.read_source(ds, source):
                pass
    opts = adapter.options(threshold=0.3, max_pairs=max_pairs)
    with _Clock() as unwritten:  # the same reads and computation, nothing written: what the writes cost
        core.run_audit(adapter.plans(ds), lambda s: adapter.read_source(ds, s), opts, "iresnet")
    with _Clock() as whole:
        adapter.identity_audit(ds, opts, tag=True, similarity_index=False)
    fo.delete_dataset(name)
    return read, unwritten, whole


def print_db_audit(path, labels, synthetic, n, max_pairs):
    read, unwritten, whole = db_audit(path, labels, synthetic, n, max_pairs)
    f = read.wall
    print(f"MongoDB, {n} samples:")
    print(f"  floor, reading the vectors once: {f:.2f} s ({read.cpu_text()})")
    print(f"  the audit's reads and computation, nothing written: {unwritten.wall:.2f} s = {unwritten.wall / f:.2f}x "
          f"({unwritten.cpu_text()})")
    print(f"  the audit with per-sample writes and tags: {whole.wall:.2f} s = {whole.wall / f:.2f}x (target <= 3x) "
          f"({whole.cpu_text()})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--identities", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=1_000_000)
    ap.add_argument("--centres", type=int, default=20_000)
    ap.add_argument("--ann", type=int, default=200_000)
    ap.add_argument("--max-pairs", type=int, default=core.DEFAULT_MAX_PAIRS)
    ap.add_argument("--db", type=int, default=0, help="also run the audit through MongoDB on this many samples")
    ap.add_argument("--db-only", action="store_true", help="with --db: only the MongoDB part")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; faiss "
          f"{getattr(search.faiss, '__version__', None)}, GPUs for faiss: {search.gpu_count()}")
    with tempfile.TemporaryDirectory(prefix="faceaudit-bench-identity-") as folder:
        path = os.path.join(folder, "vectors.npy")
        t = time.perf_counter()
        labels, synthetic, planted = build(path, args.n, args.identities, DIM)
        print(f"built {args.n} x {DIM} vectors in {args.identities} identities in {time.perf_counter() - t:.1f} s")
        if args.db_only:
            print_db_audit(path, labels, synthetic, min(args.db, args.n), args.max_pairs)
            return
        floor(path)  # warm the page cache: the floor and the audit read the same way
        f = min(floor(path) for _ in range(2))
        a, outcome, tagged_outliers = audit(path, labels, synthetic, args.max_pairs)
        r = outcome.result
        syn = r["sources"]["synth"]
        top_leaks = {p["identity"] for p in r["leakage"]["synth"]["top"][:10]}
        print(f"floor (read every vector once, {CHUNK}-row chunks): {f:.2f} s ({args.n / f:,.0f} vectors/s)")
        print(f"audit, every metric and tag set, one run: {a:.2f} s = {a / f:.2f}x the floor (target <= 3x)")
        print(f"  synth: EER {syn['eer']:.4f}, d' {syn['d_prime']:.2f}, uniqueness {syn['uniqueness']:.4f}, "
              f"consistency {syn['consistency']:.4f}, {syn['collision_pairs']} colliding pairs; impostor: "
              f"{syn['impostor']['sampling']}")
        print(f"  planted: {len(top_leaks & {f'id{k:06d}' for k in planted['leaks']})}/10 leaks in the top 10; "
              f"collision first: {syn['collisions'][0]['identity_a']}-{syn['collisions'][0]['identity_b']}; "
              f"{tagged_outliers} images below the threshold (10 planted wrong faces); "
              f"leaking identities {len(outcome.leaking['synth'])}")
        times = leakage_search(args.queries, args.centres, DIM)
        print(f"leakage search, {args.queries} images vs {args.centres} real centres (k=1, exact): FAISS IndexFlatIP "
              f"{times['faiss']:.2f} s, numpy {times['numpy']:.2f} s (numpy / FAISS = {times['numpy'] / times['faiss']:.2f})")
        kind, build_s, rec = recall(path, min(args.ann, args.n))
        print(f"approximate index over {min(args.ann, args.n)} images: {kind}, built in {build_s:.1f} s, "
              f"recall@10 vs exact on 1000 queries {rec:.4f}")
        if args.db:
            print_db_audit(path, labels, synthetic, min(args.db, args.n), args.max_pairs)


if __name__ == "__main__":
    main()
