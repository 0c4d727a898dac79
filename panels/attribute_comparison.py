"""The ``attribute_comparison`` panel: distributions, both KL directions, pairwise heatmap.

Thin glue over :func:`fiftyone_plugin.compare.compute_comparison` (cached counts) and the figure
builders of :mod:`faceaudit.report` (the same charts as the HTML report). Only aggregates reach
the browser. It follows the App's view: a sidebar filter changes the numbers. A click on a bar
sets the App's view to the samples of that source with that attribute state.
"""

from __future__ import annotations

from bson import json_util
import fiftyone.operators as foo
import fiftyone.operators.types as types

CATEGORY_ALL = "all"
SORT_KEYS = {"kl_real_synth": "KL(real || synth)", "kl_synth_real": "KL(synth || real)",
             "js": "JS", "attribute": "attribute"}
DEFAULTS = {"states": "three", "alpha": 0.5, "category": CATEGORY_ALL, "shown_state": "positive",
            "attribute": "Male", "sort": "kl_real_synth"}

HELP = """For each of the 47 MAAD-Face attributes: its distribution per source, and the real vs
synthetic KL divergence in both directions (nats). D_KL(real || synthetic) large with
D_KL(synthetic || real) small means the synthetic data covers only part of what real faces show.
Click a bar to see the faces behind it. The numbers follow the App's current view."""


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
        self.refresh(ctx)

    def on_change_view(self, ctx):
        state, shown = ctx.panel.state, _stages(ctx.view)
        if state.drilldown_pending or shown == state.drilldown_view:
            state.set("drilldown_pending", False)
            return  # our own click set this view: keep the charts of the view it came from
        if state.base_view is not None and shown == _stages_of(state.base_view):
            return  # the App repeats a view event (or Back returned): the charts show this view
        self.refresh(ctx)

    def on_change_dataset(self, ctx):
        self.refresh(ctx)

    # ------------------------------------------------------------------ data

    def refresh(self, ctx, changed: dict | None = None, view=None):
        """Recompute (counts are cached per view) and ship the aggregates to the browser.

        ``changed``: control values that replace the ones in the panel state. ``view``: the view
        to describe, by default the App's; given (a control changed), it is the compared view,
        and a drill-down the App shows stays as it is.

        Each ``state.set``/``data.set`` is one message that re-renders the panel in the browser,
        so all state goes in one patch and all chart data in another."""
        from faceaudit import report
        from fiftyone_plugin.compare import compute_comparison

        state = ctx.panel.state
        # on_change_view can come before on_load: fill in the controls' defaults
        settings = {key: state.get(key) if state.get(key) is not None else value
                    for key, value in DEFAULTS.items()} | (changed or {})
        patch = {**settings, "computed": settings, "base_view": _view_json(view or ctx.view)}
        if view is None:
            patch |= {"drilldown_view": None, "drilldown_pending": False, "drilldown": None}
        view = view or ctx.view
        try:
            _, result = compute_comparison(view, states=settings["states"], alpha=float(settings["alpha"]))
        except ValueError as e:
            state.set({**patch, "error": str(e)})
            return
        category = None if settings["category"] == CATEGORY_ALL else settings["category"]
        attribute = settings["attribute"] if settings["attribute"] in result["attributes"] else "Male"
        shown = settings["shown_state"] if settings["shown_state"] in result["states"] else "positive"
        realness_state, realness_data = _realness(ctx, view)
        state.set({
            **patch, **realness_state, "error": None,
            "sources": list(result["sources"]),
            "overview_attributes": report.attributes_of(result, category),
            "state_names": result["states"],
            "summary": _summary(result),
            "kl_table": [{**row, **{k: report.fmt(row[k]) for k in ("kl_real_synth", "kl_synth_real", "js")}}
                         for row in report.kl_rows(result, category, settings["sort"])],
        })
        ctx.panel.data.set({
            **realness_data,
            "overview": report.overview_figure(result, shown, category)["data"],
            "attribute_plot": report.attribute_figure(result, attribute)["data"],
            "kl_plot": report.kl_figure(result, category)["data"],
            "pairwise": report.pairwise_figure(result)["data"],
        })

    def on_realness_click(self, ctx):
        """A histogram bar: that source's samples whose realness_nll falls in the bar's bin."""
        from fiftyone_plugin.outliers import SCORE_FIELD
        from fiftyone_plugin.views import score_range_view

        state = ctx.panel.state
        edges, sources, idx = state.realness_edges, state.realness_sources or [], ctx.params.get("trace_idx")
        x = ctx.params.get("x")
        if not edges or x is None or not isinstance(idx, int) or not 0 <= idx < len(sources):
            return
        k = min(range(len(edges) - 1), key=lambda i: abs((edges[i] + edges[i + 1]) / 2 - x))
        view = score_range_view(_compared_view(ctx), sources[idx], SCORE_FIELD, edges[k], edges[k + 1])
        _drill_down(ctx, view, f"**{sources[idx]}** with realness_nll in [{edges[k]:.2f}, {edges[k + 1]:.2f})")

    def on_control_change(self, ctx):
        """A control changed: recompute the compared view (not a drill-down the App shows).
        Controls inside a row report their path in it (``controls.states``).

        The form also reports every control's initial value when it mounts; those equal the
        settings the charts were computed with (``computed``; the control's own state entry
        already holds the new value, so it cannot tell), and recomputing for each would re-draw
        all charts ten times."""
        key = str(ctx.params.get("path")).rsplit(".", 1)[-1]  # "controls.states" -> "states"
        value = ctx.params.get("value")
        computed = ctx.panel.state.computed or {}
        if key not in DEFAULTS or value is None or str(value) == str(computed.get(key)):
            return
        self.refresh(ctx, {key: value}, _compared_view(ctx) if ctx.panel.state.base_view else None)

    # ------------------------------------------------------------------ clicks

    def on_overview_click(self, ctx):
        """A bar of the overview: (source = trace, attribute = x, state shown)."""
        source = _source_of_trace(ctx)
        attribute, state = ctx.params.get("x"), ctx.panel.state.shown_state
        self._show_faces(ctx, source, attribute, state)

    def on_attribute_click(self, ctx):
        """A bar of the one-attribute chart: (source = trace, state = x)."""
        self._show_faces(ctx, _source_of_trace(ctx), ctx.panel.state.attribute, ctx.params.get("x"))

    def _show_faces(self, ctx, source, attribute, state):
        """Set the App's view to the faces behind a bar (within the view the charts show)."""
        from fiftyone_plugin.views import attribute_state_view

        if source is None or attribute is None or state is None:
            return
        view = attribute_state_view(_compared_view(ctx), source, attribute, state)
        _drill_down(ctx, view, f"**{source}** with **{attribute} = {state}**", attribute=attribute)

    def back_to_compared_view(self, ctx):
        """Return the App to the view the charts describe."""
        ctx.panel.state.set({"drilldown_view": None, "drilldown": None})
        ctx.ops.set_view(_compared_view(ctx))

    # ------------------------------------------------------------------ layout

    def render(self, ctx):
        from faceaudit.attributes import ATTRIBUTES, CATEGORIES

        state = ctx.panel.state
        panel = types.Object()
        panel.md("**Real vs synthetic face attributes** (MAAD-Face, 47)", name="title")
        if state.error:
            panel.md(f"**Nothing to compare:** {state.error}", name="error")
            return types.Property(panel, view=types.GridView(orientation="vertical"))
        panel.md(state.summary or "", name="summary")
        if state.drilldown:
            panel.md(state.drilldown, name="drilldown")

        controls = panel.h_stack("controls", gap=2)
        controls.enum("states", ["three", "binary"], default=state.states, label="States",
                      view=types.DropdownView(), on_change=self.on_control_change)
        controls.float("alpha", default=state.alpha, min=0.0, label="Smoothing alpha",
                       on_change=self.on_control_change)
        controls.enum("category", [CATEGORY_ALL, *CATEGORIES], default=state.category, label="Category",
                      view=types.DropdownView(), on_change=self.on_control_change)
        controls.enum("shown_state", list(state.state_names or ["positive"]), default=state.shown_state,
                      label="Bars show", view=types.DropdownView(), on_change=self.on_control_change)
        controls.btn("back", label="Back", on_click=self.back_to_compared_view)

        layout = {"barmode": "group", "xaxis": {"tickangle": -45}, "legend": {"orientation": "h"},
                  "margin": {"t": 30, "b": 110}, "height": 380,
                  "title": {"text": f"share {state.shown_state} per attribute: click a bar for its faces"}}
        panel.plot("overview", layout=layout, on_click=self.on_overview_click, height=50)

        picked = panel.h_stack("picked", gap=2)
        picked.enum("attribute", list(ATTRIBUTES), default=state.attribute, label="Attribute",
                    view=types.DropdownView(), on_change=self.on_control_change)
        panel.plot("attribute_plot", on_click=self.on_attribute_click, height=40,
                   layout={"barmode": "group", "height": 300, "margin": {"t": 30},
                           "title": {"text": f"{state.attribute}: state shares per source"}})

        panel.enum("sort", list(SORT_KEYS), default=state.sort, label="Sort KL table by",
                   view=types.DropdownView(), on_change=self.on_control_change)
        table = types.TableView()
        for key, label in (("attribute", "attribute"), ("category", "category"),
                           ("kl_real_synth", "KL(real || synth)"), ("kl_synth_real", "KL(synth || real)"),
                           ("js", "JS")):
            table.add_column(key, label=label)
        panel.list("kl_table", types.Object(), view=table, label="KL divergence per attribute (nats)")
        panel.plot("kl_plot", height=40, layout={"barmode": "group", "height": 320, "margin": {"t": 30, "b": 110},
                                                "xaxis": {"tickangle": -45}, "title": {"text": "KL, both directions"}})
        panel.plot("pairwise", height=40, layout={"height": 320, "margin": {"t": 30},
                                                 "yaxis": {"autorange": "reversed"},
                                                 "title": {"text": "pairwise KL(row || column), mean over attributes"}})
        if state.realness_edges:
            panel.plot("realness", on_click=self.on_realness_click, height=40,
                       layout={"barmode": "overlay", "height": 300, "margin": {"t": 30},
                               "xaxis": {"title": {"text": "realness_nll (higher: less explained by real data)"}},
                               "title": {"text": "realness_nll per source: click a bar for its faces"}})
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2))


def _realness(ctx, view) -> tuple[dict, dict]:
    """The realness_nll histogram per source, as (panel state, panel data) entries; empty bins
    and no chart when the dataset has not been scored."""
    from fiftyone_plugin.outliers import SCORE_FIELD
    from fiftyone_plugin.views import score_histograms

    hist = score_histograms(view, SCORE_FIELD) if SCORE_FIELD in ctx.dataset.get_field_schema() else None
    if not hist:
        return {"realness_edges": None, "realness_sources": []}, {}
    edges = hist["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    bars = [{"type": "bar", "name": source, "x": centers, "y": counts, "opacity": 0.7,
             "hovertemplate": f"{source}<br>" + "realness_nll ~%{x:.2f}: %{y}<extra></extra>"}
            for source, counts in hist["counts"].items()]
    return {"realness_edges": edges, "realness_sources": list(hist["counts"])}, {"realness": bars}


def _drill_down(ctx, view, what: str, **state) -> None:
    """Set the App's view to the faces behind a click, remembering it as the panel's own change
    (so on_change_view keeps the charts of the view they describe)."""
    ctx.panel.state.set({**state, "drilldown_view": _stages(view), "drilldown_pending": True,
                         "drilldown": f"Showing the {view.count()} faces of {what}; "
                                      "*Back* returns to the compared view."})
    ctx.ops.set_view(view)


def _compared_view(ctx):
    """The view the charts were computed on (kept in the panel state as its stages)."""
    from fiftyone.core.view import DatasetView

    return DatasetView._build(ctx.dataset, json_util.loads(ctx.panel.state.base_view or "[]"))


def _view_json(view) -> str:
    """A view's stages as JSON text. Panel state keeps views as text: a serialized stage is a
    dict with a ``_cls`` key, and FiftyOne's session state (which holds panel state) would read
    such a dict as a document of an unregistered class (``session.view = ...`` then fails)."""
    return json_util.dumps(view._serialize())


def _stages_of(text: str) -> str:
    """The stages of a view's JSON without their ids, for comparing views across a round trip
    to the App."""
    return json_util.dumps([{k: v for k, v in stage.items() if k != "_uuid"}
                            for stage in json_util.loads(text)], sort_keys=True)


def _stages(view) -> str:
    return _stages_of(_view_json(view))


def _source_of_trace(ctx) -> str | None:
    sources = ctx.panel.state.sources or []
    idx = ctx.params.get("trace_idx")
    return sources[idx] if isinstance(idx, int) and 0 <= idx < len(sources) else None


def _summary(result: dict) -> str:
    parts = [f"**{s}** ({i['domain']}, {i['labelled']:,} labelled)" for s, i in result["sources"].items()]
    text = (f"{' · '.join(parts)}  \nstates: {'/'.join(result['states'])}, alpha {result['alpha']}; "
            "KL in nats, `inf` where alpha = 0 meets an empty state")
    consistency = result.get("identity_consistency") or {}
    if consistency:
        cells = [f"{s}: {c['mean_disagreement']:.3f} ({c['identities']} ids)" if c["applicable"]
                 and c["mean_disagreement"] is not None else f"{s}: n/a" for s, c in consistency.items()]
        text += "  \nidentity disagreement (Male, Asian, White, Black): " + " · ".join(cells)
    return text
