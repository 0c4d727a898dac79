"""Rebalance a synthetic source toward the pooled real sources (:mod:`faceaudit.rebalance` chooses).

The labels are read as the comparison reads them: the ``mac_code`` string of each labelled sample
(:func:`.labels.state_indices`), the real sources pooled. The chosen subset is tagged (the tag is
first removed from the source's samples, so a rerun replaces the previous choice) and saved as a
view of that name, which ``faceaudit export --view`` takes.
"""

from __future__ import annotations

import numpy as np
from fiftyone import ViewField as F

from faceaudit import params
from faceaudit import rebalance as core
from faceaudit.attributes import ATTRIBUTES
from faceaudit.stats import STATE_SETS

from . import labels, schema

DEFAULT_TAG = "rebalanced"
TAG_BATCH = 10_000


def check_attributes(attributes) -> tuple[str, ...]:
    if isinstance(attributes, str):
        attributes = [a for a in attributes.replace(",", " ").split() if a]
    attributes = tuple(attributes or ())
    if not attributes:
        raise params.ParamError("attributes", "give at least one attribute, e.g. Male Young")
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown:
        raise params.ParamError("attributes", f"unknown attribute {unknown[0]!r}: attributes are MAAD-Face's 47 "
                                              f"({', '.join(ATTRIBUTES[:4])}, ...)")
    if len(set(attributes)) != len(attributes):
        raise params.ParamError("attributes", "an attribute is given twice")
    return attributes


def rebalance_options(source, attributes, keep=0.5, unit="identity", tag=DEFAULT_TAG, states="three", alpha=0.5) -> dict:
    """Every argument checked (one validation per argument, for every door)."""
    return {
        "source": params.name("source", source),
        "attributes": check_attributes(attributes),
        "keep": params.keep_share(keep),
        "unit": params.choice("unit", unit, core.UNITS, "identity"),
        "tag": params.rebalance_tag(tag, DEFAULT_TAG),
        "states": params.choice("states", states, tuple(STATE_SETS), "three"),
        "alpha": params.alpha(alpha),
    }


VIEW_DESCRIPTION = "faceaudit rebalance"  # how a saved view this tool made is told from others


def _state_rows(codes, attributes) -> tuple[list[int], np.ndarray]:
    """(the labelled samples' positions, their ``(n, A)`` state indices: 0 positive, 1 negative, 2 undefined)."""
    have = [i for i, c in enumerate(codes) if c is not None]
    if not have:
        return have, np.zeros((0, len(attributes)), np.int64)
    return have, labels.state_indices([codes[i] for i in have])[:, [ATTRIBUTES.index(a) for a in attributes]]


def _joint(have: list[int], idx: np.ndarray, n: int, states: str) -> np.ndarray:
    """Joint state per sample (-1 for a sample without labels or outside the state set)."""
    joint = np.full(n, -1, np.int64)
    if have:
        joint[have] = core.joint_index(idx, states)
    return joint


def check_labelled(source: str, attributes, real_idx: np.ndarray, synth_idx: np.ndarray) -> None:
    """Refuse (one line) a source without labelled samples, and an attribute undefined on every
    labelled sample, real and synthetic (its "distribution" is one state: KL 0, kept all)."""
    if not len(synth_idx):
        raise core.RebalanceError(f"source {source!r} has no labelled sample: run faceaudit annotate or "
                                  "import-labels for it first")
    both = np.concatenate([real_idx, synth_idx])
    blank = [a for k, a in enumerate(attributes) if (both[:, k] == 2).all()]
    if blank:
        raise params.ParamError("attributes", f"{', '.join(blank)} undefined on every labelled sample (real and "
                                              f"{source}): nothing to match; choose other attributes")


def check_view_name(dataset, tag: str) -> None:
    """Refuse (one line) a tag that names a saved view this tool did not make (a user's, another
    tool's): saving the subset under it would replace that view."""
    if not dataset.has_saved_view(tag):
        return
    own = (schema.get_info(dataset, "rebalance") or {}).get("view") == tag
    if own or (dataset.get_saved_view_info(tag).get("description") or "").startswith(VIEW_DESCRIPTION):
        return
    raise params.ParamError("tag", f"{tag!r} is a saved view of dataset {dataset.name!r} that rebalance did not "
                                   "make: rebalance would replace it; choose another tag")


def rebalance_source(dataset, source, attributes, keep=0.5, unit="identity", tag=DEFAULT_TAG,
                     states="three", alpha=0.5) -> dict:
    """Choose, tag and save the subset of ``source``; returns the report (also stored on the
    dataset under ``info["faceaudit"]["rebalance"]``)."""
    o = rebalance_options(source, attributes, keep, unit, tag, states, alpha)
    info = schema.sources_info(dataset)
    if o["source"] not in info:
        raise core.RebalanceError(f"source {o['source']!r} is not in dataset {dataset.name!r} "
                                  f"(sources: {', '.join(sorted(info)) or 'none'})")
    if info[o["source"]].get("domain") != "synthetic":
        raise core.RebalanceError(f"source {o['source']!r} is not synthetic: rebalance chooses a subset of a "
                                  "synthetic source toward the real ones")
    if labels.CODE_FIELD not in dataset.get_field_schema():
        raise core.RebalanceError(f"dataset {dataset.name!r} has no mac_* labels yet: run faceaudit annotate "
                                  "or import-labels first")
    attrs, n_states = o["attributes"], len(STATE_SETS[o["states"]]) ** len(o["attributes"])
    if n_states > core.MAX_JOINT_STATES:
        raise params.ParamError("attributes", f"{len(attrs)} attributes make {n_states} joint states; at most "
                                              f"{core.MAX_JOINT_STATES}")
    check_view_name(dataset, o["tag"])
    real_codes = dataset.match((F(schema.DOMAIN) == "real") & F(labels.CODE_FIELD).exists()).values(labels.CODE_FIELD)
    real_have, real_idx = _state_rows(real_codes, attrs)
    real_joint = _joint(real_have, real_idx, len(real_codes), o["states"])
    real = np.bincount(real_joint[real_joint >= 0], minlength=n_states)
    synth = dataset.match(schema.source_is(o["source"]))
    ids, identities, codes = synth.values(["id", schema.IDENTITY, labels.CODE_FIELD])
    synth_have, synth_idx = _state_rows(codes, attrs)
    check_labelled(o["source"], attrs, real_idx, synth_idx)
    if o["unit"] == "identity":
        keys = [f"i{x}" if x is not None else f"s{k}" for k, x in enumerate(identities)]
        _, unit_of = np.unique(np.array(keys, dtype=object), return_inverse=True)
    else:
        unit_of = np.arange(len(ids))
    n_units = int(unit_of.max()) + 1 if len(ids) else 0
    result = core.rebalance(real, unit_of, _joint(synth_have, synth_idx, len(codes), o["states"]), n_units, attrs,
                            o["keep"], o["alpha"], o["states"])
    kept_ids = [i for i, u in zip(ids, unit_of) if result.kept[u]]
    synth.match_tags(o["tag"]).untag_samples(o["tag"])
    for start in range(0, len(kept_ids), TAG_BATCH):
        dataset.select(kept_ids[start:start + TAG_BATCH]).tag_samples(o["tag"])
    dataset.save_view(o["tag"], dataset.match(schema.source_is(o["source"])).match_tags(o["tag"]), overwrite=True,
                      description=f"{VIEW_DESCRIPTION} of {o['source']} ({', '.join(attrs)})")
    report = {"dataset": dataset.name, "source": o["source"], "attributes": list(attrs), "keep": o["keep"],
              "unit": o["unit"], "states": o["states"], "alpha": o["alpha"], "tag": o["tag"], "view": o["tag"],
              **result.to_dict()}
    schema.set_info(dataset, "rebalance", report, stamp="computed_at")
    return report


def summary(report: dict) -> list[str]:
    """The report in a few lines (CLI and operator)."""
    lines = [f"kept {report['kept_units']} of {report['units']} {report['unit']} units "
             f"({report['kept_samples']} of {report['samples']} samples, {report['kept_share']:.1%}) of "
             f"{report['source']}; tagged '{report['tag']}', saved view '{report['view']}'",
             f"KL(real || synthetic), joint over {len(report['attributes'])} attributes: "
             f"{report['kl_joint']['before']:.4f} -> {report['kl_joint']['after']:.4f}"]
    for a, v in report["kl_attributes"].items():
        lines.append(f"  {a}: {v['before']:.4f} -> {v['after']:.4f}")
    if report["unmatched"]:
        lines.append(f"{len(report['unmatched'])} joint states real data has and {report['source']} lacks "
                     f"(no subset can create them; real share {sum(u['real_share'] for u in report['unmatched']):.1%})")
    for a, states in report["unmatched_attributes"].items():
        lines.append(f"  {a}: {', '.join(states)} absent from {report['source']}")
    return lines
