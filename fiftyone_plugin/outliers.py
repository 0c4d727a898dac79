"""Realness scores, outlier tags and identity consistency on the dataset, in bulk.

``realness_nll`` depends only on a sample's code and the real distribution, so it is computed by
the server in one pipeline ``update_many``: the NLL table (47 x 3 numbers, plus the joint table if
any) travels inside the update, and each document's score is a sum of table lookups on its
``mac_code``. No sample travels to Python and back. Tagging is one ``update_many`` too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from fiftyone import ViewField as F

from faceaudit import outliers as core
from faceaudit import params
from faceaudit.attributes import ATTRIBUTES
from faceaudit.config import STATES

from . import bulk, counts, labels, schema

SCORE_FIELD, DISAGREEMENT_FIELD = labels.SCORE_FIELDS  # declared with the labels (see there)
OUTLIER_TAG = "outlier"
REVIEWED_KEEP_TAG = core.REVIEWED_KEEP_TAG
OUTLIERS_VIEW = "synthetic_outliers"
MAX_JOINT = 10  # 3**10 combinations: the joint table travels inside the update
DEFAULT_SHARE = 0.05  # the form's default K: this share of the scored synthetic samples


class OutlierError(ValueError):
    """Bad input to scoring or flagging; the message says why."""


@dataclass(frozen=True)
class OutlierOptions:
    """Validated arguments of one outliers run (every door builds one before writing)."""

    top: int | None = None
    threshold: float | None = None
    tag: str = OUTLIER_TAG
    states: str = "three"
    alpha: float = 0.5
    joint: tuple[str, ...] = ()


def scoring_options(states="three", alpha=0.5, joint=()) -> tuple[str, float, tuple[str, ...]]:
    """Validated ``states``, ``alpha`` and ``joint`` attributes of a realness scoring."""
    joint = params.joint(list(joint or ()), ATTRIBUTES, MAX_JOINT)
    return params.choice("states", states, STATES, "three"), params.alpha(alpha), joint


def flag_options(top=None, threshold=None, tag=OUTLIER_TAG) -> tuple[int | None, float | None, str]:
    """Validated ``top`` (K >= 1) or ``threshold`` (finite; exactly one of them) and ``tag``."""
    top = params.top(top)
    threshold = params.to_float("threshold", threshold)
    if (top is None) == (threshold is None):
        raise OutlierError("give exactly one of --top K or --threshold T")
    return top, threshold, params.tag(tag, OUTLIER_TAG)


def outlier_options(top=None, threshold=None, tag=OUTLIER_TAG, states="three", alpha=0.5,
                    joint=()) -> OutlierOptions:
    """Every argument of :func:`flag_synthetic_outliers`, validated (strings from forms accepted)."""
    top, threshold, tag = flag_options(top, threshold, tag)
    states, alpha, joint = scoring_options(states, alpha, joint)
    return OutlierOptions(top, threshold, tag, states, alpha, joint)


def flag_synthetic_outliers(dataset, options: OutlierOptions) -> tuple[dict, dict, int]:
    """The whole outliers run, as ``faceaudit outliers`` and the operator do it: score
    ``realness_nll``, write identity disagreement, tag. Returns (score summary, identity
    consistency per source, number tagged). Build ``options`` with :func:`outlier_options`
    first: nothing is validated late, so a refused run writes nothing."""
    scored = score_realness(dataset, options.states, options.alpha, options.joint)
    consistency = identity_consistency(dataset.view(), write=True)
    n = flag_outliers(dataset, top=options.top, threshold=options.threshold, tag=options.tag)
    return scored, consistency, n


def is_scored(dataset) -> bool:
    """Whether any sample has a ``realness_nll`` value (the field itself is declared with the
    labels, before any scoring). One indexed look-up."""
    return dataset._sample_collection.find_one({SCORE_FIELD: {"$type": "double"}}, {"_id": 1}) is not None


def suggested_defaults(dataset) -> tuple[int, float | None]:
    """Form defaults from the data: K = 5% of the scored synthetic samples (at least 1; of the
    labelled synthetic samples before any scoring), and as a threshold the score of the K-th
    highest (None before any scoring), so that either choice tags the same faces by default.
    Counted and looked up on the server (indexed score), exactly: never an estimate."""
    coll = dataset._sample_collection
    scored = {schema.DOMAIN: "synthetic", SCORE_FIELD: {"$type": "double"}}
    n = coll.count_documents(scored)
    if n == 0:
        n = coll.count_documents({schema.DOMAIN: "synthetic", labels.CODE_FIELD: {"$type": "string"}})
        return max(1, round(DEFAULT_SHARE * n)), None
    top = max(1, round(DEFAULT_SHARE * n))
    (kth,) = coll.find(scored, {SCORE_FIELD: 1}).sort(SCORE_FIELD, -1).skip(top - 1).limit(1)
    return top, float(kth[SCORE_FIELD])


def _state_index_expr(j: int) -> dict:
    """MQL: the state index (0 p, 1 n, 2 u) of attribute ``j`` of ``mac_code``."""
    return {"$indexOfBytes": ["pnu", {"$substrBytes": ["$" + labels.CODE_FIELD, j, 1]}]}


def _require_labels(dataset) -> None:
    if labels.CODE_FIELD not in dataset.get_field_schema():
        raise OutlierError(f"dataset {dataset.name!r} has no mac_* labels yet: run faceaudit annotate "
                           "or import-labels first")


def ensure_fields(dataset) -> None:
    labels.ensure_label_schema(dataset)  # declares the scores with the labels, in the faceaudit group
    dataset.create_index(SCORE_FIELD)


def score_realness(dataset, states: str = "three", alpha: float = 0.5, joint: tuple[str, ...] = ()) -> dict:
    """Write ``realness_nll`` for every labelled sample; returns a summary per domain."""
    states, alpha, joint = scoring_options(states, alpha, joint)
    _require_labels(dataset)
    c = counts.cached_counts(dataset.view())
    real = [i for i, d in enumerate(c.domains) if d == "real"]
    if not real:
        raise OutlierError(f"dataset {dataset.name!r} has no real source with labels to score against "
                           f"(sources: {', '.join(c.sources) or 'none'})")
    table = core.nll_table(c.counts[real].sum(0), states, alpha)
    terms = []
    for j in range(len(ATTRIBUTES)):
        if ATTRIBUTES[j] in joint:
            continue
        terms.append({"$arrayElemAt": [table[j].tolist(), _state_index_expr(j)]})
    if joint:
        terms.append(_joint_term(dataset, joint, alpha))
    ensure_fields(dataset)
    coll = dataset._sample_collection
    # last_modified_at is left alone: the score is derived from the labels (recomputed at will),
    # and stamping it doubles the time of this write (bench/compare.py). The score's index is
    # dropped for the rewrite and built again after it: one sorted build instead of a B-tree
    # update per document.
    bulk.drop_field_indexes(coll, [SCORE_FIELD])
    try:
        matched, modified = bulk.update_many_in_parts(coll, {labels.CODE_FIELD: {"$type": "string"}},
                                                      [{"$set": {SCORE_FIELD: {"$add": terms}}}])
    finally:
        dataset.create_index(SCORE_FIELD)
    schema.set_info(dataset, "realness", {"states": states, "alpha": alpha, "joint": list(joint),
                                          "scored": modified}, stamp="at")
    return {"scored": matched}


def _joint_term(dataset, joint, alpha) -> dict:
    """MQL: the joint NLL of the ``joint`` attributes' combination (base-3 number) by lookup."""
    cols = [ATTRIBUTES.index(a) for a in joint]
    real_view = dataset.match((F(schema.DOMAIN) == "real") & F(labels.CODE_FIELD).exists())
    codes = real_view.values(labels.CODE_FIELD)
    real_states = labels.state_indices(codes)[:, cols]
    k = len(cols)
    every = np.array(np.unravel_index(np.arange(3 ** k), (3,) * k)[::-1]).T  # combination -> states
    table = core.joint_nll(real_states, every, alpha)
    index = {"$add": [{"$multiply": [3 ** i, _state_index_expr(j)]} for i, j in enumerate(cols)]}
    return {"$arrayElemAt": [table.tolist(), index]}


def flag_outliers(dataset, top: int | None = None, threshold: float | None = None,
                  tag: str = OUTLIER_TAG) -> int:
    """Tag the synthetic samples with the ``top`` highest scores, or those at or above
    ``threshold`` (replacing the previous set with this tag), and save the view
    ``synthetic_outliers``. Returns the number tagged. Samples tagged ``reviewed_keep`` are
    never tagged (K counts the others; see :func:`reviewed_kept`)."""
    top, threshold, tag = flag_options(top, threshold, tag)
    if not is_scored(dataset):
        raise OutlierError(f"dataset {dataset.name!r} has no {SCORE_FIELD} yet: score it first")
    coll = dataset._sample_collection
    clear_outliers(dataset, tag, keep_view=True)
    scored = {schema.DOMAIN: "synthetic", SCORE_FIELD: {"$type": "double"}, "tags": {"$ne": REVIEWED_KEEP_TAG}}
    if top is not None:
        ids = [d["_id"] for d in coll.find(scored, {"_id": 1}).sort(SCORE_FIELD, -1).limit(top)]
        query = {"_id": {"$in": ids}}
    else:
        query = {**scored, SCORE_FIELD: {"$gte": threshold}}
    n = coll.update_many(query, {"$addToSet": {"tags": tag}, "$set": {"last_modified_at": schema.utc_now()}}).modified_count
    dataset.save_view(OUTLIERS_VIEW, dataset.match_tags(tag).sort_by(SCORE_FIELD, reverse=True), overwrite=True)
    return n


def reviewed_kept(dataset) -> int:
    """Synthetic samples tagged ``reviewed_keep``: reviewed, kept, left out of flagging."""
    return dataset._sample_collection.count_documents({schema.DOMAIN: "synthetic", "tags": REVIEWED_KEEP_TAG})


def keep_reviewed(dataset, sample_ids, tag: str = OUTLIER_TAG) -> int:
    """Mark ``sample_ids`` as reviewed and kept: add ``reviewed_keep``, remove ``tag``; returns
    how many samples were marked."""
    from bson import ObjectId

    tag = params.name("tag", tag)
    ids = [ObjectId(i) for i in sample_ids]
    if not ids:
        raise OutlierError("select the reviewed faces first (nothing is selected)")
    coll, now = dataset._sample_collection, schema.utc_now()
    coll.update_many({"_id": {"$in": ids}}, {"$pull": {"tags": tag}})  # one path per update
    return coll.update_many({"_id": {"$in": ids}},
                            {"$addToSet": {"tags": REVIEWED_KEEP_TAG}, "$set": {"last_modified_at": now}}).matched_count


def kept_note(dataset) -> str:
    """``"; N reviewed faces kept (tag 'reviewed_keep')"`` when there are any, else ``""``."""
    n = reviewed_kept(dataset)
    return f"; {n} reviewed {'face' if n == 1 else 'faces'} kept (tag '{REVIEWED_KEEP_TAG}')" if n else ""


def clear_outliers(dataset, tag: str = OUTLIER_TAG, keep_view: bool = False) -> int:
    """Remove ``tag`` from every sample (and nothing else); returns how many had it. A reserved
    tag (``unreadable``, ...) is refused: faceaudit's own tags are not an outlier run's to clear."""
    tag = params.tag(tag, OUTLIER_TAG)
    n = dataset._sample_collection.update_many(
        {"tags": tag}, {"$pull": {"tags": tag}, "$set": {"last_modified_at": schema.utc_now()}}).modified_count
    if not keep_view and dataset.has_saved_view(OUTLIERS_VIEW):
        dataset.delete_saved_view(OUTLIERS_VIEW)
    return n


# ----------------------------------------------------------------------------- identities


@dataclass
class SourceConsistency:
    applicable: bool
    identities: int = 0
    mean_disagreement: float | None = None
    per_attribute: dict[str, float | None] = field(default_factory=dict)
    worst: list[dict] = field(default_factory=list)  # a few identities with the most disagreement
    reason: str | None = None


def identity_consistency(view, attributes: tuple[str, ...] = core.STABLE_ATTRIBUTES,
                         write: bool = False) -> dict[str, dict]:
    """Per source: mean share of an identity's images that disagree with its majority state on
    ``attributes``. Sources without identities: not applicable. With ``write``, each sample gets
    its identity's disagreement in ``identity_disagreement``."""
    unknown = [a for a in attributes if a not in ATTRIBUTES]
    if unknown:
        raise OutlierError(f"unknown attribute {unknown[0]!r}")
    cols = [ATTRIBUTES.index(a) for a in attributes]
    group = {"_id": {"s": "$" + schema.SOURCE, "i": "$" + schema.IDENTITY}}
    for k, j in enumerate(cols):
        for char in "pn":
            group[f"{char}{k}"] = {"$sum": {"$cond": [{"$eq": [{"$substrBytes": ["$" + labels.CODE_FIELD, j, 1]},
                                                               char]}, 1, 0]}}
    pipeline = list(view._pipeline()) + [
        {"$match": {labels.CODE_FIELD: {"$type": "string"}}},
        {"$group": group},
    ]
    rows = list(view._dataset._sample_collection.aggregate(pipeline, allowDiskUse=True))
    by_source: dict[str, list] = {}
    for r in rows:
        by_source.setdefault(r["_id"]["s"], []).append(r)
    result = {}
    updates = []
    for source, groups in sorted(by_source.items()):
        # in identity order: $group's output order varies, and ties in "worst" must not follow it
        with_id = sorted((g for g in groups if g["_id"]["i"] is not None), key=lambda g: str(g["_id"]["i"]))
        if not with_id:
            result[source] = asdict(SourceConsistency(False, reason="the source has no identities"))
            continue
        pos = np.array([[g[f"p{k}"] for k in range(len(cols))] for g in with_id], dtype=float)
        neg = np.array([[g[f"n{k}"] for k in range(len(cols))] for g in with_id], dtype=float)
        share = core.identity_disagreement(pos, neg)
        score = core.identity_scores(share)
        order = np.argsort(-np.nan_to_num(score, nan=-1), kind="stable")[:5]
        result[source] = asdict(SourceConsistency(
            True, len(with_id), _num(_nanmean(score)),
            {a: _num(_nanmean(share[:, k])) for k, a in enumerate(attributes)},
            [{"identity": with_id[i]["_id"]["i"], "disagreement": _num(score[i])} for i in order],
        ))
        updates += [(source, g["_id"]["i"], _num(v)) for g, v in zip(with_id, score)]
    if write:
        _write_disagreement(view._dataset, updates)
    return result


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def _num(x) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _write_disagreement(dataset, updates) -> None:
    from pymongo import UpdateMany

    ensure_fields(dataset)
    now = schema.utc_now()
    ops = [UpdateMany({schema.SOURCE: s, schema.IDENTITY: i}, {"$set": {DISAGREEMENT_FIELD: v, "last_modified_at": now}})
           for s, i, v in updates]
    bulk.bulk_write_in_parts(dataset._sample_collection, ops)

