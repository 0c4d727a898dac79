"""Fixed-size projected documents from MongoDB's reply bytes straight into numpy.

Counting reads millions of tiny projected documents (``{mac_code: <47 chars>}``). pymongo's
``find_raw_batches``/``aggregate_raw_batches`` promise raw bytes, but pymongo 4.9 (the version
FiftyOne pins) still builds one ``RawBSONDocument`` per returned document while unpacking each
reply (``_decode_selective`` inflates the cursor sub-document): measured on 1,000,000 documents,
2.9 s, against 1.0 s for running the same ``find``/``getMore`` commands through
``Database.command`` with a raw reply and slicing the batch array here (``bench/compare.py``).

A reply is ``{cursor: {firstBatch|nextBatch: [docs], id: int64, ns: str}, ok: 1, ...}``. Only
the few top-level and cursor elements are walked; the batch array is cut into its documents with
numpy, which is exact because every document has the same size: element ``k`` of a BSON array
is ``0x03``, the decimal digits of ``k``, ``0x00``, then the document.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import closing

import numpy as np
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

BATCH_SIZE = 100_000  # ~7.5 MB of 67-byte documents per reply (MongoDB's cap is 16 MiB)
_RAW = CodecOptions(document_class=RawBSONDocument)
# sizes of the fixed-width BSON element types a command reply can hold
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


class RawScanError(ValueError):
    """A reply that is not the fixed-size layout asked for."""


def fixed_size_docs(db, command: dict, doc_size: int, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Run a ``find`` or ``aggregate`` command on ``db`` and return every result document as a row
    of an ``(n, doc_size)`` uint8 array (each document must encode to exactly ``doc_size`` bytes).
    The cursor is killed if reading stops early."""
    with closing(_batches(db, command, batch_size)) as batches:
        rows = [_split_array(raw, doc_size) for raw in batches]
    return np.concatenate(rows) if rows else np.zeros((0, doc_size), np.uint8)


def _batches(db, command: dict, batch_size: int) -> Iterator[bytes]:
    """Each reply's batch array (raw BSON bytes), following the cursor with ``getMore``."""
    name = command.get("find") or command.get("aggregate")
    command = dict(command)
    if "aggregate" in command:
        command["cursor"] = {"batchSize": batch_size}
    else:
        command["batchSize"] = batch_size
    cursor_id = 0
    # a cursor belongs to the session that opened it: without an explicit one, each command
    # would take any pooled implicit session, and a getMore from another thread's fails
    with db.client.start_session() as session:
        try:
            array, cursor_id = _cursor_reply(db.command(command, codec_options=_RAW, session=session).raw)
            yield array
            while cursor_id:
                reply = db.command({"getMore": cursor_id, "collection": name, "batchSize": batch_size},
                                   codec_options=_RAW, session=session)
                array, cursor_id = _cursor_reply(reply.raw)
                yield array
        finally:
            if cursor_id:
                db.command({"killCursors": name, "cursors": [cursor_id]}, session=session)


def _elements(raw: bytes, start: int, end: int) -> Iterator[tuple[int, str, int, int]]:
    """(type, key, value start, value end) of the BSON document ``raw[start:end]``."""
    pos = start + 4
    while pos < end - 1:
        kind = raw[pos]
        key_end = raw.index(b"\x00", pos + 1)
        key = raw[pos + 1:key_end].decode()
        value = key_end + 1
        if kind in (0x03, 0x04):
            size = struct.unpack_from("<i", raw, value)[0]
        elif kind == 0x02:
            size = 4 + struct.unpack_from("<i", raw, value)[0]
        elif kind == 0x05:
            size = 5 + struct.unpack_from("<i", raw, value)[0]
        elif kind in _FIXED:
            size = _FIXED[kind]
        else:
            raise RawScanError(f"unexpected BSON type {kind:#x} for {key!r} in a cursor reply")
        yield kind, key, value, value + size
        pos = value + size


def _cursor_reply(raw: bytes) -> tuple[bytes, int]:
    """The batch array's bytes and the cursor id of one command reply."""
    cursor = next(((s, e) for kind, key, s, e in _elements(raw, 0, len(raw)) if key == "cursor"), None)
    if cursor is None:
        raise RawScanError("the command reply has no cursor")
    array, cursor_id = None, None
    for _, key, s, e in _elements(raw, *cursor):
        if key in ("firstBatch", "nextBatch"):
            array = raw[s:e]
        elif key == "id":
            cursor_id = struct.unpack_from("<q", raw, s)[0]
    if array is None or cursor_id is None:
        raise RawScanError("the cursor reply has no batch or no id")
    return array, cursor_id


def _split_array(array: bytes, doc_size: int) -> np.ndarray:
    """A BSON array of documents of ``doc_size`` bytes each -> ``(n, doc_size)`` uint8 rows."""
    body = np.frombuffer(array, np.uint8)[4:-1]
    rows, pos, first = [], 0, 0
    digits = 1
    while pos < body.size:
        width = 2 + digits + doc_size  # 0x03, the key's digits, 0x00, the document
        count = min(10 ** digits - first, (body.size - pos) // width)
        if count <= 0:
            break
        block = body[pos:pos + count * width].reshape(count, width)
        if not ((block[:, 0] == 0x03).all() and (block[:, 1 + digits] == 0).all()):
            raise RawScanError(f"the batch's documents are not all {doc_size} bytes")
        rows.append(block[:, 2 + digits:])
        pos += count * width
        first += count
        digits += 1
    if pos != body.size:
        raise RawScanError(f"the batch's documents are not all {doc_size} bytes")
    return np.concatenate(rows) if rows else np.zeros((0, doc_size), np.uint8)
