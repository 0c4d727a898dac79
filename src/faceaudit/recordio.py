"""InsightFace / MXNet RecordIO (``train.rec`` + ``train.idx``) without mxnet.

The format (dmlc-core ``recordio.h`` and ``mxnet.recordio``):

* ``train.idx`` is text, one ``key<TAB>byte-offset`` line per record.
* Each record in ``train.rec`` is ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (upper 3 bits a
  continuation flag, lower 29 bits the payload length), then the payload padded to 4 bytes. A
  payload that contains the magic number at an aligned position is split by the writer into parts
  (flag 1 = first, 2 = middle, 3 = last) and the reader puts the magic number back between them.
* A payload is an ``IRHeader`` (``uint32 flag, float32 label, uint64 id, uint64 id2``); if
  ``flag > 0`` the label is instead ``flag`` float32 values that follow the header. The image
  bytes (JPEG, usually) come last.
* InsightFace's record 0 is a header whose label is ``(first_identity_record, end)``: records
  ``1 .. first_identity_record-1`` are images whose label is the identity, and the records from
  there to ``end`` describe identities (their labels are image-index ranges) and hold no image.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LREC_MASK = (1 << 29) - 1
_IRHEADER = struct.Struct("<IfQQ")


class RecordIOError(ValueError):
    """A .rec or .idx file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class RecImage:
    """One image record: its key in the .idx, identity label and encoded image bytes."""

    key: int
    label: float
    data: bytes


def read_index(idx_path: str) -> list[tuple[int, int]]:
    """Parse a .idx file into ``(key, offset)`` pairs sorted by offset."""
    entries = []
    try:
        with open(idx_path, encoding="ascii") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2:
                    raise RecordIOError(
                        f"{idx_path}: line {lineno} is not 'key<TAB>offset': {line.strip()[:60]!r}"
                    )
                try:
                    entries.append((int(parts[0]), int(parts[1])))
                except ValueError:
                    raise RecordIOError(
                        f"{idx_path}: line {lineno} has a non-integer key or offset: {line.strip()[:60]!r}"
                    ) from None
    except UnicodeDecodeError:
        raise RecordIOError(f"{idx_path}: not a text .idx file (binary content)") from None
    if not entries:
        raise RecordIOError(f"{idx_path}: the index is empty")
    entries.sort(key=lambda e: e[1])
    return entries


def _read_exact(f, n: int, rec_path: str, offset: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise RecordIOError(
            f"{rec_path}: truncated: the record at byte {offset} needs {n} more bytes, "
            f"the file has {len(data)}"
        )
    return data


def read_record_at(f, offset: int, rec_path: str) -> bytes:
    """Read the (possibly multi-part) record payload starting at ``offset`` of open file ``f``."""
    f.seek(offset)
    parts = []
    pos = offset
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise RecordIOError(f"{rec_path}: truncated: no complete record header at byte {pos}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(
                f"{rec_path}: no record at byte {pos} (bad magic number): "
                "the .idx does not match this .rec, or the file is damaged"
            )
        cflag, length = lrec >> 29, lrec & _LREC_MASK
        padded = (length + 3) & ~3
        parts.append(_read_exact(f, padded, rec_path, pos)[:length])
        pos += 8 + padded
        if cflag in (0, 3):
            break
    return _MAGIC_BYTES.join(parts)


def unpack_payload(payload: bytes) -> tuple[int, tuple[float, ...], bytes]:
    """Split a record payload into ``(flag, labels, image_bytes)``."""
    if len(payload) < _IRHEADER.size:
        raise ValueError(f"record payload of {len(payload)} bytes is shorter than its header")
    flag, label, _id, _id2 = _IRHEADER.unpack_from(payload)
    body = payload[_IRHEADER.size:]
    if flag > 0:
        n = 4 * flag
        if len(body) < n:
            raise ValueError(f"record header announces {flag} labels but the payload is too short")
        return flag, struct.unpack(f"<{flag}f", body[:n]), body[n:]
    return 0, (label,), body


class RecordIOReader:
    """Random and sequential access to an InsightFace ``.rec``/``.idx`` pair."""

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.rec_path = rec_path
        self.idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
        if not os.path.isfile(self.rec_path):
            raise RecordIOError(f"{self.rec_path}: no such .rec file")
        if not os.path.isfile(self.idx_path):
            raise RecordIOError(f"{self.idx_path}: no .idx file next to {os.path.basename(rec_path)}")
        self.entries = read_index(self.idx_path)
        self.rec_size = os.path.getsize(self.rec_path)
        self._check_index_fits()
        self.offsets = dict(self.entries)
        self.image_keys = self._image_keys()

    def _check_index_fits(self) -> None:
        last_key, last_offset = self.entries[-1]
        if last_offset + 8 > self.rec_size:
            raise RecordIOError(
                f"{self.rec_path}: truncated or wrong .rec: {self.idx_path} puts record {last_key} "
                f"at byte {last_offset} but the .rec has {self.rec_size} bytes"
            )
        with open(self.rec_path, "rb") as f:
            read_record_at(f, last_offset, self.rec_path)  # the last record must be complete

    def _image_keys(self) -> list[int]:
        """Keys of the image records, in file order, leaving out InsightFace's header records."""
        keys = [k for k, _ in self.entries]
        if 0 not in self.offsets:
            return keys
        flag, labels, _ = self._unpack(0, self.read_payload(0))
        if flag > 0 and len(labels) >= 2:  # InsightFace header: images are 1 .. labels[0]-1
            first_identity_record = int(labels[0])
            return [k for k in keys if 1 <= k < first_identity_record]
        return keys

    def _unpack(self, key: int, payload: bytes):
        try:
            return unpack_payload(payload)
        except ValueError as e:
            raise RecordIOError(f"{self.rec_path}: record {key}: {e}") from None

    def read_payload(self, key: int) -> bytes:
        with open(self.rec_path, "rb") as f:
            return read_record_at(f, self.offsets[key], self.rec_path)

    def __len__(self) -> int:
        return len(self.image_keys)

    def iter_images(self, keys: Iterable[int] | None = None) -> Iterator[RecImage]:
        """Yield the image records (all, or those of ``keys``) with their identity label."""
        with open(self.rec_path, "rb") as f:
            for key in self.image_keys if keys is None else keys:
                payload = read_record_at(f, self.offsets[key], self.rec_path)
                _flag, labels, data = self._unpack(key, payload)
                yield RecImage(key=key, label=labels[0], data=data)


def find_recordio_pair(path: str) -> tuple[str, str] | None:
    """The ``(rec, idx)`` pair that ``path`` names (a .rec file, or a folder holding one)."""
    if os.path.isfile(path) and path.endswith(".rec"):
        return path, os.path.splitext(path)[0] + ".idx"
    if os.path.isdir(path):
        recs = sorted(n for n in os.listdir(path) if n.endswith(".rec"))
        if "train.rec" in recs:
            recs = ["train.rec"]
        if recs:
            rec = os.path.join(path, recs[0])
            return rec, os.path.splitext(rec)[0] + ".idx"
    return None


class RecordIOWriter:
    """Streaming writer of a ``.rec``/``.idx`` pair, record by record (memory does not grow).

    The inverse of :func:`read_record_at` and :func:`unpack_payload`: each payload is split where
    the magic number sits at an aligned position (dmlc-core's continuation flags), every part is
    ``magic, lrecord`` then the bytes padded to 4; the ``.idx`` gets ``key<TAB>offset``."""

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.rec_path = rec_path
        self.idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
        os.makedirs(os.path.dirname(os.path.abspath(rec_path)), exist_ok=True)
        self.rec = open(rec_path, "wb")
        self.idx = open(self.idx_path, "w", encoding="ascii")

    def put(self, key: int, payload: bytes) -> None:
        """Append the record ``key`` with ``payload`` (an IRHeader and the image bytes)."""
        self.idx.write(f"{key}\t{self.rec.tell()}\n")
        for cflag, part in _split_on_magic(payload):
            self.rec.write(struct.pack("<II", MAGIC, (cflag << 29) | len(part)))
            self.rec.write(part + b"\x00" * ((-len(part)) % 4))

    def put_image(self, key: int, label: float, data: bytes) -> None:
        """An image record: ``IRHeader(flag=0, label, id=key, id2=0)`` then the image bytes."""
        self.put(key, image_payload(key, label, data))

    def put_header(self, key: int, labels: tuple[float, ...]) -> None:
        """A header record: ``flag = len(labels)`` float32 labels after the IRHeader, no image."""
        self.put(key, header_payload(labels))

    def close(self) -> None:
        self.rec.close()
        self.idx.close()

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_payload(key: int, label: float, data: bytes) -> bytes:
    return _IRHEADER.pack(0, float(label), key, 0) + data


def header_payload(labels: tuple[float, ...]) -> bytes:
    return _IRHEADER.pack(len(labels), 0.0, 0, 0) + struct.pack(f"<{len(labels)}f", *labels)


def write_recordio(
    rec_path: str,
    images: Iterable[tuple[float, bytes]],
    idx_path: str | None = None,
    insightface_header: bool = True,
) -> int:
    """Write ``(label, image_bytes)`` pairs as an InsightFace-style .rec/.idx pair.

    With ``insightface_header`` (the default) record 0 is the header InsightFace's tools write,
    followed by one identity record per label, so the files read like DCFace's or CASIA's.
    Returns the number of image records written. Used by the tests and by users who repackage
    image folders for training code that reads RecordIO (:mod:`faceaudit.export` streams its
    own with :class:`RecordIOWriter`).
    """
    images = list(images)
    with RecordIOWriter(rec_path, idx_path) as writer:
        first = 1 if insightface_header else 0
        identities: dict[float, list[int]] = {}
        for i, (label, data) in enumerate(images):
            identities.setdefault(label, []).append(first + i)
        if insightface_header:
            start = first + len(images)
            writer.put_header(0, (float(start), float(start + len(identities))))
        for i, (label, data) in enumerate(images):
            writer.put_image(first + i, label, data)
        if insightface_header:
            for j, keys in enumerate(identities.values()):
                writer.put_header(start + j, (float(keys[0]), float(keys[-1] + 1)))
    return len(images)


def _split_on_magic(payload: bytes) -> list[tuple[int, bytes]]:
    """Split a payload where the magic number occurs at a 4-byte aligned position, as dmlc does."""
    cuts, i = [], payload.find(_MAGIC_BYTES)
    while i >= 0:
        if i % 4 == 0:
            cuts.append(i)
            i = payload.find(_MAGIC_BYTES, i + 4)
        else:
            i = payload.find(_MAGIC_BYTES, i + 1)
    if not cuts:
        return [(0, payload)]
    parts, start = [], 0
    for c in cuts:
        parts.append(payload[start:c])
        start = c + 4
    parts.append(payload[start:])
    flags = [1] + [2] * (len(parts) - 2) + [3]
    return list(zip(flags, parts))
