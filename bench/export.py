"""Export and rebalance speed.

Export (the core, :func:`faceaudit.export.export`, on ``--n`` tiny 112x112 JPEGs written here,
``--per`` images per identity):

* ``folders`` with copies and with hard links, against ``cp -r`` of the same tree;
* ``rec``, against a plain loop over the files writing the same records (read the file, pack
  the IRHeader, write magic / length / payload / padding and the .idx line).

The files are read once by a first ``cp -r`` so that every timed run finds them in the page
cache, and each timed step starts after ``sync``. Targets: folders <= 1.5x ``cp -r``, rec <= 1.5x the plain loop.

Rebalance (:func:`faceaudit.rebalance.greedy`): ``--identities`` synthetic identities of 3-9
images over 5 attributes (243 joint states) drawn from a skewed distribution, toward a real one:
time and KL before/after; and on small cases (``--small`` identities, every subset tried by
:func:`faceaudit.rebalance.exhaustive`) how much of the best possible improvement greedy reaches.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import struct
import subprocess
import tempfile
import time

import numpy as np

from faceaudit import export as core
from faceaudit import rebalance as rb
from faceaudit.progress import drive
from faceaudit.recordio import MAGIC


def write_images(root: str, n: int, per: int) -> list[core.Item]:
    from PIL import Image

    blobs = []
    for k in range(16):
        buf = io.BytesIO()
        Image.new("RGB", (112, 112), (16 * k, 255 - 16 * k, 128)).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    items = []
    for i in range(n):
        identity = f"id{i // per:06d}"
        folder = os.path.join(root, identity)
        if i % per == 0:
            os.makedirs(folder)
        path = os.path.join(folder, f"{i % per:04d}.jpg")
        with open(path, "wb") as f:
            f.write(blobs[i % len(blobs)])
        items.append(core.Item(path, "bench", identity))
    return items


def timed(fn) -> float:
    """Seconds of ``fn()``, after ``sync`` (the previous step's dirty pages are not this one's cost)."""
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_rec(items: list[core.Item], out: str) -> None:
    os.makedirs(out)
    with open(os.path.join(out, "train.rec"), "wb") as rec, open(os.path.join(out, "train.idx"), "w") as idx:
        label, last = -1, None
        for key, item in enumerate(items, 1):
            if item.identity != last:
                label, last = label + 1, item.identity
            with open(item.filepath, "rb") as f:
                payload = struct.pack("<IfQQ", 0, float(label), key, 0) + f.read()
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(struct.pack("<II", MAGIC, len(payload)))
            rec.write(payload + b"\x00" * (-len(payload) % 4))


def bench_export(n: int, per: int, work: str) -> None:
    src = os.path.join(work, "src")
    start = time.perf_counter()
    items = write_images(src, n, per)
    print(f"wrote {n} tiny JPEGs in {n // per} identity folders in {time.perf_counter() - start:.1f} s")
    subprocess.run(["cp", "-r", src, os.path.join(work, "warm")], check=True)  # into the page cache
    t = {
        "cp -r": timed(lambda: subprocess.run(["cp", "-r", src, os.path.join(work, "cp")], check=True)),
        "folders copy": timed(lambda: drive(core.export(os.path.join(work, "copy"), lambda: items,
                                                        core.check_options()))),
        "folders hardlink": timed(lambda: drive(core.export(os.path.join(work, "hard"), lambda: items,
                                                            core.check_options(link="hardlink")))),
        "plain rec loop": timed(lambda: plain_rec(items, os.path.join(work, "plain"))),
        "rec": timed(lambda: drive(core.export(os.path.join(work, "rec"), lambda: items,
                                               core.check_options(format="rec")))),
    }
    for name, seconds in t.items():
        print(f"{name:>17}: {seconds:7.2f} s  {n / seconds:9.0f} images/s")
    print(f"folders copy / cp -r     = {t['folders copy'] / t['cp -r']:.2f}x (target <= 1.5x)")
    print(f"folders hardlink / cp -r = {t['folders hardlink'] / t['cp -r']:.2f}x (target <= 1.5x)")
    print(f"rec / plain loop         = {t['rec'] / t['plain rec loop']:.2f}x (target <= 1.5x)")


def skewed_case(rng, identities: int, states: int, real_samples: int):
    real = rng.multinomial(real_samples, rng.dirichlet(np.ones(states)))
    skew = rng.dirichlet(np.ones(states) * 0.5)
    sizes = rng.integers(3, 10, identities)
    mixed = [skew if rng.random() < 0.7 else rng.dirichlet(np.ones(states)) for _ in range(identities)]
    counts = np.array([rng.multinomial(s, p) for s, p in zip(sizes, mixed)])
    return real, counts, sizes


def bench_rebalance(identities: int, small: int, trials: int, keep: float) -> None:
    rng = np.random.default_rng(0)
    real, counts, sizes = skewed_case(rng, identities, 3 ** 5, 20 * identities)
    start = time.perf_counter()
    kept = rb.greedy(real, counts, sizes, keep)
    seconds = time.perf_counter() - start
    print(f"rebalance {identities} identities, 5 attributes (243 joint states), keep {keep}: {seconds:.1f} s; "
          f"KL {rb.kl(real, counts.sum(0), 0.5):.4f} -> {rb.kl(real, counts[kept].sum(0), 0.5):.4f}, "
          f"kept {sizes[kept].sum() / sizes.sum():.1%} of the samples")
    reached = []
    for _ in range(trials):
        real, counts, sizes = skewed_case(rng, small, 3 ** 2, 2000)
        g, e = rb.greedy(real, counts, sizes, keep), rb.exhaustive(real, counts, sizes, keep)
        before, kg, ke = (rb.kl(real, counts[m].sum(0), 0.5) for m in (np.ones(small, bool), g, e))
        reached.append((before - kg) / (before - ke) if before > ke else 1.0)
    reached = np.array(reached)
    print(f"vs the exhaustive optimum on {trials} cases of {small} identities, 2 attributes: greedy reaches "
          f"{np.median(reached):.1%} of the best improvement (median), {reached.min():.1%} (worst), "
          f"the optimum itself in {np.mean(reached > 0.999):.0%} of the cases")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="images to export")
    parser.add_argument("--per", type=int, default=20, help="images per identity")
    parser.add_argument("--identities", type=int, default=20_000, help="identities to rebalance")
    parser.add_argument("--small", type=int, default=16, help="identities of the exhaustive cases")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--work", help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="faceaudit-bench-export-")
    try:
        bench_export(args.n, args.per, work)
        bench_rebalance(args.identities, args.small, args.trials, args.keep)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
