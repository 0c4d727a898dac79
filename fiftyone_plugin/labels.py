"""Attribute labels on samples: the schema, bulk writes, and MAAD-Face CSV import/export.

The schema, chosen by measurement (README, "Label schema"): per sample

* ``mac_<Attribute>`` (47 ``FloatField``\\ s): the *signed reliability*: the sign is the predicted
  state (+ positive, - negative), the magnitude the reliability in [0, 1]. A label whose
  reliability is under the run's threshold is *undefined*; labels imported without reliability
  are +1 / -1, and 0 for undefined. In the App's sidebar each attribute is a range filter:
  positive = ``[t, 1]``, negative = ``[-1, -t]``, undefined = ``(-t, t)``, and any reliability
  bound is a narrower range. 47 such fields take ~1.1 KB per sample (47 ``fo.Classification``
  fields: 5.2 KB; a string state plus a float reliability per attribute: 2.8 KB).
  Attributes a model does not label (e.g. the ``agegender`` backend's 43 others) are None.
* ``mac_code``: the 47 states in MAAD column order as one string of ``p`` / ``n`` / ``u``: the
  compact form the statistics read (one projected field, counted in numpy).
* ``mac_positive`` / ``mac_undefined`` (lists of attribute names): the states as a reader sees
  them, under the run's threshold. The float ``mac_Male 0.56`` is *undefined* under t = 0.6
  but reads as male; the lists say it (``mac_undefined: [Male]``) in the App's modal, and the
  sidebar filters them by value (``mac_positive`` contains ``Male``). Negative = labelled and in
  neither list (a third list would take the labels past 2 KB per sample). Attributes the model
  does not label are in no list.

A sample's labels are written in one ``$set`` with all 50 fields, many samples per
``bulk_write``: a sample is either fully labelled or not at all, which makes annotation resumable
(``mac_code`` missing = not labelled yet).

Stale-label detection (docs/integrity.md, "Stale results"):

* ``label_settings`` (:data:`SETTINGS_FIELD`), written in the same ``$set``: the
  :func:`faceaudit.fingerprint.settings_key` of the model settings the labels were made with, or
  :data:`IMPORTED` for labels from a file. A run asking for other settings relabels exactly the
  samples whose key differs (resumable as before: each sample says what made it).
* The labels version (:func:`labels_version`): a counter per dataset, ``$inc``-ed atomically by
  :func:`write_labels` before and after every write. A result computed from the labels records
  the version it read; a write of any content (even one that keeps every count) changes it.
"""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import fiftyone as fo
import numpy as np
from bson import ObjectId
from pymongo import UpdateOne

from faceaudit.attributes import ATTRIBUTES, CATEGORIES
from faceaudit.labels_io import read_label_file, write_maad_csv
from faceaudit.textsafe import printable

from . import schema

PREFIX = "mac_"
CODE_FIELD = "mac_code"
POSITIVE_FIELD = "mac_positive"
UNDEFINED_FIELD = "mac_undefined"
STATE_LIST_FIELDS = (POSITIVE_FIELD, UNDEFINED_FIELD)
SETTINGS_FIELD = "label_settings"
IMPORTED = "imported"  # the settings key of labels imported from a file (kept by reruns)
VERSIONS_COLLECTION = "faceaudit.versions"  # {_id: dataset id, labels: write counter}
STATE_CHARS = {1: "p", -1: "n", 0: "u"}
WRITE_BATCH = 1000
WRITE_THREADS = 2
# (source, mac_code): whole-dataset counts read the codes from this index alone (covered query)
COUNTS_INDEX_SPEC = [(schema.SOURCE, 1), (CODE_FIELD, 1)]

_CODE_LUT = np.zeros(256, dtype=np.int8)  # byte of the code -> state
_CODE_LUT[ord("p")], _CODE_LUT[ord("n")] = 1, -1
_STATE_BYTES = np.frombuffer(b"nup", dtype=np.uint8)  # state + 1 -> byte


def field_name(attribute: str) -> str:
    return PREFIX + attribute


LABEL_FIELDS = tuple(field_name(a) for a in ATTRIBUTES)
_NAMES = np.array(ATTRIBUTES, dtype=object)
_DESCRIPTIONS = {
    POSITIVE_FIELD: "attributes predicted positive (reliability at or above the run's threshold)",
    UNDEFINED_FIELD: "attributes labelled undefined (reliability under the run's threshold)",
    CODE_FIELD: "the 47 states in MAAD-Face order: p positive, n negative, u undefined",
    SETTINGS_FIELD: "settings key of the model run that made the labels ('imported': from a file)",
}
_FLOAT_DESCRIPTION = ("signed reliability: sign = predicted state, magnitude = reliability; under the "
                      "run's threshold the state is undefined (see mac_positive / mac_undefined)")


def encode_codes(states: np.ndarray) -> list[str]:
    """``(n, 47)`` int8 states -> n strings of ``p``/``n``/``u``."""
    raw = _STATE_BYTES[states.astype(np.int64) + 1]
    return [bytes(row).decode("ascii") for row in raw]


def decode_codes(codes: list[str]) -> np.ndarray:
    """n code strings -> ``(n, 47)`` int8 states (vectorised: one join, one lookup)."""
    if not codes:
        return np.zeros((0, len(ATTRIBUTES)), dtype=np.int8)
    raw = np.frombuffer("".join(codes).encode("ascii"), dtype=np.uint8)
    return _CODE_LUT[raw].reshape(len(codes), len(ATTRIBUTES))


_INDEX_OF_STATE = np.array([1, 2, 0])  # state -1 / 0 / 1 -> index 1 (negative) / 2 / 0 (positive)


def state_indices(codes: list[str]) -> np.ndarray:
    """n code strings -> ``(n, 47)`` state indices in the order positive, negative, undefined
    (the column order of state counts and NLL tables)."""
    return _INDEX_OF_STATE[decode_codes(codes) + 1]


#: per-sample scores written by outliers.py (realness and identity consistency). Declared with the
#: labels, so that the App's sidebar has them in the faceaudit group before the first flag: a
#: field that appears later lands under PRIMITIVES until the page is reloaded (the App keeps the
#: sidebar groups it loaded with the dataset; issue 15.10). Declared is not scored: see
#: ``outliers.is_scored``.
SCORE_FIELDS = ("realness_nll", "identity_disagreement")
_SCORE_DESCRIPTION = "faceaudit score (None until faceaudit outliers scores the sample); docs/compare.md"


def ensure_label_schema(dataset: fo.Dataset) -> None:
    """Declare the label fields and group them by category in the App's sidebar. A dataset
    labelled before the state lists existed gets them from its labels (one server-side update)."""
    existing = dataset.get_field_schema()
    for name in LABEL_FIELDS:
        if name not in existing:
            dataset.add_sample_field(name, fo.FloatField, description=_FLOAT_DESCRIPTION)
    for name in (CODE_FIELD, SETTINGS_FIELD):
        if name not in existing:
            dataset.add_sample_field(name, fo.StringField, description=_DESCRIPTIONS[name])
    for name in SCORE_FIELDS:
        if name not in existing:
            dataset.add_sample_field(name, fo.FloatField, description=_SCORE_DESCRIPTION)
    missing_lists = [f for f in STATE_LIST_FIELDS if f not in existing]
    for name in missing_lists:
        dataset.add_sample_field(name, fo.ListField, subfield=fo.StringField, description=_DESCRIPTIONS[name])
    if missing_lists and CODE_FIELD in existing:
        _backfill_state_lists(dataset)
    if not has_counts_index(dataset):  # an equal index under another name would conflict
        dataset.create_index(COUNTS_INDEX_SPEC)
    set_sidebar_groups(dataset)


def _state_list_expr(char: str) -> dict:
    """MQL: the names of the attributes in state ``char`` whose float label is set."""
    names = [{"$cond": [{"$and": [{"$eq": [{"$substrBytes": ["$" + CODE_FIELD, j, 1]}, char]},
                                  {"$gt": ["$" + field_name(a), None]}]},  # a number, not null/missing
                        {"$literal": a}, None]}
             for j, a in enumerate(ATTRIBUTES)]
    return {"$filter": {"input": names, "cond": {"$ne": ["$$this", None]}}}


def _backfill_state_lists(dataset: fo.Dataset) -> None:
    from .bulk import update_many_in_parts

    update_many_in_parts(dataset._sample_collection, {CODE_FIELD: {"$type": "string"}},
                         [{"$set": {POSITIVE_FIELD: _state_list_expr("p"), UNDEFINED_FIELD: _state_list_expr("u")}}])


def has_counts_index(dataset: fo.Dataset) -> bool:
    return any(info["key"] == COUNTS_INDEX_SPEC for info in dataset.get_index_information().values())


#: the sidebar group, folded, of the fields written for programs rather than readers: the
#: 47-letter ``mac_code`` (the modal cut it to an unreadable string; mac_positive,
#: mac_undefined and the mac_* groups say the same for a reader), the settings key and the file
#: hash. Nothing is lost: the fields stay, filterable, one click away (issue 15.10)
CODES_GROUP = "faceaudit: codes"
CODE_FIELDS = (CODE_FIELD, SETTINGS_FIELD, schema.FILE_HASH)


def has_sidebar_groups(dataset: fo.Dataset) -> bool:
    """Whether :func:`set_sidebar_groups` has grouped the dataset's fields (labels declared)."""
    return any(g.name == "faceaudit" for g in dataset.app_config.sidebar_groups or [])


def set_sidebar_groups(dataset: fo.Dataset) -> None:
    """The faceaudit group (state lists, faceaudit's text fields, the outlier and identity
    scores declared so far), one folded group per attribute category, and the folded codes."""
    groups = dataset.app_config.sidebar_groups or fo.DatasetAppConfig.default_sidebar_groups(dataset)
    ours = {f"attributes: {c.lower()}" for c in CATEGORIES} | {"faceaudit", CODES_GROUP}
    groups = [g for g in groups if g.name not in ours]
    for g in groups:  # our fields leave the default groups they were put in
        g.paths = [p for p in g.paths if not p.startswith(PREFIX) and p not in schema.STRING_FIELDS
                   and p not in (*SCORE_FIELDS, *schema.IDENTITY_SCORE_FIELDS, SETTINGS_FIELD)]
    declared = dataset.get_field_schema()
    scores = [f for f in (*SCORE_FIELDS, *schema.IDENTITY_SCORE_FIELDS) if f in declared]
    readable = [f for f in schema.STRING_FIELDS if f not in CODE_FIELDS]
    groups.insert(1, fo.SidebarGroupDocument(
        name="faceaudit", paths=[*STATE_LIST_FIELDS, *readable, *scores]))
    for i, (category, attrs) in enumerate(CATEGORIES.items()):
        groups.insert(2 + i, fo.SidebarGroupDocument(
            name=f"attributes: {category.lower()}", paths=[field_name(a) for a in attrs], expanded=False))
    groups.insert(2 + len(CATEGORIES), fo.SidebarGroupDocument(name=CODES_GROUP, paths=list(CODE_FIELDS), expanded=False))
    dataset.app_config.sidebar_groups = groups
    dataset.save()


def state_lists(states: np.ndarray, signed: np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
    """Per sample, the names of its positive and of its undefined attributes (attributes whose
    ``signed`` is NaN, which the model does not label, are in neither)."""
    labelled = ~np.isnan(signed)
    return _names_per_row((states == 1) & labelled), _names_per_row((states == 0) & labelled)


def _names_per_row(mask: np.ndarray) -> list[list[str]]:
    names = _NAMES[np.nonzero(mask)[1]].tolist()  # row-major: each row's names in MAAD order
    ends = np.cumsum(mask.sum(1)).tolist()
    return [names[start:end] for start, end in zip([0, *ends[:-1]], ends)]


def label_updates(ids: Iterable[ObjectId], states: np.ndarray, signed: np.ndarray,
                  settings: str = IMPORTED) -> list[UpdateOne]:
    """One ``$set`` of all 50 label fields per sample. The cyclic garbage collector is paused
    while the batch is built: the batch holds only acyclic dicts, lists and strings, and the
    collections its thousands of new containers trigger cut write throughput to 0.67x (README,
    "Label schema"). The collector is left as found (a caller that disabled it keeps it off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _label_updates(ids, states, signed, settings)
    finally:
        if enabled:
            gc.enable()


def _label_updates(ids: Iterable[ObjectId], states: np.ndarray, signed: np.ndarray,
                   settings: str) -> list[UpdateOne]:
    now = schema.utc_now()
    codes = encode_codes(states)
    rounded = np.round(signed.astype(np.float64), 4)
    values = rounded.astype(object)
    values[np.isnan(rounded)] = None  # an attribute the model does not label: no value
    positive, undefined = state_lists(states, rounded)
    ops = []
    for _id, code, row, pos, und in zip(ids, codes, values.tolist(), positive, undefined):
        update = dict(zip(LABEL_FIELDS, row))
        update[CODE_FIELD] = code
        update[POSITIVE_FIELD] = pos
        update[UNDEFINED_FIELD] = und
        update[SETTINGS_FIELD] = settings
        update["last_modified_at"] = now
        ops.append(UpdateOne({"_id": _id}, {"$set": update}))
    return ops


def labels_version(dataset: fo.Dataset) -> int:
    """The dataset's label-write counter (0 before any write): see the module docstring."""
    doc = _versions().find_one({"_id": dataset._doc.id}, {"labels": 1})
    return int((doc or {}).get("labels", 0))


def bump_labels_version(dataset: fo.Dataset) -> None:
    """Count one label write (atomic ``$inc``; concurrent writers never lose a count). Anything
    that writes ``mac_*`` fields without :func:`write_labels` must call this before and after."""
    _versions().update_one({"_id": dataset._doc.id}, {"$inc": {"labels": 1}}, upsert=True)


def _versions():
    import fiftyone.core.odm as foo_db

    return foo_db.get_db_conn()[VERSIONS_COLLECTION]


def write_labels(dataset: fo.Dataset, ids: list, states: np.ndarray, signed: np.ndarray | None = None,
                 settings: str = IMPORTED) -> int:
    """Write ``states`` (``(n, 47)`` int8) and the signed reliabilities (default: the states
    themselves, for labels that come without reliability) to the samples ``ids``, stamped with
    the ``settings`` key they were made with (default :data:`IMPORTED`).

    Batches of ``WRITE_BATCH`` samples go to the server from ``WRITE_THREADS`` threads: the
    server applies two bulk writes at once, and the next batch is built while they run. The
    labels version is bumped before the write (a result computed during it is never taken as
    current) and after it (nor one computed before it, if the writer is killed half-way)."""
    bump_labels_version(dataset)
    try:
        return _write_labels(dataset, ids, states, signed, settings)
    finally:
        bump_labels_version(dataset)


def _write_labels(dataset, ids, states, signed, settings) -> int:
    if signed is None:
        signed = states.astype(np.float64)
    ids = [i if isinstance(i, ObjectId) else ObjectId(i) for i in ids]
    coll = dataset._sample_collection
    starts = range(0, len(ids), WRITE_BATCH)
    if len(starts) <= 1:
        for start in starts:
            coll.bulk_write(label_updates(ids, states, signed, settings), ordered=False)
        return len(ids)
    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        pending = []
        for start in starts:
            end = start + WRITE_BATCH
            ops = label_updates(ids[start:end], states[start:end], signed[start:end], settings)
            pending.append(pool.submit(coll.bulk_write, ops, ordered=False))
            if len(pending) > WRITE_THREADS:  # bound the memory held by queued batches
                pending.pop(0).result()
        for future in pending:
            future.result()
    return len(ids)


# ----------------------------------------------------------------------------- CSV in and out


@dataclass
class ImportReport:
    source: str
    rows: int
    labelled: int
    unmatched: int
    unmatched_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{printable(self.source)}: {self.rows} rows, {self.labelled} samples labelled"
        if self.unmatched:
            examples = ", ".join(printable(name) for name in self.unmatched_examples)
            text += f", {self.unmatched} rows name no sample of the source (e.g. {examples})"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


def relative_name(filepath: str, root: str) -> str:
    """A sample's file name as label files write it: relative to its source's root, with '/'."""
    return os.path.relpath(filepath, root).replace(os.sep, "/")


#: the ``Identity`` a label file gave a sample (MAAD-Face's released CSV has the integer class
#: id there, e.g. ``2`` for folder ``n000002``); export writes it back instead of the folder name
IMPORTED_IDENTITY = "label_identity"


def import_labels(dataset: fo.Dataset, source: str, path: str) -> ImportReport:
    """Label the samples of ``source`` from a MAAD-Face CSV (or CelebA attribute list).

    The whole file is validated first: a malformed row raises with its line number and nothing
    is written. Rows whose ``Filename`` (relative to the source's root) names no sample of the
    source are counted and reported. A row's non-empty ``Identity`` is kept in
    ``label_identity``, so that an export gives the file back as it was.
    """
    table = read_label_file(path)
    root = schema.source_root(dataset, source)
    ensure_label_schema(dataset)
    ids, paths = dataset.match({schema.SOURCE: source}).values(["_id", "filepath"])
    by_name = {relative_name(p, root): i for i, p in zip(ids, paths)}
    rows = [(k, by_name.get(name)) for k, name in enumerate(table.filenames)]
    matched = [(k, i) for k, i in rows if i is not None]
    unmatched = [table.filenames[k] for k, i in rows if i is None]
    if matched:
        index = np.array([k for k, _ in matched])
        write_labels(dataset, [i for _, i in matched], table.states[index])
        _keep_identities(dataset, [(i, table.identities[k]) for k, i in matched if table.identities[k]])
    return ImportReport(source, len(table), len(matched), len(unmatched), unmatched[:5])


def _keep_identities(dataset: fo.Dataset, pairs: list[tuple[ObjectId, str]]) -> None:
    """Store each sample's ``Identity`` from the imported file in :data:`IMPORTED_IDENTITY`."""
    if not pairs:
        return
    if IMPORTED_IDENTITY not in dataset.get_field_schema():
        dataset.add_sample_field(IMPORTED_IDENTITY, fo.StringField)
    ops = [UpdateOne({"_id": _id}, {"$set": {IMPORTED_IDENTITY: ident}}) for _id, ident in pairs]
    for start in range(0, len(ops), WRITE_BATCH):
        dataset._sample_collection.bulk_write(ops[start:start + WRITE_BATCH], ordered=False)


def export_labels(dataset: fo.Dataset, path: str, source: str | None = None, overwrite: bool = False) -> int:
    """Write the labelled samples (of ``source``, or all) as a MAAD-Face CSV, sorted by source
    and file name; returns the number of rows. ``Identity`` is the one an imported file gave
    (:data:`IMPORTED_IDENTITY`) where there is one, else the sample's identity (its folder)."""
    if source is not None:
        schema.source_root(dataset, source)  # a clear error for an unknown source
    path = schema.check_outputs(dataset, {"file": path}, overwrite=overwrite)["file"]
    if CODE_FIELD not in dataset.get_field_schema():  # nothing labelled yet: just the header
        return write_maad_csv(path, [])
    view = dataset.exists(CODE_FIELD)
    if source is not None:
        view = view.match({schema.SOURCE: source})
    roots = {s: os.path.normpath(info["root"]) for s, info in schema.checked_sources(dataset).items()}
    imported = IMPORTED_IDENTITY in dataset.get_field_schema()
    fields = [schema.SOURCE, "filepath", schema.IDENTITY, CODE_FIELD] + ([IMPORTED_IDENTITY] if imported else [])
    values = view.values(fields)
    given = values[4] if imported else [None] * len(values[0])
    rows = sorted(
        (s, relative_name(p, roots[s]), kept or ident or "", code)
        for s, p, ident, code, kept in zip(*values[:4], given)
    )
    states = decode_codes([r[3] for r in rows])
    return write_maad_csv(path, ((name, ident, st) for (_, name, ident, _), st in zip(rows, states)))
