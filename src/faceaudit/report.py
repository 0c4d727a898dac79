"""Figures, tables and reports of a comparison, from its JSON (so a stored result re-renders).

The same figure builders serve the App panel and the HTML report: what a user sees in the App is
what goes into the paper. Plotly figures are plain dicts (the panel ships them as JSON; the
report embeds plotly.js once, so the HTML opens offline).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import html
import io
import json
import re

from .attributes import CATEGORIES, CATEGORY_OF

STATE_COLORS = {"positive": "#2ca02c", "negative": "#d62728", "undefined": "#7f7f7f"}
#: how many attributes the overview and KL charts show before "show all" (legible at the App's
#: default panel width: horizontal bars, one row per attribute)
TOP_N = 15
NOT_LABELLED = "not labelled"
ROW_PX = 9  # height of one bar in a horizontal chart
MIN_HEIGHT = 280  # a chart of a few attributes (a category, agegender's four) stays readable


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


def ranked_by_divergence(result: dict, category: str | None = None) -> list[str]:
    """The attributes with a KL(real || synthetic), largest (inf) first: an attribute no model
    labelled (or labelled in one domain only) never ranks."""
    return [r["attribute"] for r in kl_rows(result, category)
            if r["kl_real_synth"] is not None or (r["reason"] or "").startswith("infinite")]


def ranked_attributes(result: dict, category: str | None = None) -> list[str]:
    """Attributes by KL(real || synthetic), largest (inf) first; then those without a
    divergence (one domain, not labelled) in MAAD order."""
    ranked = ranked_by_divergence(result, category)
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
            "height": max(MIN_HEIGHT, 110 + rows * max(groups, 1) * ROW_PX + rows * 6)}


def overview_figure(result: dict, state: str = "positive", category: str | None = None,
                    top: int | None = None) -> dict:
    """Horizontal grouped bars: for each attribute (ranked by KL(real || synthetic), the
    ``top`` first), the raw share of ``state`` in each source with labels. A bar's
    ``customdata`` is ``[source, attribute, state]`` (what a click filters to; the hover text
    shows ``meta``, the source escaped: plotly reads names and hover text as markup). A ``top`` list
    holds labelled attributes only; in the full list an attribute no source labelled is marked
    and has no bars (not 100% undefined: "not labelled" is not the state "undefined")."""
    unlabelled = set(not_labelled(result, category))
    attrs = ranked_attributes(result, category)
    attrs = [a for a in attrs if a not in unlabelled][:top] if top else attrs
    marks = {a: f"{a} ({NOT_LABELLED})" for a in unlabelled}
    data = []
    for source, info in result["sources"].items():
        shares = [None if a in unlabelled else result["attributes"][a]["distributions"][source].get(state)
                  for a in attrs]
        if all(v is None for v in shares):
            continue  # a source without labels: nothing to draw (the panel says so)
        data.append({
            "type": "bar", "orientation": "h", "name": html.escape(f"{source} ({info['domain']})"),
            "y": [marks.get(a, a) for a in attrs], "x": shares,
            "customdata": [[source, a, state] for a in attrs], "meta": html.escape(source),
            "marker": {"color": source_color(source),
                       "pattern": {"shape": "" if info["domain"] == "real" else "/"}},
            "hovertemplate": "%{meta}<br>%{customdata[1]}: %{x:.3f}<extra></extra>",
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
        "type": "bar", "name": html.escape(f"{source} ({info['domain']})"), "x": result["states"],
        "y": [entry["distributions"][source].get(st) for st in result["states"]],
        "customdata": [[source, attribute, st] for st in result["states"]], "meta": html.escape(source),
        "marker": {"color": source_color(source)},
        "hovertemplate": "%{meta}<br>%{x}: %{y:.3f}<extra></extra>",
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
    """The readable table ``faceaudit compare`` prints: the labelled attributes by
    KL(real || synthetic), then the attributes no source has a defined label for."""
    labelled = set(labelled_attributes(result))
    lines = [f"dataset {result['dataset']}: states {'/'.join(result['states'])}, alpha {result['alpha']}",
             "sources: " + ", ".join(f"{s} ({i['domain']}, {i['labelled']} labelled)"
                                     for s, i in result["sources"].items()),
             f"{'attribute':<24} {'category':<14} {'KL(real||synth)':>16} {'KL(synth||real)':>16} {'JS':>8}"]
    for r in kl_rows(result):
        if r["attribute"] in labelled:
            lines.append(f"{r['attribute']:<24} {r['category']:<14} {fmt(r['kl_real_synth']):>16} "
                         f"{fmt(r['kl_synth_real']):>16} {fmt(r['js']):>8}")
    unlabelled = [a for a in result["attributes"] if a not in labelled]
    if unlabelled:
        lines.append(f"not labelled (no positive or negative label in any source): {', '.join(unlabelled)}")
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


# ----------------------------------------------------------------------------- the HTML report
# A paper supplement: parameters with provenance, the figures, the KL table of the labelled
# attributes, realness per source, the outliers' thumbnails and identity consistency. The
# context (provenance, realness histograms, outliers) is plain data that the FiftyOne side
# gathers (fiftyone_plugin/reporting.py); this module never touches the database.

LEGEND_ON_TOP = {"legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
                 "title": {"y": 0.98, "yanchor": "top", "yref": "container"},
                 "margin": {"t": 90, "b": 40}, "xaxis": {"automargin": True}}
NOT_RECORDED = "not recorded (labels imported from a file, or made before faceaudit recorded runs)"

REPORT_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.4}
h1{font-size:1.6em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.5em 0} caption{text-align:left;font-weight:bold;padding:4px 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums} th{background:#f4f4f4}
.note{color:#555;font-size:0.92em} .figure{margin:1em 0}
.gallery{display:flex;flex-wrap:wrap;gap:10px} .gallery figure{margin:0;width:128px;font-size:0.8em}
.gallery img{width:112px;height:112px;object-fit:cover;border:1px solid #ccc;display:block}
"""


def labelled_attributes(result: dict) -> list[str]:
    """The attributes that some source has a defined (positive or negative) label for; the
    others no model labelled (or every label is undefined): their divergences mean nothing."""
    out = []
    for attr, entry in result["attributes"].items():
        counts = entry.get("counts")
        if counts is None or any(c.get("positive", 0) + c.get("negative", 0) for c in counts.values()):
            out.append(attr)
    return out


def only_attributes(result: dict, attributes: list[str]) -> dict:
    """``result`` limited to ``attributes`` (for figures of the labelled attributes)."""
    return {**result, "attributes": {a: result["attributes"][a] for a in attributes}}


def with_layout(figure: dict, layout: dict) -> dict:
    """``figure`` with ``layout`` merged into its layout (one level deep)."""
    merged = dict(figure["layout"])
    for key, value in layout.items():
        old = merged.get(key)
        merged[key] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
    return {**figure, "layout": merged}


def report_heatmap(result: dict) -> dict:
    """The pairwise heatmap with its colour bar titled and its unit stated (nats, powers of ten
    rather than SI prefixes such as the ambiguous "20μ")."""
    figure = pairwise_figure(result)
    heat = {**figure["data"][0],
            "colorbar": {"title": {"text": "mean D_KL(row || column), nats", "side": "right"},
                         "exponentformat": "power"},
            "hovertemplate": "D_KL(%{y} || %{x}) = %{z:.4g} nats<extra></extra>"}
    return with_layout({**figure, "data": [heat, *figure["data"][1:]]},
                       {"margin": {"t": 40}, "xaxis": {"automargin": True}, "yaxis": {"automargin": True}})


def realness_histogram_figure(realness: dict, colors: dict[str, str]) -> dict:
    """Grouped (never overlaid) bars of ``realness_nll``: per source, the share of its scored
    faces in each bin, so sources of different sizes compare and every bar is visible."""
    edges = realness["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    data = []
    for source, info in realness["sources"].items():
        n = info["scored"] or 1
        data.append({"type": "bar", "name": html.escape(f"{source} ({info['scored']} scored)"), "x": centers,
                     "y": [c / n for c in info["counts"]], "customdata": info["counts"],
                     "marker": {"color": colors.get(source)},
                     "hovertemplate": f"{html.escape(source)}<br>realness_nll ~ %{{x:.3g}}: "
                                      "%{customdata} faces (%{y:.1%})<extra></extra>"})
    layout = {"barmode": "group", "bargap": 0.15, "title": {"text": "realness_nll per source"},
              "xaxis": {"title": {"text": "realness_nll (nats; higher = less explained by the real sources)"},
                        "range": [edges[0], edges[-1]]},
              "yaxis": {"title": {"text": "share of the source's scored faces"}, "tickformat": ".0%"}}
    return with_layout({"data": data, "layout": layout}, LEGEND_ON_TOP)


def report_figures(result: dict, context: dict) -> list[dict]:
    """The report's figures: the panel's, on the labelled attributes, legends above the plot
    (clear of the rotated attribute names), and the realness histogram when scored."""
    attributes = labelled_attributes(result)
    figures = []
    if attributes:  # with none, the divergences mean nothing: the text says so
        labelled = only_attributes(result, attributes)
        figures += [with_layout(overview_figure(labelled), LEGEND_ON_TOP),
                    with_layout(kl_figure(labelled), LEGEND_ON_TOP), report_heatmap(labelled)]
    realness = context.get("realness")
    if realness and realness["sources"]:
        figures.append(realness_histogram_figure(realness, source_colors(result)))
    return figures


def script_json(value) -> str:
    """JSON to embed in a ``<script>`` element: ``<``, ``>`` and ``&`` escaped, so that no
    string (a source named ``<!--<script>`` or ``</script>``) can end or re-open the element."""
    text = json.dumps(value)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def num(value, digits: int = 4, missing: str = "n/a") -> str:
    """A number for a reader: ``digits`` significant digits (tiny divergences stay visible)."""
    if value is None:
        return missing
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


_NUMBER = re.compile(r"-?(\d[\d.,e+-]*|inf|n/a)|\[.*\]|")


def _cell(value) -> str:
    """A table cell: numbers (and intervals) right-aligned, text left-aligned."""
    text = str(value)
    plain = re.sub("<[^>]+>", "", text)
    return f'<td class="num">{text}</td>' if _NUMBER.fullmatch(plain) else f"<td>{text}</td>"


def _rows(rows, header: list[str] | None = None, numbers: bool = True) -> str:
    """Table rows from already-escaped cells (``numbers``: right-align the numeric ones)."""
    head = "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" if header else ""
    cell = _cell if numbers else (lambda c: f"<td>{c}</td>")
    return head + "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)


def mc_passes_cell(run: dict) -> str:
    """The passes of the run's MC dropout; the agegender models have no dropout (their one
    pass read "MC dropout passes 1", as if a MAC had sampled once: issue 15.10)."""
    if run.get("model") == "agegender":
        return "none (the agegender models have no dropout)"
    return num(run.get("mc_passes"), missing=NOT_RECORDED)


def parameter_rows(result: dict, context: dict) -> list[tuple[str, str]]:
    """(parameter, value) pairs of the report's parameters table, escaped."""
    esc = html.escape
    run = context.get("annotation") or {}
    boot = result.get("bootstrap")
    versions = context.get("versions") or {}
    rows = [
        ("dataset", result["dataset"]),
        ("compared view", json.dumps(result["view"]) if result.get("view") else "the whole dataset"),
        ("labels: model (last annotate run)", run.get("model") or NOT_RECORDED),
        ("labels: checkpoint", run.get("checkpoint") or ("none" if run else NOT_RECORDED)),
        ("labels: reliability threshold t", num(run.get("threshold"), missing=NOT_RECORDED)),
        ("labels: MC dropout passes", mc_passes_cell(run)),
        ("labels: annotated at (UTC)", run.get("finished_at") or NOT_RECORDED),
        ("states", " / ".join(result["states"])),
        ("smoothing alpha (pseudo-count per state)", num(result["alpha"])),
        ("bootstrap", f"{boot['iterations']} resamples of {boot['unit']}, {boot['level']:.0%} percentile intervals"
                      if boot else "none"),
        ("divergence unit", "nats (natural logarithm)"),
        ("report generated (UTC)", context.get("generated_at")
         or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")),
        ("versions", ", ".join(f"{k} {v or 'not installed'}" for k, v in versions.items()) or NOT_RECORDED),
    ]
    return [(esc(k), esc(str(v))) for k, v in rows]


def source_rows(result: dict, context: dict) -> list[tuple]:
    esc = html.escape
    loaded = context.get("sources") or {}
    rows = []
    for source, info in result["sources"].items():
        where = loaded.get(source, {})
        rows.append((esc(source), esc(info["domain"]), esc(str(where.get("format") or "")),
                     esc(str(where.get("root") or "")),
                     info["count"], info["labelled"]))
    return rows


def _kl_cell(rvs: dict, key: str) -> str:
    reason = rvs.get(key + "_reason")
    value = num(rvs[key], missing="inf")
    return f'<span title="{html.escape(reason)}">{value}</span>' if reason else value


def kl_table_rows(result: dict) -> list[tuple]:
    """The labelled attributes by KL(real || synthetic), with bootstrap intervals when run."""
    labelled = set(labelled_attributes(result))
    rows = []
    for r in kl_rows(result):
        if r["attribute"] not in labelled:
            continue
        rvs = result["attributes"][r["attribute"]]["real_vs_synthetic"]
        row = [html.escape(r["attribute"]), html.escape(r["category"]),
               *[_kl_cell(rvs, k) for k in ("kl_real_synth", "kl_synth_real", "js")]]
        if "bootstrap" in rvs:
            row += ["[" + ", ".join(num(v, 3, "inf") for v in rvs["bootstrap"][k]) + "]"
                    for k in ("kl_real_synth", "kl_synth_real")]
        rows.append(row)
    return rows


def realness_section(context: dict) -> str:
    realness = context.get("realness")
    if not realness or not realness["sources"]:
        return '<p class="note">Not scored: run <code>faceaudit outliers</code> to score realness.</p>'
    run = realness.get("run") or {}
    esc = html.escape
    params = (f"states {esc(str(run.get('states', '?')))}, alpha {esc(str(run.get('alpha', '?')))}, "
              f"joint attributes {esc(', '.join(run.get('joint') or []) or 'none')}, scored at "
              f"{esc(str(run.get('at', '?')))} UTC")
    rows = [(esc(s), i["scored"], num(i["mean"])) for s, i in realness["sources"].items()]
    return (f'<p>realness_nll: the negative log-likelihood (nats) of a face\'s 47 states under the '
            f'pooled real distribution; higher = less explained by real data. Scoring: {params}.</p>'
            f'<table id="realness">{_rows(rows, ["source", "scored faces", "mean realness_nll"])}</table>')


def outliers_section(context: dict) -> str:
    gallery = context.get("outliers")
    if not gallery or not gallery["tagged"]:
        return '<p class="note">No face is tagged as an outlier (<code>faceaudit outliers --top K</code>).</p>'
    esc = html.escape
    items = "".join(
        f'<figure><img src="{esc(s["image"])}" alt="{esc(s["source"])} outlier" loading="lazy">'
        f'<figcaption>{esc(s["source"])}<br>{esc(s["identity"] or "no identity")}<br>'
        f'realness_nll {num(s["score"])}</figcaption></figure>' for s in gallery["samples"])
    return (f'<p>{gallery["tagged"]} faces carry the tag <code>{esc(gallery["tag"])}</code> (saved view '
            f'<code>synthetic_outliers</code>); the {len(gallery["samples"])} with the highest realness_nll, '
            f'highest first. Images are linked relative to this report: keep the report and the image '
            f'folders in the same places relative to each other when sharing them.</p>'
            f'<div class="gallery" id="outliers">{items}</div>')


def identity_section(result: dict) -> str:
    consistency = result.get("identity_consistency")
    if not consistency:
        return '<p class="note">Not computed.</p>'
    esc = html.escape
    attrs = next((list(c["per_attribute"]) for c in consistency.values() if c["applicable"]), [])
    rows = []
    for source, c in consistency.items():
        if not c["applicable"]:
            rows.append([esc(source), f'not applicable: {esc(c["reason"] or "")}', *[""] * (len(attrs) + 1)])
            continue
        worst = ", ".join(f'{esc(str(w["identity"]))} ({num(w["disagreement"], 3)})' for w in c["worst"][:3])
        rows.append([esc(source), c["identities"], num(c["mean_disagreement"]),
                     *[num(c["per_attribute"].get(a)) for a in attrs], worst])
    header = ["source", "identities", "mean disagreement", *[esc(a) for a in attrs], "most inconsistent"]
    return ("<p>Per identity and attribute that should not change within one person, the share of "
            "the identity's images whose defined state differs from its majority (undefined states "
            "left out); 0 = every image agrees. Sources without identities are not applicable, not 0.</p>"
            f'<table id="identity">{_rows(rows, header)}</table>')


def identity_audit_section(context: dict) -> str:
    """The identity audit's section (``faceaudit identity``), when one was stored."""
    if not context.get("identity"):
        return ""
    from .identity_report import section

    return f'<h2 id="identity-audit">Identity audit</h2>{section(context["identity"])}'


def to_html(result: dict, context: dict | None = None) -> str:
    """A self-contained report (plotly.js inlined: it opens offline) of a comparison ``result``
    and its ``context`` (``fiftyone_plugin.reporting.report_context``; without it, the parts
    that need the database say they were not recorded)."""
    import plotly.io as pio
    import plotly.offline

    context = context or {}
    esc = html.escape
    divs = "".join(f'<div class="figure">{pio.to_html(fig, include_plotlyjs=False, full_html=False, default_width="100%", config={"displaylogo": False})}</div>'
                   for fig in report_figures(result, context))
    labelled = set(labelled_attributes(result))
    unlabelled = [a for a in result["attributes"] if a not in labelled]
    kl_header = ["attribute", "category", "KL(real||synth)", "KL(synth||real)", "JS"]
    if result.get("bootstrap"):
        kl_header += [f"{result['bootstrap']['level']:.0%} interval, KL(real||synth)",
                      f"{result['bootstrap']['level']:.0%} interval, KL(synth||real)"]
    not_labelled = (f'<p id="not-labelled"><b>Not labelled</b> ({len(unlabelled)}; no source has a positive or '
                    f'negative label, so their divergences mean nothing and are left out of the table and '
                    f'the figures): {esc(", ".join(unlabelled))}</p>' if unlabelled else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>faceaudit report: {esc(result['dataset'])}</title>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
<style>{REPORT_CSS}</style>
</head><body>
<h1>Real vs synthetic face attributes: {esc(result['dataset'])}</h1>
<p>Each attribute's distribution over the states in each source; the pooled real sources against
the pooled synthetic ones by the Kullback-Leibler divergence in both directions and Jensen-Shannon,
in nats. A large D_KL(real || synthetic) with a small D_KL(synthetic || real) means synthetic data
covers only part of what real faces show. "inf": a distribution has an empty state where the other
has mass (alpha = 0; hover for the reason).</p>
<h2>Parameters</h2><table id="parameters">{_rows(parameter_rows(result, context), ["parameter", "value"], numbers=False)}</table>
<h2>Sources</h2><table id="sources">{_rows(source_rows(result, context), ["source", "domain", "format", "loaded from", "samples", "labelled"])}</table>
<h2>Figures</h2>{divs}
<h2>KL divergence per attribute</h2>
<p>The {len(labelled)} labelled attributes, by KL(real || synthetic), largest first.</p>
<table id="kl">{_rows(kl_table_rows(result), kl_header)}</table>
{not_labelled}
<h2>Realness per source</h2>{realness_section(context)}
<h2>Outliers</h2>{outliers_section(context)}
<h2>Identity consistency per source</h2>{identity_section(result)}
{identity_audit_section(context)}
<script type="application/json" id="faceaudit-result">{script_json(result)}</script>
<script type="application/json" id="faceaudit-context">{script_json(context)}</script>
</body></html>
"""


__all__ = ["CATEGORIES", "overview_figure", "attribute_figure", "kl_figure", "pairwise_figure",
           "kl_rows", "cell", "fmt", "source_color", "not_labelled", "text_table", "to_csv", "to_html",
           "labelled_attributes", "realness_histogram_figure"]
