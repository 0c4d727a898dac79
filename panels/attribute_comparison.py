"""The ``attribute_comparison`` panel: distributions, both KL directions, pairwise heatmap.

Thin glue over :func:`fiftyone_plugin.compare.compute_comparison` (cached counts) and the figure
builders of :mod:`faceaudit.report` (the same charts as the HTML report). Only aggregates reach
the browser. It follows the App's view, sidebar filters included: a filter changes the numbers
and stays. A click on a bar sets the App's view to the faces behind it (a drill-down); Back
returns.

Why nothing the user sets goes into panel state: FiftyOne 1.22 keeps a grid panel's state
inside the session's spaces (the ``state`` of the spaces' ``Panel`` node, saved with every
workspace). Every panel state change, and every value a form control of a Python panel takes
(the App writes it into the panel's state, ``panelsState``, before the control's callback
reaches the server), saves the spaces; the ``sessionSpaces`` writer then replaces the router
location (``event: "spaces"``), a hard reload of ``DatasetPageQuery`` during which the App's
``filters`` atom reads its default ``{}``: the user's sidebar filters are gone (seen in the
browser: the grid counts every sample ~2 s after a dropdown change; ``set_filters`` could only
put them back after the grid had shown the unfiltered view). So the panel has no form fields:
its controls are buttons (a click carries the chosen value in its ``params``), and the
controls' values and the drill-down are kept per panel in this process (:data:`_PANELS`), read
by every request of that panel. The charts and texts go into the rendered layout (``render``),
which the App does not save, from a per-panel cache of the last computation. A replaced layout
also replaces each chart whole: no chart keeps an old tail. A plot click reports the bar's
``ids`` entry, so the click handlers need no state either. A drill-down shows the clicked
bar's faces as the App's extended selection and Back clears it: the App's view and its sidebar
filters stay as they are (``set_view`` would make the App drop the sidebar filters too).

Opening the panel (any panel: Histograms and Embeddings do the same) saves the spaces, which
the panel cannot avoid, and that reload drops the sidebar filters that were active. The panel
remembers the filters it saw then and, for a few seconds, puts them back through the App's
built-in ``set_filters`` operator whenever a view event arrives without them (see
:func:`_restore_filters`).

An open panel polls (a ``TimerView``, :data:`POLL_MS`): a delegated run that ends, or a write
made elsewhere, shows without a click; a tick that finds nothing changed renders nothing (see
:meth:`AttributeComparisonPanel.execute`).
"""

from __future__ import annotations

import json
import re
import time

from bson import json_util
import fiftyone.operators as foo
import fiftyone.operators.types as types

CATEGORY_ALL = "all"
SHOW_ALL = "all"
SORT_KEYS = {"kl_real_synth": "KL(real || synth)", "kl_synth_real": "KL(synth || real)", "js": "JS"}
#: readable choices of the controls whose values are names
CHOICE_LABELS = {**SORT_KEYS, CATEGORY_ALL: "all", "top": "top 15"}
#: the controls: name -> default
CONTROLS = {"states": "three", "alpha": 0.5, "category": CATEGORY_ALL, "shown_state": "positive",
            "show": "top", "attribute": "Male", "sort": "kl_real_synth"}
#: the App's stage for an extended selection (the drill-down, see _drill_down)
SELECT_STAGE = "fiftyone.core.stages.Select"
#: the alpha buttons (the CLI and the compare operator take any alpha >= 0)
ALPHAS = (0.0, 0.1, 0.25, 0.5, 1.0)
#: per panel: {"settings": the controls' values the user set, "drilldown": the drill-down or
#: None}. Kept in the App server's process, never in panel state (see the module doc); a
#: restarted server shows the defaults
_PANELS: dict[str, dict] = {}
#: per panel: the key (view, settings) and the charts, tables and texts last computed. The form
#: reports every control's value when it mounts and the App repeats view events: those reuse it
_SHOWN: dict[str, dict] = {}
_SHOWN_MAX = 64  # panels remembered (one per open panel; old ones dropped first)
#: per panel: (when, the sidebar filters) seen at an open or a control change, until the App's
#: reload has dropped them and they are put back (see _restore_filters)
_HELD: dict[str, tuple[float, dict]] = {}
#: seconds after an open within which filters found gone are put back (the App's reloads drop
#: them 1-5 s after; later, an empty sidebar is the user's own doing)
RESTORE_WINDOW_S = 15.0
RUNS_SHOWN = 3  # the newest delegated faceaudit operations named under the summary
#: ms between the open panel's checks for a finished run or a write made elsewhere (_stamp)
POLL_MS = 3000

HELP = """For each of the 47 MAAD-Face attributes: its distribution per source (raw shares), and
the real vs synthetic KL divergence in both directions (nats; smoothing alpha inside the
divergences only). D_KL(real || synthetic) large with D_KL(synthetic || real) small means the
synthetic data covers only part of what real faces show. The numbers follow the App's view and
sidebar filters. Click a bar to see the faces behind it; Back returns."""


class AttributeComparisonPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="attribute_comparison",
            label="faceaudit: attribute comparison",
            surfaces="grid",
            help_markdown=HELP,
            icon="/assets/icon.svg",
        )

    def on_load(self, ctx):
        _SHOWN.pop(_panel_id(ctx), None)  # render recomputes
        _hold_filters(ctx)  # opening the panel reloads the App's page, which drops them
        _restore_filters(ctx)  # a reload that remounts the panel sends no view event

    def on_change_view(self, ctx):
        """A view event (a sidebar filter, the view bar, our own drill-down): render follows
        it (a drill-down keeps the charts of the view it came from). Never sets the view, the
        state or the data: any of them would drop the user's sidebar filters. Puts back the
        filters that opening the panel (or a control change) dropped."""
        _restore_filters(ctx)

    def on_change_dataset(self, ctx):
        _SHOWN.pop(_panel_id(ctx), None)
        _PANELS.pop(_panel_id(ctx), None)

    def on_control(self, ctx):
        """A control's button: its ``params`` name the control and the chosen value. Render
        recomputes the compared view (not a drill-down the App shows). Nothing goes into panel
        state, so the App saves no spaces and keeps the sidebar filters (see the module doc)."""
        name, value = ctx.params.get("control"), ctx.params.get("value")
        if name in CONTROLS and value is not None:
            _settings_of(ctx)[name] = value

    # ------------------------------------------------------------------ data

    def shown(self, ctx) -> dict:
        """The charts, tables and texts of the compared view with the current settings:
        computed once per (view, settings), counts cached per view."""
        settings = _settings(ctx)
        view = _compared_view(ctx)
        runs, stamp = _stamp(ctx)
        key = json.dumps([_stages(view), settings, ctx.dataset.name, stamp], sort_keys=True, default=str)
        entry = _SHOWN.get(_panel_id(ctx))
        if entry is None or entry["key"] != key:
            entry = {"key": key, "stamp": stamp,
                     "data": {**_panel_data(ctx, view, settings), "runs": _runs_text(runs)}}
            _SHOWN.pop(_panel_id(ctx), None)
            _SHOWN[_panel_id(ctx)] = entry
            while len(_SHOWN) > _SHOWN_MAX:
                _SHOWN.pop(next(iter(_SHOWN)))
        return entry["data"]

    # ------------------------------------------------------------------ polling

    def on_poll(self, ctx):
        """The panel's timer (:data:`POLL_MS`): :meth:`execute` renders only when the numbers
        may be stale."""

    def execute(self, ctx):
        """A panel event; a timer tick that finds nothing changed (no sample written, no info
        stored, no delegated run queued or ended since the shown numbers) returns at once,
        without a render: the open panel is left as it is, so polling costs the two look-ups of
        :func:`_stamp`, never a recomputation or a new layout in the browser."""
        if ctx.params.get("__method__") == self.on_poll.__name__:
            entry = _SHOWN.get(_panel_id(ctx))
            if ctx.dataset is None or (entry is not None and entry["stamp"] == _stamp(ctx)[1]):
                return None
        return super().execute(ctx)

    # ------------------------------------------------------------------ clicks

    def on_bar_click(self, ctx):
        """A bar of the overview or the one-attribute chart: its ``ids`` entry is
        ``[source, attribute, state]``."""
        from fiftyone_plugin.views import attribute_state_view

        picked = _clicked(ctx, 3)
        if picked is None:
            return
        source, attribute, state = picked
        view = attribute_state_view(_compared_view(ctx), source, attribute, state)
        _settings_of(ctx)["attribute"] = attribute  # the one-attribute chart follows the click
        _drill_down(ctx, view, f"{md_escape(source)} with **{attribute} = {state}**")

    def on_realness_click(self, ctx):
        """A histogram bar: ``[source, low, high]``, that source's samples in the bin."""
        from fiftyone_plugin.outliers import SCORE_FIELD
        from fiftyone_plugin.views import score_range_view

        picked = _clicked(ctx, 3)
        if picked is None:
            return
        source, low, high = picked
        view = score_range_view(_compared_view(ctx), source, SCORE_FIELD, float(low), float(high))
        _drill_down(ctx, view, f"{md_escape(source)} with realness_nll in [{low:.2f}, {high:.2f})")

    def back_to_compared_view(self, ctx):
        """Return the App to the view the charts describe (its sidebar filters stay filters,
        never baked into the view bar)."""
        _panel(ctx)["drilldown"] = None
        ctx.ops.set_extended_selection(selection=None)
        ctx.faceaudit_view = _compared_view_without_selection(ctx)  # this request still has it

    # ------------------------------------------------------------------ layout

    def render(self, ctx):
        from faceaudit import report
        from faceaudit.attributes import ATTRIBUTES, CATEGORIES

        settings, data = _settings(ctx), self.shown(ctx)
        panel = types.Object()  # a text's name must differ from every state key (state wins)
        panel.md("**Real vs synthetic face attributes** (MAAD-Face, 47)", name="title")
        if data["error"]:
            panel.md(data["error"], name="error_text")
        panel.md(data["summary"], name="summary_text")
        sort_note = _grid_sort_note(ctx)
        if sort_note:
            panel.md(sort_note, name="grid_sort_text")
        if data.get("runs"):
            panel.md(data["runs"], name="runs_text")
        drill = _drilldown_of(ctx)
        if drill is not None:
            panel.md(drill.get("text", ""), name="drilldown_text")
            panel.btn("back", label="Back to the compared view", variant="contained",
                      on_click=self.back_to_compared_view)

        # one row per control, each wrapping (the panel may be a 490 px half of a 1280 px window)
        shown_states = ["positive", "negative"] + (["undefined"] if settings["states"] == "three" else [])
        for name, choices, label in (("states", ["three", "binary"], "States"),
                                     ("shown_state", shown_states, "Bars show"),
                                     ("show", ["top", SHOW_ALL], f"Attributes (top {report.TOP_N} or all)"),
                                     ("alpha", list(ALPHAS), "Smoothing alpha")):
            _choices(panel, name, choices, label, settings[name], self.on_control)
        _stepper(panel, "category", [CATEGORY_ALL, *CATEGORIES], "Category", settings["category"], self.on_control)
        if data.get("overview"):
            panel.md("Click a bar for its faces in the grid.", name="overview_hint")
        _plot(panel, "overview", data, self.on_bar_click)
        _stepper(panel, "attribute", list(ATTRIBUTES), "Attribute", settings["attribute"], self.on_control,
                 note=data.get("attribute_kl", ""))
        _plot(panel, "attribute_plot", data, self.on_bar_click)
        _choices(panel, "sort", list(SORT_KEYS), "Sort KL table by", settings["sort"], self.on_control)
        panel.md(data["kl_table"], name="kl_table_text", componentsProps=_COMPACT_TABLE)
        if data["kl_table"]:  # new-user review C9: a click on a row did nothing (a table to read)
            panel.md(TABLE_HINT, name="kl_table_hint")
        _plot(panel, "kl_plot", data)
        _plot(panel, "pairwise", data)
        if data.get("realness"):
            _plot(panel, "realness", data, self.on_realness_click)
        # an open panel notices a finished delegated run, or a write from elsewhere (the CLI, a
        # worker), by itself: nothing else tells the App (issue 15.6)
        panel.view("poll", types.TimerView(interval=POLL_MS, on_interval=self.on_poll))
        return types.Property(panel, view=panel_view())


def _choices(panel, name: str, choices: list, label: str, current, on_click) -> None:
    """A control as one row: its label with the current value, then one button per choice
    (the current one filled). A button, unlike a form field, writes nothing into panel state
    (see the module doc); its ``params`` carry the choice to :meth:`on_control`."""
    row = _row(panel, name, label, current)
    for k, choice in enumerate(choices):
        row.btn(f"{name}_{k}", label=_word(choice), variant="contained" if choice == current else "outlined",
                on_click=on_click, params={"control": name, "value": choice}, componentsProps=_WRAPPED_ITEM)


def _stepper(panel, name: str, choices: list, label: str, current, on_click, note: str = "") -> None:
    """A control of many choices as one row: its label with the current value, buttons to
    the previous and the next choice (wrapping round), and ``note`` (markdown) after them."""
    row = _row(panel, name, label, current)
    k = choices.index(current) if current in choices else 0
    for step, text in ((-1, f"\u25c2 {label}"), (1, f"{label} \u25b8")):
        row.btn(f"{name}_{'prev' if step < 0 else 'next'}", label=text, variant="outlined",
                on_click=on_click, params={"control": name, "value": choices[(k + step) % len(choices)]},
                componentsProps=_WRAPPED_ITEM)
    if note:
        row.md(note, name=f"{name}_note", componentsProps=_WRAPPED_ITEM)


def panel_view(padded: bool = False):
    """The panel's layout: one column as wide as the panel. FiftyOne 1.22's vertical GridView is
    a CSS grid whose implicit column grows to its widest item: a chart drawn at the panel's
    width of an earlier moment (492 px in a 490 px split) then kept every item 2 px too wide,
    and the panel scrolled sideways (issue 15.7). ``padded``: a margin at the panel's edges
    (the identity panel's text stood flush at its left edge)."""
    sx = {"gridTemplateColumns": "minmax(0, 1fr)", **({"px": 1.5, "boxSizing": "border-box"} if padded else {})}
    return types.GridView(orientation="vertical", gap=2, componentsProps={"grid": {"sx": sx}})


#: a control row that wraps: FiftyOne 1.22's h_stack is a CSS grid of one row (a row wider than
#: the panel ran off its right edge: issue 15.7), each item 100% wide; as a wrapping flex row
#: of items as wide as their content, the buttons that do not fit go to the next line
_WRAPPING_ROW = {"grid": {"sx": {"display": "flex", "flexWrap": "wrap", "alignItems": "center"}}}
_WRAPPED_ITEM = {"item": {"sx": {"width": "auto", "maxWidth": "100%"}}}


#: the KL table's cells with less padding than MUI's 16 px: at its narrowest (an attribute
#: like Fully_Visible_Forehead does not wrap) the table was 2 px wider than a 490 px panel
_COMPACT_TABLE = {"item": {"sx": {"& .MuiTableCell-root": {"padding": "6px 8px"},
                                   "& .MuiTableRow-root": {"cursor": "default"},
                                   "& .MuiTableRow-root:hover": {"backgroundColor": "transparent"}}}}
#: under the KL table, whose rows are not buttons
TABLE_HINT = "*The table's rows are not buttons: pick the attribute charted above with ◂ Attribute / Attribute ▸.*"


def _row(panel, name: str, label: str, current):
    """A wrapping row for control ``name``, starting with its label and current value."""
    row = panel.h_stack(f"{name}_row", gap=1, align_x="left", align_y="center", componentsProps=_WRAPPING_ROW)
    row.md(f"{label}: **{_word(current)}**", name=f"{name}_label", componentsProps=_WRAPPED_ITEM)
    return row


def _word(choice) -> str:
    return CHOICE_LABELS.get(choice, str(choice)) if isinstance(choice, str) else f"{choice:g}"


def _plot(panel, name: str, data: dict, on_click=None) -> None:
    """A chart whose traces and layout travel in the rendered layout (see the module doc),
    its box as tall as the chart (see :func:`px`). A chart the view has no numbers for is left
    out (it was an empty 320 px box under "Nothing to compare", issue 15.10)."""
    figure = data.get(name)
    if not figure:
        return
    layout = {**figure["layout"], "height": figure["layout"].get("height", 320)}
    panel.plot(name, data=figure["data"], layout=layout, config=_PLOT_CONFIG, on_click=on_click,
               height=px(layout["height"]))


def px(height: int) -> str:
    """A view's height for FiftyOne 1.22's App in pixels. The App reads a plain number (or a
    string without a unit) as a percentage of the panel's height, capped at 100%: a chart
    of height 320 got a box as tall as the whole panel, and the charts stood 400-500 px
    apart (issue 15.7). "320px" is taken as it is."""
    return f"{int(height)}px"


# the wheel scrolls the panel (which is mostly charts), it does not zoom a chart
_PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}
_REALNESS_LAYOUT = {
    "barmode": "group", "bargap": 0.15, "height": 320, "showlegend": True,
    "title": {"text": "realness_nll per source: click a bar for its faces", "x": 0, "xanchor": "left",
              "font": {"size": 14}},
    "legend": {"orientation": "h", "x": 0, "y": 1, "yanchor": "bottom"},
    "modebar": {"orientation": "v"}, "margin": {"t": 70, "r": 40, "l": 50, "b": 50},
    "xaxis": {"title": {"text": "realness_nll (higher: less explained by real data)"}},
    "yaxis": {"title": {"text": "faces"}},
}


def _panel_data(ctx, view, settings: dict) -> dict:
    """Every chart (plotly figure), table and text of the compared view. A view that cannot be
    compared in full shows what it can (shares of the labelled sources, realness) with what is
    missing beside it."""
    from faceaudit import report
    from fiftyone_plugin.compare import compute_comparison

    shown = {"summary": "", "error": "", "kl_table": "", "realness": _realness(ctx, view)}
    try:
        _, result = compute_comparison(view, states=settings["states"], alpha=float(settings["alpha"]),
                                       partial=True)
    except ValueError as e:
        return {**shown, "error": f"**Nothing to compare:** {md_escape(str(e))}"}
    category = None if settings["category"] == CATEGORY_ALL else settings["category"]
    top = report.TOP_N if settings["show"] == "top" else None
    attribute = settings["attribute"] if settings["attribute"] in result["attributes"] else "Male"
    state = settings["shown_state"] if settings["shown_state"] in result["states"] else "positive"
    overview = report.overview_figure(result, state, category, top)
    if not any(i["domain"] == "real" for i in result["sources"].values()):  # no ranking by a real source
        overview["layout"]["title"]["text"] = overview["layout"]["title"]["text"].replace(", by KL(real || synth)", "")
    _fit_title(overview["layout"])  # "click a bar" is a line of the panel's (a title does not wrap)
    plot = report.attribute_figure(result, attribute)
    for trace in overview["data"] + plot["data"]:  # what a click reports: [source, attribute, state]
        trace["ids"] = [json.dumps(c) for c in trace["customdata"]]
    kl = plot["layout"]["title"]["text"].split(": ", 1)[1]  # beside the Attribute control
    plot["layout"]["title"]["text"] = f"{attribute}: state shares per source"
    _fit_title(plot["layout"])
    return {**shown, "summary": _summary(result, category), "attribute_kl": kl,
            "kl_table": _kl_table(report.kl_rows(result, category, settings["sort"])),
            "overview": overview, "attribute_plot": plot,
            "kl_plot": report.kl_figure(result, category, top),
            "pairwise": _pairwise(report.pairwise_figure(result))}


def _pairwise(figure: dict) -> dict:
    """The heatmap with its colour bar clear of plotly's toolbar (vertical, at the right edge:
    the bar's top tick sat under it, issue 15.10)."""
    layout = figure["layout"]
    return {**figure, "layout": {**layout, "height": 320, "margin": {**layout.get("margin", {}), "r": 110}}}


def _fit_title(layout: dict) -> None:
    """The title at the chart's top, with room below it for a legend of two rows above the bars.
    Plotly does not wrap a title (one of 80 letters ran past the right edge of a 490 px panel,
    issue 15.7: the panel's titles are kept short), and a horizontal legend wraps when the bars
    are narrow: centred in a 70 px margin, the title sat on the legend's first row."""
    layout["title"] = {**layout["title"], "y": 1, "yref": "container", "yanchor": "top", "pad": {"t": 10}}
    layout["margin"] = {**layout.get("margin", {}), "t": 100}
    layout["height"] = layout.get("height", 320) + 30


def _stamp(ctx) -> tuple[list, list]:
    """The newest delegated faceaudit runs, and what makes the shown numbers stale besides the
    view and the settings: label, score and tag writes and the stored faceaudit info
    (:func:`fiftyone_plugin.counts.freshness`), and each of those runs' state (one queued,
    started or ended)."""
    from fiftyone_plugin.counts import freshness
    from fiftyone_plugin.runs import delegated_runs

    runs = delegated_runs(ctx.dataset.name, limit=RUNS_SHOWN)
    stamp = json.loads(json.dumps([freshness(ctx.dataset), [(r.id, r.state) for r in runs]], default=str))
    return runs, stamp


def _runs_text(runs) -> str:
    """The newest delegated faceaudit operations, a failed one with its error (``faceaudit
    status`` lists them all)."""
    if not runs:
        return ""
    return "**Delegated runs** (newest first; all: `faceaudit status`): " + " · ".join(
        md_escape(r.line()) for r in runs)


def _kl_table(rows: list[dict]) -> str:
    """The KL table as markdown (labelled attributes only; the summary names the others)."""
    lines = ["**KL divergence per attribute** (nats)", "",
             "| attribute | category | KL(real \\|\\| synth) | KL(synth \\|\\| real) | JS |", "|---|---|--:|--:|--:|"]
    from faceaudit import report

    lines += [f"| {r['attribute']} | {r['category']} | {report.cell(r, 'kl_real_synth')} | "
              f"{report.cell(r, 'kl_synth_real')} | {report.cell(r, 'js')} |" for r in rows]
    return "\n".join(lines)


def _realness(ctx, view) -> dict | None:
    """The realness_nll histogram per source: grouped bars on shared bins (every bar reachable),
    the x axis fitted to the bins; a bar's id is ``[source, low, high]``. None when the dataset
    has not been scored."""
    from faceaudit.report import source_color
    from fiftyone_plugin.outliers import SCORE_FIELD, is_scored
    from fiftyone_plugin.views import score_histograms

    hist = score_histograms(view, SCORE_FIELD) if is_scored(ctx.dataset) else None
    if not hist:
        return None
    edges = hist["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    bars = [{"type": "bar", "name": source, "x": centers, "y": counts,
             "marker": {"color": source_color(source)},
             "ids": [json.dumps([source, a, b]) for a, b in zip(edges, edges[1:])],
             "hovertemplate": f"{html_escape(source)}<br>" + "realness_nll ~%{x:.2f}: %{y}<extra></extra>"}
            for source, counts in hist["counts"].items() if any(counts)]
    layout = {**_REALNESS_LAYOUT, "xaxis": {**_REALNESS_LAYOUT["xaxis"], "range": [edges[0], edges[-1]]}}
    return {"data": bars, "layout": layout}


def _drill_down(ctx, view, what: str) -> None:
    """Show the faces behind a click in the App's grid as its extended selection (as the
    Embeddings panel shows a lasso): the App's view and its sidebar filters stay as they are
    (setting the view would make the App drop the sidebar filters, and baking them into a view
    stage would turn them into something else). The drill-down is remembered as its sample ids:
    while the App's extended selection is those, the charts describe the view without it, and
    Back clears it."""
    ids = view.values("id")
    n = len(ids)
    faces = "Showing 1 face" if n == 1 else f"Showing the {n:,} faces"
    _panel(ctx)["drilldown"] = {"ids": sorted(ids), "text": f"{faces} of {what}"}
    ctx.ops.set_extended_selection(selection=ids)
    ctx.faceaudit_view = _compared_view_without_selection(ctx)  # this request's render


def _grid_sort_note(ctx) -> str:
    """What to say when the App's grid *Sort by* replaces the order of the saved view it shows:
    a sort the user set on the view itself (one left from an earlier view is cleared when the
    view is selected, see ``follow_saved_view`` and js/faceaudit.js; issue 15.9)."""
    from fiftyone_plugin.views import grid_sort_replaces

    name = ctx.request_params.get("view_name")
    replaced = grid_sort_replaces(ctx.dataset, name, ctx.request_params.get("extended")) if name else None
    if replaced is None:
        return ""

    def order(f, r):
        return f"{md_escape(f)}, {'highest' if r else 'lowest'} first"

    (field, reverse), (own, own_reverse) = replaced
    return (f"**The grid's Sort by ({order(field, reverse)}) replaces the order of the saved view "
            f"{md_escape(name)} ({order(own, own_reverse)})**: clear the grid's "
            "*Sort by* (`-`) or turn its arrow to see the view in its own order.")


def _selection(ctx) -> list[str] | None:
    """The sample ids of the App's extended selection sent with this request, or None."""
    sel = ctx.request_params.get("extended_selection")
    ids = sel.get("selection") if isinstance(sel, dict) else sel
    return list(ids) if isinstance(ids, list) and ids else None


def _drilldown_of(ctx) -> dict | None:
    """The panel's drill-down if the App's extended selection is still its faces, else None."""
    drill = _panel(ctx).get("drilldown")
    if not drill:
        return None
    if getattr(ctx, "faceaudit_view", None) is not None:  # the click's own request
        return drill
    return drill if sorted(_selection(ctx) or []) == drill["ids"] else None


def _compared_view_without_selection(ctx):
    """The App's view (view-bar stages, sidebar filters, extended stages) without the extended
    selection's ``Select`` stage."""
    import fiftyone.server.view as fosv

    extended = dict(ctx.request_params.get("extended") or {})
    if ctx.request_params.get("view_name") or extended.pop(SELECT_STAGE, None) is None:
        return ctx.view
    return fosv.get_view(ctx.dataset.name, stages=ctx.request_params.get("view") or [],
                         filters=ctx.request_params.get("filters") or None, extended_stages=extended or None)


def _compared_view(ctx):
    """The view the charts describe: the App's (sidebar filters included), without the
    panel's drill-down selection."""
    if getattr(ctx, "faceaudit_view", None) is not None:
        return ctx.faceaudit_view
    if _drilldown_of(ctx) is None:
        return ctx.view
    return _compared_view_without_selection(ctx)


def _panel(ctx) -> dict:
    """What this panel keeps between requests (:data:`_PANELS`), the newest used kept last."""
    entry = _PANELS.pop(_panel_id(ctx), None) or {"settings": {}, "drilldown": None}
    _PANELS[_panel_id(ctx)] = entry
    while len(_PANELS) > _SHOWN_MAX:
        _PANELS.pop(next(iter(_PANELS)))
    return entry


def _settings_of(ctx) -> dict:
    return _panel(ctx)["settings"]


def _settings(ctx) -> dict:
    """The controls' values: the defaults, with what the user set. A value no button offers
    (a stale one) reads as the default."""
    from faceaudit import params

    settings = {**CONTROLS, **_settings_of(ctx)}
    try:
        settings["alpha"] = params.alpha(settings["alpha"], CONTROLS["alpha"])
    except params.ParamError:
        settings["alpha"] = CONTROLS["alpha"]
    if settings["sort"] not in SORT_KEYS:
        settings["sort"] = CONTROLS["sort"]
    return settings


def _shown_rows(settings: dict) -> int:
    from faceaudit import report
    from faceaudit.attributes import ATTRIBUTES, CATEGORY_OF

    category = settings["category"]
    n = sum(1 for a in ATTRIBUTES if category == CATEGORY_ALL or CATEGORY_OF.get(a) == category)
    return min(n, report.TOP_N) if settings["show"] == "top" else n


def _shown_words(settings: dict) -> str:
    from faceaudit import report

    return f"top {report.TOP_N}" if settings["show"] == "top" else "all"


def _clicked(ctx, size: int) -> list | None:
    """The clicked bar's ``ids`` entry (a JSON list of ``size`` items), or None."""
    try:
        picked = json.loads(ctx.params.get("id") or "null")
    except ValueError:
        return None
    return picked if isinstance(picked, list) and len(picked) == size else None


def _panel_id(ctx) -> str:
    return str(ctx.params.get("panel_id"))


def _sidebar_filters(ctx) -> dict:
    """The App's sidebar filters sent with this request (the ExecutionContext has no attribute
    for them; ``ctx.view`` already applies them)."""
    return dict(ctx.request_params.get("filters") or {})


def _hold_filters(ctx) -> None:
    """Remember the sidebar filters of this request, which the App is about to drop. A request
    without filters keeps what is held (a reload that remounts the panel loads it again)."""
    filters = _sidebar_filters(ctx)
    if filters:
        _HELD.pop(_panel_id(ctx), None)
        _HELD[_panel_id(ctx)] = (time.monotonic(), filters)
        while len(_HELD) > _SHOWN_MAX:
            _HELD.pop(next(iter(_HELD)))


def _restore_filters(ctx) -> None:
    """Put back held filters that a view event shows gone.

    FiftyOne 1.22's App saves the session's spaces when a panel opens or its state changes
    (the ``sessionSpaces`` writer: ``router.replace(..., {event: "spaces"})``); that is a hard
    route load which re-runs ``DatasetPageQuery`` and leaves the sidebar filters empty. The
    panel writes no state (see the module doc), so only the open needs this. One open saves the spaces more than once, so the drop can
    come again after a restore (seen 1 s and 5 s after an open on a loaded machine). Within
    :data:`RESTORE_WINDOW_S` of the hold, every view event without filters puts the held ones
    back through the App's built-in ``set_filters`` operator; filters the user changes meanwhile
    become the held ones. The price: a user who clears every filter within that window gets
    them back once more (clear again after it)."""
    held = _HELD.get(_panel_id(ctx))
    if held is not None and time.monotonic() - held[0] > RESTORE_WINDOW_S:
        del _HELD[_panel_id(ctx)]
        held = None
    if held is None:
        return
    when, filters = held
    now = _sidebar_filters(ctx)
    if now:
        _HELD[_panel_id(ctx)] = (when, now)  # the user's, or the held ones back
    else:
        ctx.trigger("set_filters", params=filters)


def _stage_key(stage: dict) -> str:
    """A stage as text without its id, to recognise it after a round trip through the App."""
    return json_util.dumps({k: v for k, v in stage.items() if k != "_uuid"}, sort_keys=True)


def _stages(view) -> str:
    return json_util.dumps([json_util.loads(_stage_key(s)) for s in view._serialize()])


def md_escape(text: str) -> str:
    """``text`` as literal markdown: a user's name (a source) must not become a link, an image,
    emphasis or an autolinked URL (the App's markdown links bare URLs even when escaped). A code
    span is shown as it is, its fence longer than any run of backticks inside."""
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{'`' * (run + 1)}{pad}{text}{pad}{'`' * (run + 1)}"


def html_escape(text: str) -> str:
    """``text`` inside a plotly hover template (which reads HTML and ``%{...}``)."""
    import html

    return html.escape(text).replace("%", "&#37;")


def _summary(result: dict, category: str | None) -> str:
    from faceaudit import report

    parts = [f"{md_escape(s)} ({i['domain']}, {i['labelled']:,} labelled)" for s, i in result["sources"].items()]
    text = (f"{' · '.join(parts)}  \nstates: {'/'.join(result['states'])}; shares are raw, alpha "
            f"{result['alpha']} smooths the divergences only; KL in nats, `inf` where alpha = 0 meets an empty state")
    for note in result.get("notes") or []:  # a code span: it may hold a source's name, which the
        text += f"  \n**Missing:** {md_escape(note)}; the charts show the rest"  # App would autolink
    unlabelled = report.not_labelled(result, category)
    if unlabelled:
        text += f"  \n**{report.NOT_LABELLED}** (no source has a positive or negative label): {', '.join(unlabelled)}"
    consistency = result.get("identity_consistency") or {}
    if consistency:
        cells = [f"{md_escape(s)}: {c['mean_disagreement']:.3f} ({c['identities']} ids)" if c["applicable"]
                 and c["mean_disagreement"] is not None else f"{md_escape(s)}: n/a" for s, c in consistency.items()]
        from faceaudit.outliers import STABLE_ATTRIBUTES

        unlabelled_all = set(report.not_labelled(result))
        named = [a for a in STABLE_ATTRIBUTES if a not in unlabelled_all]  # not those listed as not labelled
        text += f"  \nidentity disagreement ({', '.join(named) or 'no labelled attribute'}): " + " · ".join(cells)
    return text


def md_plain(text: str) -> str:
    """``text`` (a sentence of faceaudit's that holds no user's name: the App links a bare URL
    even when escaped, see :func:`md_escape`) as plain markdown text, every markdown character
    escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~:/])", r"\\\1", str(text))
