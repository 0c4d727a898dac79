"""The attribute comparison of a view: counts (cached) -> statistics -> the documented JSON.

One function behind the ``compute_attribute_comparison`` operator, the panel and
``faceaudit compare``; the result is also stored on the dataset
(``dataset.info["faceaudit"]["comparison"]``) for the panel and reports to reuse.
"""

from __future__ import annotations


from faceaudit import params, stats
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
    seed = params.to_int("seed", seed, 0, minimum=0)
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


def store_comparison(dataset, result: dict) -> None:
    schema.set_info(dataset, "comparison", result, stamp="computed_at")


def stored_comparison(dataset) -> dict | None:
    return schema.get_info(dataset, "comparison")
