"""Updates split over _id slices and run concurrently, on the test run's mongod: every matching
document is updated exactly once, whatever the slicing, and nothing else is touched."""

from __future__ import annotations

import pytest
from pymongo import UpdateOne

from fiftyone_plugin import bulk


@pytest.mark.parametrize("n, parts", [(0, 2), (100, 2), (25_000, 1), (25_000, 2), (25_000, 3)])
def test_update_in_parts_touches_each_match_once(collection, n, parts):
    if n:
        collection.insert_many([{"k": k, "hits": 0} for k in range(n)])
    slices = bulk.id_ranges(collection, parts)
    assert len(slices) == (parts if n >= bulk._MIN_SPLIT else 1)
    assert sum(collection.count_documents(s) for s in slices) == n  # a partition: no gaps, no overlap
    matched, modified = bulk.update_many_in_parts(collection, {"k": {"$mod": [3, 0]}}, {"$inc": {"hits": 1}}, parts)
    expected = len(range(0, n, 3))
    assert matched == modified == expected
    assert collection.count_documents({"hits": 1}) == expected
    assert collection.count_documents({"hits": {"$nin": [0, 1]}}) == 0
    assert collection.count_documents({"hits": 1, "k": {"$not": {"$mod": [3, 0]}}}) == 0


def test_bulk_write_in_parts_applies_every_op(collection):
    collection.insert_many([{"k": k} for k in range(5000)])
    ops = [UpdateOne({"k": k}, {"$set": {"v": k * 2}}) for k in range(0, 5000, 2)]
    bulk.bulk_write_in_parts(collection, ops, chunk=300)
    assert collection.count_documents({"v": {"$exists": True}}) == 2500
    assert all(d["v"] == 2 * d["k"] for d in collection.find({"v": {"$exists": True}}))
