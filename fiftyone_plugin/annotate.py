"""Annotating samples with a MAC: select what is missing, run the engine, write labels in bulk.

Resumable by construction: a sample counts as labelled when it has ``mac_code``, and each
sample's 48 label fields are written in one ``$set``. A run killed at any point leaves samples
either fully labelled or untouched; the next run selects exactly the untouched ones. The MAC's
Monte-Carlo passes use fixed dropout masks, so the labels do not depend on the batching either.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from collections.abc import Generator
from dataclasses import asdict, dataclass, field

import fiftyone as fo

from faceaudit import params
from faceaudit.attributes import ATTRIBUTES
from faceaudit.progress import Progress

from . import labels, schema


class AnnotateError(ValueError):
    """Bad input to an annotation run (empty view, unknown source, ...)."""


MODELS = ("mac", "agegender")


@dataclass(frozen=True)
class AnnotateOptions:
    """Validated arguments of one annotation run (see :func:`annotate_options`)."""

    model: str = "mac"
    checkpoint: str | None = None
    source: str | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int | None = None
    mc_passes: int | None = None
    threshold: float | None = None


def annotate_options(model="mac", checkpoint=None, source=None, device="auto", batch_size=256,
                     workers=None, mc_passes=None, threshold=None) -> AnnotateOptions:
    """Every argument of :func:`iter_annotate`, validated with :mod:`faceaudit.params` (strings
    from the App's forms accepted); raises a ``ValueError`` naming the argument. Nothing is
    opened or written here, so every door refuses before any write."""
    model = params.choice("model", model, MODELS, "mac")
    checkpoint = None if checkpoint is None or str(checkpoint).strip() == "" else str(checkpoint).strip()
    if model == "mac" and checkpoint is None:
        raise AnnotateError("a MAC checkpoint is needed: give --checkpoint PATH (train one with faceaudit train-mac)")
    return AnnotateOptions(
        model, checkpoint, params.name("source", source, required=False), params.device(device),
        params.batch_size(batch_size), params.workers(workers), params.mc_passes(mc_passes),
        params.threshold(threshold),
    )


@dataclass
class AnnotateReport:
    dataset: str
    model: str
    device: str
    selected: int = 0  # samples in the view
    already_labelled: int = 0
    skipped_unreadable: int = 0  # tagged unreadable before this run
    labelled: int = 0
    failed: int = 0  # could not be decoded in this run: now tagged unreadable
    failures: list[str] = field(default_factory=list)  # a few "path: reason"

    def summary(self) -> str:
        text = (f"{self.labelled} samples labelled with {self.model} on {self.device}; "
                f"{self.already_labelled} already labelled")
        if self.skipped_unreadable:
            text += f", {self.skipped_unreadable} unreadable skipped"
        if self.failed:
            text += f", {self.failed} failed to decode (tagged '{schema.UNREADABLE_TAG}')"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def samples_to_label(view) -> tuple[list, list[str]]:
    """Ids and file paths of the samples of ``view`` that have no labels and are readable."""
    todo = view.exists(labels.CODE_FIELD, False).match_tags(schema.UNREADABLE_TAG, bool=False)
    ids, paths = todo.values(["_id", "filepath"])
    return ids, paths


def count_samples(view) -> int:
    """The number of samples ``view`` holds, counted by a query.

    FiftyOne's ``count()`` / ``len()`` of a whole dataset is MongoDB's *estimated* count, which
    reads 0 after an unclean mongod shutdown until the collection is validated: never decide
    what work to do from it. Counting the ``_id`` values runs the query."""
    return view.count("_id")


def select_view(dataset: fo.Dataset, view=None, source: str | None = None):
    view = dataset.view() if view is None else view
    if source is not None:
        schema.source_root(dataset, source)  # a clear error for an unknown source
        view = view.match(schema.source_is(source))
    return view


def iter_annotate(
    dataset_name: str = schema.DEFAULT_DATASET,
    checkpoint: str | None = None,
    model: str = "mac",
    source: str | None = None,
    view=None,
    device: str = "auto",
    batch_size: int = 256,
    workers: int | None = None,
    mc_passes: int | None = None,
    threshold: float | None = None,
) -> Generator[Progress, None, AnnotateReport]:
    """Label the unlabelled samples of ``view`` (or of ``source``, or the whole dataset).

    Every argument is validated (:func:`annotate_options`) before the dataset is opened."""
    o = annotate_options(model, checkpoint, source, device, batch_size, workers, mc_passes, threshold)
    checkpoint, batch_size = o.checkpoint, o.batch_size
    dataset = schema.open_dataset(params.name("dataset", dataset_name), create=False)
    view = select_view(dataset, view, o.source)
    selected = count_samples(view)
    if selected == 0:
        raise AnnotateError(f"nothing to annotate: the view of dataset {dataset.name!r} is empty")
    engine, model_name = _build_engine(o.model, checkpoint, o.device, batch_size, o.workers, o.mc_passes,
                                       o.threshold)
    labels.ensure_label_schema(dataset)

    ids, paths = samples_to_label(view)
    already = count_samples(view.exists(labels.CODE_FIELD))
    report = AnnotateReport(dataset.name, model_name, str(engine.device), selected, already,
                            selected - already - len(ids))
    total_batches = -(-len(ids) // batch_size)
    yield Progress(0, total_batches, f"{len(ids)} samples to label on {engine.device}")
    # Writes go to a background thread, so that the database works while the model does;
    # at most one batch is in flight, and each sample's labels are one atomic $set.
    with ThreadPoolExecutor(1) as writer:
        in_flight = None
        for done, result in enumerate(engine.run(paths), 1):
            if in_flight is not None:
                in_flight.result()
            if len(result.indices):
                batch_ids = [ids[i] for i in result.indices]
                in_flight = writer.submit(labels.write_labels, dataset, batch_ids, result.states, result.signed)
                report.labelled += len(batch_ids)
            if result.failures:
                _mark_unreadable(dataset, [(ids[i], reason) for i, reason in result.failures])
                report.failed += len(result.failures)
                report.failures += [f"{paths[i]}: {r}" for i, r in result.failures][: 5 - len(report.failures)]
            yield Progress(done, total_batches, f"{report.labelled} labelled, {report.failed} failed")
        if in_flight is not None:
            in_flight.result()
    _record_run(dataset, model_name, checkpoint, engine)
    return report


def _build_engine(model, checkpoint, device, batch_size, workers, mc_passes, threshold):
    from faceaudit.inference import Engine

    if model == "mac":  # arguments are validated by annotate_options
        from faceaudit.model import load_checkpoint

        net = load_checkpoint(checkpoint, attributes=ATTRIBUTES)
        name = f"mac:{checkpoint}"
    elif model == "agegender":
        from faceaudit.agegender import AgeGenderModel

        net = AgeGenderModel(threshold=0.6 if threshold is None else threshold)
        name = "agegender"
    else:
        raise AnnotateError(f"unknown model {model!r}: use mac or agegender")
    return Engine(net, device, batch_size, workers, mc_passes, threshold), name


def _mark_unreadable(dataset: fo.Dataset, failures: list[tuple[object, str]]) -> None:
    from pymongo import UpdateOne

    ops = [UpdateOne({"_id": _id}, {"$addToSet": {"tags": schema.UNREADABLE_TAG},
                                    "$set": {schema.IMAGE_ISSUE: reason}}) for _id, reason in failures]
    dataset._sample_collection.bulk_write(ops, ordered=False)


def _record_run(dataset: fo.Dataset, model_name: str, checkpoint, engine) -> None:
    cfg = engine.model.cfg
    schema.set_info(dataset, "annotation", {
        "model": model_name,
        "checkpoint": checkpoint,
        "mc_passes": engine.passes or cfg.mc_passes,
        "threshold": cfg.threshold if engine.threshold is None else engine.threshold,
    }, stamp="finished_at")
