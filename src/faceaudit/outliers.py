"""Per-sample realness scores and identity consistency (numpy only, no FiftyOne).

Realness: the negative log-likelihood (nats) of a sample's 47 attribute states under the pooled
real distribution, each attribute smoothed as in the comparison (pseudo-count ``alpha`` per
state). Under ``states="binary"`` undefined states contribute nothing. The independent model is
a sum of 47 per-attribute terms, so it is a lookup table of shape ``(47, 3)``; optionally a
*joint* model over a few attributes (``joint``) replaces their independent terms by the NLL of
their combination, smoothed over all ``3**k`` combinations, so that a combination never seen in
real data (e.g. ``Bald`` with ``Bangs``) scores high even when each state alone is common.

Identity consistency: for attributes that should not change within one person (default
``Male, Asian, White, Black``), the share of an identity's images whose defined state (positive or
negative) differs from the identity's majority defined state; undefined states are left out.
"""

from __future__ import annotations

import warnings

import numpy as np

from .attributes import ATTRIBUTES
from .stats import StatsError, check_parameters

STABLE_ATTRIBUTES = ("Male", "Asian", "White", "Black")

# A face a person reviewed and kept (a false positive of the outlier flag): flagging never tags
# it again and counts it apart. Every door that tags or lists outliers must respect it.
REVIEWED_KEEP_TAG = "reviewed_keep"


def nll_table(real_counts: np.ndarray, states: str = "three", alpha: float = 0.5) -> np.ndarray:
    """``(A, 3)`` real state counts -> ``(A, 3)`` NLL per (attribute, state); binary: undefined 0."""
    check_parameters(states, alpha)
    counts = np.asarray(real_counts, dtype=np.float64)
    if states == "binary":
        counts = counts[:, :2]
    smoothed = counts + alpha
    total = smoothed.sum(1, keepdims=True)
    if (total == 0).any():
        raise StatsError("no real labels to score against (and alpha is 0)")
    with np.errstate(divide="ignore"):
        table = -np.log(smoothed / total)
    if states == "binary":
        table = np.concatenate([table, np.zeros((len(table), 1))], axis=1)
    return table


def independent_nll(states: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``(n, A)`` state indices (0 positive, 1 negative, 2 undefined) -> ``(n,)`` NLL."""
    return table[np.arange(states.shape[1]), states].sum(1)


def combination_index(states: np.ndarray) -> np.ndarray:
    """``(n, k)`` state indices -> ``(n,)`` base-3 combination numbers."""
    return (states * (3 ** np.arange(states.shape[1]))).sum(1)


def joint_nll(real_states: np.ndarray, states: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """NLL of each row's combination of ``k`` states under the real combinations, smoothed with
    ``alpha`` per combination (an unseen combination gets ``alpha / (n + alpha * 3**k)``)."""
    k = states.shape[1]
    if k > 10:
        raise StatsError(f"a joint model over {k} attributes has 3**{k} combinations: use at most 10")
    counts = np.bincount(combination_index(real_states), minlength=3 ** k).astype(np.float64)
    smoothed = counts + alpha
    total = smoothed.sum()
    if total == 0:
        raise StatsError("no real labels to score against (and alpha is 0)")
    with np.errstate(divide="ignore"):
        return -np.log(smoothed[combination_index(states)] / total)


def realness_nll(states: np.ndarray, real_counts: np.ndarray, real_states: np.ndarray | None = None,
                 joint: tuple[str, ...] = (), mode: str = "three", alpha: float = 0.5) -> np.ndarray:
    """Scores for ``(n, 47)`` state indices; ``joint`` attributes need ``real_states`` too."""
    table = nll_table(real_counts, mode, alpha)
    if not joint:
        return independent_nll(states, table)
    unknown = [a for a in joint if a not in ATTRIBUTES]
    if unknown:
        raise StatsError(f"unknown attribute {unknown[0]!r} in the joint model")
    cols = [ATTRIBUTES.index(a) for a in joint]
    table = table.copy()
    table[cols] = 0.0  # replaced by the joint term
    return independent_nll(states, table) + joint_nll(real_states[:, cols], states[:, cols], alpha)


def identity_disagreement(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Share of an identity's images whose defined state disagrees with its majority.

    ``positive`` / ``negative``: ``(identities, k)`` counts of each stable attribute's defined
    states. The minority count over the defined count; NaN where nothing is defined."""
    defined = positive + negative
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined > 0, np.minimum(positive, negative) / np.where(defined > 0, defined, 1), np.nan)


def identity_scores(share: np.ndarray) -> np.ndarray:
    """An identity's disagreement: the mean over the attributes it has defined states for."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an identity with nothing defined: NaN
        return np.nanmean(share, axis=1)
