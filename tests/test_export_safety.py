"""Export: what it must never delete or pollute, what it must not get wrong, and how it refuses.

Real files, a real mongod (the loaded datasets), real processes where processes matter (two
exports released at once, a killed lock holder). Each test was written to fail on the export
before these fixes (the attacker's findings 1, 2, 9-13, 15b, 17, 19, 20, B5, minor)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import in_process
from faceaudit import export as core
from faceaudit.progress import drive
from faceaudit.recordio import RecordIOReader
from faceaudit.textsafe import csv_uncell
from fiftyone_plugin.export import export_dataset
from fiftyone_plugin.ingest import load_face_dataset
from test_export import LAYOUT, _tree, loaded  # noqa: F401  (the fixture)


def _export(ds, out, **options):
    return drive(export_dataset(ds, str(out), **options))


def _jpgs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def _refused(call) -> str:
    """The one-line refusal ``call()`` raises."""
    with pytest.raises(ValueError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ data loss (1, 2, 11)

def test_overwrite_into_a_symlink_to_the_source_folder_is_refused_and_deletes_nothing(loaded, tmp_path):
    ds, root = loaded
    before = _jpgs(root)
    link = tmp_path / "out_link"
    link.symlink_to(root)
    for overwrite in (False, True):
        message = _refused(lambda: _export(ds, link, overwrite=overwrite))
        assert str(link) in message and "source 'synth'" in message
    r = in_process(["export", "--dataset", ds.name, "--out", str(link), "--overwrite", "--quiet"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert _jpgs(root) == before and sorted(os.listdir(root)) == sorted(LAYOUT)


def test_overwrite_into_another_sources_folder_or_above_it_is_refused(loaded, tmp_path, faces):
    ds, root = loaded
    real = tmp_path / "real"
    faces.identity_tree(real, {"erin": 3, "frank": 3}, start=40)
    load_face_dataset(str(real), source="real", domain="real", dataset_name=ds.name)
    before = {**_jpgs(real), **{"synth/" + k: v for k, v in _jpgs(root).items()}}
    for out in (real, real / "erin", tmp_path):  # is, inside, contains a source root
        message = _refused(lambda: _export(ds, out, sources=["synth"], overwrite=True))
        assert str(out) in message and "source" in message
    assert {**_jpgs(real), **{"synth/" + k: v for k, v in _jpgs(root).items()}} == before


def test_overwrite_never_removes_a_file_of_a_sample_outside_the_view(loaded, tmp_path, faces):
    """A sample loaded from outside its source's root (a file list), not in the exported view."""
    ds, _ = loaded
    other = tmp_path / "elsewhere"
    faces.write(other / "keep.jpg", 60)
    doc = ds._sample_collection.find_one({}, {"_id": 0})  # a sample as the loader writes it
    ds._sample_collection.insert_one({**doc, "filepath": str(other / "keep.jpg"), "source": "other",
                                      "identity": "zed"})
    message = _refused(lambda: _export(ds, other, sources=["synth"], overwrite=True))
    assert "keep.jpg" in message or str(other) in message
    assert (other / "keep.jpg").exists()


def test_out_inside_a_source_root_is_refused_before_anything_is_written(loaded):
    ds, root = loaded
    out = root / "alice" / "cleaned"
    message = _refused(lambda: _export(ds, out))
    assert str(out) in message and "source 'synth'" in message
    assert not out.exists()


# ------------------------------------------------------------------ wrong results (9, 10, 12, B5)

def test_rec_records_are_upright_when_the_jpeg_has_an_exif_orientation(tmp_path, faces):
    src = tmp_path / "src" / "alice"
    src.mkdir(parents=True)
    items, upright = [], []
    for name, size in (("turned112.jpg", 112), ("turned150.jpg", 150)):
        up = Image.fromarray(faces.arrays[0]).resize((size, size))
        exif = Image.Exif()
        exif[0x0112] = 6  # "turn 90 degrees clockwise to show": the pixels are stored turned back
        up.transpose(Image.ROTATE_90).save(src / name, quality=95, exif=exif.tobytes())
        upright.append(np.asarray(up.resize((112, 112)), dtype=float))
        items.append(core.Item(str(src / name), "s", "alice"))
    out = tmp_path / "rec"
    result = drive(core.export(str(out), lambda: items, core.check_options(format="rec")))
    assert result.reencoded == 2
    for record, want in zip(RecordIOReader(str(out / "train.rec")).iter_images(), upright):
        got = np.asarray(Image.open(io.BytesIO(record.data)).convert("RGB"), dtype=float)
        assert got.shape == (112, 112, 3)
        assert np.abs(got - want).mean() < 6 < np.abs(got - np.rot90(want)).mean()


def test_long_file_names_keep_their_extension(tmp_path, faces):
    long = "x" * 230 + ".jpg"
    assert core.safe_name(long).endswith(".jpg") and len(core.safe_name(long).encode()) <= core.MAX_NAME_BYTES
    wide = "é" * 150 + ".png"  # 2 bytes each: cut on a character, not a byte
    assert core.safe_name(wide).endswith(".png") and len(core.safe_name(wide).encode()) <= core.MAX_NAME_BYTES
    path = faces.write(tmp_path / "src" / "bob" / long, 1)
    out = tmp_path / "out"
    drive(core.export(str(out), lambda: [core.Item(str(path), "s", "bob")], core.check_options()))
    [written] = (out / "bob").iterdir()
    assert written.suffix == ".jpg" and written.read_bytes() == path.read_bytes()


def test_a_finished_export_whose_files_were_deleted_or_cut_is_redone(loaded, tmp_path):
    ds, _ = loaded
    out = tmp_path / "out"
    _export(ds, out)
    whole = _tree(out)
    (out / "alice" / "0001.jpg").unlink()
    with open(out / "bob" / "0002.jpg", "r+b") as f:
        f.truncate(100)
    again = _export(ds, out)
    assert again.status == "resumed" and _tree(out) == whole
    assert _export(ds, out).status == "unchanged"

    rec = tmp_path / "rec"
    _export(ds, rec, format="rec")
    whole = _tree(rec)
    with open(rec / "train.rec", "r+b") as f:
        f.truncate(1000)
    assert _export(ds, rec, format="rec").status == "resumed" and _tree(rec) == whole
    (rec / "property").unlink()
    assert _export(ds, rec, format="rec").status == "resumed" and _tree(rec) == whole


def test_the_last_progress_line_counts_what_was_written(loaded, tmp_path):
    ds, _ = loaded
    for fmt, words in (("folders", "13 images in 4 identity folders"), ("rec", "13 images in train.rec")):
        events = []
        drive(export_dataset(ds, str(tmp_path / fmt), format=fmt), events.append)
        assert words in events[-1].label, events[-1].label


# ------------------------------------------------------------------ crashes and messages (13, 15b, 17, 20, minor)

def test_identities_named_like_the_manifests_get_other_folders(tmp_path, faces):
    items = [core.Item(str(faces.write(tmp_path / "src" / name / "a.jpg", i)), "s", name)
             for i, name in enumerate(["manifest.json", "MANIFEST.CSV", "ok"])]
    out = tmp_path / "out"
    for status in ("written", "unchanged"):
        assert drive(core.export(str(out), lambda: items, core.check_options())).status == status
    manifest = json.loads((out / core.MANIFEST).read_text())
    assert [c["folder"] for c in manifest["classes"]] == ["manifest~2.json", "MANIFEST~2.CSV", "ok"]
    assert (out / "manifest~2.json" / "a.jpg").read_bytes() == Path(items[0].filepath).read_bytes()


def test_manifest_csv_names_cannot_run_as_formulas_and_paths_still_resolve(tmp_path, faces):
    items = [core.Item(str(faces.write(tmp_path / "src" / str(i) / "x.jpg", i)), source, identity)
             for i, (source, identity) in enumerate([("=cmd", "@SUM(1+1)"), ("s", "-2+3"), ("s", "plain")])]
    out = tmp_path / "out"
    drive(core.export(str(out), lambda: items, core.check_options()))
    with open(out / core.MANIFEST_CSV, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    formula = ("=", "+", "-", "@", "\t", "\r")
    for row, item in zip(rows, items):
        assert not any(cell.startswith(formula) for cell in row.values()), row
        assert csv_uncell(row["identity"]) == item.identity and csv_uncell(row["source"]) == item.source
        assert (out / row["path"]).read_bytes() == Path(item.filepath).read_bytes()  # trainers' join
    assert rows[2]["path"] == "plain/x.jpg"  # ordinary paths unchanged


def test_faceaudits_own_tags_can_be_excluded_when_no_sample_has_them(loaded, tmp_path):
    ds, _ = loaded
    result = _export(ds, tmp_path / "out", exclude_tags=["identity_leak", "identity_outlier", "no_face"])
    assert result.images == 13
    message = _refused(lambda: _export(ds, tmp_path / "typo", exclude_tags=["identity_leek"]))
    assert "identity_leek" in message and not (tmp_path / "typo").exists()


def _other_device(path: Path) -> Path | None:
    for candidate in ("/dev/shm", "/run", "/var/tmp"):
        if os.path.isdir(candidate) and os.access(candidate, os.W_OK) and \
                os.stat(candidate).st_dev != os.stat(path).st_dev:
            return Path(candidate)
    return None


def test_hardlink_onto_another_file_system_is_refused_up_front_then_copy_works(loaded, tmp_path):
    ds, _ = loaded
    other = _other_device(tmp_path)
    if other is None:
        pytest.skip("no second writable file system here")
    out = other / f"faceaudit-test-{os.getpid()}-{time.time_ns()}"
    try:
        message = _refused(lambda: _export(ds, out, link="hardlink"))
        assert "hardlink" in message and "file system" in message
        assert not out.exists()
        assert _export(ds, out, link="copy").status == "written"
    finally:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


def test_a_dangling_symlink_as_out_is_refused_in_one_line(loaded, tmp_path):
    ds, _ = loaded
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    message = _refused(lambda: _export(ds, link))
    assert str(link) in message and not (tmp_path / "nowhere").exists()


def test_a_write_error_says_where_and_that_a_rerun_resumes(tmp_path, faces):
    """A file that cannot be written (here: its name is taken by a folder a resumed run cannot
    remove) ends in one line naming the folder and the rerun, not a bare errno."""
    path = faces.write(tmp_path / "src" / "a" / "x.jpg", 0)
    out = tmp_path / "out"
    items = [core.Item(str(path), "s", "a")]
    drive(core.export(str(out), lambda: items, core.check_options()))
    (out / core.MANIFEST).rename(out / core.MARKER)  # as a killed run leaves it: resumed next
    (out / "a" / "x.jpg").unlink()
    (out / "a" / "x.jpg").mkdir()
    (out / "a" / "x.jpg" / "y").write_text("blocks the unlink")
    message = _refused(lambda: drive(core.export(str(out), lambda: items, core.check_options())))
    assert str(out) in message and "again" in message


def test_a_full_disk_says_where_and_the_rerun_resumes(tmp_path, faces):
    """A real full file system: a 64 KiB tmpfs (needs the right to mount; skipped without it),
    then made larger and the same export run again."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        items = [core.Item(str(faces.write(tmp_path / "src" / f"id{k // 10}" / f"{k:03d}.jpg", k)), "s", f"id{k // 10}")
                 for k in range(60)]
        out = mnt / "out"
        message = _refused(lambda: drive(core.export(str(out), lambda: items, core.check_options())))
        assert "No space left on device" in message and str(out) in message and "again" in message, message
        subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        assert drive(core.export(str(out), lambda: items, core.check_options())).status == "resumed"
        assert len(list(out.glob("id*/*.jpg"))) == 60
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_leftovers_of_another_unfinished_export_are_named_in_the_refusal(loaded, tmp_path):
    ds, _ = loaded
    out = tmp_path / "out"
    out.mkdir()
    (out / core.MARKER).write_text(json.dumps({"digest": "an-other-plan", "options": {"link": "hardlink"}}))
    message = _refused(lambda: _export(ds, out))
    assert "unfinished export" in message and "--overwrite" in message
    assert _export(ds, out, overwrite=True).status == "written"


# ------------------------------------------------------------------ two at once (19)

WORKER = r"""
import json, os, sys, time
from faceaudit import export as core
from faceaudit.progress import drive

listing, out, trials, go = sys.argv[1:5]
files = json.load(open(listing))
items = [core.Item(p, "s", p.split("/")[-2]) for p in files]
print("ready", flush=True)
for trial in range(int(trials)):
    while not os.path.exists(f"{go}.{trial}"):
        time.sleep(0.0005)
    try:
        result = drive(core.export(f"{out}/{trial}", lambda: items, core.check_options()))
        answer = ["ok", result.status]
    except core.ExportError as e:
        answer = ["refused", str(e)]
    except Exception as e:
        answer = ["error", f"{type(e).__name__}: {e}"]
    print(json.dumps(answer), flush=True)
"""


def _worker(tmp_path: Path, listing: Path, trials: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, str(listing), str(tmp_path / "out"), str(trials),
                             str(tmp_path / "go")], stdout=subprocess.PIPE, text=True, env=dict(os.environ))


def test_two_identical_exports_released_together_one_is_refused_naming_the_other(tmp_path, faces):
    files = []
    for k in range(150):
        files.append(str(faces.write(tmp_path / "src" / f"id{k // 10:02d}" / f"{k:04d}.jpg", k)))
    listing = tmp_path / "files.json"
    listing.write_text(json.dumps(files))
    trials = 12
    procs = [_worker(tmp_path, listing, trials) for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        refusals = 0
        for trial in range(trials):
            (tmp_path / f"go.{trial}").touch()
            answers = sorted(json.loads(p.stdout.readline()) for p in procs)
            assert all(kind != "error" for kind, _ in answers), answers
            assert ["ok", "written"] in answers and ["ok", "resumed"] not in answers, answers
            other = answers[1] if answers[0] == ["ok", "written"] else answers[0]
            if other[0] == "refused":
                refusals += 1
                assert "another export" in other[1] and "pid" in other[1], other
            else:
                assert other == ["ok", "unchanged"], answers
            out = tmp_path / "out" / str(trial)
            assert json.loads((out / core.MANIFEST).read_text())["images"] == len(files)
            assert not [p for p in out.rglob(".*")], list(out.rglob(".*"))
        assert refusals > 0, "the two exports never overlapped"
    finally:
        for p in procs:
            p.kill()
            p.wait()


HOLDER = r"""
import sys, time
from faceaudit import export as core
with core.export_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_lock_holder_does_not_block_the_next_export(tmp_path, faces):
    path = faces.write(tmp_path / "src" / "a" / "x.jpg", 0)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        items = [core.Item(str(path), "s", "a")]
        message = _refused(lambda: drive(core.export(str(out), lambda: items, core.check_options())))
        assert f"pid {holder.pid}" in message
        assert not (out / "a").exists()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert drive(core.export(str(out), lambda: items, core.check_options())).status == "written"
        assert sorted(os.listdir(out)) == sorted(["a", core.MANIFEST, core.MANIFEST_CSV])
    finally:
        holder.kill()
        holder.wait()
