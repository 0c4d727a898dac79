"""InsightFace RecordIO: files written by the test, read back without mxnet."""

from __future__ import annotations

import os
import struct

import pytest

from faceaudit.readers import scan
from faceaudit.recordio import MAGIC, RecordIOError, RecordIOReader, write_recordio


@pytest.fixture
def rec_pair(tmp_path, faces):
    labels = [0, 0, 0, 1, 1, 7]
    images = [(float(lab), faces.jpeg(i)) for i, lab in enumerate(labels)]
    rec = tmp_path / "train.rec"
    write_recordio(str(rec), images)
    return rec, images


def test_reads_labels_and_bytes_and_skips_header_records(rec_pair):
    rec, images = rec_pair
    reader = RecordIOReader(str(rec))
    assert len(reader) == len(images)  # header and identity records are not images
    got = list(reader.iter_images())
    assert [g.label for g in got] == [lab for lab, _ in images]
    assert [g.data for g in got] == [data for _, data in images]
    assert [g.key for g in got] == list(range(1, len(images) + 1))


def test_multipart_records_are_reassembled(tmp_path, faces):
    # A payload holding the magic number at a 4-byte aligned position is split by the writer,
    # as dmlc-core does; the reader must put the magic back.
    magic = struct.pack("<I", MAGIC)
    payload = faces.jpeg(0)
    payload = payload[:-2] + b"\x00" * ((-len(payload) + 2) % 4) + magic * 2 + b"\x00\x00\xff\xd9"
    rec = tmp_path / "multi.rec"
    write_recordio(str(rec), [(3.0, payload)], insightface_header=False)
    raw = rec.read_bytes()
    assert raw.count(magic) > 2  # the record really was written in parts
    (img,) = RecordIOReader(str(rec)).iter_images()
    assert img.data == payload and img.label == 3.0


def test_missing_idx(tmp_path, rec_pair):
    rec, _ = rec_pair
    os.remove(rec.with_suffix(".idx"))
    with pytest.raises(RecordIOError, match="no .idx file"):
        RecordIOReader(str(rec))


def test_truncated_rec(tmp_path, rec_pair):
    rec, _ = rec_pair
    data = rec.read_bytes()
    rec.write_bytes(data[: len(data) - 40])
    with pytest.raises(RecordIOError, match=f"{rec}: truncated"):
        RecordIOReader(str(rec))


def test_truncated_idx(tmp_path, rec_pair):
    rec, _ = rec_pair
    idx = rec.with_suffix(".idx")
    text = idx.read_text()
    idx.write_text(text[: len(text) // 2].rstrip("\n").rsplit("\t", 1)[0] + "\t")
    with pytest.raises(RecordIOError, match=f"{idx}: line \\d+ has a non-integer"):
        RecordIOReader(str(rec))


def test_idx_that_disagrees_with_rec(tmp_path, rec_pair, faces):
    rec, _ = rec_pair
    other = tmp_path / "other.rec"
    write_recordio(str(other), [(0.0, faces.jpeg(50)), (1.0, faces.jpeg(60))])
    os.replace(other.with_suffix(".idx"), rec.with_suffix(".idx"))
    with pytest.raises(RecordIOError, match="idx does not match this .rec|truncated"):
        list(RecordIOReader(str(rec)).iter_images())


def test_extraction_is_idempotent(tmp_path, rec_pair):
    rec, images = rec_pair
    out = tmp_path / "extracted"
    s = scan(str(rec.parent), "auto", extract_to=str(out))
    assert s.format == "rec"
    recs = list(s.iter_all())
    assert [r.identity for r in recs] == ["0", "0", "0", "1", "1", "7"]
    assert [open(r.filepath, "rb").read() for r in recs] == [d for _, d in images]
    mtimes = [os.stat(r.filepath).st_mtime_ns for r in recs]
    again = list(scan(str(rec), "rec", extract_to=str(out)).iter_all())
    assert [r.filepath for r in again] == [r.filepath for r in recs]
    assert [os.stat(r.filepath).st_mtime_ns for r in again] == mtimes  # not rewritten
    assert not [p for p in out.rglob("*") if ".part-" in p.name]


def test_rec_without_extract_folder(rec_pair):
    rec, _ = rec_pair
    with pytest.raises(ValueError, match="--extract-to"):
        scan(str(rec), "rec")
