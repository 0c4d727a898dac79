"""Bulk helpers for writing FiftyOne sample documents directly with pymongo.

Building documents is the client-side cost of a bulk load; at ~100K documents/s per core the
per-document Python calls matter. ``bson.ObjectId()`` alone costs ~2.5 us (a lock, a pid check,
struct packing); :func:`new_object_ids` makes a chunk's ids with numpy in ~0.9 us each, laid out
as the ObjectId spec says: 4-byte timestamp, 5 random bytes (fresh per call) and a 3-byte counter.
"""

from __future__ import annotations

import os
import time

import numpy as np
from bson import ObjectId

_RNG = np.random.default_rng()


def new_object_ids(n: int) -> list[ObjectId]:
    """``n`` distinct ObjectIds for documents created now."""
    raw = np.empty((n, 12), np.uint8)
    raw[:, :4] = np.frombuffer(int(time.time()).to_bytes(4, "big"), np.uint8)
    raw[:, 4:9] = np.frombuffer(os.urandom(5), np.uint8)
    start = int.from_bytes(os.urandom(3), "big")
    counter = (np.arange(start, start + n, dtype=np.uint64) & 0xFFFFFF).astype(">u4")
    raw[:, 9:] = counter.view(np.uint8).reshape(n, 4)[:, 1:]
    flat = raw.tobytes()
    return [ObjectId(flat[i:i + 12]) for i in range(0, 12 * n, 12)]


def fiftyone_rand(n: int) -> list[float]:
    """Values for FiftyOne's ``_rand`` sample field, drawn as FiftyOne draws them
    (``fiftyone.core.odm.sample._generate_rand``: uniform on [0.999, 1.0))."""
    return (_RNG.random(n) * 0.001 + 0.999).tolist()


# mongod applies one update_many with one thread: two halves of the collection at once halve
# the time of rewriting every document (1,000,000 samples: 40-49 s in one, 24-26 s in two)
UPDATE_PARTS = 2
_MIN_SPLIT = 20_000  # below this, splitting costs more than it saves


def id_ranges(coll, parts: int = UPDATE_PARTS) -> list[dict]:
    """``parts`` filters on ``_id`` that cover the collection in slices of about equal size
    (cut points found by skipping along the ``_id`` index)."""
    n = coll.estimated_document_count()
    if parts <= 1 or n < _MIN_SPLIT:
        return [{}]
    cuts = []
    for k in range(1, parts):
        doc = next(iter(coll.find({}, {"_id": 1}).sort("_id", 1).skip(n * k // parts).limit(1)), None)
        if doc is not None and (not cuts or doc["_id"] > cuts[-1]):
            cuts.append(doc["_id"])
    bounds = [None, *cuts, None]
    return [{"_id": {**({"$gte": lo} if lo is not None else {}), **({"$lt": hi} if hi is not None else {})}}
            if (lo, hi) != (None, None) else {} for lo, hi in zip(bounds, bounds[1:])]


def update_many_in_parts(coll, query: dict, update, parts: int = UPDATE_PARTS) -> tuple[int, int]:
    """``coll.update_many(query, update)`` run as ``parts`` concurrent updates over ``_id``
    slices; returns (matched, modified). Each slice is atomic per document, as update_many is."""
    from concurrent.futures import ThreadPoolExecutor

    slices = id_ranges(coll, parts)
    if len(slices) == 1:
        result = coll.update_many(query, update)
        return result.matched_count, result.modified_count
    with ThreadPoolExecutor(max_workers=len(slices)) as pool:
        results = list(pool.map(lambda s: coll.update_many({"$and": [query, s]}, update), slices))
    return sum(r.matched_count for r in results), sum(r.modified_count for r in results)


def bulk_write_in_parts(coll, ops: list, chunk: int = 1000, parts: int = UPDATE_PARTS) -> None:
    """Unordered ``bulk_write`` of ``ops`` in chunks, ``parts`` chunks in flight at once."""
    from concurrent.futures import ThreadPoolExecutor

    chunks = [ops[i:i + chunk] for i in range(0, len(ops), chunk)]
    with ThreadPoolExecutor(max_workers=max(1, parts)) as pool:
        list(pool.map(lambda c: coll.bulk_write(c, ordered=False), chunks))


def drop_field_indexes(coll, fields) -> None:
    """Drop the single-field indexes on ``fields`` that exist, before a rewrite of every
    document (one sorted build after it instead of a B-tree update per document). An index
    another writer dropped meanwhile is not an error."""
    from pymongo.errors import OperationFailure

    wanted = {(f,) for f in fields}
    for name, info in coll.index_information().items():
        if tuple(k for k, _ in info["key"]) in wanted:
            try:
                coll.drop_index(name)
            except OperationFailure:
                pass


class BackgroundWrites:
    """Bulk writes run on one background thread while the caller reads and computes the next
    chunk (pymongo waits on the socket without the GIL, numpy computes without it). At most
    ``pending`` writes queue up, so memory stays bounded; :meth:`close` waits for every write
    and raises the first error (a failed write is never silently dropped)."""

    def __init__(self, pending: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faceaudit-writes")
        self._futures: list = []
        self._pending = max(1, pending)

    def submit(self, fn, *args) -> None:
        while len(self._futures) >= self._pending:
            self._futures.pop(0).result()  # raises the write's error here
        self._futures.append(self._pool.submit(fn, *args))

    def close(self) -> None:
        try:
            for future in self._futures:
                future.result()
        finally:
            self._futures.clear()
            self._pool.shutdown(wait=True)
