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
looked up and left out, so loading a source twice, or re-running a load that was killed, adds
exactly the missing samples. Each chunk is written whole or, if the process dies in
``insert_many``, partly: every written document is complete either way.

Concurrent loads: a unique index on ``(source, filepath)`` (see :mod:`.schema`) makes the database
the judge. Two loads of the same folder at the same time both look up, both insert (unordered);
the documents the other load wrote first fail with duplicate-key errors, which are counted as
already present. Each file ends up exactly once, and each load reports what it wrote itself.

Bad entries never stop a load: the reader leaves out what it cannot read (counted and named by
reason in the report), and image files that cannot be used (damaged, empty, too many pixels) are
loaded tagged ``unreadable`` with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, dataclass, field
from functools import partial

from pymongo.errors import BulkWriteError

from faceaudit import params
from faceaudit.images import DEFAULT_MAX_PIXELS, check_image_file, file_digest
from faceaudit.presets import DOMAINS, get_preset
from faceaudit.progress import Progress, drive
from faceaudit.readers import FORMATS, FaceRecord, LayoutError, Scan, Tally, check_root, scan
from faceaudit.recordio import find_recordio_pair

from . import schema
from .bulk import fiftyone_rand, new_object_ids

CHUNK_SIZE = 10_000
CHECK_THREADS = 8  # image checks are a few small reads each: I/O bound, so threads help
INSERTS_IN_FLIGHT = 2  # chunks inserted at once: mongod works on both while Python builds the next


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
    skipped: int = 0  # entries that could not be read (loops, locked folders, bad names), left out
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: ``[{"reason", "count", "examples"}]``: the entries left out, and the added ones tagged
    skipped_entries: list[dict] = field(default_factory=list)
    unreadable_entries: list[dict] = field(default_factory=list)
    detected: str | None = None  # with format auto: "detected '<format>' (<why>): <what>"
    #: loaded, but worth a look: look-alike folder names, a folder also loaded as another
    #: source, identical files in two identities or sources
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"{self.source} ({self.domain}, {self.format}): {self.found} images found, "
            f"{self.added} added, {self.already_present} already present"
        )
        if self.unreadable:
            text += f", {self.unreadable} unreadable (tagged '{schema.UNREADABLE_TAG}')"
        if self.skipped_non_image:
            text += f", {self.skipped_non_image} non-image files skipped"
        if self.skipped:
            text += f", {self.skipped} entries skipped (could not be read)"
        text += f" -> dataset '{self.dataset}'"
        # "format detected: 'folders' (why): what" in the CLI and the App alike (it said
        # "--format auto detected ...", the CLI's option in the App's toast: issue 15.10)
        return text + (f"; format {self.detected.replace('detected ', 'detected: ', 1)}" if self.detected else "")

    def details(self) -> list[str]:
        """One line per reason an entry was skipped or tagged, with a few example paths."""
        lines = []
        for what, groups in (("skipped", self.skipped_entries), ("tagged unreadable", self.unreadable_entries)):
            for g in groups:
                lines.append(f"  {what}: {g['count']} x {g['reason']}: {', '.join(g['examples'])}"
                             + (", ..." if g["count"] > len(g["examples"]) else ""))
        return lines + [f"  warning: {w}" for w in self.warnings]

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_options(
    source: str | None, domain: str | None, format: str | None, preset: str | None
) -> tuple[str, str, str]:
    """Fill source name, domain and format from a preset; explicit options win. Validates them."""
    if not params.is_blank(preset):
        p = get_preset(preset)
        source, domain, format = source or p.source, domain or p.domain, format or p.format
    if params.is_blank(source):
        raise LoadError("source: a name is required: give --source NAME (or a --preset)")
    if params.is_blank(domain):
        raise LoadError(f"domain: required, one of {', '.join(DOMAINS)}: give --domain real|synthetic (or a --preset)")
    return (params.name("source", source), params.choice("domain", domain, DOMAINS),
            params.choice("format", format, ("auto", *FORMATS), "auto"))


def check_load(path: str | None, source: str | None = None, domain: str | None = None,
               format: str | None = None, preset: str | None = None, limit=None,
               extract_to: str | None = None) -> dict:
    """Every argument of a load, checked as :func:`iter_load` checks it, before any work: names,
    domain, format, preset, limit, and the path (it exists, can be listed, is no system folder:
    :func:`faceaudit.readers.check_root`). Returns them resolved (absolute paths). The App's
    operator runs this before it runs or queues a load."""
    if params.is_blank(path):
        raise params.ParamError("path", "a dataset folder or .rec file is required")
    source, domain, format = resolve_options(source, domain, format, preset)
    root = check_root(str(path))
    if params.is_blank(extract_to) and format in ("auto", "rec"):
        pair = find_recordio_pair(root)
        if pair is not None:  # as scan_rec refuses it, but before the load starts or is queued
            raise params.ParamError("extract_to", f"{pair[0]}: RecordIO images must be extracted to files "
                                                  "for FiftyOne; name a folder for them")
    return {"path": root, "source": source, "domain": domain, "format": format,
            "limit": params.to_int("limit", limit, minimum=1),
            "extract_to": None if params.is_blank(extract_to) else os.path.abspath(str(extract_to))}


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Generator[Progress, None, LoadReport]:
    """Load the face dataset at ``path`` as ``source``; yields progress, returns a report.

    Raises :class:`LoadError` (bad options), :class:`faceaudit.readers.LayoutError` or
    :class:`faceaudit.recordio.RecordIOError` (bad files) before anything is written when the
    problem is visible up front; a problem found later leaves every already written sample whole,
    and a rerun continues where the failed run stopped. Images over ``max_pixels`` pixels are
    tagged ``unreadable``.
    """
    source, domain, format = resolve_options(source, domain, format, preset)
    limit = params.to_int("limit", limit, minimum=1)
    dataset_name = params.name("dataset", dataset_name)
    max_pixels = params.max_pixels(max_pixels)
    found = scan(path, format, extract_to)

    dataset = schema.open_dataset(dataset_name)
    repair = _check_source_compatible(dataset, source, domain, found.root)

    report = LoadReport(dataset.name, source, domain, found.format, found.root, found.description,
                        max_pixels=max_pixels,
                        detected=found.description if format == "auto" else None)
    report.warnings += found.stats.warnings + _overlapping_sources(dataset, source, found.root)

    def register_source() -> None:  # before the first write, so a killed load knows its root
        schema.record_source(dataset, source, root=found.root, domain=domain, format=found.format)

    if repair:  # a damaged record (no root or domain): this load's options re-record it
        register_source()
    yield Progress(0, len(found.units), found.description)
    with _ChunkWriter(dataset, source, domain, check_images, report, register_source, max_pixels) as writer:
        for done, unit in enumerate(found.units, 1):
            for record in found.iter_records(unit):
                writer.add(record)
                if limit is not None and report.found >= limit:
                    break
            _take_stats(report, found)
            yield Progress(done, len(found.units), f"{report.found} images, {report.added + len(writer.pending)} new")
            if limit is not None and report.found >= limit:
                break
        writer.flush()
    _take_stats(report, found)
    _finish(dataset, found, report)
    report.warnings += writer.duplicates.warnings() + _duplicates_across_sources(dataset, source)
    return report


def _take_stats(report: LoadReport, found: Scan) -> None:
    report.skipped_non_image = found.stats.skipped_non_image
    report.skipped = found.stats.problems.total
    report.skipped_entries = found.stats.problems.to_list()


def load_face_dataset(path: str, progress=None, **options) -> LoadReport:
    """Load a face dataset (see :func:`iter_load` for the options); ``progress`` gets events."""
    return drive(iter_load(path, **options), progress)


def add_records(
    dataset, records: Iterable[FaceRecord], source: str, domain: str, check_images: bool = True
) -> LoadReport:
    """Write already-listed records as samples of ``source`` (no scan, no progress): the bulk
    path that :func:`iter_load` uses, for callers that bring their own records."""
    source = params.name("source", source)
    schema.ensure_schema(dataset)
    report = LoadReport(dataset.name, source, domain, "records", "", "records given by the caller")
    with _ChunkWriter(dataset, source, domain, check_images, report, None) as writer:
        for record in records:
            writer.add(record)
        writer.flush()
    return report


def _check_source_compatible(dataset, source: str, domain: str, root: str) -> bool:
    """Refuse a load that contradicts ``source``'s record; True when the record is damaged (it
    lacks its root or domain) and this load is to repair it."""
    known = schema.sources_info(dataset).get(source)
    if known is None:
        return False
    if known.get("domain") and known["domain"] != domain:
        raise LoadError(
            f"source {source!r} is already in dataset {dataset.name!r} as {known.get('domain')}, "
            f"not {domain}"
        )
    if os.path.normpath(known.get("root", root)) != os.path.normpath(root):
        raise LoadError(
            f"source {source!r} was loaded from {known['root']}; load {root} under another source name"
        )
    return bool(schema.broken_source(known))


def _overlapping_sources(dataset, source: str, root: str) -> list[str]:
    """Warnings for other sources loaded from ``root``, or from a folder inside it or holding it:
    pooled counts would count those images twice."""
    here = os.path.realpath(root)
    warnings = []
    for other, info in schema.sources_info(dataset).items():
        if other == source or not info.get("root"):
            continue
        there = os.path.realpath(info["root"])
        inside = here.startswith(there.rstrip(os.sep) + os.sep)
        holds = there.startswith(here.rstrip(os.sep) + os.sep)
        if here == there or inside or holds:
            how = "is also loaded" if here == there else ("lies inside a folder loaded" if inside else
                                                          "holds a folder loaded")
            warnings.append(f"{root} {how} as source {other!r} ({info.get('domain')}): the same images "
                            f"would count twice in pooled numbers")
    return warnings


def _duplicates_across_sources(dataset, source: str, examples: int = 3) -> list[str]:
    """Warnings for files of ``source`` whose content (``file_hash``) is also another source's."""
    if len(schema.sources_info(dataset)) < 2:
        return []
    collection = dataset._sample_collection
    pipeline = [
        {"$match": {schema.FILE_HASH: {"$type": "string"}}},
        {"$group": {"_id": f"${schema.FILE_HASH}", "sources": {"$addToSet": f"${schema.SOURCE}"}}},
        {"$match": {"sources.1": {"$exists": True}, "sources": source}},
        {"$unwind": "$sources"},
        {"$match": {"sources": {"$ne": source}}},
        {"$group": {"_id": "$sources", "hashes": {"$push": "$_id"}}},
    ]
    warnings = []
    for row in collection.aggregate(pipeline, allowDiskUse=True):
        docs = collection.find({schema.FILE_HASH: {"$in": row["hashes"][:examples]}, schema.SOURCE: row["_id"]},
                               {"_id": 0, "filepath": 1}).limit(examples)
        shown = ", ".join(d["filepath"] for d in docs)
        more = ", ..." if len(row["hashes"]) > examples else ""
        warnings.append(f"{len(row['hashes'])} distinct images of source {source!r} are identical to files of source "
                        f"{row['_id']!r} (e.g. {shown}{more})")
    return warnings


class _Duplicates:
    """Files of one load with the same content (``file_hash``) in different identities."""

    EXAMPLES = 3

    def __init__(self) -> None:
        self.first: dict[str, tuple[str | None, str]] = {}
        self.pairs: list[tuple[str, str]] = []
        self.count = 0

    def add(self, digest: str | None, record: FaceRecord) -> None:
        if digest is None:
            return
        seen = self.first.setdefault(digest, (record.identity, record.filepath))
        if seen[1] != record.filepath and seen[0] != record.identity:
            self.count += 1
            if len(self.pairs) < self.EXAMPLES:
                self.pairs.append((seen[1], record.filepath))

    def warnings(self) -> list[str]:
        if not self.count:
            return []
        shown = "; ".join(f"{a} = {b}" for a, b in self.pairs)
        return [f"{self.count} files are identical to a file of another identity ({shown}"
                f"{'; ...' if self.count > len(self.pairs) else ''})"]


def _finish(dataset, found: Scan, report: LoadReport) -> None:
    if report.found == 0:
        raise LayoutError(f"{found.root}: no image files found ({found.description})")
    if report.added or report.already_present:
        # every file of this load is in the database now (written by this load or by one
        # running beside it), so this count is complete whichever load finishes last
        count = dataset._sample_collection.count_documents({schema.SOURCE: report.source})
        schema.record_source(dataset, report.source, count=count)


class _ChunkWriter:
    """Buffers records and writes them in chunks of new, complete sample documents.

    Inserts run on background threads, so that building the next chunk's documents (Python)
    overlaps the server's work on the previous ones; at most :data:`INSERTS_IN_FLIGHT` chunks are
    in flight (two inserts keep two server threads busy, where one waits on the journal).
    Existing file paths are looked up only when the source already has samples (a rerun, or a
    load that was stopped): a first load of a source pays nothing for idempotence.
    """

    def __init__(self, dataset, source, domain, check_images, report: LoadReport, before_first_write,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.check = partial(_check_and_hash, max_pixels=max_pixels)
        self.unreadable = Tally()
        self.duplicates = _Duplicates()
        self.collection = dataset._sample_collection
        self.dataset_id = dataset._doc.id
        self.source, self.domain = source, domain
        self.report = report
        self.pending: list[FaceRecord] = []
        self.before_first_write = before_first_write
        self.check_pool = ThreadPoolExecutor(CHECK_THREADS) if check_images else None
        self.insert_pool = ThreadPoolExecutor(INSERTS_IN_FLIGHT)
        self.in_flight: list[Future] = []
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
        if self.before_first_write is not None:
            self._wait()
            self.before_first_write()
            self.before_first_write = None
        while len(self.in_flight) >= INSERTS_IN_FLIGHT:
            self._wait_oldest()
        self.in_flight.append(self.insert_pool.submit(_insert_new, self.collection, docs))

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
        """Wait for every chunk in flight (raising the first error, after all have ended)."""
        futures_wait(self.in_flight)
        while self.in_flight:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        """Count what the oldest chunk in flight wrote: documents another load wrote first are
        already present, and only the written ones count as added or unreadable."""
        docs, duplicates = self.in_flight.pop(0).result()
        self.report.added += len(docs) - len(duplicates)
        self.report.already_present += len(duplicates)
        for k, doc in enumerate(docs):
            if schema.IMAGE_ISSUE in doc and k not in duplicates:
                self.unreadable.add(doc[schema.IMAGE_ISSUE].split(":", 1)[0], doc["filepath"])
        self.report.unreadable = self.unreadable.total
        self.report.unreadable_entries = self.unreadable.to_list()

    def _drop_existing(self, records: list[FaceRecord]) -> list[FaceRecord]:
        if not self.source_has_samples:
            return records
        paths = [r.filepath for r in records]
        query = {schema.SOURCE: self.source, "filepath": {"$in": paths}}
        existing = {d["filepath"] for d in self.collection.find(query, {"_id": 0, "filepath": 1})}
        return [r for r in records if r.filepath not in existing]

    def _problems(self, records: list[FaceRecord]) -> Iterable[tuple[str | None, str | None]]:
        """``(problem, content hash)`` per record; without checks, neither."""
        if self.check_pool is None:
            return [(None, None)] * len(records)
        return self.check_pool.map(self.check, [r.filepath for r in records], chunksize=64)

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
        for r, _id, rand, (problem, digest) in zip(records, ids, rands, self._problems(records)):
            doc = template.copy()
            doc["_id"], doc["filepath"], doc["_rand"] = _id, r.filepath, rand
            doc[schema.IDENTITY], doc[schema.GROUP] = r.identity, r.group
            if digest is not None:
                doc[schema.FILE_HASH] = digest
                self.duplicates.add(digest, r)
            if problem is None:
                doc["tags"] = []
            else:
                doc["tags"] = [schema.UNREADABLE_TAG]
                doc[schema.IMAGE_ISSUE] = problem
            docs.append(doc)
        return docs


def _check_and_hash(path: str, max_pixels: int | None) -> tuple[str | None, str | None]:
    """What is wrong with the image file (see :func:`faceaudit.images.check_image_file`), and its
    content hash (:func:`faceaudit.images.file_digest`)."""
    return check_image_file(path, max_pixels), file_digest(path)


DUPLICATE_KEY = 11000


def _insert_new(collection, docs: list[dict]) -> tuple[list[dict], set[int]]:
    """Insert ``docs`` (unordered: one duplicate does not stop the rest); returns them and the
    positions of those refused as duplicates (another load wrote the same file first)."""
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as e:
        errors = e.details.get("writeErrors", [])
        if e.details.get("writeConcernErrors") or any(err.get("code") != DUPLICATE_KEY for err in errors):
            raise
        return docs, {err["index"] for err in errors}
    return docs, set()
