"""``flag_synthetic_outliers``: score, tag and save the synthetic faces real data explains least
(the App's door to :func:`fiftyone_plugin.outliers.flag_synthetic_outliers`, as ``faceaudit outliers``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import params

from .common import Form, form_check, grid_now_shows, refused_in_form_words

MODES = ("top", "threshold", "clear", "keep")
SELECT_SAVED_VIEW = "select_saved_view"
FOLLOW_SAVED_VIEW = "follow_saved_view"  # run by js/faceaudit.js


class FlagSyntheticOutliers(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="flag_synthetic_outliers",
            label="faceaudit: flag synthetic outliers",
            icon="/assets/icon.svg",
            dynamic=True,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Flag synthetic outliers", icon="/assets/icon.svg", prompt=True),
        )

    def resolve_input(self, ctx):
        from fiftyone_plugin import outliers

        inputs = Form()
        mode = types.RadioGroup()
        mode.add_choice("top", label="Top K")
        mode.add_choice("threshold", label="Threshold on realness_nll")
        mode.add_choice("clear", label="Clear the tag")
        mode.add_choice("keep", label=f"Keep the selected faces (reviewed: tag '{outliers.REVIEWED_KEEP_TAG}', "
                                      "never flagged again)")
        inputs.enum("mode", mode.values(), default="top", view=mode, label="What to do")
        chosen = ctx.params.get("mode") or "top"
        top, threshold = outliers.suggested_defaults(ctx.dataset) if ctx.dataset is not None else (1, None)
        if chosen == "top":
            inputs.int("top", default=top, min=1, label="K",
                       description=f"Tag the K synthetic faces with the highest realness_nll "
                                   f"(default: {outliers.DEFAULT_SHARE:.0%} of them)",
                       **form_check(ctx, "top", lambda v: params.top(v)))
        elif chosen == "threshold":
            hint = ("no scores yet: they are computed when this runs" if threshold is None else
                    f"suggested: {threshold:.4g}, the score of the K-th highest synthetic face "
                    f"(K = {top}, {outliers.DEFAULT_SHARE:.0%} of them)")
            inputs.float("threshold", default=threshold, required=True, label="realness_nll at least",
                         description=hint, **form_check(ctx, "threshold", lambda v: params.to_float("threshold", v)))
        elif chosen == "keep":
            inputs.view("selected", types.Notice(label=f"{len(ctx.selected)} selected faces: they lose the "
                                                       f"outlier tag and get '{outliers.REVIEWED_KEEP_TAG}'"),
                        **({} if ctx.selected else
                           {"invalid": True, "error_message": "select the reviewed faces in the grid first"}))
        inputs.str("tag", default=outliers.OUTLIER_TAG, label="Tag",
                   **form_check(ctx, "tag", lambda v: params.tag(v)))
        return inputs.as_property("Flag synthetic outliers")

    def execute(self, ctx):
        from fiftyone_plugin import outliers

        p = ctx.params
        mode = params.choice("mode", p.get("mode"), MODES, "top")
        if mode == "clear":
            n = outliers.clear_outliers(ctx.dataset, p.get("tag") or outliers.OUTLIER_TAG)
            ctx.ops.reload_dataset()
            ctx.ops.notify(f"tag removed from {n} samples", variant="success")
            return {"tagged": 0, "cleared": n, "message": f"tag removed from {n} samples"}
        if mode == "keep":
            n = outliers.keep_reviewed(ctx.dataset, ctx.selected, p.get("tag") or outliers.OUTLIER_TAG)
            message = f"{n} faces kept as reviewed (tag '{outliers.REVIEWED_KEEP_TAG}'): flagging skips them"
            ctx.ops.clear_selected_samples()
            ctx.ops.reload_dataset()
            ctx.ops.notify(message, variant="success")
            return {"tagged": 0, "cleared": 0, "kept": n, "message": message}
        with refused_in_form_words(lambda: self.resolve_input(ctx)):
            options = outliers.outlier_options(
                top=p.get("top") if mode == "top" else None,
                threshold=p.get("threshold") if mode == "threshold" else None,
                tag=p.get("tag") or outliers.OUTLIER_TAG,
            )
            scored, _, n = outliers.flag_synthetic_outliers(ctx.dataset, options)
        message = (f"{n} synthetic faces tagged '{options.tag}' ({scored['scored']} samples scored)"
                   f"{outliers.kept_note(ctx.dataset)}; "
                   f"saved view '{outliers.OUTLIERS_VIEW}'. {grid_now_shows(outliers.OUTLIERS_VIEW)}")
        ctx.ops.reload_dataset()  # the App refetches its saved views...
        ctx.trigger(f"{self.plugin_name}/{SELECT_SAVED_VIEW}", params={"name": outliers.OUTLIERS_VIEW})
        ctx.ops.notify(message, variant="success")
        return {"tagged": n, "cleared": 0, "message": message}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs, view=types.View(label="Flag synthetic outliers"))


class SelectSavedView(foo.Operator):
    """Select a saved view in the App once its list of saved views holds it.

    The App's ``set_view`` checks a name against the saved views it loaded with the page; a view
    saved by the operator that just ran is not among them until ``reload_dataset`` has refetched
    them. Triggered after that reload, this operator's round trip (plus a short pause) lets the
    refetch land first, so the selector then shows the saved view, not "Unsaved view".

    A view with an order of its own (``synthetic_outliers``: highest realness_nll first) is
    shown in that order: the App's grid *Sort by*, which FiftyOne keeps in the browser and
    applies after the view's own sort (a sort left from a drill-down showed the outliers lowest
    first, issue 15.9), is cleared first by the plugin's browser-side ``clear_grid_sort``."""

    DELAY_S = 1.0

    @property
    def config(self):
        return foo.OperatorConfig(name=SELECT_SAVED_VIEW, label="faceaudit: select a saved view",
                                  unlisted=True)

    def execute(self, ctx):
        import time

        name = params.name("name", ctx.params.get("name"))
        time.sleep(self.DELAY_S)
        if ctx.dataset is not None and ctx.dataset.has_saved_view(name):
            from fiftyone_plugin.views import CLEAR_GRID_SORT, own_sort

            if own_sort(ctx.dataset, name) is not None:
                ctx.trigger(f"{self.plugin_name}/{CLEAR_GRID_SORT}")
            ctx.ops.set_view(name=name)


class FollowSavedView(foo.Operator):
    """Run by the plugin's browser side (js/faceaudit.js) when the App's address selects a saved
    view (``params["view"]``: its slug), e.g. from the saved-view selector: a grid *Sort by* left
    from an earlier view that replaces this view's own order is cleared (issue 15.9)."""

    @property
    def config(self):
        return foo.OperatorConfig(name=FOLLOW_SAVED_VIEW, label="faceaudit: follow a selected saved view",
                                  unlisted=True)

    def execute(self, ctx):
        from fiftyone_plugin.views import CLEAR_GRID_SORT, grid_sort_replaces, saved_view_of_slug

        if ctx.dataset is None:
            return
        name = saved_view_of_slug(ctx.dataset, str(ctx.params.get("view") or ""))
        if name and grid_sort_replaces(ctx.dataset, name, ctx.request_params.get("extended")) is not None:
            ctx.trigger(f"{self.plugin_name}/{CLEAR_GRID_SORT}")
