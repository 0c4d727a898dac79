"""The layout readers and image checks, on real image files (no FiftyOne)."""

from __future__ import annotations

import os
from collections import Counter

import pytest

from faceaudit.images import check_image_file
from faceaudit.readers import LayoutError, detect_format, scan


def records(path, fmt="auto", **kw):
    s = scan(str(path), fmt, **kw)
    return s, list(s.iter_all())


def test_identity_folders_with_unicode_spaces_and_non_images(tmp_path, faces):
    faces.identity_tree(tmp_path, {"n000001": 3, "José Ñúñez 02": 2, "id with space": 4})
    (tmp_path / "n000001" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("top-level file")
    s, recs = records(tmp_path, "folders")
    assert len(recs) == 9
    assert Counter(r.identity for r in recs) == {"n000001": 3, "José Ñúñez 02": 2, "id with space": 4}
    assert {r.group for r in recs} == {None}
    assert all(os.path.isfile(r.filepath) for r in recs)
    assert s.stats.skipped_non_image == 2  # notes.txt and the top-level README.md


def test_bupt_keeps_race_as_group(tmp_path, faces):
    base = tmp_path / "BUPT-Balancedface" / "images" / "race_per_7000"
    faces.identity_tree(base / "African", {"m.0a1": 2, "m.0a2": 1})
    faces.identity_tree(base / "Asian", {"m.0b1": 3})
    faces.identity_tree(base / "Indian", {"m.0c1": 1})
    for root in (tmp_path / "BUPT-Balancedface", base):  # the dataset root or the subset folder
        s, recs = records(root)
        assert s.format == "bupt"
        assert Counter((r.group, r.identity) for r in recs) == {
            ("African", "m.0a1"): 2, ("African", "m.0a2"): 1, ("Asian", "m.0b1"): 3, ("Indian", "m.0c1"): 1,
        }


def test_bupt_globalface_subset(tmp_path, faces):
    faces.identity_tree(tmp_path / "images" / "race_unbalance" / "Caucasian", {"m.01": 2})
    s, recs = records(tmp_path, "bupt")
    assert [(r.group, r.identity) for r in recs] == [("Caucasian", "m.01")] * 2
    assert "race_unbalance" in s.description


def test_nested_group_identity_folders(tmp_path, faces):
    faces.identity_tree(tmp_path / "female_asian", {"id_0": 2, "id_1": 1})
    faces.identity_tree(tmp_path / "male_white", {"id_0": 3})
    s, recs = records(tmp_path)
    assert s.format == "nested"
    assert Counter((r.group, r.identity) for r in recs) == {
        ("female_asian", "id_0"): 2, ("female_asian", "id_1"): 1, ("male_white", "id_0"): 3,
    }


def test_flat_folder_has_no_identities(tmp_path, faces):
    for i in range(7):
        faces.write(tmp_path / f"{i:06d}.png", i)
    (tmp_path / "list.csv").write_text("x")
    s, recs = records(tmp_path)
    assert s.format == "flat"
    assert len(recs) == 7 and {(r.identity, r.group) for r in recs} == {(None, None)}
    assert s.stats.skipped_non_image == 1


def test_detect_format_says_what_it_found(tmp_path, faces):
    faces.identity_tree(tmp_path, {"000001": 2})
    fmt, reason = detect_format(str(tmp_path))
    assert fmt == "folders" and "identity" in reason
    assert "detected 'folders'" in scan(str(tmp_path)).description


@pytest.mark.parametrize("fmt", ["auto", "folders", "bupt", "nested", "flat"])
def test_missing_path_is_named(tmp_path, fmt):
    missing = tmp_path / "nope"
    with pytest.raises(LayoutError, match=f"{missing}: no such file or folder"):
        scan(str(missing), fmt)


def test_file_where_folder_expected(tmp_path, faces):
    f = faces.write(tmp_path / "face.jpg", 0)
    with pytest.raises(LayoutError, match="is a file, but the 'folders' layout needs a folder"):
        scan(str(f), "folders")
    with pytest.raises(LayoutError, match="is a file, not a dataset folder"):
        scan(str(f), "auto")


def test_empty_folder(tmp_path):
    with pytest.raises(LayoutError, match=f"{tmp_path}: no images found"):
        scan(str(tmp_path))
    with pytest.raises(LayoutError, match="no identity folders"):
        scan(str(tmp_path), "folders")
    with pytest.raises(LayoutError, match="no image files"):
        scan(str(tmp_path), "flat")


def test_image_checks_find_truncated_and_fake_images(tmp_path, faces):
    good = faces.write(tmp_path / "good.jpg", 0)
    good_png = faces.write(tmp_path / "good.png", 1)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(faces.jpeg(2)[:600])
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(faces.png(3)[:300])
    fake = tmp_path / "fake.jpg"
    fake.write_text("<html>404 not found</html>")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert check_image_file(str(good)) is None
    assert check_image_file(str(good_png)) is None
    assert "truncated JPEG" in check_image_file(str(cut))
    assert "truncated PNG" in check_image_file(str(cut_png))
    assert "not a JPEG, PNG" in check_image_file(str(fake))
    assert check_image_file(str(empty)) == "empty file"
    assert "unreadable" in check_image_file(str(tmp_path / "missing.jpg"))


def test_symlinked_identity_folders_are_never_followed(tmp_path, faces):
    """Issue 16.9: links to folders are left out at every depth (the README's promise)."""
    faces.identity_tree(tmp_path / "elsewhere", {"b": 2})
    faces.identity_tree(tmp_path / "root", {"a": 1})
    (tmp_path / "root" / "b").symlink_to(tmp_path / "elsewhere" / "b")
    (tmp_path / "root" / "loop").symlink_to(".")
    (tmp_path / "root" / "a" / "up").symlink_to("..")
    found = scan(str(tmp_path / "root"), "folders")
    recs = list(found.iter_all())
    assert sorted((r.identity, os.path.basename(r.filepath)) for r in recs) == [("a", "0000.jpg")]
    problems = {p["reason"]: sorted(p["examples"]) for p in found.stats.problems.to_list()}
    assert problems == {"symbolic link to a folder (not followed)": sorted(
        str(tmp_path / "root" / n) for n in ("b", "loop", "a/up"))}
