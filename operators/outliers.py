"""``flag_synthetic_outliers``: score, tag and save the synthetic faces real data explains least
(the App's door to :mod:`fiftyone_plugin.outliers`, as ``faceaudit outliers``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types


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
        inputs = types.Object()
        mode = types.RadioGroup()
        mode.add_choice("top", label="Top K")
        mode.add_choice("threshold", label="Threshold on realness_nll")
        mode.add_choice("clear", label="Clear the tag")
        inputs.enum("mode", mode.values(), default="top", view=mode, label="What to do")
        chosen = ctx.params.get("mode", "top")
        if chosen == "top":
            inputs.int("top", default=100, min=1, label="K")
        elif chosen == "threshold":
            inputs.float("threshold", default=60.0, label="realness_nll at least")
        inputs.str("tag", default="outlier", label="Tag")
        return types.Property(inputs, view=types.View(label="Flag synthetic outliers"))

    def execute(self, ctx):
        from fiftyone_plugin import outliers

        p = ctx.params
        tag = p.get("tag") or outliers.OUTLIER_TAG
        if p.get("mode") == "clear":
            n = outliers.clear_outliers(ctx.dataset, tag)
            ctx.ops.reload_dataset()
            return {"tagged": 0, "cleared": n}
        outliers.score_realness(ctx.dataset)
        outliers.identity_consistency(ctx.dataset.view(), write=True)
        n = outliers.flag_outliers(ctx.dataset, top=p.get("top") if p.get("mode", "top") == "top" else None,
                                   threshold=p.get("threshold") if p.get("mode") == "threshold" else None, tag=tag)
        ctx.ops.reload_dataset()
        ctx.ops.set_view(ctx.dataset.load_saved_view(outliers.OUTLIERS_VIEW))
        return {"tagged": n, "cleared": 0}
