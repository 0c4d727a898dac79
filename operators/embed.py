"""``compute_face_embeddings``: face embeddings for the target view (the App's door to
:func:`fiftyone_plugin.embed.iter_embed`, the function ``faceaudit embed`` calls, with the same
choices and checks: dlib, an IResNet backbone.pth or an ONNX model; run now, delegated, or split
into N delegated shards)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import params

from .common import delegation_by_size, door_check, Form, form_check, resolve_path, run_job, shown_errors, size_notice


def _chosen(p: dict) -> dict:
    """The run's arguments from the form, which shows only the chosen model's options (a value
    left from another model's fields is not the user's choice)."""
    dlib = (p.get("model") or "dlib") == "dlib"
    return {"model": p.get("model") or "dlib", "checkpoint": None if dlib else p.get("checkpoint"),
            "detect": p.get("detect") if dlib else False, "flip": False if dlib else p.get("flip"),
            "device": p.get("device"), "batch_size": p.get("batch_size"),
            "overwrite": params.to_bool("overwrite", p.get("overwrite"), False)}


def _check(ctx) -> None:
    """The run as ``faceaudit embed`` checks it before it embeds (stored vectors of other
    settings, unless overwriting: named on the Overwrite box)."""
    from fiftyone_plugin.embed import check_run

    chosen = _chosen(ctx.params)
    if chosen["model"] != "dlib" and params.is_blank(chosen["checkpoint"]):
        return  # a required field: the form says so
    check_run(ctx.dataset, chosen["model"], chosen["checkpoint"], chosen["detect"], chosen["flip"],
              chosen["overwrite"], ctx.params.get("shards"))


def _model_check(ctx):
    """The model's arguments checked together (a checkpoint that is missing or no face model)."""
    p = ctx.params
    return lambda _: params.embedding_model(p.get("model"), p.get("checkpoint"), p.get("detect"), p.get("flip"))


#: up to this many faces the form defaults to Run now: dlib and IResNet-50 embed ~6.5 faces/s on
#: the 2-core VM (bench/embed.py; 2.9 with flip), so 500 take about 75 s (170 s with flip), inside
#: the App's 600 s; the demo's 201 faces defaulted to Delegate, whose Schedule seems to do nothing
#: to a new user with no worker running
EMBED_RUN_NOW_UP_TO = 500


class ComputeFaceEmbeddings(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="compute_face_embeddings",
            label="faceaudit: compute face embeddings",
            description="Embed the faces that have no face_embedding yet (dlib, an IResNet or an ONNX model)",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=True,
        )

    def resolve_input(self, ctx):
        inputs = Form()
        inputs.view_target(ctx)
        models = types.RadioGroup(orientation="horizontal")
        models.add_choice("dlib", label="dlib", description="offline, 128-d, weights from face_recognition_models")
        models.add_choice("iresnet", label="IResNet",
                          description="an InsightFace backbone.pth (ArcFace, ElasticFace...) or an AdaFace .ckpt")
        models.add_choice("onnx", label="ONNX", description="an ONNX face-recognition model (e.g. w600k_r50.onnx)")
        inputs.enum("model", list(params.EMBED_MODELS), default="dlib", label="Model", view=models,
                    **form_check(ctx, "model", params.embed_model))
        model = ctx.params.get("model") or "dlib"
        if model == "dlib":
            inputs.bool("detect", default=False, label="Detect faces first",
                        description="For photos that are not aligned crops; images without a face are tagged no_face")
        else:
            inputs.str("checkpoint", required=True, label="Model file",
                       description="backbone.pth (iresnet) or .onnx (onnx)", **form_check(ctx, "checkpoint",
                                                                                    _model_check(ctx)))
            inputs.bool("flip", default=False, label="Add the flipped image's embedding")
        inputs.enum("device", ["auto", "cpu", "cuda"], default="auto", label="Device",
                    **form_check(ctx, "device", params.device))
        inputs.int("batch_size", default=64, min=1, label="Batch size",
                   **form_check(ctx, "batch_size", params.batch_size))
        inputs.int("shards", default=1, min=1, label="Split into N jobs",
                   description="Queue N delegated operations, one shard each",
                   **form_check(ctx, "shards", params.shards))
        inputs.bool("overwrite", default=False, label="Overwrite",
                    description="Drop every stored vector and embed every sample again (needed to change "
                                "the model, its file, detect or flip: vectors of two settings cannot be compared)",
                    **form_check(ctx, "overwrite", lambda v: params.to_bool("overwrite", v)))
        size_notice(ctx, inputs, EMBED_RUN_NOW_UP_TO)
        if ctx.dataset is not None:
            door_check(inputs, lambda: _check(ctx), fallback="overwrite")
        return inputs.as_property("Compute face embeddings")

    def resolve_delegation(self, ctx):
        resolve_path(ctx, "checkpoint")  # before the parameters are queued: a worker runs elsewhere
        return delegation_by_size(ctx, EMBED_RUN_NOW_UP_TO)

    def execute(self, ctx):
        # what embed refuses before embedding (vectors of other settings than the stored ones,
        # a checkpoint that does not load) is shown as the App shows a plain operator's error
        from fiftyone_plugin.embed import iter_embed

        p = ctx.params
        shards = params.shards(p.get("shards"))
        chosen = {**_chosen(p), "overwrite": params.overwrite(p.get("overwrite"), shards)}
        form = lambda: self.resolve_input(ctx)  # noqa: E731 - built only to word a refusal
        if shards > 1 and not p.get("shard"):
            return shown_errors(ctx, lambda: _fan_out(ctx, shards, chosen), "embed failed", form)
        return shown_errors(ctx, lambda: _steps(ctx, iter_embed(
            ctx.dataset.name, view=ctx.target_view(), shard=params.shard(p.get("shard")), **chosen)),
            "embed failed", form)


def _fan_out(ctx, shards: int, chosen: dict):
    """Queue one delegated embed per shard that has samples left."""
    from fiftyone_plugin.embed import fan_out_embed

    report = fan_out_embed(ctx.dataset.name, shards, chosen, view=ctx.target_view())
    if not ctx.delegated:
        yield ctx.ops.notify(report.summary().splitlines()[-1], variant="success")


def _steps(ctx, job):
    """Run the started embed job, then say what it did and reload the dataset."""
    report = yield from run_job(ctx, job)
    if not ctx.delegated:
        yield ctx.ops.notify(report.summary(), variant="success")
        yield ctx.ops.reload_dataset()
