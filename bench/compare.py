"""Comparison speed: counting + statistics for a whole labelled dataset, against FiftyOne idioms.

Builds N samples (default 1,000,000) over 4 sources (2 real, 2 synthetic) with 47 random
attribute labels each, written in bulk (documents carry their labels from the first insert), then
measures in one run:

* faceaudit cold: ``compute_comparison`` with an empty cache (counts from ``mac_code`` + stats);
* faceaudit cached: the same call again (labels unchanged);
* ``count_values`` once per attribute (on the attribute's state: one character of the code);
* ``values()`` of source and code, counted in numpy;
* the covered index scans alone, read through pymongo's ``find_raw_batches`` and through
  :mod:`fiftyone_plugin.rawscan` (one source after another, both);
* then scoring ``realness_nll`` for every sample (against the floor of any per-sample write:
  one constant set on every sample), tagging the top 1000 synthetic ones, identity
  consistency (written per sample) and clearing the tag.

Target on a 2-core machine: under 3 s cold and 0.3 s cached at 1,000,000 samples.
Usage: .venv/bin/python bench/compare.py [--n 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from fiftyone import ViewField as F  # noqa: E402

from faceaudit.attributes import ATTRIBUTES  # noqa: E402
from fiftyone_plugin import bulk, counts, labels, rawscan, schema  # noqa: E402
from fiftyone_plugin.bulk import fiftyone_rand, new_object_ids  # noqa: E402
from fiftyone_plugin.compare import compute_comparison  # noqa: E402

NAME = "faceaudit-bench-compare"
SOURCES = (("real-a", "real"), ("real-b", "real"), ("syn-a", "synthetic"), ("syn-b", "synthetic"))


def build(n: int) -> fo.Dataset:
    """N labelled samples, inserted in chunks with all their fields."""
    ds = fo.Dataset(NAME, overwrite=True, persistent=True)
    schema.ensure_schema(ds)
    labels.ensure_label_schema(ds)
    for s, d in SOURCES:
        schema.record_source(ds, s, root=f"/bench/{s}", domain=d, format="folders")
    rng = np.random.default_rng(0)
    coll, now, chunk = ds._sample_collection, dt.datetime.now(), 20_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        states = rng.choice(np.array([1, -1, 0], np.int8), size=(m, 47), p=[0.3, 0.5, 0.2])
        signed = states * rng.uniform(0.6, 1.0, (m, 47))
        codes = labels.encode_codes(states)
        ids, rands = new_object_ids(m), fiftyone_rand(m)
        src = rng.integers(0, len(SOURCES), m)
        docs = []
        for k in range(m):
            s, d = SOURCES[src[k]]
            doc = {"_id": ids[k], "filepath": f"/bench/{s}/{start + k:07d}.jpg", "tags": [], "_media_type": "image",
                   "_rand": rands[k], "_dataset_id": ds._doc.id, "created_at": now, "last_modified_at": now,
                   "source": s, "domain": d, "identity": str((start + k) // 50), "group": None,
                   labels.CODE_FIELD: codes[k]}
            doc.update(zip(labels.LABEL_FIELDS, signed[k].round(4).tolist()))
            docs.append(doc)
        coll.insert_many(docs, ordered=False)
    ds.reload()
    return ds


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def count_values_per_attribute(ds):
    return [ds.count_values(F(labels.CODE_FIELD).substr(start=j, count=1)) for j in range(len(ATTRIBUTES))]


def values_and_numpy(ds):
    sources, codes = ds.values([schema.SOURCE, labels.CODE_FIELD])
    sources = np.array(sources)
    raw = np.frombuffer("".join(codes).encode("ascii"), np.uint8).reshape(-1, 47)
    return {s: counts.count_codes(raw[sources == s]) for s in np.unique(sources)}


def scans_pymongo_raw_batches(ds) -> int:
    """The per-source covered index scans, read with pymongo's ``find_raw_batches``."""
    n = 0
    for source in schema.sources_info(ds):
        query = {schema.SOURCE: source, labels.CODE_FIELD: {"$type": "string"}}
        cursor = ds._sample_collection.find_raw_batches(query, {"_id": 0, labels.CODE_FIELD: 1},
                                                        batch_size=rawscan.BATCH_SIZE)
        n += sum(len(b) for b in cursor.hint(labels.COUNTS_INDEX_SPEC)) // counts._CODE_DOC_SIZE
    return n


def scans_rawscan(ds) -> int:
    """The same scans through :mod:`fiftyone_plugin.rawscan`, one source after another."""
    return sum(len(counts._covered_codes(ds, source)) for source in schema.sources_info(ds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the dataset (and reuse it next time)")
    parser.add_argument("--writes-only", action="store_true",
                        help="only the per-sample writes (realness and its two floors), not the counts")
    args = parser.parse_args()
    if fo.dataset_exists(NAME) and len(fo.load_dataset(NAME)) == args.n:
        ds = fo.load_dataset(NAME)
    else:
        build_s, ds = timed(lambda: build(args.n))
        print(f"built {args.n} labelled samples in {build_s:.1f} s")

    if args.writes_only:
        return print_writes(ds, args)
    counts.CACHE.clear()
    cold, (_, result) = timed(lambda: compute_comparison(ds, identities=False))
    cached, _ = timed(lambda: compute_comparison(ds, identities=False))
    identities_cold, _ = timed(lambda: compute_comparison(ds))  # + identity consistency (issue 5)
    per_attr, cv = timed(lambda: count_values_per_attribute(ds))
    vals, vn = timed(lambda: values_and_numpy(ds))
    pymongo_s, pymongo_n = timed(lambda: scans_pymongo_raw_batches(ds))
    rawscan_s, rawscan_n = timed(lambda: scans_rawscan(ds))
    assert pymongo_n == rawscan_n == args.n
    # all three ways count the same thing
    assert sum(result["attributes"]["Male"]["counts"][s]["positive"] for s in result["sources"]) == cv[0].get("p", 0)
    assert int(vn["syn-a"][0, 0]) == result["attributes"]["Male"]["counts"]["syn-a"]["positive"]
    from fiftyone_plugin import outliers

    # a fresh alpha each run: every score changes, so every document is really rewritten
    # (mongod skips a write that sets the value already there)
    alpha = 0.5 + float(np.random.default_rng().uniform(0, 1e-3))
    score_s, _ = timed(lambda: outliers.score_realness(ds, alpha=alpha))
    tag_s, tagged = timed(lambda: outliers.flag_outliers(ds, top=1000))
    floor_s, _ = timed(lambda: write_constant(ds, alpha))
    consistency_s, _ = timed(lambda: outliers.identity_consistency(ds.view(), write=True))
    clear_s, _ = timed(lambda: outliers.clear_outliers(ds))
    assert tagged == 1000
    if not args.keep:
        ds.delete()
    print(f"samples: {args.n}, 4 sources, 47 attributes")
    print(f"realness_nll for all samples:      {score_s:7.2f} s")
    print(f"floor: $set one value on each:     {floor_s:7.2f} s  (realness / floor {score_s / floor_s:.2f}x, target <= 1.5x)")
    print(f"tag top 1000 + saved view:         {tag_s:7.2f} s")
    print(f"identity consistency (+ write):    {consistency_s:7.2f} s")
    print(f"clear the tag:                     {clear_s:7.2f} s")
    print(f"faceaudit cold (counts + stats):   {cold:7.2f} s  (target < 3)")
    print(f"faceaudit cached:                  {cached:7.3f} s  (target < 0.3)")
    print(f"faceaudit + identity consistency:  {identities_cold:7.2f} s  (counts cached)")
    print(f"count_values x 47:                 {per_attr:7.2f} s")
    print(f"values() + numpy:                  {vals:7.2f} s")
    print(f"index scans, find_raw_batches:     {pymongo_s:7.2f} s")
    print(f"index scans, rawscan:              {rawscan_s:7.2f} s  ({pymongo_s / rawscan_s:.1f}x faster)")
    print(f"count_values / faceaudit cold:     {per_attr / cold:7.1f}x")
    print(f"values() / faceaudit cold:         {vals / cold:7.1f}x")


def write_constant(ds, value: float, pipeline: bool = False) -> None:
    """The floor of any per-sample write: one constant set on every labelled sample, as a
    modifier update (``{"$set": ...}``) or as a pipeline update (``[{"$set": ...}]``, the form
    any value computed per document from its fields needs, as ``realness_nll`` does)."""
    update = {"$set": {"_bench_touch": value}}
    if pipeline:
        update = [{"$set": {"_bench_touch": {"$literal": value}}}]
    bulk.update_many_in_parts(ds._sample_collection, {labels.CODE_FIELD: {"$type": "string"}}, update)


def print_writes(ds, args) -> None:
    """Realness against both floors, side by side, each rewriting every document (fresh values)."""
    from fiftyone_plugin import outliers

    rng = np.random.default_rng()
    score_s, _ = timed(lambda: outliers.score_realness(ds, alpha=0.5 + float(rng.uniform(0, 1e-3))))
    modifier_s, _ = timed(lambda: write_constant(ds, float(rng.uniform())))
    pipeline_s, _ = timed(lambda: write_constant(ds, float(rng.uniform()), pipeline=True))
    score2_s, _ = timed(lambda: outliers.score_realness(ds, alpha=0.5 + float(rng.uniform(0, 1e-3))))
    # identity consistency: its aggregation alone, then with its per-identity writes
    read_s, _ = timed(lambda: outliers.identity_consistency(ds.view(), write=False))
    written_s, _ = timed(lambda: outliers.identity_consistency(ds.view(), write=True))
    if not args.keep:
        ds.delete()
    print(f"samples: {args.n}")
    print(f"realness_nll (two runs):           {score_s:7.2f} s, {score2_s:7.2f} s")
    print(f"constant, modifier $set:           {modifier_s:7.2f} s  (realness / this {min(score_s, score2_s) / modifier_s:.2f}x)")
    print(f"constant, pipeline $set:           {pipeline_s:7.2f} s  (realness / this {min(score_s, score2_s) / pipeline_s:.2f}x)")
    print(f"identity consistency, read only:   {read_s:7.2f} s")
    print(f"identity consistency + writes:     {written_s:7.2f} s  (writes {written_s - read_s:.2f} s; "
          f"vs the modifier floor {written_s / modifier_s:.2f}x)")


if __name__ == "__main__":
    main()
