"""The attribute comparison of a view: counts (cached) -> statistics -> the documented JSON.

One function behind the ``compute_attribute_comparison`` operator, the panel and
``faceaudit compare``; the result is also stored on the dataset
(``dataset.info["faceaudit"]["comparison"]``) for the panel and reports to reuse.
"""

from __future__ import annotations


from faceaudit import fingerprint, params, stats
from faceaudit.attributes import ATTRIBUTES

from . import counts, labels, schema


class CompareError(ValueError):
    """A view that cannot be compared; the message says why."""


def compute_comparison(view, states: str = "three", alpha: float = 0.5, bootstrap: int = 0,
                       seed: int = 0, attributes: list[str] | None = None,
                       identities: bool = True, partial: bool = False) -> tuple[stats.Comparison, dict]:
    """Compare every source of ``view``; returns the numbers and their JSON form (limited to
    ``attributes`` if given; with ``identities``, the identity consistency per source too).

    A source without labels or a view with one domain is a :class:`CompareError`, or with
    ``partial`` (the panel) a comparison of what there is, ``notes`` saying what is missing."""
    states = params.choice("states", states, tuple(stats.STATE_SETS), "three")
    alpha = params.alpha(alpha)
    bootstrap = params.bootstrap(bootstrap)
    seed = params.seed(seed)
    unknown = [a for a in attributes or [] if a not in ATTRIBUTES]
    if unknown:
        raise CompareError(f"unknown attribute {unknown[0]!r}: attributes are MAAD-Face's 47 "
                           f"({', '.join(ATTRIBUTES[:4])}, ...)")
    view = view.view()  # a Dataset or a DatasetView
    dataset = view._dataset
    if labels.CODE_FIELD not in dataset.get_field_schema():
        raise CompareError(
            f"dataset {dataset.name!r} has no mac_* labels yet: run faceaudit annotate or import-labels first")
    c = counts.cached_counts(view)
    if not c.sources:
        raise CompareError(f"the view of dataset {dataset.name!r} has no samples with a source")
    try:
        comparison = stats.compare(c.sources, c.domains, c.samples, c.counts, states, alpha, partial=partial)
    except stats.StatsError as e:
        raise CompareError(str(e)) from None
    if bootstrap:
        clusters = {d: counts.identity_cluster_counts(view, d) for d in ("real", "synthetic")}
        stats.bootstrap_pooled_kl(comparison, clusters, bootstrap, seed=seed,
                                  unit="identities where known, else samples")
    result = comparison.to_json(dataset.name)
    result["view"] = view._serialize()  # [] for the whole dataset
    if attributes:
        result["attributes"] = {a: result["attributes"][a] for a in attributes}
    if identities:
        from .outliers import identity_consistency

        result["identity_consistency"] = counts.CACHE.get(view, identity_consistency, "identity_consistency")
    return comparison, result


SETTINGS_KEY = "settings_key"  # beside the stored comparison: the settings it was computed with


def store_comparison(dataset, result: dict, settings: dict | None = None) -> None:
    """Keep ``result`` on the dataset for the panel and reports; ``settings`` (what it was
    computed from, e.g. ``faceaudit run``'s labels version and comparison settings) are stored
    as their key, so that a caller asking for other settings never takes it for its own."""
    key = None if settings is None else fingerprint.settings_key(settings)
    schema.set_info(dataset, "comparison", {**result, SETTINGS_KEY: key}, stamp="computed_at")


def stored_comparison(dataset, settings: dict | None = None) -> dict | None:
    """The stored comparison (without its key); given ``settings``, only if it was stored with
    them (see :func:`store_comparison`)."""
    stored = schema.get_info(dataset, "comparison")
    if stored is None:
        return None
    stored = dict(stored)
    key = stored.pop(SETTINGS_KEY, None)
    if settings is not None and not fingerprint.is_current(key, settings):
        return None
    return stored
