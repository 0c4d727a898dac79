"""Counting the 47 attributes' states per source for any view, in one pass, cached.

Only the compact ``mac_code`` is read. The view's own pipeline (so sidebar filters count) is
followed by ``$project: {_id: 0, mac_code: 1}`` and fetched with ``aggregate_raw_batches``: every
projected document then has the same 67-byte BSON layout (``int32 size``, ``0x02``,
``"mac_code\\0"``, ``int32 48``, 47 code bytes, ``\\0``, ``\\0``), so a whole batch becomes one numpy
array without decoding documents in Python. Measured against ``values()`` and per-attribute
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
from dataclasses import dataclass

import numpy as np
from fiftyone import ViewField as F

from faceaudit.attributes import ATTRIBUTES

from . import labels, schema

_DOC_SIZE = 4 + 1 + len(labels.CODE_FIELD) + 1 + 4 + len(ATTRIBUTES) + 1 + 1
_CODE_OFFSET = 4 + 1 + len(labels.CODE_FIELD) + 1 + 4
_STATE_INDEX = np.full(256, -1, dtype=np.int64)  # code byte -> 0 positive, 1 negative, 2 undefined
_STATE_INDEX[ord("p")], _STATE_INDEX[ord("n")], _STATE_INDEX[ord("u")] = 0, 1, 2


@dataclass
class StateCounts:
    """Per-source state counts of a view."""

    sources: list[str]
    domains: list[str]
    samples: np.ndarray  # (S,) samples of each source in the view
    counts: np.ndarray  # (S, A, 3) positive / negative / undefined


def count_codes(codes: np.ndarray) -> np.ndarray:
    """``(n, 47)`` code bytes -> ``(47, 3)`` state counts (one bincount)."""
    states = _STATE_INDEX[codes]
    if (states < 0).any():
        raise ValueError("mac_code holds characters other than p, n, u")
    flat = states + 3 * np.arange(codes.shape[1])
    return np.bincount(flat.ravel(), minlength=3 * codes.shape[1]).reshape(-1, 3)


def fetch_codes(view, match: dict | None = None) -> np.ndarray:
    """The ``mac_code`` bytes ``(n, 47)`` of the labelled samples of ``view`` (and ``match``)."""
    pipeline = list(view._pipeline())
    pipeline.append({"$match": {**(match or {}), labels.CODE_FIELD: {"$type": "string"}}})
    pipeline.append({"$project": {"_id": 0, labels.CODE_FIELD: 1}})
    coll = view._dataset._sample_collection
    chunks = [np.frombuffer(batch, dtype=np.uint8) for batch in coll.aggregate_raw_batches(pipeline)]
    raw = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    if raw.size % _DOC_SIZE == 0:
        docs = raw.reshape(-1, _DOC_SIZE)
        sizes = docs[:, :4].copy().view("<i4").ravel()
        if (sizes == _DOC_SIZE).all():
            return docs[:, _CODE_OFFSET:_CODE_OFFSET + len(ATTRIBUTES)]
    # a code of another length somewhere: decode documents one by one (slow, but never wrong)
    codes = [c for c in view.match(F(labels.CODE_FIELD).exists()).match(match or {}).values(labels.CODE_FIELD)]
    bad = [c for c in codes if len(c) != len(ATTRIBUTES)]
    if bad:
        raise ValueError(f"{len(bad)} samples have a mac_code that is not {len(ATTRIBUTES)} characters long")
    return np.frombuffer("".join(codes).encode("ascii"), np.uint8).reshape(-1, len(ATTRIBUTES))


def count_states(view) -> StateCounts:
    """State counts of all 47 attributes for every source of ``view``."""
    dataset = view._dataset
    info = schema.sources_info(dataset)
    per_source = view.count_values(schema.SOURCE)
    sources = sorted(s for s in per_source if s is not None)
    counts = np.zeros((len(sources), len(ATTRIBUTES), 3), dtype=np.int64)
    for i, source in enumerate(sources):
        counts[i] = count_codes(fetch_codes(view, {schema.SOURCE: source}))
    domains = [info.get(s, {}).get("domain") or _domain_of(view, s) for s in sources]
    samples = np.array([per_source[s] for s in sources], dtype=np.int64)
    return StateCounts(sources, domains, samples, counts)


def _domain_of(view, source: str) -> str | None:
    domains = view.match(F(schema.SOURCE) == source).distinct(schema.DOMAIN)
    return domains[0] if len(domains) == 1 else None


def labels_version(dataset) -> tuple:
    """Changes whenever a sample is written or deleted (see the module docstring)."""
    coll = dataset._sample_collection
    newest = coll.find({}, {"last_modified_at": 1}).sort("last_modified_at", -1).limit(1)
    stamp = next(iter(newest), {}).get("last_modified_at")
    return stamp, coll.estimated_document_count()


class CountsCache:
    """A small LRU of :class:`StateCounts` keyed on the view and the labels version."""

    def __init__(self, size: int = 32):
        self.size = size
        self.entries: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def key(self, view) -> tuple:
        stages = json.dumps(view._serialize(), sort_keys=True, default=str)
        return view._dataset.name, stages, labels_version(view._dataset)

    def get(self, view) -> StateCounts:
        key = self.key(view)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return self.entries[key]
        result = count_states(view)
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
    states = _STATE_INDEX[np.frombuffer("".join(codes).encode("ascii"), np.uint8).reshape(-1, len(ATTRIBUTES))]
    flat = (unit[:, None] * len(ATTRIBUTES) + np.arange(len(ATTRIBUTES))) * 3 + states
    n_units = unit.max() + 1
    return np.bincount(flat.ravel(), minlength=n_units * len(ATTRIBUTES) * 3).reshape(n_units, len(ATTRIBUTES), 3)
