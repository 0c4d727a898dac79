"""``compute_identity_audit``: the identity audit on ``face_embedding`` (the App's door to
:func:`fiftyone_plugin.identity.identity_audit`, as ``faceaudit identity``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import identity as core
from faceaudit import params

from .common import (door_check, execution_mode, Form, form_check, grid_now_shows, refused_in_form_words, rule_words,
                     wants_delegation)

RULES = ("default", "threshold", "fmr")
ACTIONS = ("audit", "clear")
SELECT_SAVED_VIEW = "select_saved_view"
#: the CLI's options that the form shows as a radio choice, for the messages that name them
ALIASES = {"threshold": '"A cosine threshold"', "fmr": '"The threshold at an FMR"'}
FALLBACK_THRESHOLD = 0.5  # the cosine field's first value when the model has no default


def stored_model(ctx) -> str | None:
    """The embedding model of the dataset's vectors (``dataset.info``), if any."""
    from fiftyone_plugin import schema

    return (schema.get_info(ctx.dataset, "embedding") or {}).get("model") if ctx.dataset is not None else None


def action_of(p: dict) -> str:
    """``audit`` or ``clear`` (also from the older ``rule: clear`` of Python callers)."""
    if p.get("rule") == "clear":
        return "clear"
    return params.choice("action", p.get("action"), ACTIONS, "audit")


def threshold_words(result: dict) -> str:
    """ "threshold 0.9 (default of the dlib model: ...)", its rule in the App's words."""
    rule = rule_words(result.get("threshold_rule"))
    return f"threshold {result['threshold']:.4g}" + (f" ({rule})" if rule else "")


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
        actions = types.RadioGroup(orientation="horizontal")
        actions.add_choice("audit", label="Run the audit")
        actions.add_choice("clear", label="Clear the identity tags", description="and their saved views")
        inputs.enum("action", actions.values(), default="audit", view=actions, label="Action",
                    **form_check(ctx, "action", lambda v: action_of({"action": v})))
        if action_of(ctx.params) == "clear":
            return inputs.as_property("Identity audit")
        model = stored_model(ctx)
        default = core.MODEL_THRESHOLDS.get(model)
        rule = types.RadioGroup()
        rule.add_choice("default", label="The embedding model's default threshold",
                        description=(f"{default[0]:g} for {model}" if default else
                                     f"none for {model}: choose another" if model else
                                     "no embeddings yet: run compute face embeddings first"))
        rule.add_choice("threshold", label="A cosine threshold")
        rule.add_choice("fmr", label="The threshold at an FMR of the real impostor scores")
        inputs.enum("rule", rule.values(), default="default", view=rule, label="Threshold",
                    **form_check(ctx, "rule", lambda v: params.choice("rule", v, RULES, "default")))
        chosen = ctx.params.get("rule") or "default"
        if chosen == "threshold":
            inputs.float("threshold", required=True, default=default[0] if default else FALLBACK_THRESHOLD,
                         label="Cosine threshold", description="in [-1, 1]",
                         **form_check(ctx, "threshold", core.similarity_threshold))
        elif chosen == "fmr":
            inputs.float("fmr", default=1e-3, required=True, label="FMR", description="between 0 and 1",
                         **form_check(ctx, "fmr", core.target_fmr))
        inputs.int("max_pairs", default=core.DEFAULT_MAX_PAIRS, label="Impostor pairs per source",
                   description="every pair while at most this many; else a seeded uniform sample",
                   **form_check(ctx, "max_pairs", core.max_pairs))
        inputs.int("seed", default=0, min=0, label="Seed", **form_check(ctx, "seed", params.seed))
        inputs.bool("tag", default=True, label="Tag leaks, collisions and outliers (and save views)")
        inputs.bool("similarity_index", default=True, label="Register the similarity index",
                    description="face_embedding as the Brain similarity index face_similarity (sort by "
                                "similarity) and its 2-D map face_map for the Embeddings panel")
        execution_mode(ctx, inputs)
        if ctx.dataset is not None and chosen in ("default", "fmr"):
            door_check(inputs, lambda: _check(ctx), fallback=chosen if chosen == "fmr" else "rule")
        return inputs.as_property("Identity audit", ALIASES)

    def resolve_delegation(self, ctx):
        return wants_delegation(ctx)

    def execute(self, ctx):
        from fiftyone_plugin import identity

        p = ctx.params
        if action_of(p) == "clear":
            n = identity.clear_tags(ctx.dataset)
            if not ctx.delegated:
                ctx.ops.reload_dataset()
            return {"message": f"identity tags and views removed from {n} samples", "cleared": n}
        rule = params.choice("rule", p.get("rule"), RULES, "default")
        tag = params.to_bool("tag", p.get("tag"), True)
        with refused_in_form_words(lambda: self.resolve_input(ctx), ALIASES):
            result = identity.identity_audit(ctx.dataset, _options(p, rule), tag=tag,
                                             similarity_index=params.to_bool("similarity_index",
                                                                             p.get("similarity_index"), True))
        leaks = {s: v.get("share_above_threshold") for s, v in result["leakage"].items()}
        message = (f"{threshold_words(result)}; {len(result['sources'])} sources audited" +
                   ("; tagged " + ", ".join(f"{k} {v}" for k, v in result["tagged"].items()) if tag else ""))
        if not ctx.delegated:
            ctx.ops.reload_dataset()
            if tag:
                view = identity.VIEWS[identity.LEAK_TAG]
                ctx.trigger(f"{self.plugin_name}/{SELECT_SAVED_VIEW}", params={"name": view})
                message += f". {grid_now_shows(view)}"
        return {"message": message, "threshold": result["threshold"], "leakage": leaks,
                "tagged": result.get("tagged", {})}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs, view=types.View(label="Identity audit"))


def _options(p: dict, rule: str):
    from fiftyone_plugin import identity

    return identity.options(p.get("threshold") if rule == "threshold" else None,
                            p.get("fmr") if rule == "fmr" else None, p.get("max_pairs"), p.get("seed"))


def _check(ctx) -> None:
    """What the audit refuses before it reads a vector (no embeddings; a model without a default
    threshold; an FMR the real impostor pairs cannot reach), as ``faceaudit identity`` does."""
    from fiftyone_plugin import identity

    p = ctx.params
    identity.check_audit(ctx.dataset, _options(p, params.choice("rule", p.get("rule"), RULES, "default")))
