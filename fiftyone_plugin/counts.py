"""Counting the 47 attributes' states per source for any view, in one pass, cached.

Only the compact ``mac_code`` (and the source) is read. The view's own pipeline (so sidebar
filters count) is followed by one ``$project`` to ``{s: <source index>, c: <code>}`` and fetched
as raw reply bytes (:mod:`.rawscan`): every projected document has the same 67-byte BSON layout,
so a whole batch becomes one numpy array without decoding documents in Python, and one ``bincount``
counts every source, attribute and state. Measured against ``values()`` and per-attribute
``count_values`` in ``bench/compare.py``. This reaches below FiftyOne's public API
(``view._pipeline()``, ``dataset._sample_collection``).

Counts are cached per (dataset, view, labels version); the version is the dataset's newest
``last_modified_at`` (indexed by FiftyOne: one index lookup) and its document count, so any label
write (which stamps ``last_modified_at``) or deletion invalidates the cache.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fiftyone import ViewField as F

from faceaudit.attributes import ATTRIBUTES

from . import labels, rawscan, schema

# The projected document {s: int32, c: 47-character string}, byte by byte.
_HEAD = np.frombuffer(b"C\x00\x00\x00\x10s\x00", np.uint8)  # size 67, int32 element "s"
_HEAD_SIZE = len(_HEAD)
_S_OFFSET = _HEAD_SIZE
_C_OFFSET = _S_OFFSET + 4 + 3 + 4  # after the int32, 0x02 "c\0", the string length
_DOC_SIZE = _C_OFFSET + len(ATTRIBUTES) + 1 + 1
assert _DOC_SIZE == 67
_UNLABELLED = "x" * len(ATTRIBUTES)
# The covered projection {mac_code: <47 characters>}, byte by byte.
_CODE_HEAD = np.frombuffer(b"C\x00\x00\x00\x02" + labels.CODE_FIELD.encode() + b"\x00\x30\x00\x00\x00", np.uint8)
_CODE_HEAD_SIZE = len(_CODE_HEAD)
_CODE_DOC_SIZE = _CODE_HEAD_SIZE + len(ATTRIBUTES) + 2
assert _CODE_DOC_SIZE == 67
_BAD_CODES = f"some samples have a mac_code that is not {len(ATTRIBUTES)} characters of p, n, u"


@dataclass
class StateCounts:
    """Per-source state counts of a view."""

    sources: list[str]
    domains: list[str]
    samples: np.ndarray  # (S,) samples of each source in the view
    counts: np.ndarray  # (S, A, 3) positive / negative / undefined


def count_codes(codes: np.ndarray) -> np.ndarray:
    """``(n, 47)`` code bytes -> ``(47, 3)`` state counts (one bincount)."""
    counts = np.stack([(codes == ord(c)).sum(axis=0) for c in "pnu"], axis=1).astype(np.int64)
    if counts.sum() != codes.size:
        raise ValueError(_BAD_CODES)
    return counts


def scan_view(view, sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One pass over ``view``: each sample's source (as an index into ``sources``, -1 for
    another) and its code bytes (``x`` * 47 when unlabelled). Returns ``(source_idx, codes)``.

    The projection makes every document the same 67 bytes (``int32 size``, an int32 field ``s``,
    the string field ``c`` of 47 characters), so each reply is read as one numpy array
    (:mod:`.rawscan`).
    """
    pipeline = list(view._pipeline()) + [{"$project": {
        "_id": 0,
        "s": {"$indexOfArray": [schema.literal(sources), "$" + schema.SOURCE]},
        "c": {"$ifNull": ["$" + labels.CODE_FIELD, _UNLABELLED]},
    }}]
    coll = view._dataset._sample_collection
    command = {"aggregate": coll.name, "pipeline": pipeline, "allowDiskUse": True}
    docs = _fixed_docs(coll, command, _DOC_SIZE, _HEAD)
    source_idx = docs[:, _S_OFFSET:_S_OFFSET + 4].copy().view("<i4").ravel()
    return source_idx, docs[:, _C_OFFSET:_C_OFFSET + len(ATTRIBUTES)]


def _covered_codes(dataset, source: str) -> np.ndarray:
    """The code bytes ``(n, 47)`` of one source's labelled samples, read from the
    ``(source, mac_code)`` index alone (a covered query: no document is fetched)."""
    coll = dataset._sample_collection
    command = {"find": coll.name, "filter": {schema.SOURCE: source, labels.CODE_FIELD: {"$type": "string"}},
               "projection": {"_id": 0, labels.CODE_FIELD: 1}, "hint": dict(labels.COUNTS_INDEX_SPEC)}
    docs = _fixed_docs(coll, command, _CODE_DOC_SIZE, _CODE_HEAD)
    return docs[:, _CODE_HEAD_SIZE:_CODE_HEAD_SIZE + len(ATTRIBUTES)]


def _fixed_docs(coll, command: dict, doc_size: int, head: np.ndarray) -> np.ndarray:
    """The command's result documents as ``(n, doc_size)`` rows, each checked to start with
    ``head`` (the document size and the first field's type and name)."""
    try:
        docs = rawscan.fixed_size_docs(coll.database, command, doc_size)
    except rawscan.RawScanError:
        raise ValueError(_BAD_CODES) from None
    if len(docs) and not (docs[:, :len(head)] == head).all():
        raise ValueError(_BAD_CODES)
    return docs


def _count_whole_dataset(dataset) -> StateCounts:
    """The unfiltered dataset: per-source covered index scans, two at a time (mongod scans one
    while the client slices the other's replies; see ``bench/compare.py``)."""
    info = schema.checked_sources(dataset)  # one line for a damaged record, not "domain None"
    with ThreadPoolExecutor(max_workers=2) as pool:
        per_source = list(pool.map(lambda source: _count_source(dataset, source), sorted(info)))
    kept = [(s, n, c) for s, n, c in per_source if n]
    shape = (0, len(ATTRIBUTES), 3)
    return StateCounts([s for s, _, _ in kept], [info[s].get("domain") for s, _, _ in kept],
                       np.array([n for _, n, _ in kept], np.int64),
                       np.array([c for _, _, c in kept], np.int64) if kept else np.zeros(shape, np.int64))


def _count_source(dataset, source: str) -> tuple[str, int, np.ndarray]:
    """(source, samples, (47, 3) state counts of its labelled samples) from the counts index."""
    codes = _covered_codes(dataset, source)
    # unlabelled samples sit under mac_code = null in the same index: counting them touches
    # only their own index keys, not the labelled ones
    unlabelled = dataset._sample_collection.count_documents(
        {schema.SOURCE: source, labels.CODE_FIELD: None}, hint=labels.COUNTS_INDEX_SPEC)
    return source, len(codes) + unlabelled, count_codes(codes)


def count_states(view) -> StateCounts:
    """State counts of all 47 attributes for every source of ``view``.

    The whole dataset is counted from the ``(source, mac_code)`` index; a filtered view in one
    pass over its documents."""
    dataset = view._dataset
    info = schema.checked_sources(dataset)
    if not view._serialize() and labels.has_counts_index(dataset) and _sources_all_known(dataset, info):
        return _count_whole_dataset(dataset)
    known = sorted(info)
    source_idx, codes = scan_view(view, known)
    if (source_idx < 0).any():  # samples of a source the dataset's info does not list
        known = sorted(s for s in view.distinct(schema.SOURCE) if s is not None)
        source_idx, codes = scan_view(view, known)
    samples = np.bincount(source_idx[source_idx >= 0], minlength=len(known))
    present = np.flatnonzero(samples)
    counts = np.zeros((len(present), len(ATTRIBUTES), 3), np.int64)
    for k, i in enumerate(present):
        mine = codes[source_idx == i]
        counts[k] = count_codes(mine[mine[:, 0] != ord("x")])  # labelled samples only
    sources = [known[i] for i in present]
    domains = [info.get(s, {}).get("domain") or _domain_of(view, s) for s in sources]
    return StateCounts(sources, domains, samples[present], counts)


def _sources_all_known(dataset, info: dict) -> bool:
    """Every sample's source is listed in the dataset's info (as every load records it)."""
    return dataset._sample_collection.count_documents({schema.SOURCE: {"$nin": sorted(info)}}) == 0


def _domain_of(view, source: str) -> str | None:
    domains = view.match(schema.source_is(source)).distinct(schema.DOMAIN)
    return domains[0] if len(domains) == 1 else None


def labels_version(dataset) -> tuple:
    """Changes whenever a sample is written or deleted (see the module docstring)."""
    coll = dataset._sample_collection
    newest = coll.find({}, {"last_modified_at": 1}).sort("last_modified_at", -1).limit(1)
    stamp = next(iter(newest), {}).get("last_modified_at")
    return stamp, coll.estimated_document_count()


def freshness(dataset) -> tuple:
    """What changes when anything shown about ``dataset`` may: :func:`labels_version` (every
    sample write stamps ``last_modified_at``: labels, scores, tags and untags in the App) and the
    dataset's faceaudit info as stored now (a comparison, a flag, an annotation run), read from
    the database, not from this process's possibly stale copy. Two indexed look-ups and one
    small document: cheap enough for every panel render."""
    from fiftyone.core.odm import get_db_conn

    doc = get_db_conn().datasets.find_one({"_id": dataset._doc.id}, {"info." + schema.INFO_KEY: 1}) or {}
    info = json.dumps(doc.get("info", {}), sort_keys=True, default=str)
    return (*labels_version(dataset), info)


class CountsCache:
    """A small LRU of per-view results (state counts, identity consistency) keyed on what was
    computed, the view and the labels version."""

    def __init__(self, size: int = 32):
        self.size = size
        self.entries: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def key(self, view, what: str) -> tuple:
        stages = json.dumps(view._serialize(), sort_keys=True, default=str)
        return what, view._dataset.name, stages, labels_version(view._dataset)

    def get(self, view, compute=None, what: str = "counts"):
        """``compute(view)`` (default: :func:`count_states`), or its cached result."""
        key = self.key(view, what)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        result = (compute or count_states)(view)
        with self.lock:
            self.entries[key] = result
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return result

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


CACHE = CountsCache()


def cached_counts(view) -> StateCounts:
    return CACHE.get(view)


def identity_cluster_counts(view, domain: str) -> np.ndarray:
    """``(n_units, 47, 3)`` state counts per resampling unit of a domain: an identity's images
    (sources with identities), or one image (samples without identity)."""
    sub = view.match((F(schema.DOMAIN) == domain) & F(labels.CODE_FIELD).exists())
    sources, identities, codes = sub.values([schema.SOURCE, schema.IDENTITY, labels.CODE_FIELD])
    if not codes:
        return np.zeros((0, len(ATTRIBUTES), 3), np.int64)
    keys = [f"{s}\x00{i}" if i is not None else f"\x01{k}" for k, (s, i) in enumerate(zip(sources, identities))]
    _, unit = np.unique(np.array(keys, dtype=object), return_inverse=True)
    states = labels.state_indices(codes)
    flat = (unit[:, None] * len(ATTRIBUTES) + np.arange(len(ATTRIBUTES))) * 3 + states
    n_units = unit.max() + 1
    return np.bincount(flat.ravel(), minlength=n_units * len(ATTRIBUTES) * 3).reshape(n_units, len(ATTRIBUTES), 3)
