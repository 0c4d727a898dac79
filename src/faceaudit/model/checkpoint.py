"""Self-describing MAC checkpoints, loaded without executing pickled code.

A checkpoint is ``torch.save({"format": "faceaudit-mac", "version": 1, "config": {...},
"state_dict": {...}})``: plain containers and tensors only, read back with
``torch.load(weights_only=True)``, which refuses anything else. ``load_checkpoint`` also takes an
``http(s)://`` URL (downloaded once to ``~/.cache/faceaudit``) for users who have a network.
"""

from __future__ import annotations

import hashlib
import os

import torch

from .mac import MAC, MACConfig

FORMAT = "faceaudit-mac"
VERSION = 1
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "faceaudit")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_checkpoint(model: MAC, path: str) -> None:
    """Write ``model`` with its config, atomically (a crash never leaves half a checkpoint)."""
    payload = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    tmp = f"{path}.part-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _local_path(path_or_url: str) -> str:
    if path_or_url.startswith(("http://", "https://")):
        os.makedirs(CACHE_DIR, exist_ok=True)
        name = hashlib.sha256(path_or_url.encode()).hexdigest()[:16] + "-" + os.path.basename(path_or_url)
        target = os.path.join(CACHE_DIR, name)
        if not os.path.exists(target):
            try:
                torch.hub.download_url_to_file(path_or_url, target, progress=True)
            except Exception as e:  # noqa: BLE001 - network errors come in many types
                raise CheckpointError(f"{path_or_url}: download failed ({e})") from None
        return target
    if not os.path.isfile(path_or_url):
        raise CheckpointError(f"{path_or_url}: no such checkpoint file")
    return path_or_url


def read_weights(path_or_url: str) -> dict:
    """``torch.load(..., weights_only=True)`` with errors that name the file."""
    path = _local_path(path_or_url)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path_or_url}: not a loadable torch checkpoint ({first[:200]})") from None


def load_checkpoint(path_or_url: str, attributes: tuple[str, ...] | None = None) -> MAC:
    """Rebuild the MAC a checkpoint describes (eval mode, on the CPU).

    ``attributes``: the attribute list the caller needs (e.g. MAAD-Face's 47 in order); a
    checkpoint with other attributes is refused with the difference spelled out.
    """
    payload = read_weights(path_or_url)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path_or_url}: not a faceaudit MAC checkpoint (for an InsightFace backbone.pth, "
            "use it as --backbone-weights of faceaudit train-mac)"
        )
    try:
        cfg = MACConfig.from_dict(payload["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path_or_url}: bad config in checkpoint ({e})") from None
    if attributes is not None and tuple(cfg.attributes) != tuple(attributes):
        missing = [a for a in attributes if a not in cfg.attributes]
        extra = [a for a in cfg.attributes if a not in attributes]
        detail = f"missing {', '.join(missing) or '-'}; extra {', '.join(extra) or '-'}"
        if not missing and not extra:
            detail = "same attributes in another order"
        raise CheckpointError(f"{path_or_url}: the checkpoint's attributes do not match ({detail})")
    model = MAC(cfg)
    load_state(model, payload.get("state_dict", {}), path_or_url)
    return model.eval()


def load_state(module: torch.nn.Module, state: dict, name: str) -> None:
    """``load_state_dict(strict=True)`` with a readable account of what does not fit."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    for k, v in own.items():  # older exports omit BatchNorm's batch counters: harmless
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{name}: weights do not fit the model: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)


def load_backbone_weights(backbone: torch.nn.Module, path_or_url: str) -> None:
    """Load an InsightFace ``backbone.pth`` (a plain state dict) into an IResNet."""
    state = read_weights(path_or_url)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path_or_url}: expected a state dict of tensors")
    load_state(backbone, state, path_or_url)
