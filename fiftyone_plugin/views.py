"""Views the App opens: the faces behind a number."""

from __future__ import annotations

from fiftyone import ViewField as F

from faceaudit.attributes import ATTRIBUTES

from . import labels, schema

STATE_CHARS = {"positive": "p", "negative": "n", "undefined": "u"}


def attribute_state_view(view, source: str, attribute: str, state: str):
    """The samples of ``view`` from ``source`` whose ``attribute`` is in ``state``."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}")
    if state not in STATE_CHARS:
        raise ValueError(f"unknown state {state!r}: positive, negative or undefined")
    j = ATTRIBUTES.index(attribute)
    return view.match(
        schema.source_is(source)
        & (F(labels.CODE_FIELD).substr(start=j, count=1) == STATE_CHARS[state])
    )


def score_range_view(view, source: str, field: str, low: float, high: float):
    """The samples of ``view`` from ``source`` with ``low <= field < high``."""
    return view.match(schema.source_is(source) & (F(field) >= low) & (F(field) < high))


def score_histograms(view, field: str, bins: int = 30) -> dict | None:
    """Per-source histograms of ``field`` on shared bins: ``{"edges": [...], "counts": {source:
    [...]}}``, or None when no sample has the field."""
    import numpy as np

    low, high = view.bounds(field)
    if low is None:
        return None
    high = (high if high > low else low + 1.0) + 1e-9 * max(1.0, abs(high))  # the maximum in the last bin
    edges = np.linspace(low, high, bins + 1).tolist()
    result = {}
    for source in sorted(s for s in view.distinct(schema.SOURCE) if s is not None):
        counts, _, _ = view.match(schema.source_is(source)).histogram_values(field, bins=bins, range=[low, high])
        result[source] = list(counts)
    return {"edges": edges, "counts": result}


def identities_view(view, pairs):
    """The samples of ``view`` of the given ``(source, identity)`` pairs (a leak: the synthetic
    identity and its real match; a collision: both identities), sorted by source, identity and
    file, so that the grid shows one identity beside the other."""
    expr = None
    for source, identity in pairs:
        one = schema.source_is(source) & (F(schema.IDENTITY) == schema.literal(identity))
        expr = one if expr is None else expr | one
    if expr is None:
        raise ValueError("no identity given")
    return view.match(expr).sort_by([(schema.SOURCE, 1), (schema.IDENTITY, 1), ("filepath", 1)])


def identity_outlier_view(view, threshold: float | None = None, tagged: bool = True):
    """The identity outliers of ``view``, lowest ``identity_similarity`` first: the samples
    tagged ``identity_outlier`` when the audit tagged, else those below ``threshold``."""
    from .identity import OUTLIER_TAG, SIMILARITY_FIELD

    picked = view.match_tags(OUTLIER_TAG) if tagged else view.match(F(SIMILARITY_FIELD) < threshold)
    return picked.sort_by(SIMILARITY_FIELD)
