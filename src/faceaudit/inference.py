"""The inference engine: image files in, attribute label arrays out (torch + torchvision only).

* A ``DataLoader`` with worker processes reads (and, on the CPU path, decodes and resizes) the
  images; pinned memory and non-blocking copies feed the GPU.
* On CUDA, JPEGs are decoded on the GPU in batches (``torchvision.io.decode_jpeg(device=...)``):
  the workers only read bytes, so a few CPU cores keep an H100 busy. Other formats are decoded by
  the workers.
* bf16 autocast and channels-last on CUDA; float32 on the CPU.
* Grayscale, RGBA, CMYK and 16-bit images are converted to 8-bit RGB; images of another size are
  resized to the model's input (faces are expected aligned, as the datasets ship them). A file
  that cannot be decoded is reported with its reason and skipped, never a crash.
* An image whose header declares more than ``max_pixels`` pixels (a decompression bomb, or a file
  replaced after it was loaded), or a size that holds no face (under 16 pixels a side, or one
  side over 4 times the other), is refused before it is decoded. BMP, which torchvision does not
  decode, is decoded with Pillow.
* A JPEG's EXIF orientation is applied (as viewers and training pipelines show the image), on
  the CPU and after GPU decoding alike; libjpeg's "Corrupt JPEG data" warnings (damaged scan
  data, which it fills with grey) make the image a failure instead of a label.
  :func:`decode_file_bytes` is the one decoder (annotate, train-mac, embeddings).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode
from torchvision.transforms.v2 import functional as TF

from .images import (
    DEFAULT_MAX_PIXELS, buffer_reader, jpeg_orientation, oriented_size, shape_problem, sniff_format,
)


class ImageProblem(ValueError):
    """An image refused before or while decoding; the message is the reason (for image_issue)."""


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; asking for cuda without one is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device {device} was asked for, but torch sees no CUDA GPU "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu or auto"
        )
    if device.startswith("cuda:"):
        from .config import cuda_device_present

        cuda_device_present(device)  # cuda:7 on a one-GPU machine: said here, not inside torch
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def to_rgb_uint8(image: torch.Tensor) -> torch.Tensor:
    """A decoded ``(C, H, W)`` image (uint8 or 16-bit) as 8-bit RGB."""
    if image.dtype != torch.uint8:  # 16-bit PNGs decode to uint16
        image = (image.to(torch.float32) * (255.0 / 65535.0)).round().to(torch.uint8)
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    elif image.shape[0] == 4:
        image = image[:3]
    return image


def fit(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize ``(3, H, W)`` to ``(3, size, size)`` unless it already is (``size`` None: as it is)."""
    if size is not None and image.shape[-2:] != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
    return image


def header_problem(data: torch.Tensor, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why encoded bytes are refused from their header alone (too many pixels, no face's size
    or shape, as a viewer shows the image), or None."""
    return shape_problem(oriented_size(buffer_reader(data.numpy())), max_pixels)


def orientation(data: torch.Tensor) -> int:
    """The EXIF orientation (1 = upright) of encoded JPEG bytes; 1 for other formats."""
    return jpeg_orientation(buffer_reader(data.numpy()))


def apply_orientation(image: torch.Tensor, value: int) -> torch.Tensor:
    """A decoded ``(C, H, W)`` image turned as EXIF orientation ``value`` says it is shown."""
    if value in (2, 4, 5, 7):  # the mirrored ones: mirror first, then turn as 1, 3, 8, 6
        image = image.flip(-1)
        value = {2: 1, 4: 3, 5: 8, 7: 6}[value]
    turns = {3: 2, 6: -1, 8: 1}.get(value, 0)  # rot90 turns counter-clockwise
    return torch.rot90(image, turns, dims=(-2, -1)) if turns else image


def decode_file_bytes(data: torch.Tensor, size: int | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Encoded bytes -> ``(3, size, size)`` uint8 on the CPU (``size`` None: the image's own size),
    upright as a viewer shows it (EXIF
    orientation applied). Raises :class:`ImageProblem` for an image refused from its header or
    whose JPEG data libjpeg reports corrupt; other decoder errors propagate."""
    problem = header_problem(data, max_pixels)
    if problem is not None:
        raise ImageProblem(problem)
    fmt = sniff_format(bytes(data[:16].tolist()))
    if fmt == "bmp":
        return fit(_decode_with_pillow(data), size)
    if fmt == "jpeg":
        with _DecoderMessages() as messages:
            image = torchvision.io.decode_image(data, mode=ImageReadMode.RGB)
        damage = messages.damage()
        if damage is not None:
            raise ImageProblem(f"damaged JPEG: {damage}")
        image = apply_orientation(image, orientation(data))
    else:
        image = torchvision.io.decode_image(data, mode=ImageReadMode.RGB)
    return fit(to_rgb_uint8(image), size)


class _DecoderMessages:
    """Captures what libjpeg prints on file descriptor 2 while a JPEG decodes (it reports
    damaged scan data there as a warning and decodes on, filling the rest with grey); other
    text captured meanwhile is passed on to stderr."""

    _MARKS = ("Corrupt JPEG data", "Premature end of JPEG file")
    _file = None

    def __enter__(self):
        import tempfile

        cls = type(self)
        if cls._file is None or cls._file[0] != os.getpid():
            cls._file = (os.getpid(), tempfile.TemporaryFile())
        self.file = cls._file[1]
        self.file.seek(0)
        self.file.truncate()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode("utf-8", "replace")
        other = "".join(line for line in self.text.splitlines(keepends=True)
                        if not line.startswith(self._MARKS))
        if other:
            os.write(2, other.encode())
        return False

    def damage(self) -> str | None:
        for line in self.text.splitlines():
            if line.startswith(self._MARKS):
                return line.strip()[:160]
        return None


def _decode_with_pillow(data: torch.Tensor) -> torch.Tensor:
    """Formats torchvision cannot decode (BMP) -> ``(3, H, W)`` uint8 RGB."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        rgb = np.asarray(image.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Items ``(index, image or encoded JPEG bytes, error)`` for a list of file paths.

    Images whose header declares more than ``max_pixels`` pixels are refused undecoded."""

    def __init__(self, paths: Sequence[str], size: int | None, jpeg_bytes_only: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.paths, self.size, self.jpeg_bytes_only = list(paths), size, jpeg_bytes_only
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            data = torchvision.io.read_file(self.paths[i])
            if self.jpeg_bytes_only and sniff_format(bytes(data[:16].tolist())) == "jpeg":
                problem = header_problem(data, self.max_pixels)
                if problem is not None:
                    return i, None, problem
                return i, (data, orientation(data)), None  # decoded on the GPU by the main process
            return i, decode_file_bytes(data, self.size, self.max_pixels), None
        except ImageProblem as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - decoders raise many types; report, don't crash
            return i, None, _reason(e)


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"cannot decode: {text[:160]}"


def _collate(items):
    return items  # images differ in kind (decoded or bytes): assembled in _assemble


@dataclass
class BatchResult:
    """Labels for the images ``indices`` (positions in the input list) and the failures."""

    indices: np.ndarray  # (b,) int64
    states: np.ndarray  # (b, A) int8: 1 / -1 / 0
    signed: np.ndarray  # (b, A) float32: sign = state predicted, magnitude = reliability
    failures: list[tuple[int, str]]


class ImageBatches:
    """Reads image files in batches for a model on ``device``: worker processes read (and on
    the CPU path decode and resize to ``size``), JPEGs are decoded on the GPU on CUDA, and
    :meth:`_assemble` makes one uint8 batch on the device. Subclasses run a model on it
    (:class:`Engine` a MAC, :class:`faceaudit.embedders.EmbedEngine` a face embedder)."""

    def __init__(self, size: int | None, device: str = "auto", batch_size: int = 256, workers: int | None = None,
                 gpu_decode: bool | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.max_pixels = max_pixels
        self.device = resolve_device(device)
        self.cuda = self.device.type == "cuda"
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers
        self.gpu_decode = self.cuda if gpu_decode is None else (gpu_decode and self.cuda)
        self.size = size

    def loader(self, paths: Sequence[str]) -> DataLoader:
        return DataLoader(
            ImageFiles(paths, self.size, jpeg_bytes_only=self.gpu_decode, max_pixels=self.max_pixels),
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=_collate,
            prefetch_factor=4 if self.workers else None,
            persistent_workers=False,
        )

    def _assemble(self, items):
        """Worker-decoded images (stacked, pinned, copied) and GPU-decoded JPEGs -> one uint8
        batch on the device, ordered by index."""
        failures = [(i, err) for i, img, err in items if err is not None]
        decoded = [(i, img) for i, img, err in items if err is None and not isinstance(img, tuple)]
        encoded = [(i, img) for i, img, err in items if err is None and isinstance(img, tuple)]
        parts, indices = [], []
        if decoded:
            cpu = torch.stack([img for _, img in decoded])
            if self.cuda:
                cpu = cpu.pin_memory()
            parts.append(cpu.to(self.device, non_blocking=True))
            indices += [i for i, _ in decoded]
        if encoded:
            ok, bad = self._decode_on_device(encoded)
            failures += bad
            if ok:
                parts.append(torch.stack([img.to(self.device) for _, img in ok]))
                indices += [i for i, _ in ok]
        if not parts:
            return [], None, failures
        batch = torch.cat(parts) if len(parts) > 1 else parts[0]
        order = np.argsort(indices, kind="stable")
        if len(parts) > 1:
            batch = batch[torch.as_tensor(order, device=self.device)]
        indices = [indices[k] for k in order]
        if self.cuda:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return indices, batch, failures

    def _decode_on_device(self, encoded):
        """JPEG bytes ``(index, (bytes, orientation))`` decoded with nvjpeg, then turned upright."""
        datas = [d for _, (d, _) in encoded]
        try:
            images = torchvision.io.decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)
            return [(i, fit(apply_orientation(img, turn), self.size))
                    for (i, (_, turn)), img in zip(encoded, images)], []
        except Exception:  # noqa: BLE001 - one bad JPEG fails the batch: find it one by one
            ok, bad = [], []
            for i, (data, turn) in encoded:
                try:
                    img = torchvision.io.decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
                    ok.append((i, fit(apply_orientation(img, turn), self.size)))
                except Exception:  # noqa: BLE001
                    try:  # the CPU decoder is more forgiving (e.g. CMYK, progressive quirks)
                        ok.append((i, decode_file_bytes(data, self.size, self.max_pixels)))
                    except ImageProblem as e:
                        bad.append((i, str(e)))
                    except Exception as e:  # noqa: BLE001
                        bad.append((i, _reason(e)))
            return ok, bad


class Engine(ImageBatches):
    """Runs a :class:`faceaudit.model.MAC` over image files in batches."""

    def __init__(self, model, device: str = "auto", batch_size: int = 256, workers: int | None = None,
                 passes: int | None = None, threshold: float | None = None, gpu_decode: bool | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(model.cfg.input_size, device, batch_size, workers, gpu_decode, max_pixels)
        self.passes, self.threshold = passes, threshold
        self.model = model.eval().to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)

    def run(self, paths: Sequence[str]) -> Iterator[BatchResult]:
        """Yield one :class:`BatchResult` per batch, in input order."""
        for items in self.loader(paths):
            yield self.predict_items(items)

    def predict_items(self, items) -> BatchResult:
        indices, images, failures = self._assemble(items)
        if not indices:
            empty = np.zeros((0, len(self.model.cfg.attributes)))
            return BatchResult(np.zeros(0, np.int64), empty.astype(np.int8), empty.astype(np.float32), failures)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            states, signed = self.model.predict(images, self.passes, self.threshold)
        return BatchResult(np.asarray(indices, dtype=np.int64), states.cpu().numpy(),
                           signed.float().cpu().numpy(), failures)
