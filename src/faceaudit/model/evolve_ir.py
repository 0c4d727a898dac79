"""AdaFace's checkpoints (face.evoLVe's IR layout) as the project's IResNet.

AdaFace (mk-minchul/AdaFace, ``net.py``) ships IR-18..100 backbones in face.evoLVe's layout:
``input_layer`` (conv, BN, PReLU), ``body`` (one flat list of units; each unit a ``res_layer`` of
BN, conv3x3, BN, PReLU, strided conv3x3, BN, and a ``shortcut_layer``: a 1x1 conv and BN where
the width changes, else a strided ``MaxPool2d(1, stride)``), ``output_layer`` (BN, dropout,
flatten, linear, BatchNorm1d without affine), fed BGR pixels ``(x / 255 - 0.5) / 0.5``. That is
InsightFace's IResNet block for block, so :func:`as_iresnet_state` renames the tensors instead of
adding a second network: a new stage starts at unit 0 and at every unit with a 1x1 shortcut conv;
stage 1's strided max-pool shortcut becomes an identity 1x1 conv with an identity BN (its stride
is the same); BGR input becomes a permutation of the stem conv's input channels, so the embedder
feeds RGB as for every other IResNet. Units with squeeze-excitation (IR-SE) or bottlenecks
(IR-152/200) are refused.
"""

from __future__ import annotations

import re

import torch

#: the top-level modules of face.evoLVe's IR
PARTS = ("input_layer", "body", "output_layer")
#: res_layer's positions and IBasicBlock's names for them
RES = {"0": "bn1", "1": "conv1", "2": "bn2", "3": "prelu", "4": "conv2", "5": "bn3"}
#: the stem's and the head's positions and IResNet's names for them
OUTER = {"input_layer": {"0": "conv1", "1": "bn1", "2": "prelu"},
         "output_layer": {"0": "bn2", "3": "fc", "4": "features"}}
BN_EPS = 1e-05


class LayoutError(ValueError):
    """The state dict is face.evoLVe's layout but not one this conversion reads."""


def is_evolve_ir(state: dict) -> bool:
    """Whether ``state``'s tensors are named as face.evoLVe's IR (AdaFace), ``model.`` or not."""
    return set(PARTS) <= {_strip(k).split(".")[0] for k in state}


def _strip(key) -> str:
    return str(key).removeprefix("module.").removeprefix("model.")


def as_iresnet_state(state: dict, name: str) -> dict:
    """``state`` (AdaFace's, ``model.`` prefixes allowed) renamed to InsightFace's IResNet names,
    with stage 1's identity shortcut and the stem's BGR-to-RGB permutation built in."""
    if any(str(k).startswith("model.") for k in state):  # a Lightning state_dict: the backbone and its head
        state = {k: v for k, v in state.items() if str(k).startswith("model.")}
    state = {_strip(k): v for k, v in state.items()}
    units: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        pos, _, leaf = rest.partition(".")
        if part == "body":
            units.setdefault(int(pos), {})[leaf] = value
            continue
        target = OUTER.get(part, {}).get(pos)
        if target is None:
            raise LayoutError(f"{name}: unexpected tensor {key}")
        out[f"{target}.{leaf}"] = value[:, [2, 1, 0]] if target == "conv1" else value  # BGR stem -> RGB
    if "features.running_mean" in out and "features.weight" not in out:  # BatchNorm1d(affine=False)
        n = out["features.running_mean"].shape[0]
        out["features.weight"], out["features.bias"] = torch.ones(n), torch.zeros(n)
    out.update(_body(units, name))
    return out


def _body(units: dict[int, dict[str, torch.Tensor]], name: str) -> dict[str, torch.Tensor]:
    """The units' tensors under ``layerS.I.*``, stages split where a 1x1 shortcut conv appears."""
    if sorted(units) != list(range(len(units))) or not units:
        raise LayoutError(f"{name}: body units are not numbered 0..N-1")
    out: dict[str, torch.Tensor] = {}
    stage, index = 0, 0
    for u in range(len(units)):
        tensors = units[u]
        extra = sorted({k.split(".")[1] for k in tensors if k.startswith("res_layer.")} - set(RES))
        if extra:
            raise LayoutError(f"{name}: body.{u} has res_layer.{extra[0]} (squeeze-excitation or a bottleneck: "
                              "IR-SE and IR-152/200 are not supported)")
        projects = "shortcut_layer.0.weight" in tensors
        if u == 0 or projects:
            stage, index = stage + 1, 0
        else:
            index += 1
        prefix = f"layer{stage}.{index}"
        for key, value in tensors.items():
            m = re.fullmatch(r"(res_layer|shortcut_layer)\.(\d+)\.(.+)", key)
            if m is None:
                raise LayoutError(f"{name}: unexpected tensor body.{u}.{key}")
            kind, pos, leaf = m.groups()
            target = RES.get(pos) if kind == "res_layer" else {"0": "downsample.0", "1": "downsample.1"}.get(pos)
            if target is None:
                raise LayoutError(f"{name}: unexpected tensor body.{u}.{key}")
            out[f"{prefix}.{target}.{leaf}"] = value
        if index == 0 and not projects:  # stage 1: MaxPool2d(1, 2) is a strided identity
            out.update(_identity_shortcut(prefix, tensors["res_layer.0.weight"].shape[0]))
    if stage != 4:
        raise LayoutError(f"{name}: {stage} stages in body, an IR has 4")
    return out


def _identity_shortcut(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    """A 1x1 conv and BN that pass their input through: what the strided max-pool of size 1 does."""
    eye = torch.eye(channels).reshape(channels, channels, 1, 1)
    return {f"{prefix}.downsample.0.weight": eye,
            f"{prefix}.downsample.1.weight": torch.ones(channels),
            f"{prefix}.downsample.1.bias": torch.zeros(channels),
            f"{prefix}.downsample.1.running_mean": torch.zeros(channels),
            f"{prefix}.downsample.1.running_var": torch.full((channels,), 1.0 - BN_EPS),
            f"{prefix}.downsample.1.num_batches_tracked": torch.tensor(0)}
