"""Training a MAC from attribute labels (MAAD-Face CSV or CelebA's list) on face images.

Unknown labels (0) are masked out of the loss. The validation split is by identity where the
label file has identities (no person in both splits), else by image. At the end the per-attribute
balanced accuracy ((TPR + TNR) / 2) on the validation split is reported and stored in the
checkpoint's config (``extra``).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .attributes import ATTRIBUTES
from .inference import decode_file_bytes, default_workers, resolve_device
from .labels_io import read_label_file
from .model import MAC, MACConfig, save_checkpoint
from .model.checkpoint import load_backbone_weights
from .progress import Progress


class TrainingError(ValueError):
    """Bad training input; the message names the file or option."""


@dataclass
class TrainReport:
    out: str
    train_images: int
    val_images: int
    missing_images: int
    epochs: int
    final_loss: float
    balanced_accuracy: dict[str, float] = field(default_factory=dict)  # attributes with val labels

    def summary(self) -> str:
        lines = [f"MAC written to {self.out}: {self.train_images} training / {self.val_images} "
                 f"validation images, {self.epochs} epochs, final loss {self.final_loss:.4f}"]
        if self.missing_images:
            lines.append(f"{self.missing_images} labelled images were not found and left out")
        if self.balanced_accuracy:
            lines.append("validation balanced accuracy:")
            lines += [f"  {a:<24} {v:.3f}" for a, v in self.balanced_accuracy.items()]
        return "\n".join(lines)


class LabelledImages(Dataset):
    def __init__(self, paths: list[str], states: np.ndarray, size: int, flip: bool = False):
        self.paths, self.states, self.size, self.flip = paths, states, size, flip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torchvision

        image = decode_file_bytes(torchvision.io.read_file(self.paths[i]), self.size)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, torch.from_numpy(self.states[i].astype(np.int64))


def masked_loss(logits: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over (negative, positive) per attribute, ignoring unknown (0) labels."""
    target = (states == 1).long()
    known = states != 0
    loss = F.cross_entropy(logits.reshape(-1, 2), target.reshape(-1), reduction="none")
    known = known.reshape(-1).float()
    return (loss * known).sum() / known.sum().clamp(min=1)


def balanced_accuracy(pred_positive: np.ndarray, states: np.ndarray) -> dict[str, float]:
    """Per attribute ``(TPR + TNR) / 2`` over known labels, for attributes with both classes."""
    result = {}
    for j, attr in enumerate(ATTRIBUTES):
        pos, neg = states[:, j] == 1, states[:, j] == -1
        if pos.any() and neg.any():
            result[attr] = float((pred_positive[pos, j].mean() + (~pred_positive[neg, j]).mean()) / 2)
    return result


def _split(identities: list[str], n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation rows: whole identities where known, else single images."""
    rng = np.random.default_rng(seed)
    if all(identities):
        unique = np.array(sorted(set(identities)))
        rng.shuffle(unique)
        n_val = max(1, round(len(unique) * val_fraction)) if len(unique) > 1 else 0
        val_ids = set(unique[:n_val].tolist())
        return np.array([i in val_ids for i in identities])
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: max(1, round(n * val_fraction))]] = True
    return mask


def iter_train(
    images: str,
    labels: str,
    out: str,
    backbone: str = "iresnet50",
    backbone_weights: str | None = None,
    freeze_backbone: bool = False,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    device: str = "auto",
    workers: int | None = None,
    seed: int = 0,
    **config,
) -> Generator[Progress, None, TrainReport]:
    """Train a MAC; yields progress per batch, returns the report. ``config`` overrides
    :class:`faceaudit.model.MACConfig` fields (``embedding_size``, ``hidden``, ``threshold``...)."""
    if not os.path.isdir(images):
        raise TrainingError(f"{images}: no such image folder")
    if epochs <= 0 or batch_size <= 0:
        raise TrainingError("--epochs and --batch-size must be positive")
    table = read_label_file(labels)
    paths = [os.path.join(images, name) for name in table.filenames]
    present = np.array([os.path.isfile(p) for p in paths], dtype=bool)
    if not present.any():
        raise TrainingError(f"{labels}: none of its {len(paths)} Filenames exists under {images}")
    paths = [p for p, ok in zip(paths, present) if ok]
    states = table.states[present]
    identities = [i for i, ok in zip(table.identities, present) if ok]
    val = _split(identities, len(paths), val_fraction, seed)

    torch.manual_seed(seed)
    dev = resolve_device(device)
    cfg = MACConfig(backbone=backbone, **config)
    model = MAC(cfg)
    if backbone_weights:
        load_backbone_weights(model.backbone, backbone_weights)
    if freeze_backbone:
        model.backbone.requires_grad_(False)
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    workers = default_workers() if workers is None else workers
    train_idx = np.flatnonzero(~val)
    loader = DataLoader(
        LabelledImages([paths[i] for i in train_idx], states[train_idx], cfg.input_size, flip=True),
        batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=len(train_idx) > batch_size,
        pin_memory=dev.type == "cuda", generator=torch.Generator().manual_seed(seed),
    )
    steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    step, loss_value = 0, float("nan")
    for epoch in range(epochs):
        model.train()
        if freeze_backbone:
            model.backbone.eval()  # keep its BatchNorm statistics
        for images_batch, target in loader:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(images_batch.to(dev, non_blocking=True))
            loss = masked_loss(logits.float(), target.to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step, loss_value = step + 1, float(loss)
            yield Progress(step, steps, f"epoch {epoch + 1}/{epochs} loss {loss_value:.4f}")

    model.eval()
    val_idx = np.flatnonzero(val)
    scores = _evaluate(model, [paths[i] for i in val_idx], states[val_idx], cfg.input_size, dev, batch_size)
    model.cfg.extra = {"labels": os.path.abspath(labels), "epochs": epochs,
                       "val_balanced_accuracy": scores, "backbone_weights": backbone_weights}
    save_checkpoint(model.cpu(), out)
    return TrainReport(out, len(train_idx), len(val_idx), int((~present).sum()), epochs, loss_value, scores)


@torch.no_grad()
def _evaluate(model, paths, states, size, dev, batch_size) -> dict[str, float]:
    if not paths:
        return {}
    loader = DataLoader(LabelledImages(paths, states, size), batch_size=batch_size)
    preds = []
    for images_batch, _ in loader:
        preds.append(model(images_batch.to(dev)).argmax(-1).cpu().numpy() == 1)
    return balanced_accuracy(np.concatenate(preds), states)
