"""Exclusive runs per dataset across processes and hosts: a lock is a document with a unique
``_id`` in FiftyOne's database (the collection :data:`fiftyone_plugin.fanout.LOCKS`), renewed by a
background thread while it is held.

A holder that was killed stops renewing: its lock is taken over once it is :data:`EXPIRES`
seconds old, or at once when the holder ran on this host and its process is gone (SIGKILL, then
a rerun, needs no wait).
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


class Busy(RuntimeError):
    """Another process holds the lock; the message says which run and since when."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextmanager
def exclusive(key: str, busy: str):
    """Hold the lock ``key`` for the ``with`` block, or raise :class:`Busy` with ``busy`` (plus
    since when and where the holder runs) at once when another live run holds it."""
    import fiftyone.core.odm as foo_db
    from pymongo.errors import DuplicateKeyError

    locks = foo_db.get_db_conn()[LOCKS]
    owner, host, pid = uuid.uuid4().hex, socket.gethostname(), os.getpid()
    doc = {"_id": key, "owner": owner, "host": host, "pid": pid}
    for _ in range(2):  # a second try after removing a dead holder's lock
        now = schema.utc_now()
        try:
            locks.insert_one({**doc, "since": now, "renewed_at": now})
            break
        except DuplicateKeyError:
            held = locks.find_one({"_id": key}) or {}
            stale = held.get("renewed_at") is None or held["renewed_at"] < now - dt.timedelta(seconds=EXPIRES)
            gone = held.get("host") == host and isinstance(held.get("pid"), int) and not _alive(held["pid"])
            if not (stale or gone):
                since = held.get("since")
                raise Busy(f"{busy} (process {held.get('pid')} on {held.get('host')}, since "
                           f"{since:%Y-%m-%d %H:%M:%S} UTC): wait for it to finish" if since else busy) from None
            locks.delete_one({"_id": key, "owner": held.get("owner")})
    else:
        raise Busy(busy)
    stop = threading.Event()

    def renew():
        while not stop.wait(RENEW_EVERY):
            locks.update_one({"_id": key, "owner": owner}, {"$set": {"renewed_at": schema.utc_now()}})

    thread = threading.Thread(target=renew, name=f"lock {key}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        locks.delete_one({"_id": key, "owner": owner})
