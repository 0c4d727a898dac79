"""Reading fixed-size projected documents from raw command replies, on the test run's mongod:
the rows equal what pymongo decodes, across batch and array-key-length boundaries, and anything
not of the promised size is refused."""

from __future__ import annotations

import bson
import numpy as np
import pytest

from fiftyone_plugin import rawscan


SIZE = len(bson.encode({"c": "p" * 47}))  # 60 bytes


def _codes(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(row) for row in rng.choice(list("pnu"), size=(n, 47))]


@pytest.mark.parametrize("n, batch", [(0, 10), (1, 10), (9, 10), (10, 10), (11, 7), (1234, 100), (1234, 5000)])
def test_rows_equal_the_decoded_documents(collection, n, batch):
    codes = _codes(n)
    if codes:
        collection.insert_many([{"k": k, "c": c} for k, c in enumerate(codes)])
    command = {"find": collection.name, "filter": {}, "projection": {"_id": 0, "c": 1}, "sort": {"k": 1}}
    docs = rawscan.fixed_size_docs(collection.database, command, SIZE, batch_size=batch)
    assert docs.shape == (n, SIZE)
    assert [bson.decode(row.tobytes())["c"] for row in docs] == codes
    # the same through an aggregation, whose first reply comes from the "cursor" option
    pipeline = [{"$sort": {"k": 1}}, {"$project": {"_id": 0, "c": 1}}]
    agg = rawscan.fixed_size_docs(collection.database, {"aggregate": collection.name, "pipeline": pipeline},
                                  SIZE, batch_size=batch)
    assert (agg == docs).all()


def test_documents_of_another_size_are_refused(collection):
    collection.insert_many([{"k": k, "c": c} for k, c in enumerate(_codes(30))] + [{"k": 30, "c": "short"}])
    command = {"find": collection.name, "filter": {}, "projection": {"_id": 0, "c": 1}, "sort": {"k": 1}}
    with pytest.raises(rawscan.RawScanError, match=f"not all {SIZE} bytes"):
        rawscan.fixed_size_docs(collection.database, command, SIZE, batch_size=1000)


def test_a_cursor_left_early_is_killed(collection):
    docs = [{"k": k, "c": c} for k, c in enumerate(_codes(100))]
    docs[25]["c"] = "short"
    collection.insert_many(docs)
    command = {"find": collection.name, "filter": {}, "projection": {"_id": 0, "c": 1}, "sort": {"k": 1}}
    before = _open_cursors(collection)
    with pytest.raises(rawscan.RawScanError):
        rawscan.fixed_size_docs(collection.database, command, SIZE, batch_size=10)  # fails in batch 3 of 10
    assert _open_cursors(collection) == before


def _open_cursors(collection) -> int:
    status = collection.database.client.admin.command("serverStatus")
    return status["metrics"]["cursor"]["open"]["total"]


def test_scans_in_threads_keep_their_own_cursors(collection):
    """Counting scans sources two at a time: each getMore must reach its own cursor."""
    from concurrent.futures import ThreadPoolExecutor

    codes = _codes(2000)
    collection.insert_many([{"k": k % 4, "n": k, "c": c} for k, c in enumerate(codes)])

    def scan(k):
        command = {"find": collection.name, "filter": {"k": k}, "projection": {"_id": 0, "c": 1}, "sort": {"n": 1}}
        rows = rawscan.fixed_size_docs(collection.database, command, SIZE, batch_size=20)
        return [bson.decode(row.tobytes())["c"] for row in rows]

    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            assert list(pool.map(scan, range(4))) == [codes[k::4] for k in range(4)]
