"""The faceaudit dataset schema: field names, the persistent dataset and its indexes.

Two rules for every query that involves a user's name (a source, an identity):

* A string that starts with ``$`` is a *field path* inside an aggregation expression
  (``F("source") == "$source"`` compares the field with itself). New names are refused by
  :func:`faceaudit.params.name`; stored ones (datasets written before) are compared through
  :func:`source_is` / :func:`literal`, which wrap them in ``$literal``.
* Concurrent loads of one source are kept apart by a unique index on ``(source, filepath)``
  (:data:`UNIQUE_FILE_INDEX`); FiftyOne's own ``filepath`` index cannot be unique (one file may
  belong to several datasets' samples, or to several sources).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import warnings

import fiftyone as fo
import fiftyone.core.odm as foo_db
from fiftyone import ViewField as F
from pymongo.errors import DuplicateKeyError, OperationFailure

from faceaudit import params

DEFAULT_DATASET = "faces"

SOURCE = "source"  # the dataset a sample came from, e.g. "bupt-balancedface"
DOMAIN = "domain"  # "real" or "synthetic"
IDENTITY = "identity"  # the identity folder / label, or None
GROUP = "group"  # e.g. BUPT's race folder, or None
IMAGE_ISSUE = "image_issue"  # why the image cannot be decoded, or absent
UNREADABLE_TAG = "unreadable"  # tag on samples whose file is damaged; inference skips them
FILE_HASH = "file_hash"  # the file's content hash at load (faceaudit.images.file_digest), or absent

STRING_FIELDS = (SOURCE, DOMAIN, IDENTITY, GROUP, IMAGE_ISSUE, FILE_HASH)
#: per-sample scores of the identity audit (fiftyone_plugin.identity writes them): named here so
#: that the labels' sidebar grouping can put them in the faceaudit group
IDENTITY_SCORE_FIELDS = ("identity_similarity", "nearest_real_similarity")
INFO_KEY = "faceaudit"

# Fields that views filter on. (source, identity) serves identity-level grouping.
INDEXES = (SOURCE, DOMAIN, GROUP, [(SOURCE, 1), (IDENTITY, 1)])
#: One sample per file and source. Partial: samples FiftyOne added without a source are free.
UNIQUE_FILE_INDEX = [(SOURCE, 1), ("filepath", 1)]
UNIQUE_FILE_FILTER = {SOURCE: {"$type": "string"}}


def open_dataset(name: str = DEFAULT_DATASET, create: bool = True) -> fo.Dataset:
    """Load the persistent dataset ``name``, creating it (with the faceaudit schema) if asked.

    Two processes may create the same dataset at once: the one that loses the race (FiftyOne's
    unique dataset name) loads the winner's. The dataset is reloaded from MongoDB: FiftyOne keeps
    one object per dataset in a process, so a long-lived one (a notebook calling the CLI's
    ``main``) would otherwise read the info and fields it saw first, not what other processes
    wrote since (a source record damaged meanwhile went unseen)."""
    if not fo.dataset_exists(name):
        if not create:
            known = faceaudit_datasets()
            raise ValueError(f"dataset {name!r} does not exist (faceaudit datasets: {', '.join(known) or 'none'})")
        params.name("dataset", name)
        try:
            fo.Dataset(name, persistent=True)
        except (DuplicateKeyError, ValueError):
            if not fo.dataset_exists(name):
                raise
    dataset = fo.load_dataset(name, reload=True)
    ensure_schema(dataset)
    return dataset


def faceaudit_datasets() -> list[str]:
    """Names of the datasets faceaudit has loaded into (their info has a ``faceaudit`` key):
    on a shared database, other users' other datasets are none of our business."""
    docs = foo_db.get_db_conn().datasets.find({f"info.{INFO_KEY}": {"$exists": True}}, {"name": 1})
    return sorted(d["name"] for d in docs)


def ensure_schema(dataset: fo.Dataset) -> None:
    """Declare the faceaudit fields and indexes (a no-op when they already exist)."""
    schema = dataset.get_field_schema()
    for field in STRING_FIELDS:
        if field not in schema:
            dataset.add_sample_field(field, fo.StringField)
    for spec in INDEXES:
        dataset.create_index(spec)  # idempotent: an existing identical index is kept
    _ensure_unique_files(dataset)


def _ensure_unique_files(dataset: fo.Dataset) -> None:
    try:
        dataset.create_index(UNIQUE_FILE_INDEX, unique=True, partialFilterExpression=UNIQUE_FILE_FILTER)
    except (DuplicateKeyError, OperationFailure) as e:
        if getattr(e, "code", None) != 11000:
            raise
        warnings.warn(  # written by concurrent loads before this index existed
            f"dataset {dataset.name!r} holds the same file twice in one source; concurrent loads "
            "into it are not kept apart until the duplicates are deleted", stacklevel=2)


def literal(value):
    """``value`` as a constant inside an aggregation expression (never a field path)."""
    return {"$literal": value}


def source_is(source: str):
    """A view expression: the sample's source equals ``source``, compared as text."""
    return F(SOURCE) == literal(source)


def utc_now() -> dt.datetime:
    """Now, as FiftyOne stores sample timestamps (naive UTC)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class DatasetGone(RuntimeError):
    """The dataset was deleted while a command was writing to it."""

    def __init__(self, name: str):
        super().__init__(f"dataset {name!r} was deleted while this command ran; nothing more is written")


def ensure_exists(dataset: fo.Dataset) -> None:
    """Raise :class:`DatasetGone` when ``dataset`` was deleted (by another process) meanwhile:
    its samples' updates would match nothing and the command would go on writing nowhere."""
    if not foo_db.get_db_conn().datasets.count_documents({"_id": dataset._doc.id}, limit=1):
        raise DatasetGone(dataset.name)


class BrokenSource(ValueError):
    """A source's record in the dataset's info lacks what every command needs (root, domain)."""


#: what every source record holds (written by the load before its first sample)
SOURCE_RECORD_KEYS = ("root", "domain")

_ESCAPED = re.compile(r"%(25|2E|24)")


def info_key(name: str) -> str:
    """``name`` as one MongoDB field name: ``%``, ``.`` and ``$`` percent-encoded, so a source
    called ``lfw.v2`` is one key (not ``lfw`` -> ``v2``) in an update path."""
    return name.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


def info_name(key: str) -> str:
    """The name :func:`info_key` encoded as ``key``."""
    return _ESCAPED.sub(lambda m: bytes.fromhex(m.group(1)).decode(), key)


def get_info(dataset: fo.Dataset, key: str, default=None):
    """``dataset.info["faceaudit"][key]``: what faceaudit remembers about the dataset."""
    return (dataset.info.get(INFO_KEY) or {}).get(key, default)


def _stamped(value, stamp: str | None):
    if stamp is None:
        return value
    return {**value, stamp: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def update_info(dataset: fo.Dataset, fields: dict[tuple[str, ...], object]) -> None:
    """Set each ``{(key, subkey, ...): value}`` under ``info.faceaudit`` in ONE atomic update of
    the dataset's document, then reload it: writers that set other keys at the same time (two
    loads recording their sources, an annotate storing its settings) cannot lose each other's
    values, as a read-modify-write of the whole ``dataset.info`` did. Names are encoded with
    :func:`info_key`; readers decode them (:func:`sources_info`)."""
    sets = {".".join(("info", INFO_KEY, *map(info_key, path))): value for path, value in fields.items()}
    datasets = foo_db.get_db_conn().datasets
    query = {"_id": dataset._doc.id}
    for _ in range(len(max(fields, key=len, default=())) + 2):
        try:
            result = datasets.update_one(query, {"$set": sets})
            break
        except OperationFailure as e:  # a null / non-object on the path (older datasets)
            if getattr(e, "code", None) != 28:
                raise
            _make_objects(datasets, query, fields)
    else:
        raise RuntimeError(f"dataset {dataset.name!r}: cannot store faceaudit's info")
    if result.matched_count == 0:
        raise DatasetGone(dataset.name)
    dataset.reload()  # the new info, and the fields other processes added meanwhile


def _make_objects(datasets, query: dict, fields) -> None:
    """Turn a missing or non-object step of each path's parents into ``{}`` (atomically, only
    where it is not an object already, so a concurrent writer's object is kept)."""
    for path in {p[:-1] for p in fields}:
        parts = ["info", INFO_KEY, *map(info_key, path)]
        for depth in range(1, len(parts) + 1):
            here = ".".join(parts[:depth])
            datasets.update_one({**query, here: {"$not": {"$type": "object"}}}, {"$set": {here: {}}})


def set_info(dataset: fo.Dataset, key: str, value, stamp: str | None = None) -> None:
    """Store ``value`` under ``dataset.info["faceaudit"][key]`` (with the time under ``stamp``),
    atomically and without touching the other keys (:func:`update_info`)."""
    update_info(dataset, {(key,): _stamped(value, stamp)})


def set_info_entry(dataset: fo.Dataset, key: str, entry: str, value, stamp: str | None = None) -> None:
    """Store ``value`` under ``dataset.info["faceaudit"][key][entry]`` only: concurrent writers
    of other entries of ``key`` keep theirs. Read it back with :func:`info_entries`."""
    update_info(dataset, {(key, entry): _stamped(value, stamp)})


def info_entries(dataset: fo.Dataset, key: str) -> dict:
    """``dataset.info["faceaudit"][key]`` with the entry names :func:`set_info_entry` encoded
    decoded (two spellings of one name, from datasets written before, are merged)."""
    entries: dict = {}
    stored = get_info(dataset, key, {}) or {}
    for stored_key in sorted(stored, key=lambda k: k != info_name(k)):  # raw spellings first
        value = stored[stored_key]
        name = info_name(stored_key)
        if isinstance(value, dict) and isinstance(entries.get(name), dict):
            value = {**entries[name], **value}
        entries[name] = value
    return entries


def sources_info(dataset: fo.Dataset) -> dict[str, dict]:
    """``{source: {"root", "domain", "format", ...}}`` for every source loaded into ``dataset``."""
    return info_entries(dataset, "sources")


def record_source(dataset: fo.Dataset, source: str, **info) -> None:
    """Remember where ``source`` was loaded from (its root anchors relative file names): each
    field is set on its own, atomically, so a concurrent load of another source (or a count
    update of this one) cannot drop it."""
    update_info(dataset, {("sources", source, field): value for field, value in info.items()})


def broken_source(record: dict | None) -> list[str]:
    """What a source record lacks of :data:`SOURCE_RECORD_KEYS` (empty: it is whole)."""
    return [k for k in SOURCE_RECORD_KEYS if not (record or {}).get(k)]


def checked_sources(dataset: fo.Dataset, only: str | None = None) -> dict[str, dict]:
    """:func:`sources_info`, refusing in one line (:class:`BrokenSource`) a record that lacks its
    root or domain (left by concurrent writers of older faceaudit versions), with the command that
    repairs it."""
    info = sources_info(dataset)
    for source, record in info.items():
        missing = broken_source(record)
        if missing and (only is None or only == source):
            domain = (record or {}).get("domain") or "real|synthetic"
            raise BrokenSource(
                f"source {source!r} of dataset {dataset.name!r} has a damaged record (no "
                f"{' or '.join(missing)}); repair it by loading its folder again: faceaudit load "
                f"--dataset {dataset.name} --source {source} --domain {domain} FOLDER")
    return info


def source_root(dataset: fo.Dataset, source: str) -> str:
    """The folder that ``source``'s relative file names are relative to."""
    info = sources_info(dataset).get(source)
    if info is not None:
        info = checked_sources(dataset, only=source)[source]
    if info is None:
        raise ValueError(
            f"source {source!r} is not in dataset {dataset.name!r} "
            f"(loaded sources: {', '.join(sorted(sources_info(dataset))) or 'none'})"
        )
    return os.path.normpath(info["root"])


def source_folders(dataset: fo.Dataset | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """``{real path: "source 'x''s folder"}`` for every source of ``dataset`` (and ``extra``):
    the folders no output may be written into (:func:`faceaudit.params.output_files`)."""
    folders = dict(extra or {})
    for source, record in (sources_info(dataset) if dataset is not None else {}).items():
        if (record or {}).get("root"):
            folders[os.path.realpath(record["root"])] = f"the folder of source {source!r}"
    return folders


def check_outputs(dataset: fo.Dataset | None, paths: dict, prefix: str = "--", overwrite: bool = False,
                  taken: dict[str, str] | None = None, protected: dict[str, str] | None = None) -> dict:
    """:func:`faceaudit.params.output_files` with the dataset's source folders protected, and no
    output that is the file of one of its samples (one loaded from outside its source's root).
    Every door that writes a file calls this before its first write."""
    checked = params.output_files(paths, taken, prefix, source_folders(dataset, protected), overwrite)
    if dataset is not None:
        wanted = {spelling: param for param, p in checked.items() if p for spelling in (p, os.path.realpath(p))}
        hit = dataset._sample_collection.find_one({"filepath": {"$in": sorted(wanted)}}, {"filepath": 1})
        if hit is not None:
            param = wanted[hit["filepath"]]
            raise params.ParamError(param, f"{hit['filepath']} is an image of dataset {dataset.name!r}; "
                                    "choose another output file")
    return checked
