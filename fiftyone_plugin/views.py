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


#: the plugin's browser-side operator (js/faceaudit.js) that clears the App's grid *Sort by*
CLEAR_GRID_SORT = "clear_grid_sort"


def own_sort(dataset, name: str | None):
    """The last ``SortBy`` stage of the saved view ``name`` (the order the view is about, e.g.
    ``synthetic_outliers``: realness_nll, highest first), or None."""
    if not name or not dataset.has_saved_view(name):
        return None
    sorts = [s for s in dataset.load_saved_view(name)._stages if type(s).__name__ == "SortBy"]
    return sorts[-1] if sorts else None


def grid_sort_replaces(dataset, name: str | None, extended: dict | None):
    """``(the grid's sort, the view's own)``, each ``(field, highest first)``, when the App's
    grid *Sort by* (its extended ``SortBy`` stage, sent with every App request) replaces the
    order of the saved view ``name``; else None. FiftyOne 1.22 applies the grid's sort after
    every stage of the view, a saved view's own sort included."""
    grid = (extended or {}).get("fiftyone.core.stages.SortBy")
    mine = own_sort(dataset, name) if isinstance(grid, dict) else None
    if mine is None:
        return None
    shown = (str(grid.get("field_or_expr")), bool(grid.get("reverse")))
    own = (str(mine.field_or_expr), bool(mine.reverse))
    return None if shown == own else (shown, own)


def saved_view_of_slug(dataset, slug: str) -> str | None:
    """The name of ``dataset``'s saved view whose URL slug is ``slug`` (the App's ?view=; the
    slug FiftyOne gives a saved view is ``to_slug`` of its name)."""
    from fiftyone.core.utils import to_slug

    return next((name for name in dataset.list_saved_views() if to_slug(name) == slug), None)
