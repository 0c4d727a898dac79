"""Face-embedding throughput: images/s per model, from JPEG files (no FiftyOne, no database).

    python bench/embed.py                     # CPU: dlib and IResNet-50, from JPEG files
    python bench/embed.py --gpu               # CUDA: IResNet-50 bf16, JPEG files end to end vs
                                              # forward on tensors already on the GPU (ratio)

Needs only torch, torchvision, numpy and pillow (plus dlib-bin and face_recognition_models for
the dlib row, which is skipped without them); run from the repository root (``src/`` is put on
the path). The IResNet-50 is randomly initialised: throughput does not depend on the weights.
The images are 112x112 JPEGs (LFW faces from scikit-image when it is installed, else smooth
random images), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def face_arrays(n: int) -> np.ndarray:
    """``n`` 112x112 RGB images: LFW faces (cycled, shifted) when scikit-image is there."""
    try:
        from faceaudit.demo import lfw_faces

        base = lfw_faces()
    except ImportError:
        rng = np.random.default_rng(0)
        small = rng.integers(0, 256, (100, 7, 7, 3), dtype=np.uint8)
        base = np.stack([np.asarray(Image.fromarray(s).resize((112, 112), Image.BICUBIC)) for s in small])
    return np.stack([np.roll(base[i % len(base)], i // len(base), axis=1) for i in range(n)])


def write_jpegs(folder: str, n: int) -> list[str]:
    paths = []
    for i, image in enumerate(face_arrays(n)):
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(image).save(path, quality=92)
        paths.append(path)
    return paths


def iresnet50_checkpoint(folder: str) -> str:
    from faceaudit.model.iresnet import build_backbone

    path = os.path.join(folder, "backbone.pth")
    torch.manual_seed(0)
    torch.save(build_backbone("iresnet50").state_dict(), path)
    return path


def timed_files(embedder, paths, device: str, batch_size: int, workers: int, repeat: int = 1) -> float:
    """Images/s of the engine over ``paths`` (read, decode, embed), the best of ``repeat`` runs."""
    from faceaudit.embedders import EmbedEngine

    engine = EmbedEngine(embedder, device, batch_size, workers)
    best = 0.0
    for _ in range(repeat):
        start, n = time.perf_counter(), 0
        for batch in engine.run(paths):
            n += len(batch.indices)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - start))
    return best


def cpu(args) -> None:
    from faceaudit.embedders import DlibEmbedder, IResNetEmbedder

    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"{args.images} JPEG files 112x112, workers {args.workers}")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        try:
            rate = timed_files(DlibEmbedder(), paths, "cpu", 16, args.workers)
            print(f"dlib ResNet (128-d, aligned crops): {rate:8.1f} images/s")
        except Exception as e:  # noqa: BLE001 - dlib is optional here
            print(f"dlib: skipped ({e})")
        try:
            rate = timed_files(DlibEmbedder(detect=True), paths[: max(8, args.images // 4)], "cpu", 16, args.workers)
            print(f"dlib ResNet with HOG detection:     {rate:8.1f} images/s")
        except Exception as e:  # noqa: BLE001
            print(f"dlib --detect: skipped ({e})")
        embedder = IResNetEmbedder(iresnet50_checkpoint(folder), device="cpu")
        rate = timed_files(embedder, paths, "cpu", 32, args.workers)
        print(f"IResNet-50 (512-d, float32):         {rate:8.1f} images/s")
        embedder.flip = True
        rate = timed_files(embedder, paths, "cpu", 32, args.workers)
        print(f"IResNet-50 with --flip:              {rate:8.1f} images/s")


def gpu(args) -> None:
    from faceaudit.embedders import IResNetEmbedder

    assert torch.cuda.is_available(), "--gpu needs CUDA"
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}; torch {torch.__version__}; {args.images} JPEG files 112x112; batch {args.batch_size}; "
          f"workers {args.workers}; bf16 autocast, channels-last")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        embedder = IResNetEmbedder(iresnet50_checkpoint(folder), device="cuda")
        # forward only: uint8 batches already on the GPU, normalised and embedded as the engine does
        batch = torch.from_numpy(face_arrays(args.batch_size)).permute(0, 3, 1, 2).contiguous().cuda()
        for _ in range(5):
            embedder.forward(batch)
        torch.cuda.synchronize()
        steps = max(10, args.images // args.batch_size)
        start = time.perf_counter()
        for _ in range(steps):
            out = embedder.forward(batch)
            torch.nn.functional.normalize(out, dim=1).cpu()
        torch.cuda.synchronize()
        forward = steps * args.batch_size / (time.perf_counter() - start)
        print(f"IResNet-50 forward on tensors:       {forward:10.0f} images/s")
        e2e = timed_files(embedder, paths, "cuda", args.batch_size, args.workers, repeat=2)
        print(f"IResNet-50 end to end from JPEGs:    {e2e:10.0f} images/s")
        print(f"ratio end to end / forward:          {e2e / forward:10.2f}  (target >= 0.8)")
        embedder.flip = True
        e2e_flip = timed_files(embedder, paths, "cuda", args.batch_size, args.workers, repeat=2)
        print(f"IResNet-50 --flip from JPEGs:        {e2e_flip:10.0f} images/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the CUDA benchmark (IResNet-50 bf16, e2e vs forward)")
    ap.add_argument("--images", type=int, help="JPEG files to embed (default: 64 on CPU, 20000 on GPU)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--workers", type=int, help="image-reading processes (default: 0 on CPU, min(8, cores) on GPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args()
    if args.gpu:
        args.images = args.images or 20_000
        args.workers = min(8, os.cpu_count() or 1) if args.workers is None else args.workers
        gpu(args)
    else:
        args.images = args.images or 64
        args.workers = 0 if args.workers is None else args.workers
        cpu(args)


if __name__ == "__main__":
    main()
