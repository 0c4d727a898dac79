"""Label write-back speed: this project's bulk writes vs set_values vs a raw pymongo bulk update.

On N samples (default 100,000) with 47 attribute labels each, in one run:

* faceaudit: ``fiftyone_plugin.labels.write_labels`` (one ``$set`` of all 48 label fields per
  sample, 1,000 samples per ``bulk_write``);
* FiftyOne: ``set_values`` one field at a time, as FiftyOne's public API writes per-field values
  (measured on ``--fields`` of the 47 fields and scaled to 47: all 47 would take many minutes);
* raw: ``bulk_write`` of prebuilt ``UpdateOne`` operations with the same ``$set`` (the limit);
* annotation's selection: the unlabelled samples' ids and paths listed at once (the old way) vs
  streamed in ``_id`` chunks of ``fiftyone_plugin.annotate.CHUNK`` (bounded memory).

Targets: faceaudit >= 50% of raw, >= 20x set_values. The last lines print rates and ratios.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402

from faceaudit.readers import FaceRecord  # noqa: E402
from fiftyone_plugin import labels  # noqa: E402
from fiftyone_plugin.annotate import CHUNK, iter_chunks, todo_view  # noqa: E402
from fiftyone_plugin.ingest import add_records  # noqa: E402


def make_dataset(name: str, n: int) -> fo.Dataset:
    ds = fo.Dataset(name, overwrite=True)
    add_records(ds, (FaceRecord(f"/bench/{i:07d}.jpg", str(i // 50), None) for i in range(n)),
                "bench", "synthetic", check_images=False)
    labels.ensure_label_schema(ds)
    return ds


def random_labels(n: int, seed: int):
    rng = np.random.default_rng(seed)
    states = rng.integers(-1, 2, size=(n, 47)).astype(np.int8)
    signed = np.where(states == 0, rng.uniform(-0.5, 0.5, (n, 47)), states * rng.uniform(0.6, 1, (n, 47)))
    return states, signed


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--fields", type=int, default=3, help="fields set_values writes (scaled to 47)")
    args = parser.parse_args()
    n = args.n
    states, signed = random_labels(n, 0)

    ds = make_dataset("faceaudit-bench-writeback", n)
    listed = timed(lambda: todo_view(ds.view()).values(["_id", "filepath"]))
    streamed = timed(lambda: sum(len(ids) for ids, _ in iter_chunks(todo_view(ds.view()))))
    ids = ds.values("_id")
    ours = timed(lambda: labels.write_labels(ds, ids, states, signed))
    assert ds.exists(labels.CODE_FIELD).count() == n

    raw_ds = make_dataset("faceaudit-bench-writeback-raw", n)
    raw_ids = raw_ds.values("_id")
    ops = labels.label_updates(raw_ids, states, signed)  # prebuilt: not timed
    coll = raw_ds._sample_collection

    def raw_write():
        for i in range(0, n, labels.WRITE_BATCH):
            coll.bulk_write(ops[i:i + labels.WRITE_BATCH], ordered=False)

    raw = timed(raw_write)

    sv_ds = make_dataset("faceaudit-bench-writeback-sv", n)
    sv_ids = sv_ds.values("id")
    fields = labels.LABEL_FIELDS[: args.fields]

    def per_field():
        for j, field in enumerate(fields):
            sv_ds.set_values(field, dict(zip(sv_ids, signed[:, j].tolist())), key_field="id")

    set_values = timed(per_field) * 47 / len(fields)
    for d in (ds, raw_ds, sv_ds):
        d.delete()

    print(f"samples: {n}, 47 attributes each")
    print(f"raw bulk_write:        {n / raw:10,.0f} samples/s")
    print(f"faceaudit write_labels:{n / ours:10,.0f} samples/s")
    print(f"set_values per field:  {n / set_values:10,.0f} samples/s "
          f"(measured on {len(fields)} fields, scaled to 47)")
    print(f"selection listed at once:{n / listed:8,.0f} samples/s; streamed in chunks of "
          f"{CHUNK:,}: {n / streamed:,.0f} samples/s")
    print(f"faceaudit / raw:        {raw / ours:6.2f}  (target >= 0.50)")
    print(f"faceaudit / set_values: {set_values / ours:6.2f}  (target >= 20)")


if __name__ == "__main__":
    main()
