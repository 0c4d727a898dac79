"""``rebalance_synthetic_source``: tag a subset of a synthetic source closer to the real
distribution and open its saved view (the App's door to
:func:`fiftyone_plugin.rebalance.rebalance_source`, as ``faceaudit rebalance``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import params
from faceaudit.attributes import ATTRIBUTES

from .common import Form, form_check, grid_now_shows, refused_in_form_words, rounded
from .outliers import SELECT_SAVED_VIEW


class RebalanceSyntheticSource(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="rebalance_synthetic_source",
            label="faceaudit: rebalance a synthetic source",
            icon="/assets/icon.svg",
            dynamic=True,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Rebalance", icon="/assets/icon.svg", prompt=True),
        )

    def resolve_input(self, ctx):
        from fiftyone_plugin import rebalance, schema

        inputs = Form()
        info = schema.sources_info(ctx.dataset) if ctx.dataset is not None else {}
        synthetic = sorted(s for s, i in info.items() if i.get("domain") == "synthetic")
        inputs.enum("source", synthetic, default=synthetic[0] if synthetic else None, required=True,
                    label="Synthetic source")
        attributes = types.DropdownView(multiple=True)  # picked from the list (free text was all it offered)
        for a in ATTRIBUTES:
            attributes.add_choice(a, label=a)
        inputs.list("attributes", types.String(), required=True, label="Attributes",
                    description="pick from the list; their joint distribution is matched to the pooled real sources'",
                    view=attributes,
                    **form_check(ctx, "attributes", rebalance.check_attributes))
        inputs.float("keep", default=0.5, min=0.0, max=1.0, label="Keep at least this share of the samples",
                     **form_check(ctx, "keep", params.keep_share))
        inputs.enum("unit", ["identity", "sample"], default="identity", label="Choose whole")
        inputs.str("tag", default=rebalance.DEFAULT_TAG, label="Tag and saved view",
                   **form_check(ctx, "tag", lambda v: params.name("tag", v, required=False)))
        return inputs.as_property("Rebalance a synthetic source")

    def execute(self, ctx):
        from fiftyone_plugin import rebalance

        p = ctx.params
        with refused_in_form_words(lambda: self.resolve_input(ctx)):
            report = rebalance.rebalance_source(ctx.dataset, p.get("source"), p.get("attributes"), keep=p.get("keep"),
                                                unit=p.get("unit"), tag=p.get("tag") or rebalance.DEFAULT_TAG)
        message = "; ".join(rebalance.summary(report)[:2])
        ctx.ops.reload_dataset()
        ctx.trigger(f"{self.plugin_name}/{SELECT_SAVED_VIEW}", params={"name": report["view"]})
        ctx.ops.notify(message, variant="success")
        message += f". {grid_now_shows(report['view'])}"
        return {"message": message, "kept_units": report["kept_units"],
                "kl_before": rounded(report["kl_joint"]["before"]), "kl_after": rounded(report["kl_joint"]["after"])}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        outputs.float("kl_before", label="KL(real || source), joint")
        outputs.float("kl_after", label="KL(real || subset), joint")
        return types.Property(outputs, view=types.View(label="Rebalance"))
