"""Loading face datasets into the one persistent FiftyOne dataset, fast and idempotently.

Why not ``Dataset.add_samples``: it builds one ``fo.Sample`` (a mongoengine document) per image
and validates each; on millions of images that is the bottleneck (environment.md: 3.2K samples/s
against 81K docs/s for raw ``insert_many``). Here the reader's records become plain documents in
FiftyOne's own sample format (the same keys ``add_samples`` writes: ``_id``, ``filepath``,
``tags``, ``_media_type``, ``_rand``, ``_dataset_id``, ``created_at``, ``last_modified_at``, plus
our declared fields) and are written with ``insert_many`` on the dataset's sample collection.
This reaches below FiftyOne's public API (``dataset._sample_collection``); the fields are declared
through the public API first, so FiftyOne sees a normal dataset afterwards.

Idempotence: before each chunk is written, the chunk's file paths already in the source are
looked up (indexed ``filepath``) and left out, so loading a source twice, or re-running a load that
was killed, adds exactly the missing samples. Each chunk is written whole or, if the process dies in
``insert_many``, partly: every written document is complete either way.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass


from faceaudit import params
from faceaudit.images import check_image_file
from faceaudit.presets import DOMAINS, get_preset
from faceaudit.progress import Progress, drive
from faceaudit.readers import FORMATS, FaceRecord, LayoutError, Scan, scan

from . import schema
from .bulk import fiftyone_rand, new_object_ids

CHUNK_SIZE = 10_000
CHECK_THREADS = 8  # image checks are a few small reads each: I/O bound, so threads help


class LoadError(ValueError):
    """Bad input to a load; the message names the path or value and the problem."""


@dataclass
class LoadReport:
    """What a load did, in numbers."""

    dataset: str
    source: str
    domain: str
    format: str
    root: str
    description: str
    found: int = 0  # image records the reader produced
    added: int = 0  # new samples written
    already_present: int = 0  # records whose file path was already in the dataset
    unreadable: int = 0  # added, but tagged 'unreadable'
    skipped_non_image: int = 0  # files that are not images, left out
    detected: str | None = None  # with --format auto: "detected '<format>' (<why>): <what>"

    def summary(self) -> str:
        text = (
            f"{self.source} ({self.domain}, {self.format}): {self.found} images found, "
            f"{self.added} added, {self.already_present} already present"
        )
        if self.unreadable:
            text += f", {self.unreadable} unreadable (tagged '{schema.UNREADABLE_TAG}')"
        if self.skipped_non_image:
            text += f", {self.skipped_non_image} non-image files skipped"
        text += f" -> dataset '{self.dataset}'"
        return text + (f"; --format auto {self.detected}" if self.detected else "")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_options(
    source: str | None, domain: str | None, format: str | None, preset: str | None
) -> tuple[str, str, str]:
    """Fill source name, domain and format from a preset; explicit options win. Validates them."""
    if not _blank(preset):
        p = get_preset(preset)
        source, domain, format = source or p.source, domain or p.domain, format or p.format
    if _blank(source):
        raise LoadError("source: a name is required: give --source NAME (or a --preset)")
    if _blank(domain):
        raise LoadError(f"domain: required, one of {', '.join(DOMAINS)}: give --domain real|synthetic (or a --preset)")
    return (params.name("source", source), params.choice("domain", domain, DOMAINS),
            params.choice("format", format, ("auto", *FORMATS), "auto"))


def _blank(value) -> bool:
    return value is None or str(value).strip() == ""


def iter_load(
    path: str,
    source: str | None = None,
    domain: str | None = None,
    format: str | None = None,
    dataset_name: str = schema.DEFAULT_DATASET,
    preset: str | None = None,
    extract_to: str | None = None,
    limit: int | None = None,
    check_images: bool = True,
) -> Generator[Progress, None, LoadReport]:
    """Load the face dataset at ``path`` as ``source``; yields progress, returns a report.

    Raises :class:`LoadError` (bad options), :class:`faceaudit.readers.LayoutError` or
    :class:`faceaudit.recordio.RecordIOError` (bad files) before anything is written when the
    problem is visible up front; a problem found later leaves every already written sample whole,
    and a rerun continues where the failed run stopped.
    """
    source, domain, format = resolve_options(source, domain, format, preset)
    limit = params.to_int("limit", limit, minimum=1)
    dataset_name = params.name("dataset", dataset_name)
    found = scan(path, format, extract_to)

    dataset = schema.open_dataset(dataset_name)
    _check_source_compatible(dataset, source, domain, found.root)

    report = LoadReport(dataset.name, source, domain, found.format, found.root, found.description,
                        detected=found.description if format == "auto" else None)

    def register_source() -> None:  # before the first write, so a killed load knows its root
        schema.record_source(dataset, source, root=found.root, domain=domain, format=found.format)

    yield Progress(0, len(found.units), found.description)
    with _ChunkWriter(dataset, source, domain, check_images, report, register_source) as writer:
        for done, unit in enumerate(found.units, 1):
            for record in found.iter_records(unit):
                writer.add(record)
                if limit is not None and report.found >= limit:
                    break
            report.skipped_non_image = found.stats.skipped_non_image
            yield Progress(done, len(found.units), f"{report.found} images, {report.added + len(writer.pending)} new")
            if limit is not None and report.found >= limit:
                break
        writer.flush()
    _finish(dataset, found, report)
    return report


def load_face_dataset(path: str, progress=None, **options) -> LoadReport:
    """Load a face dataset (see :func:`iter_load` for the options); ``progress`` gets events."""
    return drive(iter_load(path, **options), progress)


def add_records(
    dataset, records: Iterable[FaceRecord], source: str, domain: str, check_images: bool = True
) -> LoadReport:
    """Write already-listed records as samples of ``source`` (no scan, no progress): the bulk
    path that :func:`iter_load` uses, for callers that bring their own records."""
    schema.ensure_schema(dataset)
    report = LoadReport(dataset.name, source, domain, "records", "", "records given by the caller")
    with _ChunkWriter(dataset, source, domain, check_images, report, None) as writer:
        for record in records:
            writer.add(record)
        writer.flush()
    return report


def _check_source_compatible(dataset, source: str, domain: str, root: str) -> None:
    known = schema.sources_info(dataset).get(source)
    if known is None:
        return
    if known.get("domain") != domain:
        raise LoadError(
            f"source {source!r} is already in dataset {dataset.name!r} as {known.get('domain')}, "
            f"not {domain}"
        )
    if os.path.normpath(known.get("root", root)) != os.path.normpath(root):
        raise LoadError(
            f"source {source!r} was loaded from {known['root']}; load {root} under another source name"
        )


def _finish(dataset, found: Scan, report: LoadReport) -> None:
    if report.found == 0:
        raise LayoutError(f"{found.root}: no image files found ({found.description})")
    dataset.reload()
    count = dataset.match({schema.SOURCE: report.source}).count() if report.added else None
    if count is not None:
        schema.record_source(dataset, report.source, count=count)


class _ChunkWriter:
    """Buffers records and writes them in chunks of new, complete sample documents.

    Inserts run on a background thread, so that building the next chunk's documents (Python)
    overlaps the server's work on the previous one; at most one chunk is in flight.
    Existing file paths are looked up only when the source already has samples (a rerun, or a
    load that was stopped): a first load of a source pays nothing for idempotence.
    """

    def __init__(self, dataset, source, domain, check_images, report: LoadReport, before_first_write):
        self.collection = dataset._sample_collection
        self.dataset_id = dataset._doc.id
        self.source, self.domain = source, domain
        self.report = report
        self.pending: list[FaceRecord] = []
        self.before_first_write = before_first_write
        self.check_pool = ThreadPoolExecutor(CHECK_THREADS) if check_images else None
        self.insert_pool = ThreadPoolExecutor(1)
        self.in_flight: Future | None = None
        self.source_has_samples = self.collection.find_one({schema.SOURCE: source}, {"_id": 1}) is not None

    def add(self, record: FaceRecord) -> None:
        self.report.found += 1
        self.pending.append(record)
        if len(self.pending) >= CHUNK_SIZE:
            self.flush()

    def flush(self) -> None:
        records, self.pending = self.pending, []
        if not records:
            return
        new = self._drop_existing(records)
        self.report.already_present += len(records) - len(new)
        if not new:
            return
        docs = self._documents(new)
        self._wait()
        if self.before_first_write is not None:
            self.before_first_write()
            self.before_first_write = None
        self.in_flight = self.insert_pool.submit(self._insert, docs)

    def __enter__(self) -> _ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # also when the load fails or is stopped: the insert in flight completes

    def close(self) -> None:
        """Wait for the last insert (raising its error, if any) and stop the threads."""
        try:
            self._wait()
        finally:
            self.insert_pool.shutdown()
            if self.check_pool is not None:
                self.check_pool.shutdown()

    def _wait(self) -> None:
        if self.in_flight is not None:
            self.report.added += self.in_flight.result()
            self.in_flight = None

    def _drop_existing(self, records: list[FaceRecord]) -> list[FaceRecord]:
        if not self.source_has_samples:
            return records
        paths = [r.filepath for r in records]
        query = {schema.SOURCE: self.source, "filepath": {"$in": paths}}
        existing = {d["filepath"] for d in self.collection.find(query, {"_id": 0, "filepath": 1})}
        return [r for r in records if r.filepath not in existing]

    def _problems(self, records: list[FaceRecord]) -> Iterable[str | None]:
        if self.check_pool is None:
            return [None] * len(records)
        return self.check_pool.map(check_image_file, [r.filepath for r in records], chunksize=64)

    def _documents(self, records: list[FaceRecord]) -> list[dict]:
        now = schema.utc_now()
        template = {
            "_id": None,
            "filepath": None,
            "tags": None,
            "_media_type": "image",
            "_rand": None,
            "_dataset_id": self.dataset_id,
            "created_at": now,
            "last_modified_at": now,
            schema.SOURCE: self.source,
            schema.DOMAIN: self.domain,
            schema.IDENTITY: None,
            schema.GROUP: None,
        }
        docs = []
        ids, rands = new_object_ids(len(records)), fiftyone_rand(len(records))
        for r, _id, rand, problem in zip(records, ids, rands, self._problems(records)):
            doc = template.copy()
            doc["_id"], doc["filepath"], doc["_rand"] = _id, r.filepath, rand
            doc[schema.IDENTITY], doc[schema.GROUP] = r.identity, r.group
            if problem is None:
                doc["tags"] = []
            else:
                doc["tags"] = [schema.UNREADABLE_TAG]
                doc[schema.IMAGE_ISSUE] = problem
                self.report.unreadable += 1
            docs.append(doc)
        return docs

    def _insert(self, docs: list[dict]) -> int:
        self.collection.insert_many(docs, ordered=False)
        return len(docs)
