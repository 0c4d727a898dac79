"""Sharded jobs fanned out as delegated operations: one operation per shard (``annotate_attributes``
for annotation, ``compute_face_embeddings`` for embeddings: a :class:`Job` says which operator,
which samples are left and how the parameters are checked before anything is queued).

Any number of ``fiftyone delegated launch`` workers, on any hosts pointed at the same database,
share the queue; FiftyOne claims each queued operation atomically
(``set_running(required_state=QUEUED)``), so each shard runs on one worker.

Re-running :func:`fan_out` queues only the shards that still have unlabelled samples and are not
queued or running already; fan-outs started together take turns (a lock document in the
database), so each shard is queued once. A worker that dies (killed, host lost) leaves its operation RUNNING
forever: FiftyOne's open-source launcher neither notices nor times it out (only ``fiftyone
delegated fail ID`` or a monitored launcher's pings touch it). So an operation RUNNING whose
last sign of life (``updated_at``, or its progress's ``updated_at``; the annotator reports
progress every batch) is older than ``stale_after`` seconds is marked FAILED here, with a reason,
and its shard is queued again. Labels are written per sample and deterministic, so a shard run
again continues where the dead worker stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from fiftyone import ViewExpression

from faceaudit.attributes import ATTRIBUTES

from . import schema
from .annotate import select_view, shard_key, todo_view

ANNOTATE_URI = "@faceaudit/face-audit/annotate_attributes"
#: an operation RUNNING with no progress for this long is taken for dead (see the module doc)
STALE_AFTER = 900.0
ACTIVE_STATES = ("queued", "scheduled", "running")


@dataclass(frozen=True)
class Job:
    """A sharded job: its operator's URI, the samples of a view still to do, and a check of the
    operator's parameters (returns them, e.g. with paths made absolute) run before queueing."""

    uri: str
    todo: Callable  # view -> the samples left
    check: Callable[[dict], dict]
    verb: str = "label"  # "N samples left to <verb>"


@dataclass
class ShardState:
    shard: str  # "I/N"
    left: int  # unlabelled readable samples of the shard
    state: str | None = None  # its latest operation's run state, if any
    progress: str | None = None  # that operation's last progress label
    operation: str | None = None  # its id
    silent_s: float | None = None  # a running operation's seconds since its last sign of life
    error: str | None = None  # a failed operation's reason (its last line)


@dataclass
class FanOutReport:
    dataset: str
    shards: list[ShardState] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # shards queued by this call
    failed_stale: list[str] = field(default_factory=list)  # operations marked failed as dead
    verb: str = "label"

    def summary(self) -> str:
        left = sum(s.left for s in self.shards)
        lines = [f"dataset '{self.dataset}': {left} samples left to {self.verb} in {len(self.shards)} shards"]
        for s in self.shards:
            lines.append(f"  shard {s.shard}: {s.left} left; {s.state or 'no operation'}"
                         + (f" ({s.progress})" if s.progress else "") + _health(s))
        if self.failed_stale:
            lines.append(f"marked failed (no sign of life): {', '.join(self.failed_stale)}")
        if self.queued is not None:
            lines.append(f"queued now: {', '.join(self.queued) or 'nothing'}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _health(s: ShardState) -> str:
    """How a shard's operation is doing, for the status line: a running one's silence (stale
    past :data:`STALE_AFTER`), a failed one's reason."""
    if s.state == "running" and s.silent_s is not None:
        stale = "; STALE: its worker is presumed dead, the next fan-out queues it again" \
            if s.silent_s >= STALE_AFTER else ""
        return f", last sign of life {s.silent_s:.0f} s ago{stale}"
    if s.state == "failed" and s.error:
        return f": {s.error}"
    return ""


def _error(op) -> str | None:
    error = getattr(getattr(op, "result", None), "error", None)
    lines = [line.strip() for line in str(error or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def shard_remaining(view, count: int, job: Job | None = None) -> list[int]:
    """Samples of ``view`` left to do (default: unlabelled readable ones) in each of ``count``
    shards (one aggregation)."""
    todo = (job or ANNOTATE).todo(view)
    counts = todo.count_values(ViewExpression(shard_key(count)))
    return [int(counts.get(i, 0)) for i in range(count)]


def shard_operations(dataset_name: str, view=None, job: Job | None = None) -> dict[str, list]:
    """The annotation operations queued on ``dataset_name`` for a shard, by shard ("I/N"), oldest
    first; given ``view``, only those that label that selection (shard 0/2 of ``--source r`` is
    not shard 0/2 of ``--source s``)."""
    from fiftyone.operators.delegated import DelegatedOperationService

    wanted = None if view is None else _view_stages(view)
    by_shard: dict[str, list] = {}
    uri = (job or ANNOTATE).uri
    ops = DelegatedOperationService().list_operations(operator=uri, dataset_name=dataset_name)
    for op in sorted(ops, key=lambda o: o.queued_at or dt.datetime.min):
        shard = _params(op).get("shard")
        if shard and (wanted is None or _stages(_request(op).get("view")) == wanted):
            by_shard.setdefault(str(shard), []).append(op)
    return by_shard


def _view_stages(view) -> list:
    """The stages of ``view``, a view or a whole dataset (a delegated operation's ``ctx.view``
    on a dataset with no stages is the dataset, whose ``_serialize()`` is its document)."""
    return _stages(view.view()._serialize())


def _stages(serialized) -> list:
    """A serialized view's stages without their random ``_uuid``s, to compare selections."""
    if isinstance(serialized, str):
        serialized = json.loads(serialized)
    return [{k: v for k, v in stage.items() if k != "_uuid"} for stage in serialized or []]


def _request(op) -> dict:
    return getattr(getattr(op, "context", None), "request_params", None) or {}


def _params(op) -> dict:
    return _request(op).get("params") or {}


def _last_sign_of_life(op) -> dt.datetime:
    times = [op.updated_at, op.started_at, getattr(op.status, "updated_at", None)]
    return max(t for t in times if t is not None)


def _fail_if_stale(op, stale_after: float) -> bool:
    """Mark ``op`` FAILED when it is RUNNING without a sign of life for ``stale_after`` s."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult

    silent = (schema.utc_now() - _last_sign_of_life(op)).total_seconds()
    if op.run_state != "running" or silent < stale_after:
        return False
    reason = f"faceaudit: no progress for {silent:.0f} s (worker presumed dead); shard queued again"
    done = DelegatedOperationService().set_failed(op.id, result=ExecutionResult(error=reason),
                                                  required_state="running")
    return done is not None


def shard_status(dataset_name: str, count: int | None = None, view=None, source: str | None = None,
                 job: Job | None = None) -> FanOutReport:
    """What is left in each of ``count`` shards (default: the count of the latest fan-out, else
    1) and the state of each shard's latest operation."""
    job = job or ANNOTATE
    dataset = schema.open_dataset(dataset_name, create=False)
    selected = select_view(dataset, view, source).view()
    ops = shard_operations(dataset.name, selected, job)
    if count is None:
        latest = max((o for group in ops.values() for o in group), key=lambda o: o.queued_at or dt.datetime.min,
                     default=None)
        count = int(_params(latest)["shard"].split("/")[1]) if latest is not None else 1
    left = shard_remaining(selected, count, job)
    report = FanOutReport(dataset.name, queued=None, verb=job.verb)
    for i, n_left in enumerate(left):
        name = f"{i}/{count}"
        latest = ops.get(name, [None])[-1]
        report.shards.append(ShardState(
            name, n_left, latest.run_state if latest else None,
            getattr(latest.status, "label", None) if latest is not None and latest.status else None,
            str(latest.id) if latest else None,
            (schema.utc_now() - _last_sign_of_life(latest)).total_seconds() if latest is not None else None,
            _error(latest) if latest is not None and latest.run_state == "failed" else None))
    return report


def fan_out(dataset_name: str, count: int, params: dict, view=None, source: str | None = None,
            stale_after: float = STALE_AFTER, job: Job | None = None) -> FanOutReport:
    """Queue one delegated operation of ``job`` (default: ``annotate_attributes``) per shard of
    ``count`` that has samples left and no live operation; ``params`` are the operator's
    (checkpoint, device, batch_size, ...); each operation gets its ``shard`` added."""
    job = job or ANNOTATE
    dataset = schema.open_dataset(dataset_name, create=False)
    view = select_view(dataset, view, source).view()  # an operator's target may be the Dataset itself
    params = job.check(params)
    report = FanOutReport(dataset.name, verb=job.verb)
    with _fan_out_lock(dataset.name) as still_alive:  # list and queue as one step: no shard twice
        for shard, ops in shard_operations(dataset.name, job=job).items():
            for op in ops:
                if _fail_if_stale(op, stale_after):
                    report.failed_stale.append(f"{shard} ({op.id})")
        live = {shard for shard, ops in shard_operations(dataset.name, view, job).items()
                if any(op.run_state in ACTIVE_STATES for op in ops)}
        other = sorted(shard for shard in live if shard.split("/")[1] != str(count))
        if other:  # their shards overlap these: every sample would be labelled twice
            raise ValueError(f"dataset '{dataset.name}': shards {', '.join(other)} of this selection are still "
                             f"queued or running; wait for them, or rerun with --shards {other[0].split('/')[1]}")
        _refuse_other_live_work(dataset, view, params, live, job)
        for i, left in enumerate(shard_remaining(view, count, job)):
            name = f"{i}/{count}"
            if left and name not in live:
                ctx = {"dataset": dataset, "view": view, "params": {**params, "shard": name, "delegate": True}}
                result = _queue(ctx, job.uri)
                if not result.delegated:
                    raise RuntimeError(f"shard {name} was not queued: {result.error or 'the operator ran it at once'}")
                report.queued.append(name)
                still_alive()
    status = shard_status(dataset.name, count, view, job=job)
    report.shards = status.shards
    return report


def _settings(params: dict) -> dict:
    return {k: v for k, v in (params or {}).items() if k not in ("shard", "delegate") and v is not None}


def _refuse_other_live_work(dataset, view, params: dict, live: set[str], job: Job) -> None:
    """Refuse a fan-out while live shards label this selection with other settings (a shard
    queued already keeps its model and threshold: "queued now: nothing" would hide that), or
    while live shards of another selection overlap this one (their samples labelled twice)."""
    import fiftyone.core.stages as fost

    mine = _view_stages(view)
    for shard, ops in shard_operations(dataset.name, job=job).items():
        for op in (o for o in ops if o.run_state in ACTIVE_STATES):
            theirs = _stages(_request(op).get("view"))
            if theirs == mine:
                if shard in live and _settings(_params(op)) != _settings(params):
                    raise ValueError(
                        f"dataset '{dataset.name}': shard {shard} is {op.run_state} with other settings "
                        f"({_settings(_params(op))}, not {_settings(params)}); wait for it, or fail it "
                        f"(fiftyone delegated fail {op.id}) before fanning out with new settings")
                continue
            both = view
            for stage in theirs:
                both = both.add_stage(fost.ViewStage._from_dict(stage))
            if both.count():
                raise ValueError(
                    f"dataset '{dataset.name}': shard {shard} of another selection is {op.run_state} and "
                    f"shares {both.count()} samples with this one; wait for it, or fan out the same selection")


def _checked_checkpoint(params: dict) -> dict:
    """``params`` with a local MAC checkpoint made absolute, once it loads here: the launchers run
    in other folders (a relative path would name another file, or none), and a checkpoint that
    cannot load would fail every shard after it was queued, not before."""
    checkpoint = params.get("checkpoint")
    if (params.get("model") or "mac") != "mac" or not checkpoint:  # the App sends model: None
        return params
    from faceaudit.model import load_checkpoint

    checkpoint = checkpoint if "://" in checkpoint else os.path.abspath(checkpoint)
    load_checkpoint(checkpoint, attributes=ATTRIBUTES)  # raises naming the file and the problem
    return {**params, "checkpoint": checkpoint}


def _queue(ctx: dict, uri: str = ANNOTATE_URI):
    """``foo.execute_operator(..., request_delegation=True)`` for one shard, on a thread of its
    own: inside a running operator (the App's "Split into N jobs") an event loop is running, and
    there ``execute_operator`` returns an unawaited task instead of queueing."""
    import fiftyone.operators as foo

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(foo.execute_operator, uri, ctx=ctx, request_delegation=True).result()


#: the collection (in FiftyOne's database) of the shard count each selection's labelling began with
SHARD_COUNTS = "faceaudit_shard_counts"


def claim_shard_count(dataset, view, count: int) -> None:
    """Record that the labelling of ``view`` is split in ``count`` shards, or refuse ``count``
    when another count's workers began it and it is unfinished: workers started with 0/2 and 1/3
    would label some samples twice and leave others unlabelled. The first worker's count wins
    (one insert with a unique ``_id``); a finished labelling may be split anew."""
    import hashlib

    import fiftyone.core.odm as foo_db
    from pymongo.errors import DuplicateKeyError

    selection = json.dumps(_view_stages(view), sort_keys=True, default=str)
    key = f"{dataset.name}:{hashlib.sha1(selection.encode()).hexdigest()}"
    counts = foo_db.get_db_conn()[SHARD_COUNTS]
    for _ in range(3):
        try:
            counts.insert_one({"_id": key, "count": count, "claimed_at": schema.utc_now()})
            return
        except DuplicateKeyError:
            pass
        doc = counts.find_one({"_id": key})
        if doc is None:  # removed meanwhile: claim again
            continue
        if doc["count"] == count:
            return
        if todo_view(view).limit(1).count():
            raise ValueError(
                f"dataset '{dataset.name}': this selection's labelling was split in {doc['count']} shards by "
                f"the workers already started, not {count} (RANK/WORLD_SIZE or --shard differ between workers); "
                f"finish it with --shard I/{doc['count']} for I in 0..{doc['count'] - 1}, or without --shard")
        counts.update_one({"_id": key, "count": doc["count"]}, {"$set": {"count": count, "claimed_at": schema.utc_now()}})
        return

ANNOTATE = Job(ANNOTATE_URI, todo_view, _checked_checkpoint)

#: the collection (in FiftyOne's database) that holds one lock document per dataset being fanned out
LOCKS = "faceaudit_locks"
#: a lock not renewed for this long belongs to a fan-out that died (killed between two shards)
LOCK_EXPIRES = 120.0


@contextmanager
def _fan_out_lock(dataset_name: str, wait: float = 600.0):
    """Hold the fan-out lock of ``dataset_name`` (processes and hosts alike: it is a document with
    a unique ``_id`` in the shared database) while listing and queueing, so that fan-outs started
    together queue each shard once. Yields a function that renews the lock; a lock left by a
    fan-out that was killed expires after :data:`LOCK_EXPIRES` seconds."""
    import fiftyone.core.odm as foo_db
    from pymongo.errors import DuplicateKeyError

    locks, key, owner = foo_db.get_db_conn()[LOCKS], f"fan_out:{dataset_name}", uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while True:
        expired = schema.utc_now() - dt.timedelta(seconds=LOCK_EXPIRES)
        locks.delete_one({"_id": key, "renewed_at": {"$lt": expired}})
        try:
            locks.insert_one({"_id": key, "owner": owner, "renewed_at": schema.utc_now()})
            break
        except DuplicateKeyError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dataset '{dataset_name}': another fan-out has held the queue for over "
                                   f"{wait:.0f} s; try again when it is done") from None
            time.sleep(0.2)
    try:
        yield lambda: locks.update_one({"_id": key, "owner": owner}, {"$set": {"renewed_at": schema.utc_now()}})
    finally:
        locks.delete_one({"_id": key, "owner": owner})
