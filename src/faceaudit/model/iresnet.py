"""IResNet, the ArcFace backbone, with InsightFace's parameter names.

Written after the architecture of InsightFace's ``recognition/arcface_torch/backbones/iresnet.py``
so that the public ``backbone.pth`` state dicts (IResNet-18/34/50/100/200, 112x112 input, 512-d
embedding) load with ``strict=True``. ``widths`` and ``input_size`` are parameters so that a tiny
network of the same shape exists for tests.
"""

from __future__ import annotations

import torch
from torch import nn

DEPTHS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
    "tiny": (1, 1, 1, 1),  # for tests and smoke runs
}
DEFAULT_WIDTHS = (64, 128, 256, 512)
TINY_WIDTHS = (8, 16, 32, 64)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (projected) shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """Image ``(B, 3, S, S)`` normalised to [-1, 1] -> embedding ``(B, num_features)``."""

    def __init__(
        self,
        layers: tuple[int, ...],
        widths: tuple[int, ...] = DEFAULT_WIDTHS,
        num_features: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
    ):
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-05)
        self.prelu = nn.PReLU(widths[0])
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.layer4 = self._make_layer(widths[3], layers[3])
        self.bn2 = nn.BatchNorm2d(widths[3], eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(widths[3] * (input_size // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.num_features = num_features

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def build_backbone(name: str, num_features: int = 512, input_size: int = 112) -> IResNet:
    """An IResNet by name (``iresnet50``, ``iresnet100``, ..., ``tiny``)."""
    if name not in DEPTHS:
        raise ValueError(f"unknown backbone {name!r}: choose one of {', '.join(DEPTHS)}")
    widths = TINY_WIDTHS if name == "tiny" else DEFAULT_WIDTHS
    return IResNet(DEPTHS[name], widths, num_features, input_size)
