"""Self-describing MAC checkpoints, loaded without executing pickled code.

A checkpoint is ``torch.save({"format": "faceaudit-mac", "version": 1, "config": {...},
"state_dict": {...}})``: plain containers and tensors only, read back with
``torch.load(weights_only=True)``, which refuses anything else. The shapes its config declares are
checked against its tensors on torch's ``meta`` device (no memory) before the model is built, so a
tiny file that declares huge layers is refused instead of allocating them.

``load_checkpoint`` also takes a URL for users who have a network (see :mod:`.download`):
``https`` only unless http is explicitly allowed, an optional ``#sha256=<hex>``, and a download
is cached in the cache (``~/.cache/faceaudit``) only once it loads as a checkpoint.
"""

from __future__ import annotations

import os

import torch

from .. import params
from .download import CheckpointError, fetch
from .mac import MAC, MACConfig

FORMAT = "faceaudit-mac"
VERSION = 1
__all__ = ["CheckpointError", "load_checkpoint", "load_state", "read_weights", "save_checkpoint"]


def save_checkpoint(model: MAC, path: str) -> None:
    """Write ``model`` with its config, atomically (a crash never leaves half a checkpoint)."""
    payload = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    tmp = f"{path}.part-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_weights(path_or_url: str, allow_http: bool | None = None) -> dict:
    """``torch.load(..., weights_only=True)`` of a file or URL, with errors that name the file."""
    return _read(path_or_url, _torch_load, allow_http)


def _read(path_or_url: str, load, allow_http: bool | None):
    """``load(path, name)`` of a local file, or of a URL's download (cached only if it loads)."""
    if "://" in path_or_url:
        return fetch(path_or_url, load, allow_http)
    try:  # a folder, a device, a JPEG: said as such, not "no such file" / "pickled objects"
        params.checkpoint_file(path_or_url)
    except params.ParamError as e:
        raise CheckpointError(str(e).split(": ", 1)[1]) from None
    return load(path_or_url, path_or_url)


def _torch_load(path: str, name: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        text = str(e).strip()
        if "Weights only load failed" in text:  # torch's text goes on to suggest weights_only=False
            why = ("it holds pickled Python objects besides tensors and plain containers, and "
                   "loading those could run code from the file; refused")
        else:
            why = text.splitlines()[0][:200] if text else type(e).__name__
        raise CheckpointError(f"{name}: not a loadable torch checkpoint ({why})") from None


def load_checkpoint(path_or_url: str, attributes: tuple[str, ...] | None = None,
                    allow_http: bool | None = None) -> MAC:
    """Rebuild the MAC a checkpoint describes (eval mode, on the CPU).

    ``attributes``: the attribute list the caller needs (e.g. MAAD-Face's 47 in order); a
    checkpoint with other attributes is refused with the difference spelled out.
    ``allow_http``: accept a plain ``http://`` URL (default: the ``FACEAUDIT_ALLOW_HTTP``
    environment variable; otherwise only ``https``).
    """
    cfg, state = _read(path_or_url, lambda path, name: _checked(_torch_load(path, name), name, attributes),
                       allow_http)
    model = MAC(cfg)  # only now: the tensors are known to fit what the config declares
    model.load_state_dict(state, strict=True)
    return model.eval()


def _checked(payload, name: str, attributes: tuple[str, ...] | None) -> tuple[MACConfig, dict]:
    """A loaded checkpoint -> (its config, its state dict fitted to the config's shapes)."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{name}: not a faceaudit MAC checkpoint (for an InsightFace backbone.pth, "
            "use it as --backbone-weights of faceaudit train-mac)"
        )
    try:
        cfg = MACConfig.from_dict(payload["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{name}: bad config in checkpoint ({e})") from None
    if attributes is not None and tuple(cfg.attributes) != tuple(attributes):
        missing = [a for a in attributes if a not in cfg.attributes]
        extra = [a for a in cfg.attributes if a not in attributes]
        detail = f"missing {', '.join(missing) or '-'}; extra {', '.join(extra) or '-'}"
        if not missing and not extra:
            detail = "same attributes in another order"
        raise CheckpointError(f"{name}: the checkpoint's attributes do not match ({detail})")
    state = payload.get("state_dict", {})
    if not isinstance(state, dict):
        raise CheckpointError(f"{name}: state_dict is not a dict of tensors")
    return cfg, _fit_state(_declared_shapes(cfg, name), state, name)


def _declared_shapes(cfg: MACConfig, name: str) -> dict[str, tuple]:
    """The tensor shapes ``cfg`` declares, from a model built on the ``meta`` device (no memory)."""
    try:
        with torch.device("meta"):
            model = MAC(cfg)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{name}: bad config in checkpoint ({e})") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state(module: torch.nn.Module, state: dict, name: str) -> None:
    """``load_state_dict(strict=True)`` with a readable account of what does not fit."""
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    module.load_state_dict(_fit_state(shapes, state, name), strict=True)


def _fit_state(own: dict[str, tuple], state: dict, name: str) -> dict:
    """``state`` with InsightFace's ``module.`` prefixes removed and BatchNorm's batch counters
    filled in, after checking every tensor against the shapes ``own``; raises
    :class:`CheckpointError` naming what does not fit."""
    state = {str(k).removeprefix("module."): v for k, v in state.items()}
    notensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if notensor:
        raise CheckpointError(f"{name}: weights do not fit the model: not tensors: {', '.join(notensor[:3])}")
    for k in own:  # older exports omit BatchNorm's batch counters: harmless
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {shape}" for k, shape in own.items()
             if k in state and tuple(state[k].shape) != shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{name}: weights do not fit the model: {'; '.join(parts)}")
    return state


def load_backbone_weights(backbone: torch.nn.Module, path_or_url: str, allow_http: bool | None = None) -> None:
    """Load an InsightFace ``backbone.pth`` (a plain state dict) into an IResNet."""
    state = read_weights(path_or_url, allow_http)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path_or_url}: expected a state dict of tensors")
    load_state(backbone, state, path_or_url)
