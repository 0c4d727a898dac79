"""``annotate_attributes``: label the target view's faces with a MAC (the App's door to
:func:`fiftyone_plugin.annotate.iter_annotate`, the same function ``faceaudit annotate`` calls)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from .common import execution_mode, run_job, wants_delegation

IMMEDIATE_LIMIT = 2000  # larger views are always delegated: the App's request times out at 600 s


class AnnotateAttributes(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="annotate_attributes",
            label="faceaudit: annotate 47 face attributes",
            description="Run a MAC over the faces that have no attribute labels yet",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("checkpoint", required=True, label="MAC checkpoint",
                   description="Path (or URL) of a checkpoint written by faceaudit train-mac")
        inputs.enum("device", ["auto", "cuda", "cpu"], default="auto", label="Device")
        inputs.int("batch_size", default=256, min=1, label="Batch size")
        inputs.int("mc_passes", label="Stochastic passes", description="Default: the checkpoint's")
        inputs.int("shards", default=1, min=1, label="Split into N jobs",
                   description="Queue N delegated operations, one shard each, for any number of "
                   "`fiftyone delegated launch` workers")
        count = ctx.target_view().count() if ctx.dataset is not None else 0
        if count > IMMEDIATE_LIMIT:
            inputs.view("note", types.Notice(
                label=f"{count} samples: this runs as a delegated operation (fiftyone delegated launch)"))
        execution_mode(ctx, inputs, default_delegated=True)
        return types.Property(inputs, view=types.View(label="Annotate face attributes"))

    def resolve_delegation(self, ctx):
        if ctx.dataset is not None and ctx.target_view().count() > IMMEDIATE_LIMIT:
            return True
        return wants_delegation(ctx, default=True)

    def execute(self, ctx):
        from faceaudit import params
        from fiftyone_plugin.annotate import iter_annotate

        p = ctx.params
        if params.shards(p.get("shards")) > 1 and not p.get("shard"):
            yield from _fan_out(ctx, params.shards(p.get("shards")))
            return
        job = iter_annotate(
            ctx.dataset.name,
            checkpoint=p["checkpoint"],
            view=ctx.target_view(),
            device=p.get("device") or "auto",
            batch_size=p.get("batch_size") or 256,
            mc_passes=p.get("mc_passes") or None,
            shard=params.shard(p.get("shard")),
        )
        report = yield from run_job(ctx, job)
        if not ctx.delegated:
            yield ctx.ops.notify(report.summary(), variant="success")
            yield ctx.ops.reload_dataset()


def _fan_out(ctx, shards: int):
    """Queue one delegated operation per shard (see :mod:`fiftyone_plugin.fanout`)."""
    from fiftyone_plugin.fanout import fan_out

    keys = ("checkpoint", "device", "batch_size", "mc_passes")
    report = fan_out(ctx.dataset.name, shards, {k: ctx.params.get(k) for k in keys}, view=ctx.target_view())
    if not ctx.delegated:
        yield ctx.ops.notify(report.summary().splitlines()[-1], variant="success")
