"""Loading every layout into one FiftyOne dataset on the real mongod."""

from __future__ import annotations

from collections import Counter

import fiftyone as fo
import pytest

from faceaudit.readers import LayoutError
from faceaudit.recordio import RecordIOError, write_recordio
from fiftyone_plugin import ingest, schema
from fiftyone_plugin.ingest import LoadError, iter_load, load_face_dataset


def pairs(dataset, *fields):
    return Counter(zip(*dataset.values(list(fields))))


def test_layouts_share_one_dataset_with_their_fields(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path / "idiff", {"0": 3, "1": 2})
    bupt = tmp_path / "bupt" / "images" / "race_per_7000"
    faces.identity_tree(bupt / "African", {"m.01": 2})
    faces.identity_tree(bupt / "Asian", {"m.02": 1})
    faces.identity_tree(tmp_path / "gandiff" / "female", {"id_a": 2})
    for i in range(3):
        faces.write(tmp_path / "flat" / f"{i}.png", i)
    write_recordio(str(tmp_path / "dcface" / "train.rec"), [(5.0, faces.jpeg(i)) for i in range(2)])

    reports = [
        load_face_dataset(str(tmp_path / "idiff"), preset="idiff-face", dataset_name=dataset_name),
        load_face_dataset(str(tmp_path / "bupt"), preset="bupt-balancedface", dataset_name=dataset_name),
        load_face_dataset(str(tmp_path / "gandiff"), preset="gandiffface", dataset_name=dataset_name),
        load_face_dataset(str(tmp_path / "flat"), source="flatgan", domain="synthetic",
                          format="flat", dataset_name=dataset_name),
        load_face_dataset(str(tmp_path / "dcface"), preset="dcface", extract_to=str(tmp_path / "dc-img"),
                          dataset_name=dataset_name),
    ]
    assert [r.format for r in reports] == ["folders", "bupt", "nested", "flat", "rec"]
    assert [r.added for r in reports] == [5, 3, 2, 3, 2]

    ds = fo.load_dataset(dataset_name)
    assert len(ds) == 15
    assert ds.count_values("source") == {
        "idiff-face": 5, "bupt-balancedface": 3, "gandiffface": 2, "flatgan": 3, "dcface": 2}
    assert ds.count_values("domain") == {"real": 3, "synthetic": 12}
    assert pairs(ds, "source", "group", "identity") == {
        ("idiff-face", None, "0"): 3, ("idiff-face", None, "1"): 2,
        ("bupt-balancedface", "African", "m.01"): 2, ("bupt-balancedface", "Asian", "m.02"): 1,
        ("gandiffface", "female", "id_a"): 2, ("flatgan", None, None): 3, ("dcface", None, "5"): 2,
    }
    # FiftyOne sees ordinary samples: typed fields, working views, the App's media type
    assert isinstance(ds.get_field("source"), fo.StringField)
    assert ds.match(fo.ViewField("group") == "Asian").first().identity == "m.02"
    assert ds.first().media_type == "image"
    indexes = {tuple(k for k, _ in info["key"]) for info in ds.get_index_information().values()}
    assert {("source",), ("domain",), ("group",), ("source", "identity")} <= indexes
    assert schema.source_root(ds, "dcface") == str(tmp_path / "dc-img")


def test_loading_twice_adds_nothing(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path, {"a": 3, "b": 3})
    first = load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name)
    again = load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name)
    assert (first.added, again.added, again.already_present) == (6, 0, 6)
    ds = fo.load_dataset(dataset_name)
    assert len(ds) == 6 and len(set(ds.values("filepath"))) == 6


def test_interrupted_load_resumes(tmp_path, faces, dataset_name, monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_SIZE", 4)
    faces.identity_tree(tmp_path, {f"id{i}": 5 for i in range(6)})
    job = iter_load(str(tmp_path), source="s", domain="synthetic", dataset_name=dataset_name)
    for _ in range(3):  # stop after a few identity folders, as a crash would
        next(job)
    job.close()
    partial = len(fo.load_dataset(dataset_name))
    assert 0 < partial < 30
    report = load_face_dataset(str(tmp_path), source="s", domain="synthetic", dataset_name=dataset_name)
    assert report.already_present == partial and report.added == 30 - partial
    ds = fo.load_dataset(dataset_name)
    assert len(ds) == 30 and len(set(ds.values("filepath"))) == 30


def test_damaged_and_non_image_files(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path, {"a": 2})
    (tmp_path / "a" / "cut.jpg").write_bytes(faces.jpeg(5)[:500])
    (tmp_path / "a" / "fake.png").write_text("not a png")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"\x00" * 10)
    report = load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name)
    assert (report.found, report.added, report.unreadable, report.skipped_non_image) == (4, 4, 2, 1)
    assert "2 unreadable" in report.summary() and "1 non-image files skipped" in report.summary()
    ds = fo.load_dataset(dataset_name)
    bad = ds.match_tags(schema.UNREADABLE_TAG)
    assert sorted(p.rsplit("/", 1)[1] for p in bad.values("filepath")) == ["cut.jpg", "fake.png"]
    assert set(bad.values(schema.IMAGE_ISSUE)) == {
        "truncated JPEG (no end-of-image marker)", "not a JPEG, PNG, BMP or WebP image"}
    assert ds.match_tags(schema.UNREADABLE_TAG, bool=False).count() == 2


def test_limit(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path, {"a": 4, "b": 4})
    report = load_face_dataset(str(tmp_path), source="s", domain="real", limit=5, dataset_name=dataset_name)
    assert report.added == 5 and len(fo.load_dataset(dataset_name)) == 5


def _bad_rec(tmp_path, faces, kind):
    rec = tmp_path / kind / "train.rec"
    write_recordio(str(rec), [(float(i % 2), faces.jpeg(i)) for i in range(4)])
    if kind == "truncated-rec":
        rec.write_bytes(rec.read_bytes()[:-30])
    elif kind == "truncated-idx":
        idx = rec.with_suffix(".idx")
        idx.write_text(idx.read_text()[:7])
    elif kind == "mismatched-idx":
        idx = rec.with_suffix(".idx")
        idx.write_text("".join(f"{k}\t{int(o) + 4}\n" for k, o in
                               (line.split("\t") for line in idx.read_text().splitlines())))
    return rec


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("missing", LayoutError, "no such file or folder"),
        ("empty", LayoutError, "no images found"),
        ("empty-identities", LayoutError, "no image files found"),
        ("file", LayoutError, "is a file"),
        ("truncated-rec", RecordIOError, "truncated"),
        ("truncated-idx", RecordIOError, "non-integer|does not match|truncated"),
        ("mismatched-idx", RecordIOError, "does not match"),
        ("no-domain", LoadError, "give --domain"),
        ("other-domain", LoadError, "already in dataset .* as real"),
    ],
)
def test_bad_input_names_the_problem_and_loses_nothing(tmp_path, faces, dataset_name, case, error, match):
    faces.identity_tree(tmp_path / "good", {"x": 3})
    load_face_dataset(str(tmp_path / "good"), source="good", domain="real", dataset_name=dataset_name)
    before = fo.load_dataset(dataset_name).values("filepath")

    options = dict(source="bad", domain="synthetic", dataset_name=dataset_name)
    path = tmp_path / case
    if case == "empty":
        path.mkdir()
    elif case == "empty-identities":
        (path / "id1").mkdir(parents=True)
        options["format"] = "folders"
    elif case == "file":
        path = faces.write(tmp_path / "one.jpg", 0)
        options["format"] = "folders"
    elif case.endswith("rec") or case.endswith("idx"):
        path = _bad_rec(tmp_path, faces, case)
        options["extract_to"] = str(tmp_path / "out")
    elif case == "no-domain":
        path, options["domain"] = tmp_path / "good", None
    elif case == "other-domain":
        path, options["source"] = tmp_path / "good", "good"

    with pytest.raises(error, match=match) as info:
        load_face_dataset(str(path), **options)
    if case not in ("no-domain", "other-domain"):
        assert str(path) in str(info.value)  # the message names the path
    ds = fo.load_dataset(dataset_name)
    assert ds.values("filepath") == before
    assert set(schema.sources_info(ds)) == {"good"}


def test_bulk_object_ids_are_distinct_and_current():
    import datetime as dt

    from fiftyone_plugin.bulk import new_object_ids

    ids = new_object_ids(50_000) + new_object_ids(50_000)
    assert len(set(ids)) == 100_000
    age = dt.datetime.now(dt.timezone.utc) - ids[-1].generation_time
    assert abs(age.total_seconds()) < 5


def test_core_imports_without_fiftyone_or_torch():
    import subprocess
    import sys

    code = ("import sys, faceaudit.readers, faceaudit.recordio, faceaudit.images, faceaudit.presets, "
            "faceaudit.attributes, faceaudit.progress; "
            "bad = [m for m in ('fiftyone', 'torch', 'pymongo') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
