"""Figures, tables and reports of a comparison, from its JSON (so a stored result re-renders).

The same figure builders serve the App panel and the HTML report: what a user sees in the App is
what goes into the paper. Plotly figures are plain dicts (the panel ships them as JSON; the
report embeds plotly.js once, so the HTML opens offline).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json

from .attributes import CATEGORIES, CATEGORY_OF

STATE_COLORS = {"positive": "#2ca02c", "negative": "#d62728", "undefined": "#7f7f7f"}
#: how many attributes the overview and KL charts show before "show all" (legible at the App's
#: default panel width: horizontal bars, one row per attribute)
TOP_N = 15
NOT_LABELLED = "not labelled"
ROW_PX = 9  # height of one bar in a horizontal chart


def source_color(source: str) -> str:
    """One colour per source name, the same in every chart, report and session (a hue from the
    name's hash, so adding a source changes no other source's colour)."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") * 360 // 65536
    return f"hsl({hue}, {60 + digest[2] % 25}%, {45 + digest[3] % 15}%)"


def source_colors(result: dict) -> dict[str, str]:
    return {s: source_color(s) for s in result["sources"]}


def attributes_of(result: dict, category: str | None = None) -> list[str]:
    attrs = list(result["attributes"])
    return [a for a in attrs if category in (None, "", "all") or CATEGORY_OF.get(a) == category]


def not_labelled(result: dict, category: str | None = None) -> list[str]:
    """Attributes that no source labels positive or negative (a model that does not predict
    them): their divergences mean nothing and are left out of sorted tables."""
    return [a for a in attributes_of(result, category) if result["attributes"][a].get("labelled") is False]


def kl_rows(result: dict, category: str | None = None, sort: str = "kl_real_synth") -> list[dict]:
    """One row per attribute: category and both KL directions and JS, sorted (inf first);
    attributes no source labelled are left out of a sorted table, and kept (with ``labelled``
    False) in attribute order (``sort="attribute"``)."""
    rows = []
    for attr in attributes_of(result, category):
        entry = result["attributes"][attr]
        rvs = entry["real_vs_synthetic"]
        rows.append({"attribute": attr, "category": CATEGORY_OF.get(attr, ""),
                     "kl_real_synth": rvs["kl_real_synth"], "kl_synth_real": rvs["kl_synth_real"],
                     "js": rvs["js"], "labelled": entry.get("labelled", True),
                     "reason": rvs.get("kl_real_synth_reason")})
    if sort == "attribute":
        return rows
    rows = [r for r in rows if r["labelled"]]
    return sorted(rows, key=lambda r: (r[sort] is None, r[sort] if r[sort] is not None else 0), reverse=True)


def fmt(value: float | None, digits: int = 4, reason: str | None = None) -> str:
    """A divergence as text: ``inf`` for an infinite one, else what its ``reason`` says is
    missing (``not labelled``, ``n/a``)."""
    if value is not None:
        return f"{value:.{digits}f}"
    if reason is None or reason.startswith("infinite"):
        return "inf"
    return NOT_LABELLED if reason.startswith(NOT_LABELLED) else "n/a"


def cell(row: dict, key: str, digits: int = 4) -> str:
    """A row of :func:`kl_rows` as table text (inf, not labelled, n/a or the number)."""
    if not row.get("labelled", True):
        return NOT_LABELLED
    return fmt(row[key], digits, row.get("reason") if row[key] is None else None)


def ranked_attributes(result: dict, category: str | None = None) -> list[str]:
    """Attributes by KL(real || synthetic), largest (inf) first; then those without a
    divergence (one domain, not labelled) in MAAD order."""
    ranked = [r["attribute"] for r in kl_rows(result, category)
              if r["kl_real_synth"] is not None or (r["reason"] or "").startswith("infinite")]
    return ranked + [a for a in attributes_of(result, category) if a not in ranked]


def bar_layout(title: str, rows: int, groups: int) -> dict:
    """Layout of a horizontal bar chart: title left (clear of plotly's toolbar, which sits
    vertically at the right), legend above the bars, first row at the top."""
    return {"barmode": "group", "showlegend": True,
            "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
            "legend": {"orientation": "h", "x": 0, "y": 1, "yanchor": "bottom"},
            "modebar": {"orientation": "v"},
            "yaxis": {"autorange": "reversed", "automargin": True, "type": "category"},
            "margin": {"t": 70, "l": 10, "r": 40, "b": 40},
            "height": 110 + rows * max(groups, 1) * ROW_PX + rows * 6}


def overview_figure(result: dict, state: str = "positive", category: str | None = None,
                    top: int | None = None) -> dict:
    """Horizontal grouped bars: for each attribute (ranked by KL(real || synthetic), the
    ``top`` first), the raw share of ``state`` in each source with labels. A bar's
    ``customdata`` is ``[source, attribute, state]`` (what a click filters to)."""
    attrs = ranked_attributes(result, category)[:top]
    marks = {a: f"{a} ({NOT_LABELLED})" for a in not_labelled(result, category)}
    data = []
    for source, info in result["sources"].items():
        shares = [result["attributes"][a]["distributions"][source].get(state) for a in attrs]
        if all(v is None for v in shares):
            continue  # a source without labels: nothing to draw (the panel says so)
        data.append({
            "type": "bar", "orientation": "h", "name": f"{source} ({info['domain']})",
            "y": [marks.get(a, a) for a in attrs], "x": shares,
            "customdata": [[source, a, state] for a in attrs],
            "marker": {"color": source_color(source),
                       "pattern": {"shape": "" if info["domain"] == "real" else "/"}},
            "hovertemplate": "%{customdata[0]}<br>%{customdata[1]}: %{x:.3f}<extra></extra>",
        })
    shown = f"top {len(attrs)} of {len(attributes_of(result, category))}" if top else "all"
    layout = bar_layout(f"share {state} per attribute ({shown}, by KL(real || synth))", len(attrs), len(data))
    layout["xaxis"] = {"title": {"text": f"share {state}"}, "rangemode": "tozero"}
    return {"data": data, "layout": layout}


def attribute_layout(title: str) -> dict:
    """Layout of the one-attribute chart (vertical grouped bars, legend above, title left)."""
    return {"barmode": "group", "showlegend": True,
            "title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}},
            "legend": {"orientation": "h", "x": 0, "y": 1, "yanchor": "bottom"},
            "modebar": {"orientation": "v"},
            "yaxis": {"title": {"text": "share"}, "rangemode": "tozero"},
            "margin": {"t": 70, "r": 40}}


def attribute_figure(result: dict, attribute: str) -> dict:
    """Grouped bars of one attribute: each state's raw share, per source with labels."""
    entry = result["attributes"][attribute]
    data = [{
        "type": "bar", "name": f"{source} ({info['domain']})", "x": result["states"],
        "y": [entry["distributions"][source].get(st) for st in result["states"]],
        "customdata": [[source, attribute, st] for st in result["states"]],
        "marker": {"color": source_color(source)},
        "hovertemplate": "%{customdata[0]}<br>%{x}: %{y:.3f}<extra></extra>",
    } for source, info in result["sources"].items()
        if any(v is not None for v in entry["distributions"][source].values())]
    rvs = entry["real_vs_synthetic"]
    title = (f"{attribute}: KL(real||synth) {fmt(rvs['kl_real_synth'], 4, rvs.get('kl_real_synth_reason'))}, "
             f"KL(synth||real) {fmt(rvs['kl_synth_real'], 4, rvs.get('kl_synth_real_reason'))}")
    return {"data": data, "layout": attribute_layout(title)}


def kl_figure(result: dict, category: str | None = None, top: int | None = None) -> dict:
    """Both KL directions per labelled attribute, horizontal, sorted by KL(real || synthetic)
    (the ``top`` first). inf is drawn at the end of the axis and labelled ``inf``."""
    rows = kl_rows(result, category)[:top]
    finite = [v for r in rows for v in (r["kl_real_synth"], r["kl_synth_real"]) if v is not None]
    cap = max(finite, default=1.0) * 1.2 or 1.0
    data = [{"type": "bar", "orientation": "h", "name": name, "y": [r["attribute"] for r in rows],
             "x": [cap if r[key] is None else r[key] for r in rows], "marker": {"color": color},
             "text": [cell(r, key, 3) for r in rows], "textposition": "outside", "cliponaxis": False,
             "textfont": {"size": 10}, "hovertemplate": "%{y}: %{text}<extra></extra>"}
            for key, name, color in (("kl_real_synth", "KL(real || synthetic)", "#1f77b4"),
                                     ("kl_synth_real", "KL(synthetic || real)", "#ff7f0e"))]
    layout = bar_layout("KL divergence, both directions (nats)", len(rows), 2)
    layout["xaxis"] = {"title": {"text": "nats"}, "rangemode": "tozero"}
    return {"data": data, "layout": layout}


def pairwise_figure(result: dict, attribute: str | None = None) -> dict:
    """Source x source heatmap of D_KL(row || column): one attribute, or the mean over the
    labelled attributes. Sources without labels are left out."""
    sources = [s for s, i in result["sources"].items() if i.get("labelled", 1)]
    attrs = [attribute] if attribute else [a for a in result["attributes"]
                                           if result["attributes"][a].get("labelled", True)]
    z = []
    for a in sources:
        row = []
        for b in sources:
            values = [result["attributes"][t]["pairwise"][a][b] for t in attrs]
            row.append(None if not values or any(v is None for v in values) else sum(values) / len(values))
        z.append(row)
    what = attribute or "mean over labelled attributes"
    return {"data": [{"type": "heatmap", "x": sources, "y": sources, "z": z, "colorscale": "Viridis",
                      "colorbar": {"title": {"text": "nats"}},
                      "hovertemplate": "KL(%{y} || %{x}) = %{z:.4f}<extra></extra>"}],
            "layout": {"title": {"text": f"pairwise KL(row || column), {what}", "x": 0, "xanchor": "left",
                                 "font": {"size": 14}},
                       "modebar": {"orientation": "v"},
                       "yaxis": {"autorange": "reversed", "automargin": True},
                       "xaxis": {"automargin": True}, "margin": {"t": 50, "r": 40}}}


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
    """One row per attribute: category, the divergences, then each source's distribution."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    sources, states = list(result["sources"]), result["states"]
    writer.writerow(["attribute", "category", "kl_real_synth", "kl_synth_real", "js",
                     *[f"{s}:{st}" for s in sources for st in states]])
    for r in kl_rows(result, sort="attribute"):
        dist = result["attributes"][r["attribute"]]["distributions"]
        writer.writerow([r["attribute"], r["category"],
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
           "kl_rows", "cell", "fmt", "source_color", "not_labelled", "text_table", "to_csv", "to_html"]
