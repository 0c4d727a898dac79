"""What the HTML report needs from FiftyOne, gathered as plain data for ``faceaudit.report``.

The report itself (``faceaudit.report.to_html``) is pure: it renders a comparison's JSON plus
the *context* built here: how the labels were made (``dataset.info["faceaudit"]["annotation"]``),
where each source came from, the software versions, the realness scores per source (as
histograms: aggregates, never per-sample arrays), the tagged outliers with their images' paths
relative to the report (so the report's folder and the images can be shared together), and the
date. Nothing here writes to the dataset.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from importlib import metadata
from urllib.parse import quote

import fiftyone as fo

from . import schema
from .outliers import OUTLIER_TAG, SCORE_FIELD, is_scored

REALNESS_BINS = 30
OUTLIER_THUMBNAILS = 24
VERSIONED = ("faceaudit", "fiftyone", "torch", "plotly", "numpy", "scipy")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None: not installed)."""
    found = {}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def report_context(view, html_path: str, outliers: int = OUTLIER_THUMBNAILS, tag: str = OUTLIER_TAG) -> dict:
    """The provenance and per-sample summaries of ``view`` (a Dataset or DatasetView) that the
    report shows beside the comparison; image paths are relative to ``html_path``'s folder, and
    the outliers are the samples tagged ``tag``."""
    view = view.view()
    dataset = view._dataset
    scored = is_scored(dataset)
    return {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "annotation": schema.get_info(dataset, "annotation"),
        "sources": schema.checked_sources(dataset),
        "realness": realness_summary(view) if scored else None,
        "outliers": outlier_gallery(view, html_path, outliers, tag) if scored else None,
        "identity": schema.get_info(dataset, "identity"),
    }


def realness_summary(view, bins: int = REALNESS_BINS) -> dict | None:
    """The scoring run's parameters and, per source, the count, mean and a histogram of
    ``realness_nll`` over one shared set of bins (so the sources' bars line up)."""
    lo, hi = view.bounds(SCORE_FIELD)
    if lo is None:
        return None
    # HistogramValues' last edge is exclusive: move it past the maximum so that every score counts
    hi = math.nextafter(hi, math.inf) if hi > lo else lo + 1.0
    per_source = {}
    for source in view.distinct(schema.SOURCE):
        part = view.match({schema.SOURCE: source})  # a plain query: a name is never a field path
        n, mean, (counts, edges, _) = part.aggregate(
            [fo.Count(SCORE_FIELD), fo.Mean(SCORE_FIELD), fo.HistogramValues(SCORE_FIELD, bins=bins, range=(lo, hi))])
        if n:
            per_source[source] = {"scored": n, "mean": mean, "counts": counts}
    return {"run": schema.get_info(view._dataset, "realness"), "edges": list(edges), "sources": per_source}


def outlier_gallery(view, html_path: str, limit: int = OUTLIER_THUMBNAILS, tag: str = OUTLIER_TAG) -> dict:
    """The samples tagged as outliers, highest ``realness_nll`` first (at most ``limit``), each
    with its image as a URL relative to the report's folder."""
    tagged = view.match_tags(tag)
    folder = os.path.dirname(os.path.abspath(html_path))
    rows = tagged.sort_by(SCORE_FIELD, reverse=True).limit(limit)
    paths, sources, identities, scores = rows.values(["filepath", schema.SOURCE, schema.IDENTITY, SCORE_FIELD])
    return {
        "tag": tag,
        "tagged": tagged.count(),
        "samples": [{"image": relative_url(p, folder), "source": s, "identity": i, "score": v}
                    for p, s, i, v in zip(paths, sources, identities, scores)],
    }


def relative_url(path: str, folder: str) -> str:
    """``path`` as a URL relative to ``folder`` (``/`` separators, unsafe characters quoted)."""
    return quote(os.path.relpath(path, folder).replace(os.sep, "/"))


def write_html_report(view, result: dict, html_path: str) -> None:
    """Render the comparison ``result`` of ``view`` with its context into ``html_path``."""
    from faceaudit.report import to_html

    text = to_html(result, report_context(view, html_path))
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(text)
