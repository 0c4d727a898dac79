"""Runs that must not overlap, per dataset, across processes and hosts.

A lock is one document per key in FiftyOne's database (the collection :data:`LOCKS`, shared
with the fan-out lock ``fanout.LOCKS``): ``{"_id": key, "exclusive": holder, "shared": [holder,
...]}``. Any number of *shared* holders (the shards of one ``faceaudit embed``, writing vectors)
may hold a key at once; an *exclusive* holder (an identity audit, reading every vector) holds it
alone. Both are taken with one conditional update of that document, so two processes that start
together cannot both get in.

A shared holder may name its ``kind`` (an embed run: its settings): shared holders of another kind
are refused, so only runs that write the same thing share a key. One that must start ``alone``
(an ``embed --overwrite``, which drops every vector first) is refused beside any holder, and
others are refused beside it until it calls :meth:`Holding.share` (its vectors are dropped).

Each holder renews its entry from a background thread. A holder that was killed stops renewing:
its entry is taken over once it is :data:`EXPIRES` seconds old, or at once when it ran on this
host and its process is gone (SIGKILL, then a rerun, needs no wait).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import uuid
from contextlib import contextmanager

from . import schema

LOCKS = "faceaudit_locks"  # the same collection as the fan-out lock (fanout.LOCKS)
EXPIRES = 120.0  # seconds without renewal after which a holder counts as dead
RENEW_EVERY = 10.0
TRIES = 100  # conditional takes: each failed one removes dead holders, and a holder that left meanwhile means try again


def vectors_key(dataset_name: str) -> str:
    """The lock of a dataset's face embeddings: embed runs share it, an identity audit holds it alone."""
    return f"vectors:{dataset_name}"


class Busy(RuntimeError):
    """Another live run holds the lock; the message says which run, where and since when."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _dead(holder: dict, now: dt.datetime) -> bool:
    """A holder that stopped renewing, or whose process on this host is gone."""
    renewed = holder.get("renewed_at")
    if not isinstance(renewed, dt.datetime) or renewed < now - dt.timedelta(seconds=EXPIRES):
        return True
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


def _collection():
    import fiftyone.core.odm as foo_db

    return foo_db.get_db_conn()[LOCKS]


def _remove_dead(locks, key: str, doc: dict, now: dt.datetime) -> tuple[list[dict], list[dict]]:
    """Drop ``doc``'s dead holders (each removal conditional on that holder); returns the live
    (exclusive, shared) ones."""
    exclusive, shared = [], []
    if "owner" in doc:  # the one-holder format of faceaudit before shared holders: exclusive
        if _dead(doc, now):
            locks.delete_one({"_id": key, "owner": doc["owner"]})
        else:
            exclusive.append(doc)
    held = doc.get("exclusive")
    if isinstance(held, dict):
        if _dead(held, now):
            locks.update_one({"_id": key, "exclusive.owner": held.get("owner")}, {"$unset": {"exclusive": ""}})
        else:
            exclusive.append(held)
    for holder in doc.get("shared") or []:
        if isinstance(holder, dict) and not _dead(holder, now):
            shared.append(holder)
        else:
            locks.update_one({"_id": key}, {"$pull": {"shared": holder}})
    _tidy(locks, key)
    return exclusive, shared


def _tidy(locks, key: str) -> None:
    """Delete the key's document once nobody holds it (also a document of an older format)."""
    locks.delete_one({"_id": key, "owner": {"$exists": False}, "exclusive": {"$exists": False},
                      "$or": [{"shared": {"$size": 0}}, {"shared": {"$exists": False}}]})


def _busy_text(subject: str, holder: dict, why: str = "") -> str:
    since = holder.get("since")
    when = f", since {since:%Y-%m-%d %H:%M:%S} UTC" if isinstance(since, dt.datetime) else ""
    return (f"{subject}: {holder.get('what', 'another run')} is running (process {holder.get('pid')} on "
            f"{holder.get('host')}{when}){why}: wait for it to finish")


class Holding:
    """What a ``with shared(...)`` block gets: :meth:`share` lets others of its kind in beside
    a holder that started ``alone``."""

    def __init__(self, locks, mine: dict):
        self._locks, self._mine = locks, mine

    def share(self) -> None:
        self._locks.update_one(self._mine, {"$set": {"shared.$.alone": False}})


def _blocking(kind, alone, beside: list[dict]) -> tuple[dict, str] | None:
    """The first live shared holder that a shared take of ``kind`` (``alone``) may not join, and why."""
    for holder in beside:
        if alone:
            return holder, f"; this run needs it alone ({alone})"
        if holder.get("alone"):
            return holder, f"; it started alone ({holder.get('alone_why')})"
        if holder.get("kind") != kind:
            return holder, f" with other settings ({holder.get('kind')}; this run: {kind})"
    return None


@contextmanager
def exclusive(key: str, subject: str, what: str):
    """Hold ``key`` alone for the ``with`` block, or raise :class:`Busy` at once, naming the
    live holder ("``subject``: ``what`` is running (process ...)"), when another run holds it."""
    with _held(key, subject, what, shared=False):
        yield


@contextmanager
def shared(key: str, subject: str, what: str, kind: str | None = None, alone: str | None = None):
    """Hold ``key`` beside other shared holders of the same ``kind`` for the ``with`` block
    (yields a :class:`Holding`), or raise :class:`Busy` at once, naming the holder, when an
    exclusive holder has it, a shared one of another kind, or one that started alone and has not
    shared yet. ``alone`` (the reason, as "--overwrite drops ...") refuses any other holder."""
    with _held(key, subject, what, shared=True, kind=kind, alone=alone) as holding:
        yield holding


def _take(shared: bool, me: dict, kind, alone) -> tuple[dict, dict]:
    """The condition and update of one conditional take."""
    condition = {"owner": {"$exists": False}, "exclusive": {"$exists": False}}  # no exclusive holder
    if not shared or alone:  # and nobody else either
        condition["shared"] = {"$size": 0}
    else:  # only shared holders of this kind that let others in
        condition["shared"] = {"$not": {"$elemMatch": {"$or": [{"kind": {"$ne": kind}}, {"alone": True}]}}}
    if shared:
        return condition, {"$push": {"shared": {**me, "kind": kind, "alone": bool(alone), "alone_why": alone}}}
    return condition, {"$set": {"exclusive": me}, "$setOnInsert": {"shared": []}}


@contextmanager
def _held(key: str, subject: str, what: str, shared: bool, kind: str | None = None, alone: str | None = None):
    from pymongo.errors import DuplicateKeyError

    locks, owner = _collection(), uuid.uuid4().hex
    now = schema.utc_now()
    me = {"owner": owner, "what": what, "host": socket.gethostname(), "pid": os.getpid(), "since": now,
          "renewed_at": now}
    condition, take = _take(shared, me, kind, alone)
    for _ in range(TRIES):
        try:
            locks.update_one({"_id": key, **condition}, take, upsert=True)
            break
        except DuplicateKeyError:  # the document exists and the condition does not hold
            held, beside = _remove_dead(locks, key, locks.find_one({"_id": key}) or {}, schema.utc_now())
            if held:
                raise Busy(_busy_text(subject, held[0])) from None
            blocking = _blocking(kind, alone, beside) if shared else (beside[0], "") if beside else None
            if blocking:
                raise Busy(_busy_text(subject, *blocking)) from None
    else:
        raise Busy(f"{subject}: another run holds it ({key}); try again")
    renewed = "exclusive.renewed_at" if not shared else "shared.$.renewed_at"
    mine = {"_id": key, ("shared.owner" if shared else "exclusive.owner"): owner}
    stop = threading.Event()

    def renew():
        while not stop.wait(RENEW_EVERY):
            locks.update_one(mine, {"$set": {renewed: schema.utc_now()}})

    thread = threading.Thread(target=renew, name=f"lock {key}", daemon=True)
    thread.start()
    try:
        yield Holding(locks, mine)
    finally:
        stop.set()
        thread.join()
        if shared:
            locks.update_one({"_id": key}, {"$pull": {"shared": {"owner": owner}}})
        else:
            locks.update_one(mine, {"$unset": {"exclusive": ""}})
        _tidy(locks, key)
