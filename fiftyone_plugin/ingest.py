"""Loading face datasets into the one persistent FiftyOne dataset, fast and idempotently.

Why not ``Dataset.add_samples``: it builds one ``fo.Sample`` (a mongoengine document) per image
and validates each; on millions of images that is the bottleneck (environment.md: 3.2K samples/s
against 81K docs/s for raw ``insert_many``). Here the reader's records become plain documents in
FiftyOne's own sample format (the same keys ``add_samples`` writes: ``_id``, ``filepath``,
``tags``, ``_media_type``, ``_rand``, ``_dataset_id``, ``created_at``, ``last_modified_at``, plus
our declared fields) and are written with ``insert_many`` on the dataset's sample collection.
This reaches below FiftyOne's public API (``dataset._sample_collection``); the fields are declared
through the public API first, so FiftyOne sees a normal dataset afterwards.

Idempotence: before each chunk is written, the file paths already in the dataset are looked up
(indexed ``filepath``) and left out, so loading a source twice, or re-running a load that was
killed, adds exactly the missing samples. Each chunk is written whole or, if the process dies in
``insert_many``, partly: every written document is complete either way.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from bson import ObjectId
from fiftyone.core.odm.sample import _generate_rand  # FiftyOne's own _rand distribution
from pymongo.errors import BulkWriteError

from faceaudit.images import check_image_file
from faceaudit.presets import DOMAINS, get_preset
from faceaudit.progress import Progress, drive
from faceaudit.readers import FaceRecord, LayoutError, Scan, scan

from . import schema

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

    def summary(self) -> str:
        text = (
            f"{self.source} ({self.domain}, {self.format}): {self.found} images found, "
            f"{self.added} added, {self.already_present} already present"
        )
        if self.unreadable:
            text += f", {self.unreadable} unreadable (tagged '{schema.UNREADABLE_TAG}')"
        if self.skipped_non_image:
            text += f", {self.skipped_non_image} non-image files skipped"
        return text + f" -> dataset '{self.dataset}'"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_options(
    source: str | None, domain: str | None, format: str | None, preset: str | None
) -> tuple[str, str, str]:
    """Fill source name, domain and format from a preset; explicit options win. Validates them."""
    if preset:
        p = get_preset(preset)
        source, domain, format = source or p.source, domain or p.domain, format or p.format
    format = format or "auto"
    if not source or not source.strip() or source != source.strip():
        raise LoadError(f"source name {source!r} is empty or has surrounding spaces: give --source NAME")
    if domain not in DOMAINS:
        raise LoadError(f"domain {domain!r} is not one of {', '.join(DOMAINS)}: give --domain real|synthetic")
    return source, domain, format


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
    if limit is not None and limit <= 0:
        raise LoadError(f"--limit must be positive, got {limit}")
    found = scan(path, format, extract_to)

    dataset = schema.open_dataset(dataset_name)
    _check_source_compatible(dataset, source, domain, found.root)

    report = LoadReport(dataset.name, source, domain, found.format, found.root, found.description)

    def register_source() -> None:  # before the first write, so a killed load knows its root
        schema.record_source(dataset, source, root=found.root, domain=domain, format=found.format)

    writer = _ChunkWriter(dataset, source, domain, check_images, report, register_source)
    yield Progress(0, len(found.units), found.description)
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
    writer.close()
    _finish(dataset, found, report)
    return report


def load_face_dataset(path: str, progress=None, **options) -> LoadReport:
    """Load a face dataset (see :func:`iter_load` for the options); ``progress`` gets events."""
    return drive(iter_load(path, **options), progress)


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
    """Buffers records and writes them in chunks of new, complete sample documents."""

    def __init__(self, dataset, source, domain, check_images, report: LoadReport, before_first_write):
        self.collection = dataset._sample_collection
        self.dataset_id = dataset._doc.id
        self.source, self.domain = source, domain
        self.check_images = check_images
        self.report = report
        self.pending: list[FaceRecord] = []
        self.before_first_write = before_first_write
        self.pool = ThreadPoolExecutor(CHECK_THREADS) if check_images else None

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
        if new:
            self._insert(self._documents(new))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _drop_existing(self, records: list[FaceRecord]) -> list[FaceRecord]:
        paths = [r.filepath for r in records]
        existing = {
            d["filepath"]
            for d in self.collection.find({"filepath": {"$in": paths}}, {"_id": 0, "filepath": 1})
        }
        if not existing:
            return records
        seen = set()  # also drops repeats inside the chunk
        return [r for r in records if not (r.filepath in existing or r.filepath in seen or seen.add(r.filepath))]

    def _problems(self, records: list[FaceRecord]) -> Iterable[str | None]:
        if self.pool is None:
            return [None] * len(records)
        return self.pool.map(check_image_file, [r.filepath for r in records], chunksize=64)

    def _documents(self, records: list[FaceRecord]) -> list[dict]:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        docs = []
        for r, problem in zip(records, self._problems(records)):
            doc = {
                "_id": ObjectId(),
                "filepath": r.filepath,
                "tags": [],
                "_media_type": "image",
                "_rand": _generate_rand(),
                "_dataset_id": self.dataset_id,
                "created_at": now,
                "last_modified_at": now,
                schema.SOURCE: self.source,
                schema.DOMAIN: self.domain,
                schema.IDENTITY: r.identity,
                schema.GROUP: r.group,
            }
            if problem is not None:
                doc["tags"] = [schema.UNREADABLE_TAG]
                doc[schema.IMAGE_ISSUE] = problem
                self.report.unreadable += 1
            docs.append(doc)
        return docs

    def _insert(self, docs: list[dict]) -> None:
        if self.before_first_write is not None:
            self.before_first_write()
            self.before_first_write = None
        try:
            self.collection.insert_many(docs, ordered=False)
            self.report.added += len(docs)
        except BulkWriteError as e:  # another writer got there first: keep what was written
            errors = e.details.get("writeErrors", [])
            if any(err.get("code") != 11000 for err in errors):
                raise
            self.report.added += e.details.get("nInserted", 0)
            self.report.already_present += len(errors)
