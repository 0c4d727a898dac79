"""``export_training_set``: export the App's current view (sidebar filters and view stages
included) as identity folders or an InsightFace train.rec (the App's door to
:func:`fiftyone_plugin.export.iter_export`, as ``faceaudit export``)."""

from __future__ import annotations

import fiftyone.operators as foo
import fiftyone.operators.types as types

from faceaudit import export as core
from faceaudit import params

from .common import execution_mode, Form, form_check, resolve_path, run_job, shown_errors, wants_delegation


class ExportTrainingSet(foo.Operator):
    @property
    def config(self):
        return foo.OperatorConfig(
            name="export_training_set",
            label="faceaudit: export training set",
            icon="/assets/icon.svg",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Export training set", icon="/assets/icon.svg", prompt=True),
        )

    def resolve_input(self, ctx):
        inputs = Form()
        n = ctx.view.count() if ctx.view is not None else 0
        inputs.str("out", required=True, label="Folder",
                   description=f"An empty or new folder on the App server's machine; the current view "
                               f"({n} samples, sidebar filters included) goes in",
                   **form_check(ctx, "out", lambda v: core.check_folder(v, ctx.params.get("overwrite"))))
        inputs.enum("format", list(core.FORMATS), default="folders", label="Format",
                    description="folders: <folder>/<identity>/<file>; rec: InsightFace train.rec/.idx")
        tags = sorted(ctx.dataset.distinct("tags")) if ctx.dataset is not None else []
        choices = types.AutocompleteView()
        for tag in tags:
            choices.add_choice(tag, label=tag)
        inputs.list("exclude_tags", types.String(), default=[], label="Leave out samples tagged",
                    description="'unreadable' samples are always left out", view=choices,
                    **form_check(ctx, "exclude_tags", lambda v: _check_tags(ctx, v)))
        inputs.int("min_images", default=1, min=1, label="Identities with at least K images",
                   **form_check(ctx, "min_images", lambda v: params.min_images(v)))
        inputs.enum("link", list(core.LINKS), default="copy", label="Files (folders format)")
        inputs.enum("no_identity", list(core.NO_IDENTITY), default="refuse", label="Samples without identity")
        inputs.bool("overwrite", default=False, label="Empty a non-empty folder first")
        execution_mode(ctx, inputs)
        return inputs.as_property("Export training set")

    def resolve_delegation(self, ctx):
        resolve_path(ctx, "out")  # before the parameters are queued: a worker runs elsewhere
        return wants_delegation(ctx)

    def execute(self, ctx):
        # what export refuses before writing (a folder that holds the view's images or another
        # export, samples without identity) is shown as the App shows a plain operator's error
        from fiftyone_plugin.export import iter_export

        p = ctx.params
        return shown_errors(ctx, lambda: self._steps(ctx, iter_export(
            ctx.view, p.get("out"), format=p.get("format"), exclude_tags=p.get("exclude_tags") or (),
            min_images=p.get("min_images"), link=p.get("link"), overwrite=p.get("overwrite"),
            no_identity=p.get("no_identity"))), "export failed", lambda: self.resolve_input(ctx))

    def _steps(self, ctx, job):
        result = yield from run_job(ctx, job)
        message = result.summary()
        if not ctx.delegated:
            yield ctx.ops.notify(message, variant="success")
            yield ctx.ops.show_output(types.Property(self._outputs(), view=types.View(label="Export training set")).to_json(),
                                      {**result.to_dict(), "message": message})

    @staticmethod
    def _outputs() -> types.Object:
        outputs = types.Object()
        # show_output's dialog has no title of its own (the other operators' results have one)
        outputs.view("title", types.Header(label="Export training set", divider=True))
        outputs.str("message", label="Result")
        outputs.str("out", label="Folder")
        outputs.int("images", label="Images")
        outputs.int("identities", label="Identities")
        return outputs


def _check_tags(ctx, tags) -> None:
    """Every tag to leave out is a tag of the dataset, as ``faceaudit export --exclude-tags`` checks."""
    from fiftyone_plugin.export import check_tags

    if ctx.dataset is not None:
        check_tags(ctx.dataset, core.check_options(exclude_tags=tags or ()).exclude_tags)
