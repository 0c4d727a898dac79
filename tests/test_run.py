"""`faceaudit run study.toml`: the whole study on four real-face fixtures in the study's layouts;
a rerun does nothing new; a SIGKILL mid-annotation then a rerun equals an uninterrupted run;
a bad config is refused, naming key and line, with nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import pytest

from faceaudit.config import ConfigError, load_config
from fiftyone_plugin import labels
from test_scale import labels_by_path, tiny_mac  # noqa: F401 - a fixture

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, faces) -> Path:
    """Four sources: a real identity-folder set, BUPT's layout, IDiff-style folders, a flat GAN folder."""
    root = tmp_path_factory.mktemp("study")
    faces.identity_tree(root / "real", {f"person{k}": 5 for k in range(4)})
    for race, start in (("African", 0), ("Asian", 10)):
        faces.identity_tree(root / "bupt" / "images" / "race_per_7000" / race,
                            {f"m.{race}{k}": 5 for k in range(2)}, start=start)
    faces.identity_tree(root / "idiff", {f"{k}": 5 for k in range(4)}, start=30)
    for k in range(20):
        faces.write(root / "gan" / f"seed{k:04d}.png", 60 + k)
    return root


def write_config(directory: Path, study: Path, ckpt: str, dataset: str, **overrides: str) -> Path:
    text = f'''dataset = "{dataset}"

[[sources]]
path = "{study / 'real'}"
name = "lfw-real"
domain = "real"

[[sources]]
path = "{study / 'bupt'}"
preset = "bupt-balancedface"

[[sources]]
path = "{study / 'idiff'}"
preset = "idiff-face"

[[sources]]
path = "{study / 'gan'}"
name = "gan"
domain = "synthetic"
format = "flat"

[model]
checkpoint = "{ckpt}"
device = "cpu"
batch_size = {overrides.get("batch_size", "2")}
workers = 0
threshold = 0.05

[comparison]
bootstrap = {overrides.get("bootstrap", "0")}

[outliers]
top = 5
joint = ["Male", "Young"]

[reports]
html = "reports/study.html"
json = "reports/study.json"
csv = "reports/study.csv"
'''
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "study.toml"
    path.write_text(text)
    return path


def run(args, env):
    proc = subprocess.run([FACEAUDIT, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def outcome(name: str, reports: Path) -> tuple:
    """What a study leaves: labels, scores and tags per file, and the comparison report."""
    ds = fo.load_dataset(name)
    ds.reload()
    scores = dict(zip(*ds.values(["filepath", "realness_nll"])))
    tags = {p for p, t in zip(*ds.values(["filepath", "tags"])) if "outlier" in t}
    result = json.loads((reports / "study.json").read_text())
    for key in ("dataset", "computed_at"):
        result.pop(key, None)
    return labels_by_path(name), scores, tags, result


def test_study_runs_reruns_as_a_no_op_and_survives_sigkill(study_dir, tiny_mac, tmp_path, cli_env):  # noqa: F811
    names = [f"study-{os.getpid()}-{k}" for k in (1, 2)]
    try:
        config = write_config(tmp_path / "clean", study_dir, tiny_mac, names[0])
        first = run(["run", str(config), "--quiet"], cli_env)
        assert "80 samples labelled" in first, first
        ds = fo.load_dataset(names[0])
        assert ds.count_values("source") == {"lfw-real": 20, "bupt-balancedface": 20, "idiff-face": 20, "gan": 20}
        assert len(ds.match_tags("outlier")) == 5 and ds.exists(labels.CODE_FIELD).count() == 80
        reports = tmp_path / "clean" / "reports"
        assert {p.name for p in reports.iterdir()} == {"study.html", "study.json", "study.csv"}
        clean = outcome(names[0], reports)

        mtimes = {p.name: p.stat().st_mtime_ns for p in reports.iterdir()}
        samples = ds._sample_collection
        last_write = samples.find_one(sort=[("last_modified_at", -1)])["last_modified_at"]
        again = run(["run", str(config), "--quiet"], cli_env)
        assert "nothing new" in again and "0 added" in again, again
        assert {p.name: p.stat().st_mtime_ns for p in reports.iterdir()} == mtimes
        assert samples.find_one(sort=[("last_modified_at", -1)])["last_modified_at"] == last_write

        killed = write_config(tmp_path / "killed", study_dir, tiny_mac, names[1], batch_size="1")
        proc = subprocess.Popen([FACEAUDIT, "run", str(killed), "--quiet"], env=cli_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not fo.dataset_exists(names[1]) or fo.load_dataset(names[1])._sample_collection.count_documents(
                {labels.CODE_FIELD: {"$exists": True}}) < 10:
            assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        partial = fo.load_dataset(names[1])._sample_collection.count_documents({labels.CODE_FIELD: {"$exists": True}})
        assert 10 <= partial < 80
        assert not (tmp_path / "killed" / "reports").exists()
        resumed = run(["run", str(killed), "--quiet"], cli_env)
        assert f"{80 - partial} samples labelled" in resumed
        resumed_outcome = outcome(names[1], tmp_path / "killed" / "reports")
        assert resumed_outcome[:3] == clean[:3]  # labels, scores, outlier tags
        for key in clean[3]:  # the comparison, key by key
            assert resumed_outcome[3][key] == clean[3][key], key
    finally:
        for name in names:
            if fo.dataset_exists(name):
                fo.delete_dataset(name)


def test_bad_config_is_refused_naming_key_and_line_with_nothing_written(study_dir, tiny_mac, tmp_path,  # noqa: F811
                                                                       cli_env, dataset_name):
    config = write_config(tmp_path, study_dir, tiny_mac, dataset_name)
    good = config.read_text()
    cases = [
        ("batch_size = 2", "batch_size = 0", "model.batch_size: must be at least 1", "batch_size = 0"),
        ('preset = "idiff-face"', 'preset = "idiff"', "sources[2].preset: unknown preset 'idiff'", 'preset = "idiff"'),
        ('domain = "synthetic"', 'domain = "fake"', "sources[3].domain: must be one of real, synthetic",
         'domain = "fake"'),
        ("top = 5", "top = 5\nthreshold = 2.0", "outliers.threshold: give top = K or threshold = T, not both",
         "threshold = 2.0"),
        ('joint = ["Male", "Young"]', 'joint = ["Male", "Youth"]', "outliers.joint: unknown attribute 'Youth'",
         "joint ="),
        ("bootstrap = 0", "bootstrap = 0\nbootstraps = 5", "comparison.bootstraps: unknown key", "bootstraps ="),
        (f'path = "{study_dir / "gan"}"', 'path = "no/such/folder"', "sources[3].path: ", "no/such/folder"),
    ]
    for old, new, message, line_text in cases:
        config.write_text(good.replace(old, new, 1))
        with pytest.raises(ConfigError) as error:
            load_config(str(config))
        text = str(error.value)
        lines = config.read_text().splitlines()
        line = next(k for k, t in enumerate(lines, 1) if line_text in t)
        assert f"line {line}: {message}" in text, text

    config.write_text(good.replace("batch_size = 2", 'batch_size = "many"'))
    proc = subprocess.run([FACEAUDIT, "run", str(config)], env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    line = 1 + config.read_text().splitlines().index('batch_size = "many"')
    assert f" line {line}: model.batch_size: expected a whole number, got 'many'" in proc.stderr, proc.stderr
    assert not fo.dataset_exists(dataset_name) and not (tmp_path / "reports").exists()
