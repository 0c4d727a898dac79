"""Inference speed: the MAC's forward pass alone vs the whole engine from JPEG files on disk.

Needs torch and torchvision only (no FiftyOne, no MongoDB): run it on a GPU machine with
``PYTHONPATH=src python bench/infer.py``. In one run it measures

(a) ``MAC.predict`` on uint8 batches already on the device (backbone + M stochastic head passes):
    the limit;
(b) ``faceaudit.inference.Engine`` from JPEG files (read, decode, resize, copy, predict);

and prints images/s for both and the ratio (b)/(a). Target on a GPU: (b) >= 0.8 (a), and
(a) >= 10,000 images/s for IResNet-50 at 112x112 on one H100.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torchvision

from faceaudit.inference import Engine, default_workers, resolve_device
from faceaudit.model import MAC, MACConfig


def write_jpegs(folder: str, n: int, size: int) -> list[str]:
    """``n`` distinct smooth 112x112 JPEGs (~4-6 KB each, like aligned face crops)."""
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(n):
        low = torch.rand(3, 14, 14, generator=gen) * 255
        image = torch.nn.functional.interpolate(low[None], size=(size, size), mode="bicubic")[0]
        image = (image + torch.randn(3, size, size, generator=gen) * 8).clamp(0, 255).to(torch.uint8)
        path = os.path.join(folder, f"{i:06d}.jpg")
        torchvision.io.write_jpeg(image, path, quality=90)
        paths.append(path)
    return paths


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_forward(model: MAC, device, batch_size: int, batches: int, passes: int) -> float:
    x = torch.randint(0, 256, (batch_size, 3, 112, 112), dtype=torch.uint8, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for _ in range(2):
            model.predict(x, passes)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            model.predict(x, passes)
        sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def bench_engine(engine: Engine, paths: list[str]) -> float:
    list(engine.run(paths[: engine.batch_size * 2]))  # warm-up (workers, cudnn autotune)
    sync(engine.device)
    start = time.perf_counter()
    n = sum(len(r.indices) for r in engine.run(paths))
    sync(engine.device)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="iresnet50")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, help="JPEG files (default 20000 on GPU, 256 on CPU)")
    parser.add_argument("--batch-size", type=int, help="default 512 on GPU, 32 on CPU")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--passes", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    n = args.n or (20000 if gpu else 256)
    batch_size = args.batch_size or (512 if gpu else 32)
    if gpu:
        torch.backends.cudnn.benchmark = True
    model = MAC(MACConfig(backbone=args.backbone, mc_passes=args.passes)).eval().to(device)
    if gpu:
        model = model.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, n, 112)
        forward = bench_forward(model, device, batch_size, max(4, n // batch_size), args.passes)
        engine = Engine(model, str(device), batch_size, args.workers, args.passes)
        whole = bench_engine(engine, paths)
    name = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}, torchvision {torchvision.__version__}")
    print(f"model: {args.backbone} at 112x112, {args.passes} MC passes, batch {batch_size}, "
          f"{engine.workers if args.workers is None else args.workers} workers "
          f"(default {default_workers()}), {n} JPEGs, GPU decode: {engine.gpu_decode}")
    print(f"(a) forward on device tensors: {forward:10,.0f} images/s")
    print(f"(b) engine from JPEG files:    {whole:10,.0f} images/s")
    print(f"(b)/(a): {whole / forward:.2f}  (target >= 0.80 on a GPU)")


if __name__ == "__main__":
    main()
