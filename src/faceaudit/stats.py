"""Attribute distributions and real vs synthetic divergences (numpy + scipy, no FiftyOne).

Input: per-source counts of each attribute's states, an int array ``(S, A, 3)`` with the states
in the order ``positive, negative, undefined``. Everything else derives from it:

* ``states="three"``: distributions over (positive, negative, undefined); ``"binary"``: over
  (positive, negative), undefined left out.
* shares (``distributions`` in the JSON): the raw share of each state among a source's labels,
  what a user can check by counting faces;
* smoothing, inside the divergences only: an additive pseudo-count ``alpha`` per state, added to
  the counts before normalising. ``alpha=0`` is allowed: a state with mass in P and none in Q
  then gives D_KL(P || Q) = inf, reported as infinite (JSON ``null`` with the reason), never NaN.
  The Jensen-Shannon divergence stays finite (at most ln 2) whatever alpha;
* an attribute that no source labels positive or negative (a model that does not predict it
  leaves it undefined everywhere) is "not labelled": its divergences are ``null`` with that
  reason, never a 0 that reads as agreement;
* pooled real (the sum of the ``real`` sources' counts) vs pooled synthetic:
  ``kl_real_synth`` = D_KL(P_real || P_synth), ``kl_synth_real`` = D_KL(P_synth || P_real) and the
  Jensen-Shannon divergence, all in nats;
* every ordered pair of sources: D_KL(P_a || P_b);
* with ``partial=True``, a view that cannot be compared in full (a source without labels, only
  one domain) still gives what can be computed, with ``notes`` saying what is missing;
* optionally, bootstrap percentile intervals of the pooled KLs, resampling identities where a
  source has them (a person's images are not independent), samples otherwise.

scipy is the reference and the implementation: ``scipy.special.rel_entr`` and
``scipy.spatial.distance.jensenshannon``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

from .attributes import ATTRIBUTES

ALL_STATES = ("positive", "negative", "undefined")
STATE_SETS = {"three": ALL_STATES, "binary": ("positive", "negative")}


class StatsError(ValueError):
    """Bad statistics input; the message says which parameter or source."""


def check_parameters(states: str, alpha: float) -> tuple[str, ...]:
    if states not in STATE_SETS:
        raise StatsError(f"states must be 'three' or 'binary', got {states!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise StatsError(f"alpha must be a finite number >= 0, got {alpha}")
    return STATE_SETS[states]


def select_states(counts: np.ndarray, states: str) -> np.ndarray:
    """``(..., 3)`` counts -> the columns of the state set."""
    return counts[..., : len(STATE_SETS[states])]


def distributions(counts: np.ndarray, states: str = "three", alpha: float = 0.5) -> np.ndarray:
    """Smoothed distributions ``(..., K)``; rows with no mass at all (no samples, alpha 0) are NaN."""
    check_parameters(states, alpha)
    smoothed = select_states(counts, states).astype(np.float64) + alpha
    total = smoothed.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, smoothed / np.where(total > 0, total, 1), np.nan)


def shares(counts: np.ndarray, states: str = "three") -> np.ndarray:
    """Raw shares ``(..., K)`` of each state among the labels (no smoothing); NaN where a row has
    no label in the state set."""
    selected = select_states(counts, states).astype(np.float64)
    total = selected.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, selected / np.where(total > 0, total, 1), np.nan)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """D_KL(P || Q) in nats over the last axis (inf where Q is 0 and P is not; NaN if undefined)."""
    return rel_entr(p, q).sum(-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in nats (scipy returns its square root, the JS distance)."""
    with np.errstate(invalid="ignore"):
        return jensenshannon(p, q, axis=-1) ** 2


@dataclass
class Comparison:
    """All the numbers of one comparison; ``to_json`` gives the documented JSON shape."""

    sources: list[str]
    domains: list[str]
    samples: np.ndarray  # (S,) samples in the view per source
    counts: np.ndarray  # (S, A, 3) state counts (positive, negative, undefined)
    states: str
    alpha: float
    attributes: tuple[str, ...] = ATTRIBUTES
    notes: list[str] = field(default_factory=list)  # what a partial comparison leaves out
    dist: np.ndarray = field(init=False)  # (S, A, K) smoothed, for the divergences
    shares: np.ndarray = field(init=False)  # (S, A, K) raw shares, what the charts show
    labelled: np.ndarray = field(init=False)  # (A,) some source has a positive or negative
    pooled_dist: dict[str, np.ndarray] = field(init=False)  # domain -> (A, K)
    kl_real_synth: np.ndarray = field(init=False)  # (A,)
    kl_synth_real: np.ndarray = field(init=False)
    js: np.ndarray = field(init=False)
    pairwise: np.ndarray = field(init=False)  # (S, S, A): D_KL(P_a || P_b)
    bootstrap: dict | None = None

    def __post_init__(self) -> None:
        """Divergences; NaN (a reason in the JSON) where a domain is missing, a source has no
        labels or an attribute is not labelled, so nothing reads as a computed 0."""
        self.shares = shares(self.counts, self.states)
        self.labelled = self.counts[:, :, :2].sum((0, 2)) > 0
        has_labels = self.counts[:, 0].sum(-1) > 0  # (S,)
        self.dist = distributions(self.counts, self.states, self.alpha)
        self.dist[~has_labels] = np.nan
        self.dist[:, ~self.labelled] = np.nan
        self.pooled_dist = {}
        for d in ("real", "synthetic"):
            pooled = distributions(self.pooled_counts(d), self.states, self.alpha)
            pooled[~self.labelled] = np.nan
            if not self.has_domain(d):
                pooled[:] = np.nan
            self.pooled_dist[d] = pooled
        p, q = self.pooled_dist["real"], self.pooled_dist["synthetic"]
        self.kl_real_synth, self.kl_synth_real, self.js = kl_divergence(p, q), kl_divergence(q, p), js_divergence(p, q)
        self.pairwise = kl_divergence(self.dist[:, None], self.dist[None, :])

    def has_domain(self, domain: str) -> bool:
        """Some source of ``domain`` has labelled samples."""
        return any(d == domain and c[0].sum() > 0 for d, c in zip(self.domains, self.counts))

    def missing_reason(self, j: int) -> str | None:
        """Why attribute ``j`` has no real-vs-synthetic divergence, or None."""
        for domain in ("real", "synthetic"):
            if not self.has_domain(domain):
                return f"no {domain} source with labels in the view"
        if not self.labelled[j]:
            return "not labelled: no source has a positive or negative label for it"
        return None

    def pooled_counts(self, domain: str) -> np.ndarray:
        mask = np.array([d == domain for d in self.domains], dtype=bool)
        return self.counts[mask].sum(0) if mask.any() else np.zeros(self.counts.shape[1:], np.int64)

    @property
    def state_names(self) -> tuple[str, ...]:
        return STATE_SETS[self.states]

    def to_json(self, dataset: str = "") -> dict:
        """The documented JSON: infinite or undefined divergences are ``null`` with a reason."""
        names = self.state_names
        out = {
            "dataset": dataset,
            "states": list(names),
            "alpha": float(self.alpha),
            "sources": {s: {"domain": d, "count": int(n), "labelled": int(self.counts[i, 0].sum())}
                        for i, (s, d, n) in enumerate(zip(self.sources, self.domains, self.samples))},
            "notes": list(self.notes),
            "attributes": {},
        }
        for j, attr in enumerate(self.attributes):
            rvs, missing = {}, self.missing_reason(j)
            for key, value, direction in (("kl_real_synth", self.kl_real_synth[j], "real || synthetic"),
                                          ("kl_synth_real", self.kl_synth_real[j], "synthetic || real"),
                                          ("js", self.js[j], "real, synthetic")):
                rvs[key], reason = (None, missing) if missing else _finite(value, direction)
                if reason:
                    rvs[key + "_reason"] = reason
            if self.bootstrap is not None:
                rvs["bootstrap"] = {k: [_finite(v, "")[0] for v in self.bootstrap[k][j]]
                                    for k in ("kl_real_synth", "kl_synth_real")}
            pairwise, reasons = {}, {}
            for a, sa in enumerate(self.sources):
                pairwise[sa] = {}
                for b, sb in enumerate(self.sources):
                    pairwise[sa][sb], reason = _finite(self.pairwise[a, b, j], f"{sa} || {sb}")
                    if reason:
                        reasons.setdefault(sa, {})[sb] = reason
            entry = {
                "counts": {s: {n: int(self.counts[i, j, k]) for k, n in enumerate(ALL_STATES)}
                           for i, s in enumerate(self.sources)},
                "labelled": bool(self.labelled[j]),
                "distributions": {s: {n: _finite(self.shares[i, j, k], "")[0] for k, n in enumerate(names)}
                                  for i, s in enumerate(self.sources)},
                "real_vs_synthetic": rvs,
                "pairwise": pairwise,
            }
            if reasons:
                entry["pairwise_reasons"] = reasons
            out["attributes"][attr] = entry
        if self.bootstrap is not None:
            out["bootstrap"] = {k: self.bootstrap[k] for k in ("iterations", "level", "unit")}
        return out


def _finite(value: float, direction: str) -> tuple[float | None, str | None]:
    if np.isnan(value):
        return None, f"undefined ({direction}): a distribution has no samples (and alpha is 0)"
    if np.isinf(value):
        return None, (f"infinite ({direction}): the second distribution has an empty state where "
                      "the first has mass; use alpha > 0")
    return float(value), None


def compare(sources, domains, samples, counts, states: str = "three", alpha: float = 0.5,
            partial: bool = False) -> Comparison:
    """Validate the input and compute every divergence. A source without labels or a missing
    domain is an error, or with ``partial`` a note (what can be computed still is)."""
    check_parameters(states, alpha)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 3 or counts.shape[0] != len(sources) or counts.shape[2] != 3:
        raise StatsError(f"counts must have shape (sources, attributes, 3), got {counts.shape}")
    bad = [d for d in domains if d not in ("real", "synthetic")]
    if bad:
        raise StatsError(f"unknown domain {bad[0]!r}: sources must be real or synthetic")
    notes = [f"source {s!r} has no labelled samples in this view" for s, c in zip(sources, counts)
             if c[0].sum() == 0]
    for domain in ("real", "synthetic"):
        if not any(d == domain and c[0].sum() > 0 for d, c in zip(domains, counts)):
            present = ", ".join(f"{s} ({d})" for s, d in zip(sources, domains)) or "none"
            notes.append(f"the view has no {domain} source to compare with (sources: {present})")
    if notes and not partial:
        raise StatsError(notes[0])
    return Comparison(list(sources), list(domains), np.asarray(samples), counts, states, alpha, notes=notes)


def bootstrap_pooled_kl(
    comparison: Comparison,
    cluster_counts: dict[str, np.ndarray],
    iterations: int = 200,
    level: float = 0.95,
    seed: int = 0,
    unit: str = "identity or sample",
) -> dict:
    """Percentile intervals of the pooled KLs by resampling clusters within each domain.

    ``cluster_counts[domain]`` is ``(n_clusters, A, 3)``: the state counts of each resampling unit
    (an identity's images, or one image). Each iteration draws ``n_clusters`` units with
    replacement per domain (multinomial weights) and recomputes both pooled KLs.
    """
    if iterations <= 0:
        raise StatsError(f"bootstrap iterations must be positive, got {iterations}")
    rng = np.random.default_rng(seed)
    kls = {"kl_real_synth": [], "kl_synth_real": []}
    flat = {d: c.reshape(len(c), -1).astype(np.float64) for d, c in cluster_counts.items()}
    for _ in range(iterations):
        pooled = {}
        for d, units in flat.items():
            weights = rng.multinomial(len(units), np.full(len(units), 1 / len(units)))
            pooled[d] = (weights @ units).reshape(-1, 3)
        p = distributions(pooled["real"], comparison.states, comparison.alpha)
        q = distributions(pooled["synthetic"], comparison.states, comparison.alpha)
        kls["kl_real_synth"].append(kl_divergence(p, q))
        kls["kl_synth_real"].append(kl_divergence(q, p))
    tail = (1 - level) / 2 * 100
    result = {"iterations": iterations, "level": level, "unit": unit}
    for key, values in kls.items():
        lo, hi = np.percentile(np.array(values), [tail, 100 - tail], axis=0)
        result[key] = np.stack([lo, hi], axis=1).tolist()  # (A, 2)
    comparison.bootstrap = result
    return result
