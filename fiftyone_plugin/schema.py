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
INFO_KEY = "faceaudit"

# Fields that views filter on. (source, identity) serves identity-level grouping.
INDEXES = (SOURCE, DOMAIN, GROUP, [(SOURCE, 1), (IDENTITY, 1)])
#: One sample per file and source. Partial: samples FiftyOne added without a source are free.
UNIQUE_FILE_INDEX = [(SOURCE, 1), ("filepath", 1)]
UNIQUE_FILE_FILTER = {SOURCE: {"$type": "string"}}


def open_dataset(name: str = DEFAULT_DATASET, create: bool = True) -> fo.Dataset:
    """Load the persistent dataset ``name``, creating it (with the faceaudit schema) if asked.

    Two processes may create the same dataset at once: the one that loses the race (FiftyOne's
    unique dataset name) loads the winner's."""
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
    dataset = fo.load_dataset(name)
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


def get_info(dataset: fo.Dataset, key: str, default=None):
    """``dataset.info["faceaudit"][key]``: what faceaudit remembers about the dataset."""
    return dataset.info.get(INFO_KEY, {}).get(key, default)


def set_info(dataset: fo.Dataset, key: str, value: dict, stamp: str | None = None) -> None:
    """Store ``value`` under ``dataset.info["faceaudit"][key]`` (with the time under ``stamp``)."""
    if stamp is not None:
        value = {**value, stamp: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    dataset.info[INFO_KEY] = {**dataset.info.get(INFO_KEY, {}), key: value}
    dataset.save()


def sources_info(dataset: fo.Dataset) -> dict[str, dict]:
    """``{source: {"root", "domain", "format", ...}}`` for every source loaded into ``dataset``."""
    return dict(get_info(dataset, "sources", {}))


def record_source(dataset: fo.Dataset, source: str, **info) -> None:
    """Remember where ``source`` was loaded from (its root anchors relative file names). Reads
    the newest info first: another load may have recorded its source since we opened the dataset."""
    dataset.reload()
    sources = sources_info(dataset)
    sources[source] = {**sources.get(source, {}), **info}
    set_info(dataset, "sources", sources)


def source_root(dataset: fo.Dataset, source: str) -> str:
    """The folder that ``source``'s relative file names are relative to."""
    info = sources_info(dataset).get(source)
    if info is None:
        raise ValueError(
            f"source {source!r} is not in dataset {dataset.name!r} "
            f"(loaded sources: {', '.join(sorted(sources_info(dataset))) or 'none'})"
        )
    return os.path.normpath(info["root"])
