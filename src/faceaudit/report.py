"""Figures, tables and reports of a comparison, from its JSON (so a stored result re-renders).

The same figure builders serve the App panel and the HTML report: what a user sees in the App is
what goes into the paper. Plotly figures are plain dicts (the panel ships them as JSON; the
report embeds plotly.js once, so the HTML opens offline).
"""

from __future__ import annotations

import csv
import html
import io
import json

from .attributes import CATEGORIES, CATEGORY_OF

STATE_COLORS = {"positive": "#2ca02c", "negative": "#d62728", "undefined": "#7f7f7f"}
SOURCE_PALETTE = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")


def attributes_of(result: dict, category: str | None = None) -> list[str]:
    attrs = list(result["attributes"])
    return [a for a in attrs if category in (None, "", "all") or CATEGORY_OF.get(a) == category]


def kl_rows(result: dict, category: str | None = None, sort: str = "kl_real_synth") -> list[dict]:
    """One row per attribute: category and both KL directions and JS, sorted (None last)."""
    rows = []
    for attr in attributes_of(result, category):
        rvs = result["attributes"][attr]["real_vs_synthetic"]
        rows.append({"attribute": attr, "category": CATEGORY_OF.get(attr, ""),
                     "kl_real_synth": rvs["kl_real_synth"], "kl_synth_real": rvs["kl_synth_real"],
                     "js": rvs["js"]})
    if sort == "attribute":
        return rows
    return sorted(rows, key=lambda r: (r[sort] is not None, r[sort] if r[sort] is not None else 0), reverse=True)


def fmt(value: float | None, digits: int = 4) -> str:
    return "inf" if value is None else f"{value:.{digits}f}"


def source_colors(result: dict) -> dict[str, str]:
    return {s: SOURCE_PALETTE[i % len(SOURCE_PALETTE)] for i, s in enumerate(result["sources"])}


def overview_figure(result: dict, state: str = "positive", category: str | None = None) -> dict:
    """Grouped bars: for each attribute, the share of ``state`` in each source.
    A bar's ``customdata`` is ``[source, attribute, state]`` (what a click filters to)."""
    attrs = attributes_of(result, category)
    colors = source_colors(result)
    data = []
    for source, info in result["sources"].items():
        data.append({
            "type": "bar", "name": f"{source} ({info['domain']})", "x": attrs,
            "y": [result["attributes"][a]["distributions"][source].get(state) for a in attrs],
            "customdata": [[source, a, state] for a in attrs],
            "marker": {"color": colors[source],
                       "pattern": {"shape": "" if info["domain"] == "real" else "/"}},
            "hovertemplate": "%{customdata[0]}<br>%{x}: %{y:.3f}<extra></extra>",
        })
    layout = {"barmode": "group", "title": {"text": f"P({state}) per attribute and source"},
              "yaxis": {"title": {"text": f"share {state}"}, "rangemode": "tozero"},
              "xaxis": {"tickangle": -45}, "legend": {"orientation": "h"},
              "margin": {"t": 40, "b": 120}}
    return {"data": data, "layout": layout}


def attribute_figure(result: dict, attribute: str) -> dict:
    """Grouped bars of one attribute: each state's share, per source."""
    entry = result["attributes"][attribute]
    colors = source_colors(result)
    data = [{
        "type": "bar", "name": f"{source} ({info['domain']})", "x": result["states"],
        "y": [entry["distributions"][source].get(st) for st in result["states"]],
        "customdata": [[source, attribute, st] for st in result["states"]],
        "marker": {"color": colors[source]},
        "hovertemplate": "%{customdata[0]}<br>%{x}: %{y:.3f}<extra></extra>",
    } for source, info in result["sources"].items()]
    rvs = entry["real_vs_synthetic"]
    title = (f"{attribute}: KL(real||synth) {fmt(rvs['kl_real_synth'])}, "
             f"KL(synth||real) {fmt(rvs['kl_synth_real'])}")
    return {"data": data, "layout": {"barmode": "group", "title": {"text": title},
                                     "yaxis": {"title": {"text": "share"}, "rangemode": "tozero"},
                                     "margin": {"t": 40}}}


def kl_figure(result: dict, category: str | None = None) -> dict:
    """Both KL directions per attribute, sorted by KL(real || synthetic). inf is drawn at the top."""
    rows = kl_rows(result, category)
    finite = [v for r in rows for v in (r["kl_real_synth"], r["kl_synth_real"]) if v is not None]
    cap = max(finite, default=1.0) * 1.2 or 1.0
    data = [{"type": "bar", "name": name, "x": [r["attribute"] for r in rows],
             "y": [cap if r[key] is None else r[key] for r in rows],
             "text": [fmt(r[key], 3) for r in rows], "hovertemplate": "%{x}: %{text}<extra></extra>"}
            for key, name in (("kl_real_synth", "KL(real || synthetic)"), ("kl_synth_real", "KL(synthetic || real)"))]
    return {"data": data, "layout": {"barmode": "group", "title": {"text": "KL divergence, both directions (nats)"},
                                     "xaxis": {"tickangle": -45}, "margin": {"t": 40, "b": 120},
                                     "legend": {"orientation": "h"}}}


def pairwise_figure(result: dict, attribute: str | None = None) -> dict:
    """Source x source heatmap of D_KL(row || column): one attribute, or the mean over all."""
    sources = list(result["sources"])
    attrs = [attribute] if attribute else list(result["attributes"])
    z = []
    for a in sources:
        row = []
        for b in sources:
            values = [result["attributes"][t]["pairwise"][a][b] for t in attrs]
            row.append(None if any(v is None for v in values) else sum(values) / len(values))
        z.append(row)
    what = attribute or "mean over attributes"
    return {"data": [{"type": "heatmap", "x": sources, "y": sources, "z": z, "colorscale": "Viridis",
                      "hovertemplate": "KL(%{y} || %{x}) = %{z:.4f}<extra></extra>"}],
            "layout": {"title": {"text": f"pairwise KL(row || column), {what}"},
                       "yaxis": {"autorange": "reversed"}, "margin": {"t": 40}}}


def text_table(result: dict) -> str:
    """The readable table ``faceaudit compare`` prints: attributes by KL(real || synthetic)."""
    lines = [f"dataset {result['dataset']}: states {'/'.join(result['states'])}, alpha {result['alpha']}",
             "sources: " + ", ".join(f"{s} ({i['domain']}, {i['labelled']} labelled)"
                                     for s, i in result["sources"].items()),
             f"{'attribute':<24} {'category':<14} {'KL(real||synth)':>16} {'KL(synth||real)':>16} {'JS':>8}"]
    for r in kl_rows(result):
        lines.append(f"{r['attribute']:<24} {r['category']:<14} {fmt(r['kl_real_synth']):>16} "
                     f"{fmt(r['kl_synth_real']):>16} {fmt(r['js']):>8}")
    return "\n".join(lines)


def to_csv(result: dict) -> str:
    """One row per attribute: category, the divergences, then each source's distribution.
    Text cells (source names in the header, attribute names) are neutralised against formula
    injection (:func:`faceaudit.textsafe.csv_cell`); numbers are written as they are."""
    from .textsafe import csv_cell

    buf = io.StringIO()
    writer = csv.writer(buf)
    sources, states = list(result["sources"]), result["states"]
    writer.writerow(["attribute", "category", "kl_real_synth", "kl_synth_real", "js",
                     *[csv_cell(f"{s}:{st}") for s in sources for st in states]])
    for r in kl_rows(result, sort="attribute"):
        dist = result["attributes"][r["attribute"]]["distributions"]
        writer.writerow([csv_cell(r["attribute"]), csv_cell(r["category"]),
                         *["inf" if r[k] is None else repr(r[k]) for k in ("kl_real_synth", "kl_synth_real", "js")],
                         *[repr(dist[s][st]) for s in sources for st in states]])
    return buf.getvalue()


def to_html(result: dict) -> str:
    """A self-contained report: parameters, dataset summary, the panel's charts, the KL table."""
    import plotly.io as pio
    import plotly.offline

    figures = [overview_figure(result), kl_figure(result), pairwise_figure(result)]
    divs = [pio.to_html(fig, include_plotlyjs=False, full_html=False, default_width="100%",
                        config={"displaylogo": False}) for fig in figures]
    esc = html.escape
    source_rows = "".join(
        f"<tr><td>{esc(s)}</td><td>{esc(i['domain'])}</td><td>{i['count']}</td><td>{i['labelled']}</td></tr>"
        for s, i in result["sources"].items())
    kl_table = "".join(
        f"<tr><td>{esc(r['attribute'])}</td><td>{esc(r['category'])}</td><td>{fmt(r['kl_real_synth'])}</td>"
        f"<td>{fmt(r['kl_synth_real'])}</td><td>{fmt(r['js'])}</td></tr>" for r in kl_rows(result))
    embedded = json.dumps(result).replace("</", "<\\/")  # safe inside <script>
    params = {"dataset": result["dataset"], "states": result["states"], "alpha": result["alpha"],
              "view": result.get("view", []), "bootstrap": result.get("bootstrap")}
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>faceaudit: {esc(result['dataset'])}</title>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}} td:first-child{{text-align:left}}</style>
</head><body>
<h1>Real vs synthetic face attributes: {esc(result['dataset'])}</h1>
<h2>Parameters</h2><pre id="parameters">{esc(json.dumps(params, indent=2))}</pre>
<p>KL divergences in nats; "inf" where a distribution has an empty state that the other has
(alpha = 0). D_KL(real || synthetic) large and D_KL(synthetic || real) small means synthetic
data covers only part of what real faces show.</p>
<h2>Sources</h2><table id="sources"><tr><th>source</th><th>domain</th><th>samples</th><th>labelled</th></tr>
{source_rows}</table>
<h2>Charts</h2>{''.join(divs)}
<h2>KL divergence per attribute</h2>
<table id="kl"><tr><th>attribute</th><th>category</th><th>KL(real||synth)</th><th>KL(synth||real)</th><th>JS</th></tr>
{kl_table}</table>
<script type="application/json" id="faceaudit-result">{embedded}</script>
</body></html>
"""


__all__ = ["CATEGORIES", "overview_figure", "attribute_figure", "kl_figure", "pairwise_figure",
           "kl_rows", "text_table", "to_csv", "to_html"]
