"""``compute_identity_audit``: the identity audit on ``face_embedding`` (the App's door to
:func:`fiftyone_plugin.identity.identity_audit`, as ``faceaudit identity``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import identity as core
from faceaudit import params

from .common import execution_mode, Form, form_check, wants_delegation

RULES = ("default", "threshold", "fmr", "clear")
SELECT_SAVED_VIEW = "select_saved_view"


class ComputeIdentityAudit(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_identity_audit",
            label="faceaudit: identity audit (genuine/impostor, uniqueness, collisions, leakage)",
            icon="/assets/icon.svg",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        inputs = Form()
        rule = types.RadioGroup()
        rule.add_choice("default", label="The embedding model's default threshold")
        rule.add_choice("threshold", label="A cosine threshold")
        rule.add_choice("fmr", label="The threshold at an FMR of the real impostor scores")
        rule.add_choice("clear", label="Clear the identity tags")
        inputs.enum("rule", rule.values(), default="default", view=rule, label="Threshold")
        chosen = ctx.params.get("rule") or "default"
        if chosen == "threshold":
            inputs.float("threshold", required=True, label="Cosine threshold", description="in [-1, 1]",
                         **form_check(ctx, "threshold", core.similarity_threshold))
        elif chosen == "fmr":
            inputs.float("fmr", default=1e-3, required=True, label="FMR", description="between 0 and 1",
                         **form_check(ctx, "fmr", core.target_fmr))
        if chosen != "clear":
            inputs.int("max_pairs", default=core.DEFAULT_MAX_PAIRS, label="Impostor pairs per source",
                       description="every pair while at most this many; else a seeded uniform sample",
                       **form_check(ctx, "max_pairs", core.max_pairs))
            inputs.int("seed", default=0, min=0, label="Seed")
            inputs.bool("tag", default=True, label="Tag leaks, collisions and outliers (and save views)")
            execution_mode(ctx, inputs)
        return inputs.as_property("Identity audit")

    def resolve_delegation(self, ctx):
        return wants_delegation(ctx)

    def execute(self, ctx):
        from fiftyone_plugin import identity

        p = ctx.params
        rule = params.choice("rule", p.get("rule"), RULES, "default")
        if rule == "clear":
            n = identity.clear_tags(ctx.dataset)
            if not ctx.delegated:
                ctx.ops.reload_dataset()
            return {"message": f"identity tags removed from {n} samples", "cleared": n}
        opts = identity.options(p.get("threshold") if rule == "threshold" else None,
                                p.get("fmr") if rule == "fmr" else None, p.get("max_pairs"), p.get("seed"))
        tag = params.to_bool("tag", p.get("tag"), True)
        result = identity.identity_audit(ctx.dataset, opts, tag=tag)
        leaks = {s: v.get("share_above_threshold") for s, v in result["leakage"].items()}
        message = (f"threshold {result['threshold']:.4g} ({result['threshold_rule']}); "
                   f"{len(result['sources'])} sources audited" +
                   ("; tagged " + ", ".join(f"{k} {v}" for k, v in result["tagged"].items()) if tag else ""))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
            if tag:
                ctx.trigger(f"{self.plugin_name}/{SELECT_SAVED_VIEW}", params={"name": identity.VIEWS[identity.LEAK_TAG]})
        return {"message": message, "threshold": result["threshold"], "leakage": leaks,
                "tagged": result.get("tagged", {})}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs, view=types.View(label="Identity audit"))
