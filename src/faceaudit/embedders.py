"""Face embedders: images in, L2-normalised identity vectors out (no FiftyOne here).

Every embedder has the same interface (:class:`Embedder`): a ``name``, the vector's ``dim``, the
model's documented default cosine ``threshold`` (same person at or above it), a ``preprocessing``
description, and ``embed(images) -> float32 (n, dim)`` with unit-norm rows. ``images`` is a uint8
batch ``(n, 3, H, W)`` (RGB) or a sequence of ``(3, H, W)`` uint8 tensors of any sizes.

* ``dlib`` (default, offline): dlib's ResNet (128-d) with the weights ``face_recognition_models``
  ships. Aligned crops (what face datasets ship): the whole image is the face box of the 5-point
  shape predictor, then ``dlib.get_face_chip(img, shape, 150)`` and ``compute_face_descriptor``.
  ``detect=True``: dlib's HOG detector first (photos), its largest face; an image without a face
  gives a row of NaN, which :class:`EmbedEngine` reports as ``no_face``.
* ``iresnet``: an InsightFace ``backbone.pth`` (arcface_torch's IR-18..200: ArcFace, CosFace, ...;
  AdaFace's IR-18..100 ``.ckpt`` files, renamed by :mod:`faceaudit.model.evolve_ir`) read
  with ``torch.load(weights_only=True)`` into the project's IResNet, strictly; its architecture
  (depths, widths, input size, dimension) is read from the tensors' names and shapes. RGB,
  ``(x - 127.5) / 127.5``, bf16 autocast on CUDA; ``flip=True`` adds the horizontally flipped
  image's embedding (the evaluation convention).
* ``onnx``: an ONNX face-recognition model (InsightFace's ``w600k_r50.onnx``, ...) in onnxruntime
  (CUDA provider where present), input size read from the model, the same preprocessing as
  InsightFace's ``ArcFaceONNX``: RGB, mean 127.5, std 127.5, except for a model converted from
  MXNet (InsightFace's older zoo, e.g. ``glintr100.onnx``), which subtracts and scales in its own
  first nodes and takes raw 0..255 pixels (:func:`onnx_normalisation`). A file that is not a face model
  (input not NCHW 3 x H x W, output not ``(N, d)``) is refused by :func:`check_onnx`.

:class:`EmbedEngine` runs an embedder over image files with the inference engine's batching
(:class:`faceaudit.inference.ImageBatches`: worker processes read and decode, GPU JPEG decoding
on CUDA).
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

#: embedder names, the default first
MODELS = ("dlib", "iresnet", "onnx")
#: documented default cosine thresholds (same identity at or above)
THRESHOLDS = {
    # dlib's own rule is Euclidean distance < 0.6 on raw descriptors; on unit vectors same-person
    # photos measured here sit at cosine >= 0.95 and different people <= 0.83 (docs/identity.md)
    "dlib": 0.9,
    # ArcFace-family IResNets: the usual verification threshold (DCFace's uniqueness uses 0.3)
    "iresnet": 0.3,
    "onnx": 0.3,
}


class EmbedderError(ValueError):
    """A model or checkpoint that cannot be used as a face embedder; the message names it."""


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); a zero row stays zero, a NaN row stays NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=(norms > 0) | np.isnan(norms))


class Embedder:
    """The common interface; see the module doc."""

    name: str = ""
    dim: int = 0
    threshold: float = 0.0
    preprocessing: str = ""
    input_size: int | None = None  # images resized to this square size; None: used as they are
    torch_device: bool = False  # runs on the engine's torch device (else on the CPU)
    checkpoint: str | None = None

    def embed(self, images) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict:
        """What ``dataset.info`` records about the vectors (the contract of the identity audit)."""
        return {"model": self.name, "checkpoint": self.checkpoint, "dim": self.dim,
                "threshold": self.threshold, "preprocessing": self.preprocessing}


def _as_list(images) -> list:
    """A batch tensor or a sequence of ``(3, H, W)`` tensors -> list of ``(3, H, W)`` tensors."""
    return list(images.unbind(0)) if hasattr(images, "unbind") else list(images)


def _as_batch(images, size: int):
    """A uint8 batch ``(n, 3, size, size)`` from a batch or a sequence of images of any size."""
    import torch

    from .inference import fit

    if hasattr(images, "dim") and images.dim() == 4 and tuple(images.shape[-2:]) == (size, size):
        return images
    return torch.stack([fit(img, size) for img in _as_list(images)])


# ----------------------------------------------------------------------------- dlib


def dlib_model_files() -> dict[str, str]:
    """Paths of the ``.dat`` files ``face_recognition_models`` ships (found without importing it:
    its ``__init__`` imports ``pkg_resources``, gone from setuptools >= 81)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError("model dlib needs the package face_recognition_models "
                            "(pip install face_recognition_models dlib-bin)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    files = {"shape5": "shape_predictor_5_face_landmarks.dat", "resnet": "dlib_face_recognition_resnet_model_v1.dat"}
    paths = {k: os.path.join(folder, v) for k, v in files.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise EmbedderError(f"face_recognition_models is incomplete: {missing[0]} is missing")
    return paths


class DlibEmbedder(Embedder):
    name, dim, threshold = "dlib", 128, THRESHOLDS["dlib"]
    CHIP = 150

    def __init__(self, detect: bool = False):
        try:
            import dlib
        except ImportError:
            raise EmbedderError("model dlib needs dlib: pip install dlib-bin") from None
        files = dlib_model_files()
        self.dlib, self.detect = dlib, detect
        self.shape = dlib.shape_predictor(files["shape5"])
        self.net = dlib.face_recognition_model_v1(files["resnet"])
        self.detector = dlib.get_frontal_face_detector() if detect else None
        box = "HOG detector's largest face" if detect else "whole image as the face box"
        self.preprocessing = (f"RGB; {box}; 5-point landmarks; dlib.get_face_chip {self.CHIP}x{self.CHIP}; "
                              "dlib_face_recognition_resnet_model_v1; L2-normalised")

    def face_box(self, image: np.ndarray):
        """The face rectangle of an ``(H, W, 3)`` uint8 image, or None when detection finds none."""
        h, w = image.shape[:2]
        if self.detector is None:
            return self.dlib.rectangle(0, 0, w - 1, h - 1)
        faces = self.detector(image, 1)  # upsample once: small faces in photos
        if not faces:
            return None
        return max(faces, key=lambda r: r.width() * r.height())

    def embed(self, images) -> np.ndarray:
        out = np.full((len(images), self.dim), np.nan, np.float32)
        chips, rows = [], []
        for k, img in enumerate(_as_list(images)):
            array = np.ascontiguousarray(img.permute(1, 2, 0).cpu().numpy() if hasattr(img, "permute") else img)
            box = self.face_box(array)
            if box is None:
                continue
            chips.append(self.dlib.get_face_chip(array, self.shape(array, box), self.CHIP))
            rows.append(k)
        if chips:
            out[rows] = np.asarray(self.net.compute_face_descriptor(chips), np.float32)
        return normalise(out)


# ----------------------------------------------------------------------------- IResNet (torch)


def iresnet_arch(state: dict, name: str) -> dict:
    """The IResNet a ``backbone.pth`` state dict describes: ``{layers, widths, num_features,
    input_size}``, from its tensors' names and shapes; :class:`EmbedderError` if it is none."""
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    try:
        widths = tuple(int(state[f"layer{k}.0.conv2.weight"].shape[0]) for k in range(1, 5))
        layers = tuple(1 + max(int(m.group(1)) for key in state
                               if (m := re.match(rf"layer{k}\.(\d+)\.", key))) for k in range(1, 5))
        fc = state["fc.weight"]
        num_features, flat = int(fc.shape[0]), int(fc.shape[1])
    except (KeyError, ValueError, AttributeError, IndexError):
        raise EmbedderError(f"{name}: not an InsightFace IResNet backbone.pth (no layer1..layer4 / fc tensors)") from None
    side = round((flat / widths[3]) ** 0.5)
    if side * side * widths[3] != flat:
        raise EmbedderError(f"{name}: fc.weight {tuple(fc.shape)} does not fit a square feature map of width {widths[3]}")
    return {"layers": layers, "widths": widths, "num_features": num_features, "input_size": side * 16}


def load_iresnet(path: str):
    """An IResNet with the weights of ``path`` (an InsightFace ``backbone.pth``), loaded strictly
    and without executing pickled code; eval mode, on the CPU."""
    from .model import evolve_ir
    from .model.checkpoint import CheckpointError, load_state, read_weights
    from .model.iresnet import IResNet

    try:
        state = read_weights(path)
    except CheckpointError as e:
        raise EmbedderError(str(e)) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EmbedderError(f"{path}: expected a state dict of tensors")
    layout = "insightface"
    if evolve_ir.is_evolve_ir(state):  # AdaFace's .ckpt
        try:
            state, layout = evolve_ir.as_iresnet_state(state, path), "adaface"
        except evolve_ir.LayoutError as e:
            raise EmbedderError(str(e)) from None
    arch = {**iresnet_arch(state, path), "layout": layout}
    net = IResNet(arch["layers"], arch["widths"], arch["num_features"], arch["input_size"])
    try:
        load_state(net, state, path)
    except CheckpointError as e:
        raise EmbedderError(str(e)) from None
    return net.eval(), arch


class IResNetEmbedder(Embedder):
    name, threshold, torch_device = "iresnet", THRESHOLDS["iresnet"], True

    def __init__(self, checkpoint: str, flip: bool = False, device: str = "cpu"):
        import torch

        self.checkpoint, self.flip = checkpoint, flip
        self.net, arch = load_iresnet(checkpoint)
        self.dim, self.input_size = arch["num_features"], arch["input_size"]
        self.arch = f"IResNet layers {arch['layers']} widths {arch['widths']}"
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.net = self.net.to(self.device)
        if self.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        s = self.input_size
        bgr = "; AdaFace's BGR stem read as RGB (its input channels permuted)" if arch["layout"] == "adaface" else ""
        self.preprocessing = (f"RGB {s}x{s} (resized if not), (x - 127.5) / 127.5{bgr}"
                              + (", plus the horizontally flipped image's embedding" if flip else "")
                              + ("; bf16 autocast" if self.cuda else "; float32") + "; L2-normalised")

    def forward(self, batch):
        """Unnormalised embeddings of a uint8 batch already on the device (float32)."""
        import torch

        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            x = (batch.float() - 127.5) / 127.5
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.net(x).float()
            if self.flip:
                out = out + self.net(torch.flip(x, dims=[3])).float()
        return out

    def embed(self, images) -> np.ndarray:
        batch = _as_batch(images, self.input_size).to(self.device)
        return normalise(self.forward(batch).cpu().numpy())


# ----------------------------------------------------------------------------- ONNX


def _onnx_session(path: str, providers: list[str] | None = None):
    try:
        import onnxruntime as ort
    except ImportError:
        raise EmbedderError("model onnx needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from None
    if not os.path.isfile(path):
        raise EmbedderError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise EmbedderError(f"{path}: not a loadable ONNX model ({text})") from None


def check_onnx(path: str, session=None) -> tuple[int, int]:
    """``(input size, dim)`` of the ONNX face-recognition model at ``path``; raises
    :class:`EmbedderError` (one line) when the file is not one: one input NCHW ``(N, 3, S, S)``
    float image, one output ``(N, d)``."""
    session = session or _onnx_session(path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    why = None
    if len(inputs) != 1:
        why = f"it has {len(inputs)} inputs, a face model has one image input"
    else:
        shape = list(inputs[0].shape)
        if "float" not in inputs[0].type or len(shape) != 4 or shape[1] != 3:
            why = f"its input {inputs[0].name!r} is {inputs[0].type} {shape}, not an NCHW 3 x H x W image"
        elif not (isinstance(shape[2], int) and shape[2] == shape[3] and shape[2] > 0):
            why = f"its input {inputs[0].name!r} {shape} has no fixed square size H x W"
    if why is None:
        out = list(outputs[0].shape) if outputs else []
        if len(outputs) < 1 or len(out) != 2 or not isinstance(out[1], int) or out[1] < 2:
            why = f"its output is {out}, not an embedding (N, d)"
    if why is not None:
        raise EmbedderError(f"{path}: not a face-recognition model: {why}")
    return int(inputs[0].shape[2]), int(outputs[0].shape[1])


def onnx_normalisation(path: str) -> tuple[float, float]:
    """``(mean, std)`` the ONNX face model at ``path`` wants its RGB pixels normalised with,
    by InsightFace's rule (``ArcFaceONNX``): a model converted from MXNet normalises in its graph
    (a ``Sub``/``_minus`` and a ``Mul``/``_mul`` node among its first 8, or ``bn_data`` among its
    first 3) and takes raw pixels, ``(0, 1)``; any other (``w600k_r50.onnx``, a torch export)
    takes ``(x - 127.5) / 127.5``. Normalising twice would give vectors of noise, silently."""
    try:
        import onnx
    except ImportError:
        raise EmbedderError("model onnx needs the onnx package to read the model's input normalisation: "
                            "pip install onnx") from None
    nodes = onnx.load(path, load_external_data=False).graph.node
    names = [n.name or "" for n in nodes[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    if (sub and mul) or "bn_data" in names[:3]:
        return 0.0, 1.0
    return 127.5, 127.5


class OnnxEmbedder(Embedder):
    name, threshold = "onnx", THRESHOLDS["onnx"]

    def __init__(self, checkpoint: str, flip: bool = False, device: str = "cpu"):
        providers = ["CPUExecutionProvider"]
        if device != "cpu":
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = int(device.split(":")[1]) if ":" in device else 0
                providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.checkpoint, self.flip = checkpoint, flip
        self.session = _onnx_session(checkpoint, providers)
        self.input_size, self.dim = check_onnx(checkpoint, self.session)
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_dtype = np.float16 if "float16" in first.type else np.float32
        n = first.shape[0]
        self.fixed_batch = n if isinstance(n, int) and n > 0 else None  # many exports fix it at 1
        self.provider = self.session.get_providers()[0]
        self.mean, self.std = onnx_normalisation(checkpoint)
        s = self.input_size
        scale = ("(x - 127.5) / 127.5" if self.std != 1 else
                 "raw 0..255 pixels (the model normalises in its graph: converted from MXNet)")
        self.preprocessing = (f"RGB {s}x{s} (resized if not), {scale}"
                              + (", plus the horizontally flipped image's embedding" if flip else "")
                              + f"; onnxruntime {self.provider}; L2-normalised")

    def embed(self, images) -> np.ndarray:
        x = (_as_batch(images, self.input_size).cpu().numpy().astype(np.float32) - self.mean) / self.std
        out = self._run(x)
        if self.flip:
            out = out + self._run(np.ascontiguousarray(x[..., ::-1]))
        return normalise(out)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The model's float32 outputs for ``x``, in the model's input type, in pieces of its fixed
        batch size if it has one (the last piece padded with zeros, their outputs dropped)."""
        x = x.astype(self.input_dtype, copy=False)  # a float16 model takes float16 pixels
        if self.fixed_batch is None:
            return self.session.run(None, {self.input_name: x})[0].astype(np.float32)
        k, out = self.fixed_batch, []
        for i in range(0, len(x), k):
            piece = x[i:i + k]
            if len(piece) < k:
                piece = np.concatenate([piece, np.zeros((k - len(piece), *x.shape[1:]), x.dtype)])
            out.append(self.session.run(None, {self.input_name: piece})[0][:len(x) - i])
        return np.concatenate(out).astype(np.float32)


# ----------------------------------------------------------------------------- building and running


def build_embedder(model: str = "dlib", checkpoint: str | None = None, detect: bool = False, flip: bool = False,
                   device: str = "cpu") -> Embedder:
    """The embedder ``model`` names (arguments validated by :func:`faceaudit.params.embedding_model`)."""
    if model == "dlib":
        if flip:
            raise EmbedderError("--flip is for iresnet and onnx models (dlib's ResNet has no flip convention)")
        return DlibEmbedder(detect=detect)
    if detect:
        raise EmbedderError("--detect is for the dlib model; iresnet and onnx take aligned 112x112 crops")
    if checkpoint is None:
        raise EmbedderError(f"model {model} needs --checkpoint PATH")
    if model == "iresnet":
        return IResNetEmbedder(checkpoint, flip, device)
    if model == "onnx":
        return OnnxEmbedder(checkpoint, flip, device)
    raise EmbedderError(f"unknown model {model!r}: use {', '.join(MODELS)}")


@dataclass
class EmbedBatch:
    """Vectors for the images ``indices`` (positions in the input list), the images where no face
    was found, and those that could not be decoded."""

    indices: np.ndarray  # (b,) int64
    vectors: np.ndarray  # (b, dim) float32, unit norm
    no_face: list[int]
    failures: list[tuple[int, str]]


class EmbedEngine:
    """An :class:`Embedder` over image files, with the inference engine's batching."""

    def __init__(self, embedder: Embedder, device: str = "auto", batch_size: int = 256,
                 workers: int | None = None, max_pixels: int | None = None):
        from .images import DEFAULT_MAX_PIXELS
        from .inference import ImageBatches

        self.embedder = embedder
        on = str(getattr(embedder, "device", device)) if embedder.torch_device else "cpu"
        self.batches = ImageBatches(embedder.input_size, on, batch_size, workers,
                                    max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        self.device = getattr(embedder, "provider", None) or self.batches.device

    def run(self, paths: Sequence[str]) -> Iterator[EmbedBatch]:
        """One :class:`EmbedBatch` per batch of ``paths``, in input order."""
        for items in self.batches.loader(paths):
            yield self.embed_items(items)

    def embed_items(self, items) -> EmbedBatch:
        if self.embedder.input_size is None:  # images of their own sizes: a list, not a batch
            failures = [(i, err) for i, _, err in items if err is not None]
            ok = [(i, img) for i, img, err in items if err is None]
            indices, images = [i for i, _ in ok], [img for _, img in ok]
        else:
            indices, images, failures = self.batches._assemble(items)
        if not indices:
            return EmbedBatch(np.zeros(0, np.int64), np.zeros((0, self.embedder.dim), np.float32), [], failures)
        vectors = self.embedder.embed(images)
        found = ~np.isnan(vectors).any(axis=1)
        indices = np.asarray(indices, dtype=np.int64)
        return EmbedBatch(indices[found], vectors[found], indices[~found].tolist(), failures)
