"""Presets for the face datasets users bring: layout, domain and source name in one word."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """How a known dataset ships: its source name, domain and on-disk layout."""

    source: str
    domain: str
    format: str
    description: str


PRESETS: dict[str, Preset] = {
    "bupt-balancedface": Preset(
        "bupt-balancedface", "real", "bupt",
        "BUPT-BalancedFace: ~1.3M images, 28K ids, images/race_per_7000/<Race>/<id>/",
    ),
    "bupt-globalface": Preset(
        "bupt-globalface", "real", "bupt",
        "BUPT-GlobalFace: ~2M images, 38K ids, images/race_unbalance/<Race>/<id>/",
    ),
    "casia-webface": Preset(
        "casia-webface", "real", "rec", "CASIA-WebFace faces_webface_112x112: train.rec + train.idx",
    ),
    "idiff-face": Preset(
        "idiff-face", "synthetic", "folders", "IDiff-Face: 10K ids x 50, one folder per identity, 112x112",
    ),
    "sface": Preset(
        "sface", "synthetic", "folders", "SFace: 10,572 classes, <class:06d>/<seed:06d>.png, 112x112",
    ),
    "gandiffface": Preset(
        "gandiffface", "synthetic", "auto",
        "GANDiffFace: ~10K ids x ~50, per-identity folders, maybe under demographic folders",
    ),
    "hyperface": Preset(
        "hyperface", "synthetic", "folders", "HyperFace: 10K/50K ids, ~64 per id, per-identity folders",
    ),
    "dcface": Preset("dcface", "synthetic", "rec", "DCFace: InsightFace train.rec + train.idx"),
}

DOMAINS = ("real", "synthetic")


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case and ``_``/``-`` insensitive), or a clear error."""
    key = name.strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[key]
