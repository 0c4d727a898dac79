"""Scaling out annotation: 1 worker vs 2 ``--shard`` workers on one mongod, and the database's
own cost per labelled sample.

In one run, on N samples (default 20,000; image files are links to one real face JPEG):

1. one worker (``iter_annotate``, shard 0/1) labels all N; then the labels are removed and
2. two workers (shards 0/2 and 1/2, separate processes started together) label them again.

The model is a stand-in that costs a fixed time per image (``--cost-ms``, sleeping like a GPU
kernel the CPU waits on), so the model, not the database, is the bottleneck as it is on a GPU
node; everything else is the real path: selection streamed from MongoDB, images read and decoded
by a DataLoader worker, labels written back in bulk.

3. The database-side cost per labelled sample, on its own (no model, no images): streaming the
   selection (ids + paths in ``_id`` chunks) and writing 48 label fields per sample with
   ``write_labels``; its inverse is the rate one mongod sustains for one writer, which says how
   many GPU workers at 10,000 images/s each it can feed.

Prints images/s for 1 and 2 workers and the ratio (target >= 1.7), then the database figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from faceaudit.attributes import ATTRIBUTES  # noqa: E402

DATASET = "faceaudit-bench-scale"


@dataclass
class StandInConfig:
    attributes: tuple[str, ...] = ATTRIBUTES
    input_size: int = 112
    mc_passes: int = 1
    threshold: float = 0.6


class StandIn(torch.nn.Module):
    """Costs ``cost_ms`` per image; labels each image by its mean brightness (deterministic)."""

    def __init__(self, cost_ms: float):
        super().__init__()
        self.cfg, self.cost = StandInConfig(), cost_ms / 1000

    @torch.no_grad()
    def predict(self, images: torch.Tensor, passes=None, threshold=None):
        time.sleep(self.cost * len(images))
        level = images.float().mean(dim=(1, 2, 3), keepdim=False) / 255  # (B,)
        signed = (level[:, None] * 2 - 1).expand(-1, len(ATTRIBUTES)).contiguous()
        states = torch.where(signed.abs() >= 0.6, signed.sign(), torch.zeros_like(signed)).to(torch.int8)
        return states, signed


def worker(shard: str, cost_ms: float, batch_size: int) -> None:
    """One shard worker: the real ``iter_annotate`` with the stand-in model; prints its timing."""
    from faceaudit import params
    from faceaudit.inference import Engine
    from faceaudit.progress import drive
    from fiftyone_plugin import annotate

    annotate._build_engine = lambda *a, **k: (Engine(StandIn(cost_ms), "cpu", batch_size, workers=1), "stand-in")
    start = time.time()
    report = drive(annotate.iter_annotate(DATASET, shard=params.shard(shard), batch_size=batch_size))
    print(json.dumps({"shard": shard, "labelled": report.labelled, "start": start, "end": time.time()}))


def make_dataset(n: int, folder: str):
    import fiftyone as fo

    from faceaudit.demo import lfw_faces
    from faceaudit.readers import FaceRecord
    from fiftyone_plugin import labels
    from fiftyone_plugin.ingest import add_records
    from PIL import Image

    face = os.path.join(folder, "face.jpg")
    Image.fromarray(lfw_faces()[0]).save(face, quality=92)
    paths = [os.path.join(folder, f"{i:07d}.jpg") for i in range(n)]
    for p in paths:
        os.symlink(face, p)
    ds = fo.Dataset(DATASET, overwrite=True)
    add_records(ds, (FaceRecord(p, str(i // 50), None) for i, p in enumerate(paths)), "bench", "synthetic",
                check_images=False)
    labels.ensure_label_schema(ds)
    return ds


def unlabel(ds) -> None:
    from fiftyone_plugin import labels

    ds._sample_collection.update_many({}, {"$unset": {f: "" for f in (labels.CODE_FIELD, *labels.LABEL_FIELDS)}})


def run_workers(shards: list[str], cost_ms: float, batch_size: int) -> tuple[float, int]:
    """Start one process per shard at once; returns (wall seconds first start -> last end, labelled)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", s, "--cost-ms", str(cost_ms),
                               "--batch-size", str(batch_size)], stdout=subprocess.PIPE, text=True)
             for s in shards]
    results = []
    for p in procs:
        out, _ = p.communicate()
        assert p.returncode == 0, out
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return wall, sum(r["labelled"] for r in results)


def database_cost(ds, n: int) -> tuple[float, float]:
    """Seconds per sample to stream the selection and to write the labels (no model, no images)."""
    from fiftyone_plugin import labels
    from fiftyone_plugin.annotate import iter_chunks, todo_view

    unlabel(ds)
    start = time.perf_counter()
    ids = [i for chunk_ids, _ in iter_chunks(todo_view(ds.view())) for i in chunk_ids]
    select = (time.perf_counter() - start) / n
    rng = np.random.default_rng(0)
    states = rng.integers(-1, 2, size=(n, len(ATTRIBUTES))).astype(np.int8)
    start = time.perf_counter()
    labels.write_labels(ds, ids, states, states * 0.9)
    write = (time.perf_counter() - start) / n
    return select, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--cost-ms", type=float, default=2.0, help="stand-in model time per image")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.cost_ms, args.batch_size)

    import fiftyone as fo  # noqa: F401 - starts the database service this run's workers share

    with tempfile.TemporaryDirectory(prefix="faceaudit-bench-scale-") as folder:
        ds = make_dataset(args.n, folder)
        one, labelled = run_workers(["0/1"], args.cost_ms, args.batch_size)
        assert labelled == args.n, labelled
        unlabel(ds)
        two, labelled = run_workers(["0/2", "1/2"], args.cost_ms, args.batch_size)
        assert labelled == args.n, labelled
        select, write = database_cost(ds, args.n)
        ds.delete()

    n = args.n
    model_rate = 1000 / args.cost_ms
    db_rate = 1 / (select + write)
    print(f"samples: {n}; stand-in model {args.cost_ms:g} ms/image (at most {model_rate:,.0f} images/s per worker)")
    print(f"1 worker:           {n / one:8,.0f} images/s")
    print(f"2 shard workers:    {n / two:8,.0f} images/s")
    print(f"2 workers / 1:      {one / two:8.2f}  (target >= 1.7)")
    print(f"database per labelled sample: selection {select * 1e6:.1f} us + write {write * 1e6:.1f} us "
          f"= {(select + write) * 1e6:.1f} us -> {db_rate:,.0f} samples/s for one client")
    print(f"GPU workers at 10,000 images/s one mongod feeds at this rate: {db_rate / 10_000:.1f}")


if __name__ == "__main__":
    main()
