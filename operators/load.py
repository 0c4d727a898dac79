"""``load_face_dataset``: load a face dataset from its native layout (the App's door to
:func:`fiftyone_plugin.ingest.iter_load`, the same function ``faceaudit load`` calls)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import params

from .common import door_check, execution_mode, Form, form_check, resolve_path, run_job, shown_errors, wants_delegation

FORMATS = ("auto", "folders", "bupt", "nested", "flat", "rec")
#: the Preset box's "no preset" choice: an empty value showed as a blank box (issue 15.10)
NO_PRESET = "none"


def _preset(p: dict) -> str | None:
    value = p.get("preset")
    return None if value in (None, "", NO_PRESET) else value


class LoadFaceDataset(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="load_face_dataset",
            label="faceaudit: load face dataset",
            description="Load identity folders, BUPT, nested, flat folders or InsightFace .rec",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx):
        from faceaudit.presets import PRESETS

        from faceaudit.readers import check_root
        from fiftyone_plugin.schema import DEFAULT_DATASET

        inputs = Form()
        if ctx.dataset is None:  # the App with no dataset open: the load makes the first one
            inputs.str("dataset_name", default=DEFAULT_DATASET, required=True, label="Dataset name",
                       description="The dataset to load into (created if it does not exist)",
                       **form_check(ctx, "dataset_name", lambda v: params.name("dataset", v)))
        path = ctx.params.get("path")
        inputs.str("path", required=True, label="Path", description="Dataset folder, or a train.rec file",
                   **(form_check(ctx, "path", check_root) if not params.is_blank(path) else {}))
        preset_choices = types.Dropdown()
        preset_choices.add_choice(NO_PRESET, label="none: set the options below")
        for name, preset in PRESETS.items():
            preset_choices.add_choice(name, label=name, description=preset.description)
        inputs.enum("preset", [*preset_choices.values(), ""], default=NO_PRESET, label="Preset", view=preset_choices)
        preset = PRESETS.get(_preset(ctx.params) or "")
        inputs.str("source", required=preset is None, default=preset.source if preset else None,
                   label="Source name", description="e.g. bupt-balancedface")
        inputs.enum("domain", ["real", "synthetic"], required=preset is None,
                    default=preset.domain if preset else None, label="Domain")
        inputs.enum("format", list(FORMATS), default=preset.format if preset else "auto",
                    label="Layout")
        inputs.str("extract_to", label="Extract RecordIO images to",
                   description="Folder for the images of a .rec (rec layout only)")
        inputs.int("limit", label="Limit", description="Load at most this many images",
                   **form_check(ctx, "limit", lambda v: params.to_int("limit", v, minimum=1)))
        execution_mode(ctx, inputs)
        door_check(inputs, lambda: _check(ctx.params), fallback="path")
        return inputs.as_property("Load face dataset")

    def resolve_delegation(self, ctx):
        for name in ("path", "extract_to"):  # before the parameters are queued
            resolve_path(ctx, name)
        return wants_delegation(ctx)

    def execute(self, ctx):
        # what the load refuses up front is shown as the App shows a plain operator's error
        # (see operators.common.shown_errors)
        from fiftyone_plugin.ingest import iter_load

        p = ctx.params
        name = ctx.dataset.name if ctx.dataset is not None else p.get("dataset_name")
        return shown_errors(ctx, lambda: self._steps(ctx, iter_load(
            p["path"],
            source=p.get("source") or None,
            domain=p.get("domain") or None,
            format=p.get("format") or None,
            preset=_preset(p),
            dataset_name=name,
            extract_to=p.get("extract_to") or None,
            limit=p.get("limit"),  # 0 is refused there, not read as "no limit"
        ), opened=ctx.dataset is not None), "load failed", lambda: self.resolve_input(ctx))

    @staticmethod
    def _steps(ctx, job, opened: bool):
        report = yield from run_job(ctx, job)
        if not ctx.delegated:
            yield ctx.ops.notify(report.summary(), variant="success")
            yield ctx.ops.reload_dataset() if opened else ctx.ops.open_dataset(report.dataset)

    def __call__(self, sample_collection, path, delegate=False, **params):
        """Python SDK: ``foo.get_operator(uri)(dataset, path, source=..., domain=...)``."""
        return foo.execute_operator(
            self.uri,
            ctx={"dataset": sample_collection, "params": {"path": path, **params},
                 "request_delegation": delegate},
        )


def _check(p: dict) -> None:
    """Every argument, as ``faceaudit load`` checks it (path included) before anything runs."""
    from fiftyone_plugin.ingest import check_load

    if params.is_blank(p.get("path")):
        return  # a required field: the form says so
    check_load(p.get("path"), source=p.get("source") or None, domain=p.get("domain") or None,
               format=p.get("format") or None, preset=_preset(p), limit=p.get("limit"),
               extract_to=p.get("extract_to"))
