"""The MAC: backbone embedding -> shared FC layers -> one small branch per attribute.

Reliability follows MAAD-Face's idea (Terhörst et al.): ``m`` stochastic forward passes of the
head with dropout on; the backbone runs once per image. Here each pass ``k`` uses a fixed dropout
mask ``k`` drawn from ``mask_seed``, the same for every image, so a label never depends on which
batch an image was in or on whether the run was interrupted: a resumed run gives exactly the labels
of an uninterrupted one.

For an attribute with pass probabilities ``p_k`` of *positive*, the predicted state is the sign of
``mean(p) - 0.5``; with ``q_k`` the probability of that state, reliability =
``clip(mean(q) - reliability_alpha * std(q), 0, 1)``; under ``threshold`` the label is undefined.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from ..attributes import ATTRIBUTES
from .iresnet import build_backbone


@dataclass
class MACConfig:
    """Everything needed to rebuild and run a MAC; stored inside every checkpoint."""

    attributes: tuple[str, ...] = ATTRIBUTES
    backbone: str = "iresnet50"
    embedding_size: int = 512
    input_size: int = 112
    hidden: tuple[int, ...] = (512,)
    branch_hidden: int = 64
    dropout: float = 0.5
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # ArcFace: (x/255 - 0.5) / 0.5
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    mc_passes: int = 10
    threshold: float = 0.6
    reliability_alpha: float = 1.0
    mask_seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form provenance (training data, metrics)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> MACConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MAC config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class MACHead(nn.Module):
    """Shared ``Linear -> BatchNorm -> ReLU -> Dropout`` layers, then per attribute
    ``Linear -> ReLU -> Dropout -> Linear(2)``. The 47 branches are stored as stacked weights and
    run as two batched matrix products (one kernel each, not 47)."""

    def __init__(self, cfg: MACConfig):
        super().__init__()
        dims = [cfg.embedding_size, *cfg.hidden]
        self.shared = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in dims[1:])
        n_attr, width, hid = len(cfg.attributes), dims[-1], cfg.branch_hidden
        self.branch_w1 = nn.Parameter(torch.empty(n_attr, width, hid))
        self.branch_b1 = nn.Parameter(torch.empty(n_attr, hid))
        self.branch_w2 = nn.Parameter(torch.empty(n_attr, hid, 2))
        self.branch_b2 = nn.Parameter(torch.empty(n_attr, 2))
        for w, b in ((self.branch_w1, self.branch_b1), (self.branch_w2, self.branch_b2)):
            bound = 1 / math.sqrt(w.shape[1])  # as nn.Linear initialises
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        self.p = cfg.dropout
        self.mask_seed = cfg.mask_seed
        self._masks: dict = {}

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """Training / plain inference: ``(B, E)`` -> logits ``(B, A, 2)`` (random dropout in training)."""
        h = emb
        for linear, norm in zip(self.shared, self.norms):
            h = F.dropout(F.relu(norm(linear(h))), self.p, self.training)
        z = F.relu(torch.einsum("bd,adh->bah", h, self.branch_w1) + self.branch_b1)
        z = F.dropout(z, self.p, self.training)
        return torch.einsum("bah,ahc->bac", z, self.branch_w2) + self.branch_b2

    def mc_forward(self, emb: torch.Tensor, passes: int) -> torch.Tensor:
        """``passes`` stochastic passes with the fixed masks: ``(B, E)`` -> ``(passes, B, A, 2)``.
        BatchNorm uses its running statistics (call in eval mode)."""
        masks = self._mc_masks(passes, emb.device, emb.dtype)
        h = emb
        for i, (linear, norm) in enumerate(zip(self.shared, self.norms)):
            h = F.relu(norm(linear(h)))
            h = (h.unsqueeze(0) if i == 0 else h) * masks[i][:, None, :]  # (P, B, D)
        z = F.relu(torch.einsum("pbd,adh->pbah", h, self.branch_w1) + self.branch_b1)
        z = z * masks[-1][:, None, :, :]
        return torch.einsum("pbah,ahc->pbac", z, self.branch_w2) + self.branch_b2

    def _mc_masks(self, passes: int, device, dtype) -> list[torch.Tensor]:
        key = (passes, str(device), dtype)
        if key not in self._masks:
            gen = torch.Generator().manual_seed(self.mask_seed)
            keep = 1.0 - self.p
            shapes = [(passes, lin.out_features) for lin in self.shared]
            shapes.append((passes, *self.branch_b1.shape))
            self._masks[key] = [
                ((torch.rand(s, generator=gen) < keep).to(dtype) / keep).to(device) for s in shapes
            ]
        return self._masks[key]


class MAC(nn.Module):
    """The whole classifier: uint8 RGB images -> attribute states and reliabilities."""

    def __init__(self, cfg: MACConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.embedding_size, cfg.input_size)
        self.head = MACHead(cfg)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255, persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` -> float, normalised as the backbone was trained."""
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> logits ``(B, A, 2)`` (used in training)."""
        return self.head(self.backbone(self.normalize(images)))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, passes: int | None = None, threshold: float | None = None):
        """uint8 images -> ``(states, signed)``: int8 ``(B, A)`` in {1, -1, 0} and float
        ``(B, A)`` signed reliabilities (sign = predicted state, magnitude = reliability)."""
        passes = passes or self.cfg.mc_passes
        threshold = self.cfg.threshold if threshold is None else threshold
        emb = self.backbone(self.normalize(images))
        logits = self.head.mc_forward(emb.float(), passes).float()
        return reliability_states(logits, threshold, self.cfg.reliability_alpha)


def reliability_states(logits: torch.Tensor, threshold: float, alpha: float):
    """``(P, B, A, 2)`` pass logits -> int8 states ``(B, A)`` and signed reliabilities ``(B, A)``."""
    p = logits.softmax(-1)[..., 1]  # (P, B, A) probability of positive
    positive = p.mean(0) >= 0.5
    q = torch.where(positive, p, 1 - p)
    reliability = (q.mean(0) - alpha * q.std(0, unbiased=False)).clamp(0, 1)
    sign = torch.where(positive, 1.0, -1.0)
    states = torch.where(reliability >= threshold, sign, torch.zeros_like(sign)).to(torch.int8)
    return states, sign * reliability
