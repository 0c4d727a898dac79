"""The ``identity_audit`` panel: the stored identity audit (``faceaudit identity`` / the "Identity
audit" operator) in the App: genuine and impostor histograms per source, the metrics table, the
leakage pairs, collisions and identity outliers, each a click away from its faces.

Thin glue over the stored result (``dataset.info["faceaudit"]["identity"]``, aggregates only:
the histograms are the result's coarse bins), the figure builders of
:mod:`faceaudit.identity_report` (the same charts as the HTML report) and the views of
:mod:`fiftyone_plugin.views`. It follows the idioms of the attribute-comparison panel (see its
module doc): everything shown travels in the rendered layout, not in panel data or state (a state
or data patch makes the App reload the page and drop the sidebar filters); panel state is written
only when the user clicks; a view event never sets the view; the sidebar filters that opening the
panel drops are put back. The audit is dataset-level, so the numbers do not follow the view.
"""

from __future__ import annotations

import json

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .attribute_comparison import (
    _hold_filters,
    _restore_filters,
    _stage_key,
    md_escape,
    md_plain,
    panel_view,
    px,
)

HELP = """The identity audit stored by `faceaudit identity` (or the "Identity audit" operator):
cosine similarity of the `face_embedding` vectors. Genuine (mated) scores are pairs inside an
identity, impostor (non-mated) scores pairs of different identities. Leakage: a synthetic identity
whose centre is close to a real identity's centre. Collisions: two identities of one source that
are one person. Outliers: images that do not verify against the rest of their identity. Click a
row's button to see its faces in the grid; Back returns to the whole dataset."""

NOT_COMPUTED = ("**No identity audit is stored for this dataset.** Run `faceaudit identity --dataset NAME` "
                "(after `faceaudit embed`), or the **Identity audit** operator "
                "(faceaudit: identity audit) from the operator browser, then reopen this panel.")

#: the metrics table's rows (labels of :data:`faceaudit.identity_report.METRICS`)
TABLE_METRICS = ("identities", "samples", "genuine pairs", "impostor pairs", "EER", "FNMR @ FMR 1e-2",
                 "FNMR @ FMR 1e-3", "FNMR @ FMR 1e-4", "d'", "FDR", "uniqueness", "consistency",
                 "collision pairs", "W1 genuine vs real", "W1 impostor vs real")
ROWS_SHOWN = 10  # leakage pairs and collisions listed (the result keeps 50 per source)
_PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}


class IdentityAuditPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="identity_audit",
            label="faceaudit: identity audit",
            surfaces="grid",
            help_markdown=HELP,
            icon="/assets/icon.svg",
        )

    def on_load(self, ctx):
        ctx.dataset.reload()  # an audit run by another process since the dataset was loaded
        _hold_filters(ctx)  # opening the panel reloads the App's page, which drops them

    def on_change_view(self, ctx):
        """Never sets the view, the state or the data (that would drop the sidebar filters);
        puts back the filters that opening the panel dropped."""
        _restore_filters(ctx)

    # ------------------------------------------------------------------ clicks

    def on_pair_click(self, ctx):
        """A leakage pair or a collision: ``ctx.params["pair"]`` is JSON ``[[source, identity],
        [source, identity], what]``; the grid shows both identities' samples."""
        from fiftyone_plugin.views import identities_view

        try:
            a, b, kind = json.loads(ctx.params.get("pair") or "null")
            pairs = [(str(a[0]), str(a[1])), (str(b[0]), str(b[1]))]
        except (TypeError, ValueError, IndexError):
            return
        (sa, ia), (sb, ib) = [(md_escape(s), md_escape(i)) for s, i in pairs]
        na, nb = (_faces(identities_view(ctx.dataset, [p]).count()) for p in pairs)
        if kind == "leak":
            text = f"Showing {sa} / {ia} ({na}) beside its real match {sb} / {ib} ({nb})"
        else:
            text = f"Showing the collision of {sa}: {ia} ({na}) and {ib} ({nb})"
        _drill_down(ctx, identities_view(ctx.dataset, pairs), text, "leak" if kind == "leak" else "collision")

    def on_outliers_click(self, ctx):
        """The identity outliers, lowest ``identity_similarity`` first."""
        from fiftyone_plugin.views import identity_outlier_view

        result = _result(ctx)
        if not result:
            return
        view = identity_outlier_view(ctx.dataset, result["threshold"], tagged="tagged" in result)
        n = view.count()
        _drill_down(ctx, view, ("Showing the identity outlier (1 face)" if n == 1 else
                                f"Showing the {n:,} identity outliers, lowest identity_similarity first"), "outliers")

    def back_to_dataset(self, ctx):
        ctx.panel.state.set("drilldown", None)
        ctx.ops.set_view(ctx.dataset.view())

    # ------------------------------------------------------------------ layout

    def render(self, ctx):
        panel = types.Object()  # a text's name must differ from every state key (state wins)
        panel.md("**Identity audit** (face embeddings: genuine / impostor scores, leakage, collisions)",
                 name="title")
        result = _result(ctx)
        if not result:
            panel.md(NOT_COMPUTED, name="not_computed_text")
            return types.Property(panel, view=panel_view(padded=True))
        panel.md(_summary(result), name="summary_text")
        drill = _drilldown_of(ctx)
        if drill is not None:
            self._back(panel, drill, "")
        for kind in ("genuine", "impostor"):
            missing = _no_pairs(result, kind)
            if missing:  # a chart without bars (and a -100%..100% axis) would explain nothing
                panel.md(missing, name=f"{kind}_none_text")
            else:
                _plot(panel, f"{kind}_plot", _histogram(result, kind))
        panel.md(_metrics_table(result), name="metrics_text")
        self._leakage(panel, result, drill)
        self._collisions(panel, result, drill)
        self._outliers(panel, result, drill)
        return types.Property(panel, view=panel_view(padded=True))

    def _back(self, panel, drill: dict | None, where: str) -> None:
        """What the grid shows and the way back: at the top, and again above the list clicked
        (new-user review C3: the top was out of sight of a click far down the panel)."""
        if drill is None or (where and drill.get("where") != where):
            return
        suffix = f"_{where}" if where else ""
        panel.md(drill["text"], name=f"drilldown{suffix}_text")
        panel.btn(f"back{suffix}", label="Back to the whole dataset", variant="contained",
                  on_click=self.back_to_dataset)

    def _leakage(self, panel, result: dict, drill: dict | None = None) -> None:
        leakage = result.get("leakage") or {}
        lines = [("**Leakage of real identities** (each synthetic identity's most similar real identity; "
                  "click a pair: the grid shows both identities)")]
        for source, leak in leakage.items():
            if not leak.get("applicable"):
                lines.append(f"- {md_escape(source)}: n/a ({md_escape(str(leak.get('reason', '')))})")
            elif leak.get("share_above_threshold") is not None:
                lines.append(f"- {md_escape(source)}: {leak.get('identities_above_threshold', 0)} of "
                             f"{leak['identities']} identities at or above the threshold")
        if not leakage:
            lines.append("- no synthetic source")
        panel.md("\n".join(lines), name="leakage_text")
        self._back(panel, drill, "leak")
        rows = [(source, p) for source, leak in leakage.items() for p in leak.get("top") or []]
        rows.sort(key=lambda r: -r[1]["similarity"])
        for k, (source, p) in enumerate(rows[:ROWS_SHOWN]):
            a, b = [source, p["identity"]], [p["real_source"], p["real_identity"]]
            _row(panel, f"leak_{k}", f"{_mark(p['similarity'], result)}{source} / {p['identity']}  ->  "
                 f"{p['real_source']} / {p['real_identity']}: cosine {p['similarity']:.3f}",
                 json.dumps([a, b, "leak"]), self.on_pair_click)

    def _collisions(self, panel, result: dict, drill: dict | None = None) -> None:
        rows = [(source, c) for source, s in result["sources"].items() for c in s.get("collisions") or []]
        rows.sort(key=lambda r: -r[1]["similarity"])
        total = sum(s.get("collision_pairs") or 0 for s in result["sources"].values())
        panel.md(f"**Collisions** (identity pairs of one source at or above the threshold: {total})"
                 + ("" if rows else "  \nnone"), name="collisions_text")
        self._back(panel, drill, "collision")
        for k, (source, c) in enumerate(rows[:ROWS_SHOWN]):
            a, b = [source, c["identity_a"]], [source, c["identity_b"]]
            _row(panel, f"collision_{k}", f"{source}: {c['identity_a']}  =  {c['identity_b']}: "
                 f"cosine {c['similarity']:.3f}", json.dumps([a, b, "collision"]), self.on_pair_click)

    def _outliers(self, panel, result: dict, drill: dict | None = None) -> None:
        lowest = sorted(((source, o) for source, s in result["sources"].items() for o in s.get("outliers") or []),
                        key=lambda r: r[1]["identity_similarity"])
        tagged = (result.get("tagged") or {}).get("identity_outlier")
        text = "**Identity outliers** (images least similar to the rest of their identity)"
        if lowest:
            source, o = lowest[0]
            text += (f"  \nlowest: {md_escape(source)} / {md_escape(str(o['identity']))} at "
                     f"{o['identity_similarity']:.3f}")
        if tagged is not None:
            text += f"  \n{tagged} tagged `identity_outlier` (below the threshold)"
            shown = bool(tagged)
        else:
            below = bool(lowest) and lowest[0][1]["identity_similarity"] < result["threshold"]
            text += ("  \nnot tagged (the audit ran without \"Tag leaks, collisions and outliers\"): "
                     + ("the button shows those below the threshold" if below else "none is below the threshold"))
            shown = below
        if not shown:  # new-user review C4: the button showed an empty grid
            text += ": nothing to show"
        panel.md(text, name="outliers_text")
        self._back(panel, drill, "outliers")
        if shown:
            panel.btn("outliers", label="Show the identity outliers", variant="contained",
                      on_click=self.on_outliers_click)


def _result(ctx) -> dict | None:
    from fiftyone_plugin import schema

    return schema.get_info(ctx.dataset, "identity")


def _summary(result: dict) -> str:
    at = f", computed {result['at']}" if result.get("at") else ""
    from ..operators.common import rule_words

    rule = rule_words(result.get("threshold_rule"))
    text = (f"model {md_escape(str(result.get('model')))}; threshold **{result['threshold']:.3f}**"
            + (f" ({md_plain(rule)})" if rule else "") + at)  # a sentence: plain text, not a code span
    skipped = [f"{md_escape(n)} ({md_plain(str(s.get('reason', '')))})" for n, s in result["sources"].items()
               if not s.get("applicable")]
    if skipped:
        text += "  \nnot applicable: " + ", ".join(skipped)
    return text


def _histogram(result: dict, kind: str) -> dict:
    """The report's histogram of ``kind`` scores (the result's coarse bins: aggregates only)."""
    from faceaudit.identity_report import histogram_figure

    figure = histogram_figure(result, kind)
    figure["layout"]["xaxis"]["range"] = _score_range(result)
    figure["layout"].update({"height": 300, "showlegend": True, "margin": {"t": 60, "r": 30, "l": 60, "b": 50},
                             "legend": {"orientation": "h", "x": 0, "y": 1, "yanchor": "bottom"}})
    figure["layout"]["title"].update({"x": 0, "xanchor": "left", "font": {"size": 14}})
    return figure


def _no_pairs(result: dict, kind: str) -> str | None:
    """:func:`faceaudit.identity_report.no_pairs` in the panel's markdown."""
    from faceaudit import identity_report

    missing = identity_report.no_pairs(result, kind)
    if missing is None:
        return None
    headline, sources, why = missing
    return f"**{headline}** in {', '.join(md_escape(n) for n in sources)}: {why}"


def _score_range(result: dict) -> list[float]:
    """The x range of both histograms: the bins holding any score (genuine or impostor, any
    source) and the threshold, a bin of margin each side (dlib's scores fill a tenth of [-1, 1])."""
    edges = result["chart_edges"]
    used = [k for s in result["sources"].values() if s.get("applicable")
            for kind in ("genuine", "impostor") for k, c in enumerate(s[kind]["histogram"]) if c]
    if not used:
        return [-1.0, 1.0]
    step = edges[1] - edges[0]
    low = min(edges[min(used)], result["threshold"]) - step
    high = max(edges[max(used) + 1], result["threshold"]) + step
    return [max(-1.0, low), min(1.0, high)]


def _plot(panel, name: str, figure: dict) -> None:
    panel.plot(name, data=figure["data"], layout=figure["layout"], config=_PLOT_CONFIG,
               height=px(figure["layout"]["height"]))


def _metrics_table(result: dict) -> str:
    from faceaudit.identity_report import METRICS, _get
    from faceaudit.report import num

    sources = {n: s for n, s in result["sources"].items() if s.get("applicable")}
    if not sources:
        return "**Metrics:** no source has identities"
    lines = ["**Metrics per source**", "", "| metric | " + " | ".join(md_escape(n) for n in sources) + " |",
             "|---|" + "--:|" * len(sources)]
    for label, path in METRICS:
        if label in TABLE_METRICS:
            lines.append(f"| {label} | " + " | ".join(num(_get(s, path)) for s in sources.values()) + " |")
    return "\n".join(lines)


def _mark(similarity: float, result: dict) -> str:
    return "[above] " if similarity >= result["threshold"] else ""


def _row(panel, name: str, label: str, pair: str, on_click) -> None:
    """One listed pair: a button whose label is the pair (plain text: a button label is not
    markdown) and whose click reports the pair."""
    panel.btn(name, label=label, variant="outlined", on_click=on_click, params={"pair": pair})


def _drilldown_of(ctx) -> dict | None:
    """The panel's drill-down if the App's view still holds its match stage, else None (this
    panel's clicks set the App's view; the comparison panel's use the extended selection)."""
    from bson import json_util

    drill = ctx.panel.state.drilldown
    if not drill or not drill.get("stage") or ctx.view is None:
        return None
    stages = {_stage_key(stage) for stage in json_util.loads(json_util.dumps(ctx.view.view()._serialize()))}
    return drill if drill["stage"] in stages else None


def _faces(n: int) -> str:
    return "1 face" if n == 1 else f"{n:,} faces"


def _drill_down(ctx, view, text: str, where: str) -> None:
    """Set the App's grid to the faces behind a click (``text`` says which), remembering the
    match stage it adds and the list clicked (``where``: its status and Back are shown there)."""
    match = next(s for s in reversed(view._stages) if type(s).__name__ in ("Match", "MatchTags"))
    ctx.panel.state.set("drilldown", {"stage": _stage_key(match._serialize()), "text": text, "where": where})
    ctx.ops.set_view(view)

