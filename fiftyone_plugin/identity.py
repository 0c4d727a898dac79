"""The identity audit on the dataset: stream ``face_embedding`` vectors source by source, write
``identity_similarity`` / ``nearest_real_similarity`` per sample in bulk, store the result in
``dataset.info["faceaudit"]["identity"]``, tag and save views (docs/identity.md).

Reads go straight to MongoDB with pymongo: one query per source on the ``(source, identity)``
index, sorted by identity, a projection of three fields, vectors decoded from FiftyOne's
``VectorField`` encoding (zlib-compressed ``.npy`` bytes) without building Sample objects.
"""

from __future__ import annotations

import io
import re
import zlib

import numpy as np

from faceaudit import identity as core
from faceaudit import params

from . import bulk, locks, schema

EMBEDDING_FIELD = "face_embedding"
SIMILARITY_FIELD, NEAREST_REAL_FIELD = schema.IDENTITY_SCORE_FIELDS
LEAK_TAG, COLLISION_TAG, OUTLIER_TAG = "identity_leak", "identity_collision", "identity_outlier"
TAGS = (LEAK_TAG, COLLISION_TAG, OUTLIER_TAG)
KEEP_TAG = "reviewed_keep"  # a person looked and kept the sample: never tagged as an outlier
VIEWS = {LEAK_TAG: "identity_leaks", COLLISION_TAG: "identity_collisions", OUTLIER_TAG: "identity_outliers"}
BRAIN_KEY = "face_similarity"
VISUALIZATION_KEY = "face_map"  # the Embeddings panel's 2-D map of face_embedding
READ_BATCH = 4096
DOMAINS = ("real", "synthetic")


def options(threshold=None, fmr=None, max_pairs=None, seed=None) -> core.AuditOptions:
    """Validated arguments (the same for every door)."""
    return core.audit_options(threshold, fmr, max_pairs, seed)


def require_embeddings(dataset) -> int:
    """The number of samples with a ``face_embedding``; one clear line when there is none."""
    if EMBEDDING_FIELD not in dataset.get_field_schema():
        raise core.IdentityError(f"dataset {dataset.name!r} has no {EMBEDDING_FIELD} field: run faceaudit embed first")
    n = dataset._sample_collection.count_documents({EMBEDDING_FIELD: {"$ne": None}})
    if n == 0:
        raise core.IdentityError(f"dataset {dataset.name!r} has no {EMBEDDING_FIELD} vectors yet: run faceaudit embed first")
    return n


def plans(dataset) -> dict[str, core.SourcePlan]:
    """Per source: its domain (:func:`source_domains`), the images with an embedding per
    identity (one aggregation)."""
    rows = list(dataset._sample_collection.aggregate([
        {"$match": {EMBEDDING_FIELD: {"$ne": None}, schema.SOURCE: {"$type": "string"}}},
        {"$group": {"_id": {"s": "$" + schema.SOURCE, "i": "$" + schema.IDENTITY},
                    "n": {"$sum": 1}, "domains": {"$addToSet": "$" + schema.DOMAIN}}},
    ], allowDiskUse=True))
    domains = source_domains(dataset, rows)
    found: dict[str, core.SourcePlan] = {}
    for r in rows:
        s, ident = r["_id"]["s"], r["_id"].get("i")
        plan = found.setdefault(s, core.SourcePlan(domains[s], {}, 0))
        plan.samples += r["n"]
        if ident is not None and not isinstance(ident, str):  # a raw write: FiftyOne's schema says text
            raise core.IdentityError(f"source {s!r}: the identity of {r['n']} samples is not text ({ident!r:.60}, "
                                     f"{type(ident).__name__}): set it to a string or None")
        if ident is not None and ident != "":
            plan.identity_counts[ident] = r["n"]
    for plan in found.values():
        plan.identity_counts = dict(sorted(plan.identity_counts.items()))
    return found


def source_domains(dataset, rows: list[dict]) -> dict[str, str]:
    """Each source's domain as recorded when it was loaded (``schema.sources_info``): samples
    whose ``domain`` is missing or says otherwise do not change how their source is judged. A
    source with no record (made by another tool) takes its samples' domain when they agree, and is
    refused in one line when they do not."""
    recorded = {s: (r or {}).get("domain") for s, r in schema.sources_info(dataset).items()}
    seen: dict[str, set] = {}
    for r in rows:
        seen.setdefault(r["_id"]["s"], set()).update(d for d in r.get("domains") or [] if d is not None)
    out = {}
    for s, values in seen.items():
        if recorded.get(s) in DOMAINS:
            out[s] = recorded[s]
        elif len(values) == 1 and next(iter(values)) in DOMAINS:
            out[s] = next(iter(values))
        else:
            raise core.IdentityError(f"source {s!r}: no domain recorded for it and its samples say "
                                     f"{sorted(map(str, values)) or 'none'}: load it again with --domain real|synthetic")
    return out


def decode(value, key=None) -> np.ndarray:
    """A stored ``VectorField`` value (FiftyOne's compressed ``.npy`` bytes, or a list) as an
    array of real numbers; anything else (another tool's raw write) is refused in one line naming
    the sample ``key`` and the problem (:class:`faceaudit.identity.IdentityError`)."""
    try:
        return _as_array(value)
    except _BadVector as e:
        raise core.IdentityError(core.bad_vector(key, str(e))) from None


def _as_array(value) -> np.ndarray:
    """:func:`decode` without the sample's name: raises :class:`_BadVector`."""
    vec = _decode_bytes(value) if isinstance(value, (bytes, bytearray)) else _decode_other(value)
    if vec.dtype.kind not in "fiu":
        raise _BadVector(f"holds {vec.dtype} values, not real numbers")
    return vec


class _BadVector(ValueError):
    """What is wrong with one stored value (worded after "face_embedding of sample X")."""


def _decode_bytes(value: bytes) -> np.ndarray:
    """FiftyOne's encoding: zlib-compressed ``.npy`` bytes (bson's Binary is bytes)."""
    try:
        raw = zlib.decompress(value)
    except zlib.error:
        raise _BadVector(f"is {len(value)} bytes that are not FiftyOne's vector encoding (zlib-compressed .npy)") from None
    # a 1-d little-endian .npy (what VectorField writes) is read without np.load's header parser
    if raw[:8] == b"\x93NUMPY\x01\x00":
        start = 10 + int.from_bytes(raw[8:10], "little")
        header = raw[10:start]
        dtype = _NPY_DTYPES.get(next((k for k in _NPY_DTYPES if k in header), None))
        if dtype is not None and b"'fortran_order': False" in header and _ONE_D.search(header):
            return np.frombuffer(raw, dtype=dtype, offset=start)
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise _BadVector(f"is not a numeric .npy array ({str(e).splitlines()[0][:80]})") from None


def _decode_other(value) -> np.ndarray:
    """A list of numbers (another writer's); a dict, text, a number, ... is no vector."""
    if not isinstance(value, (list, tuple)):
        raise _BadVector(f"is a {type(value).__name__} ({value!r:.40}), not a vector")
    try:
        vec = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise _BadVector("is a list of uneven rows, not a vector") from None
    if vec.dtype.kind in "USO":
        raise _BadVector(f"holds text or objects ({value[0]!r:.40} ...), not numbers")
    return vec.astype(np.float32) if vec.dtype.kind in "fiu" else vec


_NPY_DTYPES = {b"'<f4'": np.float32, b"'<f2'": np.float16, b"'<f8'": np.float64}
_ONE_D = re.compile(rb"'shape': \(\d+,\)")


def read_source(dataset, source: str, batch: int = READ_BATCH, dim: int | None = None, recorded: str = ""):
    """``source``'s vectors as :class:`faceaudit.identity.Chunk`, sorted by identity. A vector
    that is not 1-d, or not ``dim``-d (the first vector's dimension when None), is refused
    naming its sample; ``recorded`` says where ``dim`` came from."""
    cursor = dataset._sample_collection.find(
        {schema.SOURCE: source, EMBEDDING_FIELD: {"$ne": None}},
        {"_id": 1, schema.IDENTITY: 1, EMBEDDING_FIELD: 1},
    ).sort([(schema.SOURCE, 1), (schema.IDENTITY, 1)]).batch_size(batch)
    keys, ids, vecs = [], [], []
    for doc in cursor:
        keys.append(doc["_id"])
        ident = doc.get(schema.IDENTITY)
        ids.append(ident if ident not in ("",) else None)
        vec = decode(doc[EMBEDDING_FIELD], doc["_id"])
        dim = dim if dim is not None or vec.ndim != 1 else vec.shape[0]
        if vec.shape != (dim,):
            problem = (f"has {vec.size} components" if vec.ndim == 1 else f"is not a row of numbers (shape {vec.shape})")
            raise core.IdentityError(core.bad_vector(doc["_id"], f"{problem}{recorded or ', the others'} {dim}"))
        vecs.append(vec)
        if len(keys) == batch:
            yield core.Chunk(keys, ids, np.stack(vecs).astype(np.float32))
            keys, ids, vecs = [], [], []
    if keys:
        yield core.Chunk(keys, ids, np.stack(vecs).astype(np.float32))


def check_vector_types(dataset) -> None:
    """Refuse, before anything is written, in one line naming the first sample and counting the
    others, stored vectors that are neither bytes nor a list of numbers (another tool's raw write:
    a dict, text, a number, a list of text). Bytes that do not decode are refused while reading."""
    bad = {"$or": [{EMBEDDING_FIELD: {"$ne": None, "$not": {"$type": ["binData", "array"]}}},
                   {EMBEDDING_FIELD: {"$elemMatch": {"$not": {"$type": "number"}}}}]}
    coll = dataset._sample_collection
    first = coll.find_one(bad, {EMBEDDING_FIELD: 1})
    if first is None:
        return
    others = coll.count_documents(bad) - 1
    try:
        _as_array(first[EMBEDDING_FIELD])
    except _BadVector as e:
        more = f" ({others} other samples' too)" if others else ""
        raise core.IdentityError(core.bad_vector(first["_id"], f"{e}{more}")) from None


def _num(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def _writer(dataset, writes: bulk.BackgroundWrites):
    from pymongo import UpdateOne

    coll = dataset._sample_collection

    def write(source, chunk, sim, nearest):
        ops = []
        for k, key in enumerate(chunk.keys):
            update = {"$set": {SIMILARITY_FIELD: _num(sim[k])}}
            if nearest is not None:
                update["$set"][NEAREST_REAL_FIELD] = _num(nearest[k])
            else:  # a real source (or no real centres): no value from an earlier run stays
                update["$unset"] = {NEAREST_REAL_FIELD: ""}
            ops.append(UpdateOne({"_id": key}, update))
        writes.submit(bulk.bulk_write_in_parts, coll, ops)

    return write


#: the per-sample fields the audit writes; their indexes are dropped while every sample is
#: rewritten and built again after (two index updates per document otherwise)
WRITTEN_FIELDS = (SIMILARITY_FIELD, NEAREST_REAL_FIELD)


def ensure_fields(dataset) -> None:
    import fiftyone as fo

    from . import labels

    known = dataset.get_field_schema()
    missing = [name for name in WRITTEN_FIELDS if name not in known]
    for name in missing:
        dataset.add_sample_field(name, fo.FloatField, description=(
            "faceaudit identity audit (None until faceaudit identity scores the sample); docs/identity.md"))
    if missing and labels.has_sidebar_groups(dataset):  # else the fields land under PRIMITIVES
        labels.set_sidebar_groups(dataset)


def _build_indexes(dataset) -> None:
    for name in WRITTEN_FIELDS:
        dataset.create_index(name)


def _clear_unfed(dataset) -> None:
    """Unset the per-sample values of samples this audit will not rewrite (no vector, no source):
    the others are overwritten in place, so a rerun does not rewrite every document twice."""
    dataset._sample_collection.update_many(
        {"$and": [{"$or": [{f: {"$exists": True}} for f in WRITTEN_FIELDS]},
                  {"$or": [{EMBEDDING_FIELD: None}, {schema.SOURCE: {"$not": {"$type": "string"}}}]}]},
        {"$unset": {f: "" for f in WRITTEN_FIELDS}})


def one_at_a_time(dataset):
    """The dataset's identity-audit lock, held alone: two audits (or an audit and ``--clear``) at
    once would leave one run's result in dataset.info and the other's tags on the samples, and an
    embed run beside an audit would change the vectors it reads (``embed.writing_vectors``). The
    second is refused in one line that names the first."""
    return locks.exclusive(locks.vectors_key(dataset.name), f"dataset {dataset.name!r}",
                           "an identity audit (or identity --clear)")


def check_audit(dataset, opts: core.AuditOptions) -> None:
    """What :func:`identity_audit` refuses before it reads a vector (no embeddings, a model with
    no default threshold, an FMR the real impostor pairs cannot reach): one aggregation, nothing
    written (the App's form runs it)."""
    require_embeddings(dataset)
    core.ordered_audit(plans(dataset), opts, (schema.get_info(dataset, "embedding") or {}).get("model"))


def identity_audit(dataset, opts: core.AuditOptions, tag: bool = False, similarity_index: bool = True,
                   visualization: bool | None = None) -> dict:
    """The whole audit, as ``faceaudit identity`` and the operator run it; returns the result
    (also stored under ``dataset.info["faceaudit"]["identity"]``). Every check runs before the
    first write: a refused run leaves the dataset as it was. One audit of a dataset at a time
    (:func:`one_at_a_time`)."""
    require_embeddings(dataset)
    with one_at_a_time(dataset):
        return _audit(dataset, opts, tag, similarity_index, visualization)


def _audit(dataset, opts, tag, similarity_index, visualization) -> dict:
    info = schema.get_info(dataset, "embedding") or {}
    model = info.get("model")
    found = plans(dataset)
    dim = info.get("dim") if isinstance(info.get("dim"), int) and info.get("dim") > 0 else None
    recorded = f" but dataset.info's embedding ({model}) says" if dim else ""
    audit, order = core.ordered_audit(found, opts, model, dim)  # refuses before any write
    check_vector_types(dataset)
    ensure_fields(dataset)
    _clear_unfed(dataset)
    bulk.drop_field_indexes(dataset._sample_collection, WRITTEN_FIELDS)
    writes = bulk.BackgroundWrites()  # chunk k is written while chunk k + 1 is read and scored
    write = _writer(dataset, writes)
    try:
        for name in order:
            for chunk, sim, nearest in audit.feed(name, read_source(dataset, name, dim=dim, recorded=recorded)):
                write(name, chunk, sim, nearest)
    finally:
        try:
            writes.close()
        finally:
            _build_indexes(dataset)
    outcome = audit.finish()
    result = outcome.result
    result["dataset"] = dataset.name
    result["embedding"] = info
    if tag:
        result["tagged"] = tag_samples(dataset, outcome)
    else:  # an earlier audit's tags and views would contradict this result
        untagged = drop_earlier_tags(dataset)
        if untagged:
            result["untagged"] = untagged
    schema.set_info(dataset, "identity", result, stamp="at")  # whole before the Brain runs, which may fail
    if similarity_index:
        result["similarity_index"] = register_similarity_index(dataset)
    if similarity_index if visualization is None else visualization:
        result["visualization"] = register_visualization(dataset)
    if similarity_index or visualization:
        schema.set_info(dataset, "identity", result, stamp="at")
    return result


def tag_samples(dataset, outcome: core.AuditOutcome) -> dict[str, int]:
    """Tag leaks, collisions and outliers (replacing earlier tags) and save one view for each.

    * ``identity_leak``: synthetic samples of identities whose centre is at or above the threshold
      with a real identity's centre (in synthetic sources without identities: samples whose
      ``nearest_real_similarity`` is at or above it);
    * ``identity_collision``: samples of identities in a centre pair at or above the threshold;
    * ``identity_outlier``: samples whose ``identity_similarity`` is below the threshold (the
      image does not verify against the rest of its identity), except those tagged ``reviewed_keep``.
    """
    from fiftyone import ViewField as F

    t = outcome.result["threshold"]
    _clear_tags(dataset, keep_views=True)
    coll = dataset._sample_collection
    stamp = {"$set": {"last_modified_at": schema.utc_now()}}
    counts = dict.fromkeys(TAGS, 0)
    for source, leak in outcome.result["leakage"].items():
        if not leak.get("applicable"):
            continue
        query = ({schema.SOURCE: source, schema.IDENTITY: {"$in": outcome.leaking.get(source, [])}}
                 if leak.get("identities") else {schema.SOURCE: source, NEAREST_REAL_FIELD: {"$gte": t}})
        counts[LEAK_TAG] += coll.update_many(query, {"$addToSet": {"tags": LEAK_TAG}, **stamp}).modified_count
    for source, identities in outcome.colliding.items():
        if identities:
            counts[COLLISION_TAG] += coll.update_many(
                {schema.SOURCE: source, schema.IDENTITY: {"$in": identities}},
                {"$addToSet": {"tags": COLLISION_TAG}, **stamp}).modified_count
    counts[OUTLIER_TAG] = coll.update_many({SIMILARITY_FIELD: {"$lt": t}, "tags": {"$ne": KEEP_TAG}},
                                           {"$addToSet": {"tags": OUTLIER_TAG}, **stamp}).modified_count
    views = {LEAK_TAG: dataset.match_tags(LEAK_TAG).sort_by(NEAREST_REAL_FIELD, reverse=True),
             COLLISION_TAG: dataset.match_tags(COLLISION_TAG).sort_by(F(schema.SOURCE)).sort_by(F(schema.IDENTITY)),
             OUTLIER_TAG: dataset.match_tags(OUTLIER_TAG).sort_by(SIMILARITY_FIELD)}
    for name, view in views.items():
        dataset.save_view(VIEWS[name], view, overwrite=True)
    return counts


def clear_tags(dataset, keep_views: bool = False) -> int:
    """Remove the three identity tags (and, unless ``keep_views``, their saved views); refused
    while an audit of the dataset runs."""
    with one_at_a_time(dataset):
        return _clear_tags(dataset, keep_views)


def drop_earlier_tags(dataset) -> dict | None:
    """Remove an earlier audit's tags and views (an audit without ``tag``): ``{"samples": n,
    "views": [...]}`` of what was removed, None when there was nothing."""
    views = [v for v in VIEWS.values() if dataset.has_saved_view(v)]
    n = _clear_tags(dataset, keep_views=False)
    return {"samples": n, "views": views} if n or views else None


def _clear_tags(dataset, keep_views: bool) -> int:
    n = dataset._sample_collection.update_many(
        {"tags": {"$in": list(TAGS)}},
        {"$pull": {"tags": {"$in": list(TAGS)}}, "$set": {"last_modified_at": schema.utc_now()}}).modified_count
    if not keep_views:
        for view in VIEWS.values():
            if dataset.has_saved_view(view):
                dataset.delete_saved_view(view)
    return n


def register_similarity_index(dataset, brain_key: str = BRAIN_KEY, backend: str = "sklearn") -> dict:
    """Register ``face_embedding`` as a FiftyOne Brain similarity index, so that the App sorts by
    similarity (click a synthetic face: the most similar faces, real ones among them). The
    sklearn backend centres the vectors before its cosine distances: its numbers are never used
    as thresholds here (the audit computes raw cosines itself)."""
    import fiftyone.brain as fob

    params.name("brain_key", brain_key)
    if brain_key in dataset.list_brain_runs():
        dataset.delete_brain_run(brain_key)
    fob.compute_similarity(dataset, embeddings=EMBEDDING_FIELD, brain_key=brain_key, backend=backend,
                           metric="cosine", progress=False)
    return {"brain_key": brain_key, "backend": backend}


UMAP_MAX_SAMPLES = 200_000  # above this, PCA: UMAP's neighbour graph takes hours on a CPU at 1M
UMAP_MIN_SAMPLES = 16  # below this, PCA: UMAP's neighbour graph of a handful of points is no map
MAP_MIN_POINTS = 3  # a 2-D map of fewer points is no map (and PCA refuses one point)


def visualization_method(samples: int = 0) -> str:
    """UMAP where ``umap-learn`` imports and the map has at most :data:`UMAP_MAX_SAMPLES` points
    (it keeps identities apart on the map), else PCA (always there: scikit-learn)."""
    if samples > UMAP_MAX_SAMPLES or samples < UMAP_MIN_SAMPLES:
        return "pca"
    try:
        import umap  # noqa: F401
    except ImportError:
        return "pca"
    return "umap"


def register_visualization(dataset, brain_key: str = VISUALIZATION_KEY, method: str | None = None) -> dict:
    """A 2-D map of ``face_embedding`` (``fob.compute_visualization``, seeded) for the App's
    Embeddings panel: colour it by ``source`` or ``identity``, lasso a cluster and the grid shows
    its faces. Only samples with an embedding are mapped (no_face and unreadable ones have none)."""
    import fiftyone.brain as fob

    params.name("brain_key", brain_key)
    embedded = dataset.exists(EMBEDDING_FIELD)
    n = embedded.count()
    if brain_key in dataset.list_brain_runs():  # an earlier map of other vectors would mislead
        dataset.delete_brain_run(brain_key)
    if n < MAP_MIN_POINTS:
        return {"brain_key": brain_key, "skipped": f"{n} embedded sample{'s' * (n != 1)}: a 2-D map takes at "
                                                   f"least {MAP_MIN_POINTS}"}
    method = method or visualization_method(n)
    fob.compute_visualization(embedded, embeddings=EMBEDDING_FIELD, brain_key=brain_key,
                              method=method, num_dims=2, seed=0, progress=False)
    return {"brain_key": brain_key, "method": method}


def write_reports(result: dict, json_path=None, html_path=None, csv_path=None) -> list[str]:
    """The audit's reports (paths checked beforehand with :func:`faceaudit.params.output_files`)."""
    import json

    from faceaudit import identity_report

    written = []
    if json_path:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=str)
        written.append(json_path)
    if html_path:
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(identity_report.to_html(result))
        written.append(html_path)
    if csv_path:
        with open(csv_path, "w", encoding="utf-8", newline="") as f:
            f.write(identity_report.to_csv(result))
        written.append(csv_path)
    return written
