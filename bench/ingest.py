"""Ingest speed: this project's loader against Dataset.add_samples and raw pymongo insert_many.

Loads N records with synthetic file paths (the files need not exist; image checks are off, as
they measure the disk, not the database) three ways, in one run, for the same documents:

* faceaudit: ``fiftyone_plugin.ingest.add_records`` (what ``faceaudit load`` writes with);
* FiftyOne: ``Dataset.add_samples`` with ``fo.Sample`` objects;
* raw: ``insert_many`` of prebuilt documents into a scratch collection with the same indexes,
  including the unique ``(source, filepath)`` index that keeps concurrent loads apart (the limit).

Raw and faceaudit run ``--repeat`` times, interleaved, and the best run of each counts: on a
shared machine the slowest runs measure the neighbours, not the code.

Usage: .venv/bin/python bench/ingest.py [--n 200000] [--repeat 3]
Targets: faceaudit >= 50% of raw, >= 10x add_samples. The last lines print the rates and ratios.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import fiftyone as fo  # noqa: E402
from bson import ObjectId  # noqa: E402

from faceaudit.readers import FaceRecord  # noqa: E402
from fiftyone_plugin.ingest import CHUNK_SIZE, add_records  # noqa: E402


def make_records(n: int) -> list[FaceRecord]:
    return [FaceRecord(f"/bench/faces/{i // 50:06d}/{i % 50:03d}.jpg", f"{i // 50:06d}", None)
            for i in range(n)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_raw(records) -> float:
    """The limit: the same documents, prebuilt before the clock starts, into a scratch collection
    with the same default indexes a FiftyOne sample collection has."""
    db = fo.core.odm.get_db_conn()
    coll = db["faceaudit_bench_scratch"]
    coll.drop()
    for field in ("filepath", "created_at", "last_modified_at", "source", "domain", "group"):
        coll.create_index(field)
    coll.create_index([("source", 1), ("identity", 1)])
    coll.create_index([("source", 1), ("filepath", 1)], unique=True,
                      partialFilterExpression={"source": {"$type": "string"}})
    now, dataset_id = datetime.datetime.now(), ObjectId()
    docs = [{"_id": ObjectId(), "filepath": r.filepath, "tags": [], "_media_type": "image",
             "_rand": 0.9995, "_dataset_id": dataset_id, "created_at": now, "last_modified_at": now,
             "source": "bench", "domain": "synthetic", "identity": r.identity, "group": None}
            for r in records]

    def insert():
        for i in range(0, len(docs), CHUNK_SIZE):
            coll.insert_many(docs[i:i + CHUNK_SIZE], ordered=False)

    seconds = timed(insert)
    assert coll.count_documents({}) == len(records)
    coll.drop()
    return seconds


def bench_faceaudit(records) -> float:
    ds = fo.Dataset("faceaudit-bench-ingest", overwrite=True)
    seconds = timed(lambda: add_records(ds, records, "bench", "synthetic", check_images=False))
    assert len(ds) == len(records)
    ds.delete()
    return seconds


def bench_add_samples(records) -> float:
    ds = fo.Dataset("faceaudit-bench-add-samples", overwrite=True)
    for f in ("source", "domain", "identity", "group"):
        ds.add_sample_field(f, fo.StringField)

    def add():
        samples = [fo.Sample(filepath=r.filepath, source="bench", domain="synthetic",
                             identity=r.identity, group=None) for r in records]
        ds.add_samples(samples, progress=False)

    seconds = timed(add)
    assert len(ds) == len(records)
    ds.delete()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of raw and faceaudit; the best counts")
    args = parser.parse_args()
    n = args.n
    records = make_records(n)
    fo.list_datasets()  # start the database before timing
    raw_runs, our_runs = [], []
    for _ in range(args.repeat):
        raw_runs.append(n / bench_raw(records))
        our_runs.append(n / bench_faceaudit(records))
    raw, ours = max(raw_runs), max(our_runs)
    add_samples = n / bench_add_samples(records)
    print(f"samples: {n}, best of {args.repeat} (raw runs: {', '.join(f'{r:,.0f}' for r in raw_runs)}; "
          f"faceaudit runs: {', '.join(f'{r:,.0f}' for r in our_runs)})")
    print(f"raw insert_many:      {raw:10,.0f} samples/s")
    print(f"faceaudit add_records:{ours:10,.0f} samples/s")
    print(f"Dataset.add_samples:  {add_samples:10,.0f} samples/s")
    print(f"faceaudit / raw:         {ours / raw:6.2f}  (target >= 0.50)")
    print(f"faceaudit / add_samples: {ours / add_samples:6.2f}  (target >= 10)")


if __name__ == "__main__":
    main()
