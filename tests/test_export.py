"""Export to identity folders and InsightFace RecordIO; rebalance toward the real distribution.

Real images (LFW crops) loaded with the real loader into a real mongod; the exported folders are
loaded back with ``faceaudit load``, the .rec is read back with the project's reader (and mxnet
where it imports); a SIGKILL is a real SIGKILL of a ``faceaudit export`` process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from faceaudit import export as core
from faceaudit.recordio import RecordIOReader
from fiftyone_plugin.export import export_dataset
from fiftyone_plugin.ingest import load_face_dataset
from faceaudit.progress import drive
from clirun import FACEAUDIT, as_process, in_process
from test_app_operators import app, page  # noqa: F401  (fixtures of the browser test)

LAYOUT = {"alice": 4, "bob": 3, "carol": 2, "dave": 5}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative name -> content digest), the manifest left out."""
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (core.MANIFEST, core.MANIFEST_CSV)}


@pytest.fixture
def loaded(tmp_path, faces, dataset_name):
    """One synthetic source of 4 identities (14 images); 'outlier' on alice's first two and
    bob's first, 'unreadable' on dave's first."""
    root = tmp_path / "synth"
    faces.identity_tree(root, LAYOUT)
    load_face_dataset(str(root), source="synth", domain="synthetic", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    for name, tag in (("alice/0000.jpg", "outlier"), ("alice/0001.jpg", "outlier"),
                      ("bob/0000.jpg", "outlier"), ("dave/0000.jpg", "unreadable")):
        sample = ds.one(fo.ViewField("filepath") == str(root / name))
        sample.tags.append(tag)
        sample.save()
    return ds, root


def _export(ds, out, **options):
    return drive(export_dataset(ds, str(out), **options))


def test_folders_excludes_tags_and_small_identities_byte_identical_and_loads_back(loaded, tmp_path, dataset_name):
    ds, root = loaded
    out = tmp_path / "out"
    result = _export(ds, out, exclude_tags=["outlier"], min_images=3)
    # alice 4-2=2 < 3 out, bob 3-1=2 out, carol 2 out, dave 5-1 (unreadable) = 4 in
    expected = {f"dave/{k:04d}.jpg": _digest(root / "dave" / f"{k:04d}.jpg") for k in range(1, 5)}
    assert _tree(out) == expected
    assert sorted(os.listdir(out)) == sorted(["dave", core.MANIFEST, core.MANIFEST_CSV])  # no temporary names left
    manifest = json.loads((out / core.MANIFEST).read_text())
    assert manifest["images"] == 4 and manifest["identities"] == 1
    assert manifest["left_out"] == {"tag:outlier": 3, "unreadable": 1,
                                    "identity too small (< 3 images)": 6}
    assert [c["identity"] for c in manifest["identities_too_small"]] == ["alice", "bob", "carol"]
    assert manifest["provenance"]["dataset"] == dataset_name
    assert manifest["provenance"]["exclude_tags"] == ["outlier"] and manifest["provenance"]["fiftyone"]
    assert manifest["per_source"] == {"synth": {"images": 4, "identities": 1}}
    rows = (out / core.MANIFEST_CSV).read_text().splitlines()
    assert len(rows) == 1 + sum(LAYOUT.values())  # every sample, in or left out
    assert result.status == "written"

    # the same export again: nothing changes, and it says so
    before = {p: os.stat(out / p).st_mtime_ns for p in expected}
    again = _export(ds, out, exclude_tags=["outlier"], min_images=3)
    assert again.status == "unchanged" and "nothing changed" in again.summary()
    assert {p: os.stat(out / p).st_mtime_ns for p in expected} == before

    # all of it (min 1, no exclusion) loads back as the same identities and counts
    full = tmp_path / "full"
    _export(ds, full, link="hardlink")
    back = subprocess.run([FACEAUDIT, "load", str(full), "--format", "folders", "--source", "back",
                           "--domain", "synthetic", "--dataset", dataset_name, "--quiet"],
                          capture_output=True, text=True, env=dict(os.environ))
    assert back.returncode == 0, back.stderr
    ds.reload()
    counts = ds.match(fo.ViewField("source") == "back").count_values("identity")
    assert counts == {"alice": 4, "bob": 3, "carol": 2, "dave": 4}
    assert os.stat(full / "alice" / "0000.jpg").st_ino == os.stat(root / "alice" / "0000.jpg").st_ino


def test_rec_reads_back_with_contiguous_labels(loaded, tmp_path, faces):
    ds, root = loaded
    out = tmp_path / "rec"
    result = _export(ds, out, format="rec", exclude_tags=["outlier"], min_images=2)
    # alice 2, bob 2, carol 2, dave 4 (the unreadable one out): classes in (source, identity) order
    expected = [(cls, name, k) for cls, (name, ks) in enumerate(
        [("alice", [2, 3]), ("bob", [1, 2]), ("carol", [0, 1]), ("dave", [1, 2, 3, 4])]) for k in ks]
    reader = RecordIOReader(str(out / "train.rec"))
    got = list(reader.iter_images())
    assert [int(g.label) for g in got] == [cls for cls, _, _ in expected]
    assert [g.key for g in got] == list(range(1, len(expected) + 1))
    # the fixtures are 112x112 JPEGs: kept byte-identical
    assert [g.data for g in got] == [(root / n / f"{k:04d}.jpg").read_bytes() for _, n, k in expected]
    assert result.reencoded == 0
    header = core_header(reader)
    assert header == (len(expected) + 1, len(expected) + 1 + 4)
    ranges = [reader._unpack(k, reader.read_payload(k))[1] for k in range(header[0], header[1])]
    assert [tuple(map(int, r)) for r in ranges] == [(1, 3), (3, 5), (5, 7), (7, 11)]
    assert (out / "property").read_text().strip() == "4,112,112"

    # a PNG, or a JPEG of another size, becomes a 112x112 JPEG of the same image
    import io

    from PIL import Image

    for data in (faces.png(3), _jpeg(np.asarray(Image.fromarray(faces.arrays[3]).resize((150, 150))))):
        assert core.jpeg_size(data) != (112, 112)
        new, changed = core.rec_bytes(data)
        image = np.asarray(Image.open(io.BytesIO(new)), dtype=np.float64)
        assert changed and core.jpeg_size(new) == (112, 112)
        assert np.abs(image - faces.arrays[3]).mean() < 6  # the same face, resampled and JPEG'd
    _mxnet_check(out, expected)


def _jpeg(array) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def core_header(reader) -> tuple[int, int]:
    flag, labels, _ = reader._unpack(0, reader.read_payload(0))
    assert flag > 0
    return int(labels[0]), int(labels[1])


MXNET_CHECK = """
import json, sys
from mxnet import recordio
rec = recordio.MXIndexedRecordIO(sys.argv[1] + "/train.idx", sys.argv[1] + "/train.rec", "r")
header, _ = recordio.unpack(rec.read_idx(0))
n = int(header.label[0])
images = [recordio.unpack(rec.read_idx(k)) for k in range(1, n)]
ranges = [list(map(int, recordio.unpack(rec.read_idx(k))[0].label)) for k in range(n, int(header.label[1]))]
print(json.dumps({"flag": int(header.flag), "labels": [float(h.label) for h, _ in images],
                  "sizes": [len(b) for _, b in images], "ranges": ranges}))
"""


def _mxnet_check(out: Path, expected) -> None:
    """mxnet's own reader (``MXIndexedRecordIO``, what arcface_torch's MXFaceDataset uses): in this
    Python if mxnet imports (mxnet 1.9.1 needs numpy < 2), else in the Python named by
    ``FACEAUDIT_MXNET_PYTHON`` (a separate venv with mxnet 1.9.1 and numpy 1.26)."""
    try:
        import mxnet  # noqa: F401

        python = sys.executable
    except Exception as e:
        python = os.environ.get("FACEAUDIT_MXNET_PYTHON")
        if not python:
            pytest.skip(f"mxnet does not import here ({type(e).__name__}) and FACEAUDIT_MXNET_PYTHON is "
                        "not set; the project's reader checked the files")
    r = subprocess.run([python, "-c", MXNET_CHECK, str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["flag"] > 0
    assert got["labels"] == [float(cls) for cls, _, _ in expected]
    assert got["ranges"] == [[1, 3], [3, 5], [5, 7], [7, 11]]


@pytest.mark.parametrize("case", ["non-empty", "tag", "view", "k", "source"])
def test_refusals_write_nothing(loaded, tmp_path, case):
    ds, _ = loaded
    out = tmp_path / "out"
    options = {"non-empty": {}, "tag": {"exclude_tags": ["outlierz"]}, "view": {"view_name": "nope"},
               "k": {"min_images": 0}, "source": {"sources": ["nope"]}}[case]
    if case == "non-empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError) as e:
        _export(ds, out, **options)
    assert "\n" not in str(e.value)
    assert (sorted(os.listdir(out)) == ["notes.txt"]) if case == "non-empty" else not out.exists()
    args = ["export", "--dataset", ds.name, "--out", str(out)] + {
        "non-empty": [], "tag": ["--exclude-tags", "outlierz"], "view": ["--view", "nope"],
        "k": ["--min-images", "0"], "source": ["--source", "nope"]}[case]
    # one real process; the rest run the same main() here (a process costs an import of FiftyOne)
    r = as_process(args, dict(os.environ)) if case == "non-empty" else in_process(args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (sorted(os.listdir(out)) == ["notes.txt"]) if case == "non-empty" else not out.exists()
    if case in ("non-empty", "tag"):  # new-user review C7: the App's form refuses both, in the CLI's words
        _form_refuses(ds, {"out": str(out), "exclude_tags": options.get("exclude_tags", [])},
                      "out" if case == "non-empty" else "exclude_tags", str(e.value))
        assert (sorted(os.listdir(out)) == ["notes.txt"]) if case == "non-empty" else not out.exists()


def _form_refuses(ds, p: dict, field: str, refusal: str) -> None:
    """The export operator's form marks ``field`` invalid with ``refusal`` (the core's words, the
    field named by its label, the CLI's --overwrite as the form's box), and Execute is refused."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext, ExecutionError
    from fiftyone.operators.registry import OperatorRegistry

    uri = "@faceaudit/face-audit/export_training_set"
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": p})
    fields = OperatorRegistry().get_operator(uri).resolve_input(ctx).type.properties
    assert [k for k, v in fields.items() if v.invalid] == [field]
    words = refusal.replace("pass --overwrite", 'tick "Empty a non-empty folder first"')
    assert fields[field].error_message == ("Folder: " + words if field == "out" else words)
    with pytest.raises(ExecutionError, match="Validation error"):
        foo.execute_operator(uri, ctx={"dataset": ds, "params": {**p, "delegate": "false"}})
    assert not fields["overwrite"].invalid
    if field == "out":  # ticked, the folder is accepted
        ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {**p, "overwrite": True}})
        assert not OperatorRegistry().get_operator(uri).resolve_input(ctx).type.properties["out"].invalid


def test_unsafe_identity_names_stay_inside_and_collisions_are_deterministic(tmp_path, faces):
    src = tmp_path / "src"
    items = []
    for i, identity in enumerate(["../../escape", "A", "a", "a/b", "a_b", ".hidden", "con"]):
        path = faces.write(src / f"{i}" / "x.jpg", i)
        items.append(core.Item(str(path), "s", identity))
    out = tmp_path / "out"
    options = core.check_options()
    drive(core.export(str(out), lambda: items, options))
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(["___.._escape", "A", "a~2", "a_b", "a_b~2", "_hidden", "_con"])
    assert all(Path(os.path.realpath(p)).is_relative_to(os.path.realpath(out)) for p in out.rglob("*"))
    assert not (tmp_path / "escape").exists()


def test_rebalance_planted_imbalance_whole_identities(tmp_path, faces, dataset_name):
    """14 of 20 synthetic identities male, real data 50% male: the subset drops male identities
    until the share matches, keeps >= half, tags whole identities; KL checked with scipy here."""
    from scipy.special import rel_entr

    from faceaudit.attributes import ATTRIBUTES
    from fiftyone_plugin import labels
    from fiftyone_plugin.rebalance import rebalance_source

    faces.identity_tree(tmp_path / "real", {f"r{k:02d}": 3 for k in range(10)})
    faces.identity_tree(tmp_path / "syn", {f"s{k:02d}": 3 for k in range(20)}, start=30)
    load_face_dataset(str(tmp_path / "real"), source="real", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "syn"), source="syn", domain="synthetic", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    ids, identities = ds.values(["id", "identity"])
    male = ATTRIBUTES.index("Male")
    states = np.full((len(ids), len(ATTRIBUTES)), -1, np.int8)
    for i, name in enumerate(identities):
        k = int(name[1:])
        states[i, male] = 1 if (k < 5 if name[0] == "r" else k < 14) else -1
    labels.ensure_label_schema(ds)
    labels.write_labels(ds, ids, states)

    report = rebalance_source(ds, "syn", ["Male"], keep=0.5)
    ds.reload()
    tagged = ds.match_tags("rebalanced").values("identity")
    per_identity = {name: tagged.count(name) for name in set(tagged)}
    assert set(per_identity.values()) == {3}  # whole identities only
    assert len(tagged) >= 0.5 * 60 and report["kept_share"] >= 0.5
    assert set(ds.match_tags("rebalanced").distinct("source")) == {"syn"}

    def kl(synthetic_names):  # three-state Male distribution, alpha 0.5, as the comparison
        def dist(male_count, total):
            c = np.array([male_count, total - male_count, 0]) + 0.5
            return c / c.sum()
        real = dist(15, 30)
        males = sum(3 for n in synthetic_names if int(n[1:]) < 14)
        return rel_entr(real, dist(males, 3 * len(synthetic_names))).sum()

    before, after = kl([f"s{k:02d}" for k in range(20)]), kl(list(per_identity))
    assert report["kl_joint"]["before"] == pytest.approx(before) and report["kl_joint"]["after"] == pytest.approx(after)
    assert report["kl_attributes"]["Male"]["after"] == pytest.approx(after)
    assert after < 0.05 * before
    assert ds.has_saved_view("rebalanced") and len(ds.load_saved_view("rebalanced")) == len(tagged)
    # then export --view takes it
    out = tmp_path / "out"
    result = drive(export_dataset(ds, str(out), view_name="rebalanced"))
    assert result.images == len(tagged) and result.identities == len(per_identity)

    # the App's operator (new-user review C8, C10, and its raw floats): the attributes are picked
    # from a list, the result says which view the grid now shows, the KLs are rounded
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext
    from fiftyone.operators.registry import OperatorRegistry

    uri = "@faceaudit/face-audit/rebalance_synthetic_source"
    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}})
    field = OperatorRegistry().get_operator(uri).resolve_input(ctx).type.properties["attributes"]
    assert isinstance(field.view, fo.operators.types.DropdownView) and field.view.to_json()["multiple"] is True
    assert [c.value for c in field.view.choices] == list(ATTRIBUTES)
    done = foo.execute_operator(uri, ctx={"dataset": ds, "params": {"source": "syn", "attributes": ["Male"],
                                                                    "keep": 0.5, "tag": "rebalanced-app"}})
    assert done.result["message"].endswith(". The grid now shows the saved view rebalanced-app; choose another "
                                           "in the saved-view menu above the grid, or clear it there for the "
                                           "whole dataset")
    assert done.result["kl_before"] == float(f"{before:.4g}") and done.result["kl_after"] == float(f"{after:.4g}")


def test_greedy_close_to_the_exhaustive_optimum():
    from faceaudit import rebalance as rb

    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(12):
        real = rng.multinomial(2000, rng.dirichlet(np.ones(9)))
        skew = rng.dirichlet(np.ones(9) * 0.5)
        sizes = rng.integers(2, 8, 14)
        counts = np.array([rng.multinomial(s, skew if rng.random() < 0.7 else rng.dirichlet(np.ones(9))) for s in sizes])
        greedy, best = rb.greedy(real, counts, sizes, 0.5), rb.exhaustive(real, counts, sizes, 0.5)
        assert sizes[greedy].sum() >= 0.5 * sizes.sum()
        before, g, e = (rb.kl(real, counts[m].sum(0), 0.5) for m in (np.ones(14, bool), greedy, best))
        assert e <= g + 1e-12 <= before + 1e-12
        gaps.append((g - e) / (before - e))
    assert np.median(gaps) < 0.05 and max(gaps) < 0.3


def test_killed_export_rerun_equals_one_run(tmp_path, faces, dataset_name):
    """Last but the browser test: a SIGKILLed FiftyOne client (the export) is a hard exit for the
    database service too."""
    root = tmp_path / "many"
    faces.identity_tree(root, {f"id{k:03d}": 10 for k in range(60)})
    load_face_dataset(str(root), source="many", domain="synthetic", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    one = tmp_path / "one"
    _export(ds, one)
    for fmt in ("folders", "rec"):
        out = tmp_path / f"killed-{fmt}"
        args = [FACEAUDIT, "export", "--dataset", dataset_name, "--out", str(out), "--format", fmt, "--quiet"]
        proc = subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        marker = out / core.MARKER
        deadline = time.time() + 120
        while not (marker.exists() and (fmt == "rec" or len(list(out.glob("id*/*.jpg"))) > 20)):
            assert proc.poll() is None, "the export ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / core.MANIFEST).exists()  # a partial export never looks complete
        done = subprocess.run(args[:-1] + ["--json"], env=dict(os.environ), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "resumed"
        if fmt == "folders":
            assert _tree(out) == _tree(one)
        else:
            ref = tmp_path / "ref-rec"
            _export(ds, ref, format="rec")
            assert _tree(out) == _tree(ref)
        assert not [p for p in out.rglob(".*")]  # no temporary names left


@pytest.mark.browser
def test_app_export_operator_exports_the_sidebar_filtered_view(app, page, tmp_path):
    """In headless Chromium: filter the grid in the sidebar, run "Export training set" from the
    operator browser, and the folder on disk is what the view showed, byte for byte. (It lost
    the filter when the session's client connected after the filter was set: see
    ``browser.connected``.)"""
    from test_app_operators import WAIT, _open_app, _open_operator, _shot, _until
    from test_app_panel import _sidebar_filter

    ds, _, url = app
    out = tmp_path / "from-the-app"
    try:
        _open_app(page, url, 12)
        page.get_by_text("identity", exact=True).first.click()  # open its filter, then move away:
        page.get_by_placeholder("+ filter by identity").wait_for(timeout=WAIT)
        page.mouse.move(900, 900)  # the field's colour tooltip would take the filter box's click
        time.sleep(1)
        _sidebar_filter(page, "identity", ["synth-faces-1"])
        page.get_by_text("3 samples", exact=True).wait_for(timeout=WAIT)
        _open_operator(page, "export training", "faceaudit: export training set")
        page.get_by_text("Export training set").first.wait_for(timeout=WAIT)
        page.get_by_text("Folder", exact=True).first.locator("xpath=following::input[1]").fill(str(out))
        page.get_by_text("Run now", exact=True).click()
        _shot(page, "export-form")
        page.get_by_role("button", name="Execute").click()
        assert _until(lambda: (out / core.MANIFEST).exists(), 120), "the operator wrote no manifest"
        page.get_by_text("3 images of 1 identities", exact=False).first.wait_for(timeout=WAIT)
        _shot(page, "export-result")
    except Exception:
        _shot(page, "export-failure")
        raise
    shown = ds.match(fo.ViewField("identity") == "synth-faces-1")
    expected = {f"synth-faces-1/{os.path.basename(p)}": _digest(Path(p)) for p in shown.values("filepath")}
    assert _tree(out) == expected and len(expected) == 3


def test_a_delegated_export_to_a_relative_folder_lands_where_the_form_said(loaded, tmp_path, dataset_name, monkeypatch):
    """The form checks the folder relative to the App server's working folder; the queued
    operation must name it absolutely, or a `fiftyone delegated launch` worker started in another
    folder exports there instead."""
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ds, _ = loaded
    uri = "@faceaudit/face-audit/export_training_set"
    (tmp_path / "server").mkdir()
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "server")
    result = foo.execute_operator(uri, ctx={"dataset": ds, "params": {"out": "train", "delegate": "true"}})
    assert result.delegated and result.error is None, result.error
    monkeypatch.chdir(tmp_path / "worker")
    DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)
    [op] = DelegatedOperationService().list_operations(operator=uri, dataset_name=dataset_name)
    assert op.run_state == "completed", (op.run_state, op.result and op.result.error)
    manifest = json.loads((tmp_path / "server" / "train" / "manifest.json").read_text())
    assert manifest["images"] == ds.count() - ds.match_tags("unreadable").count()
    assert not (tmp_path / "worker" / "train").exists()
