"""Stale results (issue 16, items 4-7 and 19): `faceaudit run` never reports as current what
other settings, other labels or a killed run left behind.

Real components throughout: `faceaudit` subprocesses on a real mongod, real face images, a real
(tiny, untrained) MAC checkpoint, SIGKILL at a chosen point of the report writing. Each test's
reference is computed independently: a fresh study with the new settings in another dataset, or
the state counts read back from the CSV that was imported.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from scipy.stats import entropy

from faceaudit.attributes import ATTRIBUTES
from fiftyone_plugin import labels
from clirun import FACEAUDIT, faceaudit
from test_embed import models  # noqa: F401 - a fixture (a tiny IResNet checkpoint)
from test_scale import labels_by_path, tiny_mac  # noqa: F401 - a fixture



@pytest.fixture(scope="module")
def small_study(tmp_path_factory, faces) -> Path:
    """A real identity-folder source and a flat synthetic one, 12 faces each."""
    root = tmp_path_factory.mktemp("small-study")
    faces.identity_tree(root / "real", {f"person{k}": 4 for k in range(3)})
    for k in range(12):
        faces.write(root / "gan" / f"seed{k:04d}.png", 40 + k)
    return root


def write_config(directory: Path, study: Path, ckpt: str, dataset: str, threshold: str = "0.05") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "study.toml"
    path.write_text(f'''dataset = "{dataset}"

[[sources]]
path = "{study / 'real'}"
name = "real"
domain = "real"

[[sources]]
path = "{study / 'gan'}"
name = "gan"
domain = "synthetic"
format = "flat"

[model]
checkpoint = "{ckpt}"
device = "cpu"
batch_size = 4
workers = 0
threshold = {threshold}

[outliers]
top = 3

[reports]
html = "reports/study.html"
json = "reports/study.json"
csv = "reports/study.csv"
''')
    return path


def run(args, env, cwd=None, process=False) -> str:
    """``faceaudit ARGS``'s stdout (exit 0), by default in this process."""
    return faceaudit(args, env, process=process, cwd=cwd).stdout


def report_json(directory: Path) -> dict:
    result = json.loads((directory / "reports" / "study.json").read_text())
    for key in ("dataset", "computed_at"):
        result.pop(key, None)
    return result


@pytest.fixture
def names():
    made = []

    def make(k: int) -> str:
        made.append(f"runs-{os.getpid()}-{time.monotonic_ns()}-{k}")
        return made[-1]

    yield make
    for name in made:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def test_a_changed_threshold_or_checkpoint_relabels_what_it_changes(small_study, tiny_mac, tmp_path,  # noqa: F811
                                                                    cli_env, names, tmp_path_factory):
    name, fresh = names(1), names(2)
    config = write_config(tmp_path / "study", small_study, tiny_mac, name, threshold="0.05")
    run(["run", str(config), "--quiet"], cli_env, process=True)
    before = labels_by_path(name)

    config = write_config(tmp_path / "study", small_study, tiny_mac, name, threshold="0.6")
    again = run(["run", str(config), "--quiet"], cli_env)
    assert "nothing new" not in again and "24 relabelled" in again, again
    reference = write_config(tmp_path / "fresh", small_study, tiny_mac, fresh, threshold="0.6")
    run(["run", str(reference), "--quiet"], cli_env)
    relabelled = labels_by_path(name)
    assert relabelled == labels_by_path(fresh) != before  # as a fresh run at 0.6 labels them
    assert report_json(tmp_path / "study") == report_json(tmp_path / "fresh")
    assert "nothing new" in run(["run", str(config), "--quiet"], cli_env)  # and now it is current

    # another checkpoint (the same architecture, other weights) at the same path is a change too
    import torch

    from faceaudit.model import MAC, MACConfig
    from faceaudit.model.checkpoint import save_checkpoint

    torch.manual_seed(1)
    other = tmp_path_factory.mktemp("other-mac") / "tiny.pt"
    save_checkpoint(MAC(MACConfig(backbone="tiny", embedding_size=32, hidden=(32,), branch_hidden=8,
                                  mc_passes=4, threshold=0.55)), str(other))
    config.write_text(config.read_text().replace(tiny_mac, str(other)))
    third = run(["run", str(config), "--quiet"], cli_env)
    assert "24 relabelled" in third, third
    assert labels_by_path(name) != relabelled


def test_imported_labels_are_kept_and_a_manual_compare_is_not_taken_for_the_run(  # noqa: F811
        small_study, tiny_mac, tmp_path, cli_env, names):
    name = names(1)
    study = tmp_path / "study"
    config = write_config(study, small_study, tiny_mac, name)
    run(["run", str(config), "--quiet"], cli_env)
    first = report_json(study)

    # item 5: a comparison computed by hand with other settings, then the report deleted
    run(["compare", "--dataset", name, "--attributes", "Male", "--alpha", "0", "--states", "binary"], cli_env)
    (study / "reports" / "study.json").unlink()
    again = run(["run", str(config), "--quiet"], cli_env)
    assert "compare: computed" in again, again
    result = report_json(study)
    assert result["states"] == first["states"] and len(result["states"]) == 3
    assert result["alpha"] == 0.5 and len(result["attributes"]) == len(ATTRIBUTES)
    assert result == first

    # item 6: every real face's Male set to +1: the counts of labelled samples stay the same
    exported = tmp_path / "real.csv"
    run(["export-labels", str(exported), "--dataset", name, "--source", "real"], cli_env)
    rows = list(csv.reader(exported.open()))
    column = rows[0].index("Male")
    assert first["attributes"]["Male"]["counts"]["real"]["positive"] < 12  # the flip is a change
    for row in rows[1:]:
        row[column] = "1"
    with exported.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    run(["import-labels", str(exported), "--dataset", name, "--source", "real"], cli_env)
    after = run(["run", str(config), "--quiet"], cli_env)
    assert "nothing new" not in after and "compare: computed" in after, after
    result = report_json(study)
    # the reference: the states of the file that was imported, the gan source's from the database
    j = ATTRIBUTES.index("Male")
    real_male = np.array([int(row[column]) for row in rows[1:]])
    ds = fo.load_dataset(name)
    gan_codes = ds.match({"source": "gan"}).values(labels.CODE_FIELD)
    real_counts = np.array([(real_male == 1).sum(), (real_male == -1).sum(), (real_male == 0).sum()])
    gan_counts = np.array([sum(c[j] == s for c in gan_codes) for s in "pnu"])
    p, q = (real_counts + 0.5) / (real_counts.sum() + 1.5), (gan_counts + 0.5) / (gan_counts.sum() + 1.5)
    male = result["attributes"]["Male"]
    assert male["counts"]["real"] == {"positive": 12, "negative": 0, "undefined": 0}
    assert male["real_vs_synthetic"]["kl_real_synth"] == pytest.approx(entropy(p, q))
    assert male["real_vs_synthetic"]["kl_synth_real"] == pytest.approx(entropy(q, p))
    assert ds.match({"source": "real"}).count_values(labels.SETTINGS_FIELD) == {labels.IMPORTED: 12}
    # and a model run does not relabel imported labels: the next run is a no-op
    assert "nothing new" in run(["run", str(config), "--quiet"], cli_env)


@pytest.mark.parametrize("point", ["html", pytest.param("html.part", marks=pytest.mark.slow)])  # the second: -m slow
def test_a_kill_between_reports_leaves_no_mismatch_and_no_leftovers(small_study, tiny_mac, tmp_path,  # noqa: F811
                                                                    cli_env, names, point):
    name = names(1)
    study = tmp_path / "study"
    config = write_config(study, small_study, tiny_mac, name)
    run(["run", str(config), "--quiet"], cli_env)
    reports = study / "reports"
    old = {p.name: p.read_bytes() for p in reports.iterdir()}

    # the labels change (a comparison the reports do not show yet) and the run is killed at `point`
    ds = fo.load_dataset(name)
    real = ds.match({"source": "real"})
    states = np.ones((real.count(), len(ATTRIBUTES)), np.int8)
    labels.write_labels(ds, real.values("_id"), states)
    env = {**cli_env, "FACEAUDIT_PAUSE_IN_REPORTS": point}
    proc = subprocess.Popen([FACEAUDIT, "run", str(config), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    html = reports / "study.html"
    part = reports / f"study.html.part-{proc.pid}"
    deadline = time.time() + 300

    def reached() -> bool:
        if point == "html":
            return html.read_bytes() != old["study.html"] and not part.exists()
        return part.exists() and (reports / f"study.csv.part-{proc.pid}").exists() is False and part.stat().st_size > 0

    while not reached():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.2)  # (the pause point itself: the writes before it are done)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in reports.iterdir() if ".part-" in p.name)
    assert left, "the kill left no temporary file: it did not hit the report writing"
    if point == "html":
        assert (reports / "study.json").read_bytes() == old["study.json"]  # the mismatch the kill leaves

    out = run(["run", str(config), "--quiet"], cli_env)
    assert "reports: written" in out, out
    assert sorted(p.name for p in reports.iterdir()) == ["study.csv", "study.html", "study.json"]
    result = report_json(study)
    assert all(code == "p" * len(ATTRIBUTES) for code in real.values(labels.CODE_FIELD))
    assert result["attributes"]["Male"] != json.loads(old["study.json"])["attributes"]["Male"]
    for kind in ("html", "csv"):
        assert (reports / f"study.{kind}").read_bytes() != old[f"study.{kind}"]
    assert "nothing new" in run(["run", str(config), "--quiet"], cli_env)


# Item 19 (the demo from any working folder): tests/test_cli.py's demo test runs it from one
# folder and again from another (the demo is the suite's longest single run, so it runs once).


def test_settings_keys():
    from faceaudit.fingerprint import is_current, settings_key

    a = {"model": "mac", "weights": "sha256:00", "threshold": 0.6, "mc_passes": None}
    assert settings_key(a) == settings_key(dict(reversed(list(a.items()))))  # key order is not a change
    assert settings_key(a) != settings_key({**a, "threshold": 0.99})
    assert is_current(settings_key(a), a) and not is_current(None, a)


# ------------------------------------------------------------------ the identity audit and the outlier tags


def _identity_config(directory: Path, study: Path, ckpt: str, dataset: str, embedding: str = "") -> Path:
    """The small study with an [embedding] step (dlib unless told) and an [identity] step."""
    path = write_config(directory, study, ckpt, dataset)
    embedding = embedding or 'model = "dlib"'
    path.write_text(path.read_text() + f"\n[embedding]\n{embedding}\n"
                    'device = "cpu"\n\n[identity]\nthreshold = 0.9\ntag = true\n')
    return path


def _audit(dataset: str) -> dict:
    ds = fo.load_dataset(dataset)
    ds.reload()
    return ds.info["faceaudit"]["identity"]


def test_a_rerun_redoes_what_a_hand_run_the_app_or_an_edit_changed_since(  # noqa: F811
        small_study, tiny_mac, tmp_path, names, cli_env, models):
    """Stop 21's review: after an identity audit from the App (or `faceaudit identity`) with
    another threshold, `faceaudit run` said "identity: skipped" and "reports up to date" while
    dataset.info and the tags were the hand run's and report.html still showed the run's. The
    same held for identities renamed in FiftyOne, a face marked `reviewed_keep`, an `outliers`
    run by hand, and a changed [embedding] was refused with advice (--overwrite) `run` has not.
    Each edit is made through the door a user would use; each rerun must redo exactly the steps
    the edit affects and rewrite the reports."""
    name = names(0)
    config = _identity_config(tmp_path / "a", small_study, tiny_mac, name)
    first = run(["run", str(config)], cli_env, cwd=tmp_path / "a")
    assert "identity: computed" in first and _audit(name)["threshold"] == 0.9
    html = tmp_path / "a" / "reports" / "study.html"
    again = run(["run", str(config)], cli_env, cwd=tmp_path / "a")
    assert "identity: skipped" in again and "outliers: skipped" in again and "nothing new" in again

    # 1. an audit by hand with another threshold (what the App's operator runs)
    run(["identity", "--dataset", name, "--threshold", "0.99", "--tag"], cli_env)
    assert _audit(name)["threshold"] == 0.99
    before = html.stat().st_mtime_ns
    redo = run(["run", str(config)], cli_env, cwd=tmp_path / "a")
    assert "identity: computed" in redo and "reports: written" in redo, redo
    assert "outliers: skipped" in redo  # the outlier tags were not touched
    assert _audit(name)["threshold"] == 0.9 and html.stat().st_mtime_ns != before
    assert "skipped" in run(["run", str(config)], cli_env, cwd=tmp_path / "a").split("identity:")[1][:12]

    # 2. two identities merged in FiftyOne (same sample count, same vectors)
    ds = fo.load_dataset(name)
    merged = ds.match(fo.ViewField("identity") == "person1")
    merged.set_values("identity", ["person0"] * len(merged))
    redo = run(["run", str(config)], cli_env, cwd=tmp_path / "a")
    assert "identity: computed" in redo and _audit(name)["sources"]["real"]["identities"] == 2

    # 3. a face marked reviewed_keep in the App (a sidebar tag): both tagging steps redo
    sample = ds.match(fo.ViewField("source") == "gan").first()
    sample.tags.append("reviewed_keep")
    sample.save()
    redo = run(["run", str(config)], cli_env, cwd=tmp_path / "a")
    assert "identity: computed" in redo and "outliers: 3 synthetic samples tagged" in redo, redo
    ds.reload()
    assert "outlier" not in ds[sample.filepath].tags

    # 4. `faceaudit outliers` by hand with another top
    run(["outliers", "--dataset", name, "--top", "1"], cli_env)
    assert len(ds.match_tags("outlier")) == 1
    redo = run(["run", str(config)], cli_env, cwd=tmp_path / "a")
    assert "outliers: 3 synthetic samples tagged" in redo and "identity: skipped" in redo, redo
    assert len(ds.match_tags("outlier")) == 3

    # 5. another embedding model in the config: every sample embedded again, then a new audit
    other = _identity_config(tmp_path / "a", small_study, tiny_mac, name,
                             embedding=f'model = "iresnet"\ncheckpoint = "{models["pth"]}"')
    redo = run(["run", str(other)], cli_env, cwd=tmp_path / "a")
    assert "the [embedding] settings changed (model 'dlib' -> 'iresnet'" in redo, redo
    assert "24 samples embedded" in redo and "identity: computed" in redo
    ds.reload()
    assert ds.info["faceaudit"]["embedding"]["model"] == "iresnet" and _audit(name)["model"] == "iresnet"
    assert {len(v) for v in ds.values("face_embedding")} == {64}  # no 128-d dlib vector left
