"""The faceaudit dataset schema: field names, the persistent dataset and its indexes."""

from __future__ import annotations

import datetime as dt
import os

import fiftyone as fo

DEFAULT_DATASET = "faces"

SOURCE = "source"  # the dataset a sample came from, e.g. "bupt-balancedface"
DOMAIN = "domain"  # "real" or "synthetic"
IDENTITY = "identity"  # the identity folder / label, or None
GROUP = "group"  # e.g. BUPT's race folder, or None
IMAGE_ISSUE = "image_issue"  # why the image cannot be decoded, or absent
UNREADABLE_TAG = "unreadable"  # tag on samples whose file is damaged; inference skips them

STRING_FIELDS = (SOURCE, DOMAIN, IDENTITY, GROUP, IMAGE_ISSUE)
INFO_KEY = "faceaudit"

# Fields that views filter on. (source, identity) serves identity-level grouping.
INDEXES = (SOURCE, DOMAIN, GROUP, [(SOURCE, 1), (IDENTITY, 1)])


def open_dataset(name: str = DEFAULT_DATASET, create: bool = True) -> fo.Dataset:
    """Load the persistent dataset ``name``, creating it (with the faceaudit schema) if asked."""
    if fo.dataset_exists(name):
        dataset = fo.load_dataset(name)
    elif create:
        dataset = fo.Dataset(name, persistent=True)
    else:
        raise ValueError(f"dataset {name!r} does not exist (known: {', '.join(fo.list_datasets()) or 'none'})")
    ensure_schema(dataset)
    return dataset


def ensure_schema(dataset: fo.Dataset) -> None:
    """Declare the faceaudit fields and indexes (a no-op when they already exist)."""
    schema = dataset.get_field_schema()
    for field in STRING_FIELDS:
        if field not in schema:
            dataset.add_sample_field(field, fo.StringField)
    for spec in INDEXES:
        dataset.create_index(spec)  # idempotent: an existing identical index is kept


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
    """Remember where ``source`` was loaded from (its root anchors relative file names)."""
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
