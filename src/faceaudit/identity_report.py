"""The identity audit's HTML section (also a page of its own) and CSV, from its JSON result
(``faceaudit.identity``): genuine / impostor histograms per source (the papers' figure), the
metrics table, leakage and collision tables. Pure: no FiftyOne."""

from __future__ import annotations

import csv
import html
import io

from .report import REPORT_CSS, _rows, num, script_json, source_color
from .textsafe import csv_cell

METRICS = [("identities", "identities"), ("samples", "samples"), ("genuine pairs", ("genuine", "count")),
           ("genuine mean", ("genuine", "mean")), ("genuine std", ("genuine", "std")),
           ("impostor pairs", ("impostor", "count")), ("impostor mean", ("impostor", "mean")),
           ("impostor std", ("impostor", "std")), ("EER", "eer"),
           ("FNMR @ FMR 1e-2", ("fnmr_at_fmr", "1e-2")), ("FNMR @ FMR 1e-3", ("fnmr_at_fmr", "1e-3")),
           ("FNMR @ FMR 1e-4", ("fnmr_at_fmr", "1e-4")), ("d'", "d_prime"), ("FDR", "fdr"),
           ("uniqueness", "uniqueness"), ("consistency", "consistency"), ("packing median", ("packing", "median")),
           ("collision pairs", "collision_pairs"), ("W1 genuine vs real", ("vs_real", "genuine", "wasserstein")),
           ("KL genuine vs real", ("vs_real", "genuine", "kl")),
           ("W1 impostor vs real", ("vs_real", "impostor", "wasserstein")),
           ("KL impostor vs real", ("vs_real", "impostor", "kl"))]


def _get(row: dict, path):
    for key in (path,) if isinstance(path, str) else path:
        row = row.get(key) if isinstance(row, dict) else None
    return row


def histogram_figure(result: dict, kind: str) -> dict:
    """Per source with identities, the share of its ``kind`` ('genuine' / 'impostor') scores per bin."""
    edges = result["chart_edges"]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    data = []
    for source, s in result["sources"].items():
        if not s.get("applicable"):
            continue
        counts = s[kind]["histogram"]
        n = sum(counts) or 1
        data.append({"type": "bar", "name": html.escape(f"{source} ({s[kind]['count']} pairs)"), "x": centres,
                     "y": [c / n for c in counts], "customdata": counts, "marker": {"color": source_color(source)},
                     "hovertemplate": f"{html.escape(source)}<br>cosine ~ %{{x:.2f}}: %{{customdata}} pairs "
                                      "(%{y:.1%})<extra></extra>"})
    layout = {"barmode": "group", "bargap": 0.1, "title": {"text": f"{kind} ({'mated' if kind == 'genuine' else 'non-mated'}) scores per source"},
              "xaxis": {"title": {"text": "cosine similarity"}, "range": score_range(result, kind)},
              "yaxis": {"title": {"text": "share of the source's pairs"}, "tickformat": ".0%"},
              "shapes": [{"type": "line", "x0": result["threshold"], "x1": result["threshold"], "y0": 0, "y1": 1,
                          "yref": "paper", "line": {"dash": "dot", "color": "#555"}}]}
    return {"data": data, "layout": layout}


def score_range(result: dict, kind: str) -> list[float]:
    """The x range of ``kind``'s chart: from the lowest bin any source fills (and the threshold)
    to 1, so that scores packed near 1 (dlib's impostors) are not squeezed into a sliver of
    [-1, 1]; [-1, 1] when there are no scores."""
    edges = result["chart_edges"]
    filled = [k for s in result["sources"].values() if s.get("applicable")
              for k, c in enumerate(s[kind]["histogram"]) if c]
    if not filled:
        return [-1.0, 1.0]
    low = min(edges[min(filled)], result["threshold"] if result.get("threshold") is not None else 1.0)
    return [max(-1.0, low - 0.05), 1.0]


def no_pairs(result: dict, kind: str) -> tuple[str, list[str], str] | None:
    """Why no source with identities has ``kind`` ('genuine' / 'impostor') scores, as (headline,
    the sources, what it leaves n/a): a chart without bars would explain nothing (the demo's
    sources have one image per identity: no genuine pair). None when some source has scores.
    The panel and the HTML report say it in their markup."""
    sources = [n for n, s in result["sources"].items() if s.get("applicable")]
    if not sources or any((result["sources"][n].get(kind) or {}).get("count") for n in sources):
        return None
    if kind == "genuine":
        return ("No genuine (mated) scores", sources,
                "no identity has two embedded images, so no two images of one person can be compared. EER, FNMR, "
                "d', FDR and W1 genuine vs real are n/a, and no image can be an identity outlier; sources with "
                "several images per identity measure them.")
    return ("No impostor (non-mated) scores", sources,
            "each source has a single identity, so no two people can be compared. EER, FNMR, d', FDR and "
            "W1 impostor vs real are n/a.")


def _figure_or_note(result: dict, kind: str) -> str:
    import plotly.io as pio

    missing = no_pairs(result, kind)
    if missing:
        headline, sources, why = missing
        return (f'<p class="note" id="identity-no-{kind}"><b>{html.escape(headline)}</b> in '
                f'{html.escape(", ".join(sources))}: {html.escape(why)}</p>')
    figure = pio.to_html(histogram_figure(result, kind), include_plotlyjs=False, full_html=False, default_width="100%")
    return f'<div class="figure">{figure}</div>'


def metric_rows(result: dict) -> list[list[str]]:
    sources = result["sources"]
    rows = []
    for label, path in METRICS:
        rows.append([html.escape(label)] + [num(_get(s, path)) if s.get("applicable") else "n/a"
                                            for s in sources.values()])
    return rows


SHOWN = 20  # leak and collision pairs listed per source


def _share(count, total) -> str:
    return f"{count:,} of {total:,} ({count / total:.1%})" if total else "none"


def leak_line(leak: dict) -> str:
    """What share of a synthetic source's identities and images are at or above the threshold
    with a real identity, as counts and percentages ("3 of 100 identities (3.0%), ...")."""
    parts = []
    if leak.get("identities"):
        parts.append(f"{_share(leak.get('identities_above_threshold') or 0, leak['identities'])} identities")
    if leak.get("samples"):
        parts.append(f"{_share(leak.get('samples_above_threshold') or 0, leak['samples'])} images")
    return (", ".join(parts) or "nothing embedded") + " at or above the threshold"


def section(result: dict | None) -> str:
    """The identity audit as an HTML fragment (figures need plotly.js on the page)."""
    if not result:
        return '<p class="note">Not computed (run faceaudit identity).</p>'
    esc = html.escape
    figs = "".join(_figure_or_note(result, k) for k in ("genuine", "impostor"))
    sources = result["sources"]
    not_applicable = [f"{esc(n)}: {esc(s.get('reason', ''))}" for n, s in sources.items() if not s.get("applicable")]
    leak_rows, collision_rows = [], []
    for source, leak in result.get("leakage", {}).items():
        for p in leak.get("top", [])[:SHOWN]:
            leak_rows.append([esc(source), esc(str(p["identity"])), esc(p["real_source"]),
                              esc(str(p["real_identity"])), num(p["similarity"])])
    for source, s in sources.items():
        for c in (s.get("collisions") or [])[:SHOWN]:
            collision_rows.append([esc(source), esc(str(c["identity_a"])), esc(str(c["identity_b"])), num(c["similarity"])])
    shares = "".join(f"<li>{esc(n)}: {leak_line(v)}</li>" for n, v in result.get("leakage", {}).items()
                     if v.get("applicable"))
    shown = [f"{esc(n)}: the {min(SHOWN, s.get('collision_pairs') or 0)} most similar of {s.get('collision_pairs') or 0}"
             for n, s in sources.items() if s.get("applicable")]
    return (f'<p>Cosine similarity of L2-normalised {esc(str(result.get("model")))} embeddings. Threshold '
            f'<b>{num(result["threshold"])}</b> ({esc(result["threshold_rule"])}). Genuine = every pair inside '
            f'an identity; impostor = pairs of different identities (each source says whether all or a seeded '
            f'uniform sample). FNMR at an FMR is n/a where there are fewer than 10 / FMR impostor pairs.</p>'
            f'{figs}<table id="identity-metrics">{_rows(metric_rows(result), ["metric", *[esc(n) for n in sources]])}</table>'
            + (f'<p class="note">Not applicable: {"; ".join(not_applicable)}</p>' if not_applicable else "")
            + f'<h3>Leakage of real identities</h3><ul>{shares}</ul>'
            f'<table id="identity-leakage">{_rows(leak_rows, ["synthetic source", "identity", "real source", "real identity", "similarity"])}</table>'
            f'<h3>Collisions (identity pairs at or above the threshold)</h3><p>{"; ".join(shown)}</p>'
            f'<table id="identity-collisions">{_rows(collision_rows, ["source", "identity a", "identity b", "similarity"])}</table>')


def to_html(result: dict) -> str:
    """The identity audit as a page of its own (plotly.js inlined: it opens offline)."""
    import plotly.offline

    name = html.escape(str(result.get("dataset", "")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>faceaudit identity audit: {name}</title>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
<style>{REPORT_CSS}</style></head><body>
<h1>Identity audit: {name}</h1>
{section(result)}
<script type="application/json" id="faceaudit-identity">{script_json(result)}</script>
</body></html>
"""


def to_csv(result: dict) -> str:
    """One row per source and metric."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["source", "metric", "value"])
    for source, s in result["sources"].items():
        for label, path in METRICS:
            writer.writerow([csv_cell(source), label, _get(s, path) if s.get("applicable") else ""])
    return out.getvalue()
