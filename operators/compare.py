"""``compute_attribute_comparison``: compute and store the comparison of the target view (the
App's door to :func:`fiftyone_plugin.compare.compute_comparison`, as ``faceaudit compare``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import params

from .common import execution_mode, Form, form_check, refused_in_form_words, wants_delegation


class ComputeAttributeComparison(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_attribute_comparison",
            label="faceaudit: compare attributes (real vs synthetic KL)",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = Form()
        inputs.view_target(ctx)
        inputs.enum("states", ["three", "binary"], default="three", label="States")
        # checked by the same functions as `faceaudit compare` (min= would say "greater than 0")
        inputs.float("alpha", default=0.5, label="Smoothing alpha (pseudo-count per state)",
                     **form_check(ctx, "alpha", params.alpha))
        inputs.int("bootstrap", default=0, label="Bootstrap resamples (0: none)",
                   **form_check(ctx, "bootstrap", params.bootstrap))
        inputs.bool("open_panel", default=True, label="Open the comparison panel")
        execution_mode(ctx, inputs)
        return inputs.as_property("Compare attributes")

    def resolve_delegation(self, ctx):
        return wants_delegation(ctx)

    def execute(self, ctx):
        from faceaudit.report import ranked_by_divergence
        from fiftyone_plugin.compare import compute_comparison, store_comparison

        p = ctx.params
        with refused_in_form_words(lambda: self.resolve_input(ctx)):
            _, result = compute_comparison(ctx.target_view(), states=p.get("states"), alpha=p.get("alpha"),
                                           bootstrap=p.get("bootstrap"))  # validated there, strings too
        store_comparison(ctx.dataset, result)
        if params.to_bool("open_panel", p.get("open_panel"), True) and not ctx.delegated:
            ctx.ops.open_panel("attribute_comparison", layout="horizontal", is_active=True)
        ranked = ranked_by_divergence(result)  # the CLI's and the panel's order: labelled attributes only
        return {"sources": len(result["sources"]),
                "largest_kl_real_synth": ranked[0] if ranked else "(no attribute is labelled)"}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("sources", label="Sources compared")
        outputs.str("largest_kl_real_synth", label="Attribute with the largest KL(real || synthetic)")
        return types.Property(outputs)
