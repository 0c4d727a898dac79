"""Face embeddings per sample: select what has none, run an embedder, write vectors in bulk.

Stored in the vector field ``face_embedding`` (:data:`FIELD`, read with
``dataset.values("face_embedding")``), L2-normalised, as float16 (:data:`STORE_DTYPE`; the BSON
sizes behind that choice are in docs/identity.md). The model, checkpoint, dimension,
preprocessing and threshold are in ``dataset.info["faceaudit"]["embedding"]``: the contract the
identity audit reads.

Resumable like :mod:`.annotate`: a sample counts as embedded when it has the field, each vector
is one ``$set``, and each batch is written as soon as it is done, so a run killed at any point
continues where it stopped. Sharded by the same fixed hash of the sample id
(:func:`.annotate.shard_match`), and vectors do not depend on the batching, so ``n`` shards give
the vectors of one run. Vectors made with other settings (model, checkpoint, detect, flip) than
the stored ones are refused, before anything is written, unless ``overwrite=True``, which drops
every stored vector first.
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import fiftyone as fo
import numpy as np

from faceaudit import params
from faceaudit.progress import Progress

from . import locks, schema
from .annotate import count_samples, iter_batches, record_failures, select_view, shard_match

FIELD = "face_embedding"
INFO_KEY = "embedding"
NO_FACE_TAG = "no_face"  # --detect found no face in the image: no vector, skipped by reruns
STORE_DTYPE = np.float16
#: the settings that make vectors comparable; a run with others is refused without overwrite
SETTINGS = ("model", "checkpoint", "detect", "flip")
EMBED_URI = "@faceaudit/face-audit/compute_face_embeddings"


class EmbedError(ValueError):
    """Bad input to an embedding run (empty view, settings that differ from the stored ones, ...)."""


@dataclass(frozen=True)
class EmbedOptions:
    """Validated arguments of one embedding run (see :func:`embed_options`)."""

    model: str = "dlib"
    checkpoint: str | None = None
    source: str | None = None
    detect: bool = False
    flip: bool = False
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    overwrite: bool = False

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in SETTINGS}


def embed_options(model="dlib", checkpoint=None, source=None, detect=False, flip=False, device="auto",
                  batch_size=64, workers=None, overwrite=False) -> EmbedOptions:
    """Every argument of :func:`iter_embed`, validated with :mod:`faceaudit.params` (strings from
    the App's forms accepted); raises a ``ValueError`` naming the argument. Only the ONNX file's
    header is read here; nothing is written."""
    model, checkpoint, detect, flip = params.embedding_model(model, checkpoint, detect, flip)
    return EmbedOptions(model, checkpoint, params.name("source", source, required=False), detect, flip,
                        params.device(device), params.batch_size(batch_size, 64), params.workers(workers),
                        bool(params.to_bool("overwrite", overwrite, False)))


@dataclass
class EmbedReport:
    dataset: str
    model: str
    device: str
    dim: int = 0
    selected: int = 0
    already_embedded: int = 0
    skipped: int = 0  # tagged unreadable or no_face before this run
    embedded: int = 0
    no_face: int = 0  # found no face in this run: now tagged no_face
    failed: int = 0  # could not be decoded in this run: now tagged unreadable
    failures: list[str] = field(default_factory=list)
    shard: str | None = None

    def summary(self) -> str:
        where = f" (shard {self.shard})" if self.shard else ""
        text = (f"{self.embedded} samples embedded{where} with {self.model} ({self.dim}-d) on {self.device}; "
                f"{self.already_embedded} already embedded")
        if self.skipped:
            text += f", {self.skipped} skipped (unreadable or no face)"
        if self.no_face:
            text += f", {self.no_face} without a face (tagged '{NO_FACE_TAG}')"
        if self.failed:
            text += f", {self.failed} failed to decode (tagged '{schema.UNREADABLE_TAG}')"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def todo_view(view, shard: tuple[int, int] | None = None):
    """The samples of ``view`` (of ``shard``) without a vector, readable and not known faceless."""
    todo = _readable_view(view.exists(FIELD, False))
    if shard is not None and shard[1] > 1:
        todo = todo.mongo([{"$match": shard_match(shard)}])
    return todo


def _readable_view(view):
    """The samples of ``view`` an embed run can embed: readable and not known faceless (what an
    overwriting run embeds again, since it drops the stored vectors first)."""
    return view.match_tags([schema.UNREADABLE_TAG, NO_FACE_TAG], bool=False)


def stored_settings(dataset: fo.Dataset) -> dict | None:
    info = schema.get_info(dataset, INFO_KEY)
    return {k: info.get(k) for k in SETTINGS} if info else None


def check_settings(dataset: fo.Dataset, o: EmbedOptions) -> None:
    """Refuse (one line) vectors of other settings than the stored ones, unless overwriting."""
    stored = stored_settings(dataset)
    if o.overwrite or stored is None or stored == o.settings():
        return
    if FIELD not in dataset.get_field_schema() or count_samples(dataset.exists(FIELD)) == 0:
        return
    differ = ", ".join(f"{k} {stored[k]!r} (now {getattr(o, k)!r})" for k in SETTINGS if stored[k] != getattr(o, k))
    raise EmbedError(f"dataset '{dataset.name}': its embeddings were made with other settings: {differ}; "
                     "vectors of two settings cannot be compared: run with the stored settings, or "
                     "--overwrite to embed every sample again")


def check_run(dataset: fo.Dataset, model="dlib", checkpoint=None, detect=False, flip=False, overwrite=False,
              shards=1) -> None:
    """What an embedding run with these settings is refused for before it reads an image (the
    App's form runs it while the user fills it in): the arguments, overwrite split into shards,
    vectors of other settings than the stored ones unless overwriting. Nothing is written."""
    shards = params.shards(shards)
    o = embed_options(model, checkpoint, detect=detect, flip=flip,
                      overwrite=params.overwrite(overwrite, shards))
    check_settings(dataset, o)


def clear_embeddings(dataset: fo.Dataset) -> None:
    """Drop every stored vector and ``no_face`` tag (before embedding again with new settings)."""
    coll = dataset._sample_collection
    coll.update_many({FIELD: {"$exists": True}}, {"$unset": {FIELD: ""}})
    coll.update_many({"tags": NO_FACE_TAG}, {"$pull": {"tags": NO_FACE_TAG}})


def ensure_field(dataset: fo.Dataset) -> None:
    if FIELD not in dataset.get_field_schema():
        dataset.add_sample_field(FIELD, fo.VectorField, description=(
            "L2-normalised face embedding (float16); model and threshold in dataset.info['faceaudit']['embedding']"))


def build_engine(o: EmbedOptions):
    """The :class:`faceaudit.embedders.EmbedEngine` of validated options (loads the weights:
    a checkpoint that cannot be used is refused here, before anything is written)."""
    from faceaudit.embedders import EmbedEngine, EmbedderError, build_embedder
    from faceaudit.inference import resolve_device

    device = str(resolve_device(o.device))
    try:
        embedder = build_embedder(o.model, o.checkpoint, o.detect, o.flip, device)
    except EmbedderError as e:
        raise EmbedError(str(e)) from None
    return EmbedEngine(embedder, device, o.batch_size, o.workers)


def iter_embed(
    dataset_name: str = schema.DEFAULT_DATASET,
    model: str = "dlib",
    checkpoint: str | None = None,
    source: str | None = None,
    view=None,
    detect: bool = False,
    flip: bool = False,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    shard: tuple[int, int] | str | None = None,
    overwrite: bool = False,
) -> Generator[Progress, None, EmbedReport]:
    """Embed the samples of ``view`` (or of ``source``, or the whole dataset) that have no vector.

    ``shard=(i, n)`` (or ``"I/N"``) embeds only shard ``i`` of ``n``. Every argument is validated
    and the model loaded before anything is written; progress is yielded per batch."""
    o = embed_options(model, checkpoint, source, detect, flip, device, batch_size, workers, overwrite)
    shard = params.shard(shard)
    dataset = schema.open_dataset(params.name("dataset", dataset_name), create=False)
    view = select_view(dataset, view, o.source)
    selected = count_samples(view)
    if selected == 0:
        raise EmbedError(f"nothing to embed: the view of dataset {dataset.name!r} is empty")
    # an identity audit reading the vectors is refused, and refuses this; so are runs of other settings
    with writing_vectors(dataset, o) as holding:
        check_settings(dataset, o)  # holding the vectors: no run of other settings records its own meanwhile
        engine = build_engine(o)
        report = yield from _embed(dataset, view, o, engine, selected, shard, holding)
    return report


def _embed(dataset, view, o: EmbedOptions, engine, selected: int, shard,
           holding=None) -> Generator[Progress, None, EmbedReport]:
    """:func:`iter_embed` once its arguments are checked, its model loaded and the vectors held."""
    embedder = engine.embedder
    if o.overwrite:
        clear_embeddings(dataset)
    ensure_field(dataset)
    record_settings(dataset, o, embedder)  # before the first vector: a killed run's vectors are attributed
    if holding is not None:
        holding.share()  # the vectors are dropped and the settings recorded: shards of these settings may join

    todo = todo_view(view, shard)
    to_embed = count_samples(todo)
    report = EmbedReport(dataset.name, embedder.name, str(engine.device), embedder.dim, selected,
                         count_samples(view.exists(FIELD)),
                         count_samples(view.exists(FIELD, False).match_tags([schema.UNREADABLE_TAG, NO_FACE_TAG])),
                         shard=f"{shard[0]}/{shard[1]}" if shard else None)
    total = -(-to_embed // o.batch_size)
    where = f" (shard {report.shard})" if shard else ""
    yield Progress(0, total, f"{to_embed} samples to embed{where} with {embedder.name} on {engine.device}")
    yield from iter_batches(todo, engine.run, lambda *batch: _handle_batch(dataset, *batch, report=report), total,
                            lambda: f"{report.embedded} embedded, {report.no_face} without a face, "
                                    f"{report.failed} failed")
    record_settings(dataset, o, embedder, finished=True)
    return report


def writing_vectors(dataset: fo.Dataset, o: EmbedOptions | None = None):
    """Held while a run writes ``dataset``'s vectors: any number of embed runs (shards) of the
    same settings at once, never beside an identity audit, which reads every vector
    (:func:`identity.one_at_a_time`): an audit of half-old, half-new vectors would judge vectors
    that exist in no run. A run of other settings is refused (it would mix vectors), and so is an
    ``overwrite`` beside any other run (it would drop the vectors they write)."""
    o = o or EmbedOptions()
    return locks.shared(locks.vectors_key(dataset.name), f"dataset {dataset.name!r}",
                        f"faceaudit embed (writing {FIELD})", kind=settings_text(o.settings()),
                        alone="--overwrite drops every stored vector first" if o.overwrite else None)


def settings_text(settings: dict) -> str:
    """``model 'dlib', checkpoint None, detect False, flip False``: the settings in a message."""
    return ", ".join(f"{k} {settings[k]!r}" for k in SETTINGS)


def record_settings(dataset: fo.Dataset, o: EmbedOptions, embedder, finished: bool = False) -> None:
    schema.set_info(dataset, INFO_KEY, {**embedder.info(), **o.settings(), "field": FIELD,
                                        "dtype": np.dtype(STORE_DTYPE).name},
                    stamp="finished_at" if finished else "started_at")


def _handle_batch(dataset, writer: ThreadPoolExecutor, ids, paths, batch, report: EmbedReport):
    in_flight = None
    if len(batch.indices):
        batch_ids = [ids[i] for i in batch.indices]
        in_flight = writer.submit(write_vectors, dataset, batch_ids, batch.vectors)
        report.embedded += len(batch_ids)
    if batch.no_face:
        dataset._sample_collection.update_many({"_id": {"$in": [ids[i] for i in batch.no_face]}},
                                               {"$addToSet": {"tags": NO_FACE_TAG}})
        report.no_face += len(batch.no_face)
    record_failures(dataset, report, ids, paths, batch.failures)
    return in_flight


def vector_bytes(vector: np.ndarray) -> bytes:
    """One vector as FiftyOne's ``VectorField`` stores it (``np.save`` + zlib), in :data:`STORE_DTYPE`."""
    from fiftyone.core.utils import serialize_numpy_array

    return serialize_numpy_array(np.asarray(vector, dtype=STORE_DTYPE))


def write_vectors(dataset: fo.Dataset, ids: list, vectors: np.ndarray) -> int:
    """``$set`` each sample's vector (one update per sample, one unordered bulk write)."""
    from pymongo import UpdateOne

    ops = [UpdateOne({"_id": _id}, {"$set": {FIELD: vector_bytes(v)}}) for _id, v in zip(ids, vectors)]
    if ops:
        dataset._sample_collection.bulk_write(ops, ordered=False)
    return len(ops)


def embeddings(view) -> tuple[list, np.ndarray]:
    """``(ids, vectors)`` of the samples of ``view`` that have one, vectors as float32 ``(n, d)``."""
    ids, vectors = view.exists(FIELD).values(["id", FIELD])
    if not ids:
        return [], np.zeros((0, 0), np.float32)
    return ids, np.stack(vectors).astype(np.float32)


# ----------------------------------------------------------------------------- delegated fan-out


def _checked_params(p: dict) -> dict:
    """The operator's parameters, validated and the model loaded here, before any shard is queued."""
    o = embed_options(p.get("model"), p.get("checkpoint"), None, p.get("detect"), p.get("flip"),
                      p.get("device"), p.get("batch_size"), p.get("workers"))
    if o.model != "dlib":
        build_engine(EmbedOptions(o.model, o.checkpoint, device="cpu", flip=o.flip))
    return {**p, "model": o.model, "checkpoint": o.checkpoint, "detect": o.detect, "flip": o.flip}


def embed_job(overwrite: bool = False):
    """The sharded embed job; with ``overwrite`` every readable sample is left to do (the queued
    operation drops the stored vectors first), not only those without a vector."""
    from .fanout import Job

    return Job(EMBED_URI, _readable_view if overwrite else todo_view, _checked_params, verb="embed")


def fan_out_embed(dataset_name: str, count: int, operator_params: dict, view=None, source: str | None = None,
                  stale_after: float | None = None):
    """Queue one delegated ``compute_face_embeddings`` operation per shard that has samples left
    (with ``overwrite``: one operation, which embeds every sample again)."""
    from .fanout import STALE_AFTER, fan_out

    dataset = schema.open_dataset(dataset_name, create=False)
    overwrite = params.overwrite(operator_params.get("overwrite"), params.shards(count))
    o = embed_options(operator_params.get("model"), operator_params.get("checkpoint"), source,
                      operator_params.get("detect"), operator_params.get("flip"), operator_params.get("device"),
                      operator_params.get("batch_size"), operator_params.get("workers"), overwrite)
    check_settings(dataset, o)
    return fan_out(dataset_name, count, {**operator_params, "overwrite": overwrite}, view=view, source=source,
                   stale_after=stale_after or STALE_AFTER, job=embed_job(overwrite))
