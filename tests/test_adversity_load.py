"""Loads that survive what real downloads contain (issue 8: findings 1, 2, 3, 4, 9, 10).

Each test reproduces a finding against the real mongod: concurrent loads, names that MongoDB
would read as field paths, folders with loops, locked folders, undecodable names, over-long
paths, decompression bombs, BMPs and empty files.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import fiftyone as fo
import fiftyone.core.odm as foo_db
import numpy as np
import pytest
from PIL import Image

from faceaudit.params import ParamError
from fiftyone_plugin import annotate, counts, ingest, labels, schema, views
from fiftyone_plugin.ingest import load_face_dataset

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))
ROUNDS = 3


# ----------------------------------------------------------------------------- files


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real, complete 1-bit PNG that declares ``width`` x ``height`` pixels (all black):
    ~110 KB on disk, 2.7 GB once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def bmp_bytes(faces, i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(faces.arrays[i]).convert("RGB").save(buf, format="BMP")
    return buf.getvalue()


def deep_folder(base: Path, min_length: int = 4300) -> str:
    """Nested folders under ``base`` whose deepest path is longer than the system's limit, with
    an image at the bottom (made relative to directory handles: no call sees the whole path)."""
    name = "d" * 200
    fd = os.open(base, os.O_RDONLY)
    path = str(base)
    try:
        while len(path) < min_length:
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd, path = new, f"{path}/{name}"
        img = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(img, b"\xff\xd8\xff\xe0 not really \xff\xd9")
        os.close(img)
    finally:
        os.close(fd)
    return path


def adversity_tree(root: Path, faces) -> dict[str, str]:
    """A 'folders' layout with 8 good faces and one of each bad entry; returns their paths."""
    faces.identity_tree(root, {"good1": 4, "good2": 4})
    (root / "good2" / "up").symlink_to("..")  # a loop: good2/up/good2/up/...
    (root / "good1" / "me").symlink_to("me")  # a link to itself
    (root / "locked").mkdir()
    faces.write(root / "locked" / "hidden.jpg", 20)
    bad_name = os.path.join(os.fsencode(root / "good1"), b"caf\xe9-latin1.jpg")
    with open(bad_name, "wb") as f:
        f.write(faces.jpeg(21))
    long_dir = deep_folder(root / "good2")
    (root / "good1" / "bomb.png").write_bytes(bomb_png())
    (root / "good1" / "face.bmp").write_bytes(bmp_bytes(faces, 22))
    (root / "good1" / "empty.jpg").write_bytes(b"")
    os.chmod(root / "locked", 0)
    return {"locked": str(root / "locked"), "loop": str(root / "good2" / "up"), "self": str(root / "good1" / "me"),
            "long": long_dir, "bomb": str(root / "good1" / "bomb.png"), "bmp": str(root / "good1" / "face.bmp"),
            "empty": str(root / "good1" / "empty.jpg")}


@pytest.fixture
def shared_dir():
    """A temporary folder that an unprivileged user can read (pytest's own are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="faceaudit-adversity-"))
    path.chmod(0o755)
    yield path
    for p in (path / "tree" / "locked",):
        if p.exists():
            p.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def unprivileged_env(cli_env, home: Path) -> tuple[list[str], dict[str, str]]:
    """Command prefix and environment to run `faceaudit` as ``nobody`` against this run's mongod
    (as root, the permission override would read the locked folder anyway)."""
    env = dict(cli_env)
    if os.geteuid() != 0:
        return [], env
    host, port = foo_db.get_db_client().address
    env.update(HOME=str(home), FIFTYONE_DATABASE_URI=f"mongodb://{host}:{port}")
    env.pop("FIFTYONE_DATABASE_DIR", None)
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"], env


# ----------------------------------------------------------------------------- 8.3, 8.4, 8.9, zero bytes


def test_every_bad_entry_is_skipped_or_tagged_and_named(shared_dir, faces, dataset_name, cli_env):
    bad = adversity_tree(shared_dir / "tree", faces)
    home = shared_dir / "home"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    prefix, env = unprivileged_env(cli_env, home)
    args = ["load", "--dataset", dataset_name, "--source", "adverse", "--domain", "real", "--quiet"]
    proc = subprocess.run([*prefix, FACEAUDIT, *args, "--json", str(shared_dir / "tree")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)

    # everything else loaded: 8 good faces, plus the BMP, the bomb and the empty file (tagged)
    ds = fo.load_dataset(dataset_name)
    paths = set(ds.values("filepath"))
    assert len(paths) == ds.count() == 11 == report["added"]
    assert {bad["bmp"], bad["bomb"], bad["empty"]} <= paths
    assert not any("/up/" in p or p.startswith(bad["long"][:300]) for p in paths)
    tagged = dict(zip(*ds.match_tags(schema.UNREADABLE_TAG).values(["filepath", schema.IMAGE_ISSUE])))
    assert set(tagged) == {bad["bomb"], bad["empty"]}
    assert "30000 x 30000" in tagged[bad["bomb"]] and "40,000,000" in tagged[bad["bomb"]]
    assert tagged[bad["empty"]] == "empty file"

    # the report names every skipped and tagged entry with its reason
    skipped = {g["reason"]: g for g in report["skipped_entries"]}
    named = {reason: " ".join(g["examples"]) for reason, g in skipped.items()}
    text = json.dumps(report)
    assert report["skipped"] == sum(g["count"] for g in report["skipped_entries"]) == 5
    assert any("permission" in r.lower() and bad["locked"] in named[r] for r in named), skipped
    assert any("symbolic link to a folder" in r and bad["loop"] in named[r] for r in named), skipped
    assert any("loop" in r and bad["self"] in named[r] for r in named), skipped
    assert any("UTF-8" in r and "caf\\xe9-latin1.jpg" in named[r] for r in named), skipped
    assert any("longer than" in r for r in named), skipped
    assert len(text) < 20_000  # the over-long path is shortened, never printed whole
    unreadable = {g["reason"]: g for g in report["unreadable_entries"]}
    assert report["unreadable"] == 2
    assert any(bad["bomb"] in g["examples"] and "pixels" in r for r, g in unreadable.items()), unreadable
    assert any(bad["empty"] in g["examples"] for g in unreadable.values()), unreadable

    # the text report says the same (a load into another dataset: a rerun tags nothing new)
    args[2] = text_dataset = f"{dataset_name}-text"
    try:
        proc = subprocess.run([*prefix, FACEAUDIT, *args, str(shared_dir / "tree")],
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        if fo.dataset_exists(text_dataset):
            fo.delete_dataset(text_dataset)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "11 added, 0 already present, 2 unreadable" in proc.stdout
    assert "5 entries skipped" in proc.stdout
    for path in (bad["locked"], bad["loop"], bad["self"], bad["bomb"], bad["empty"], "caf\\xe9-latin1.jpg"):
        assert path in proc.stdout, path
    assert max(len(line) for line in proc.stdout.splitlines()) < 1000


def test_pixel_limit_is_adjustable(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path, {"a": 2})
    Image.new("L", (3000, 2000)).save(tmp_path / "a" / "big.png")  # 6 megapixels
    report = load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name,
                               max_pixels=5_000_000)
    assert report.unreadable == 1
    issue = fo.load_dataset(dataset_name).match_tags(schema.UNREADABLE_TAG).values(schema.IMAGE_ISSUE)
    assert issue == ["too many pixels: 3000 x 2000 = 6,000,000, over the limit of 5,000,000 (--max-pixels)"]
    with pytest.raises(ParamError, match="max_pixels"):
        load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name, max_pixels=0)


def test_decoder_refuses_over_limit_images_and_reads_bmp(tmp_path, faces):
    from faceaudit.inference import ImageFiles

    big = tmp_path / "changed-after-load.png"
    Image.new("L", (7000, 6000)).save(big)  # 42 megapixels: 126 MB once decoded
    (tmp_path / "face.bmp").write_bytes(bmp_bytes(faces, 3))
    files = ImageFiles([str(big), str(tmp_path / "face.bmp")], 112)
    _, image, error = files[0]
    assert image is None and error.startswith("too many pixels: 7000 x 6000"), error
    _, image, error = files[1]
    assert error is None and tuple(image.shape) == (3, 112, 112)
    # GPU path (bytes only): the limit applies before the bytes leave the worker
    _, image, error = ImageFiles([str(big)], 112, jpeg_bytes_only=True)[0]
    assert image is None and "too many pixels" in error


# ----------------------------------------------------------------------------- 8.1 concurrent loads


def _check_concurrent(name: str, n_files: int, reports: list) -> None:
    ds = fo.load_dataset(name)
    paths = ds.values("filepath")
    assert len(paths) == len(set(paths)) == n_files
    assert sum(r["added"] for r in reports) == n_files
    for r in reports:
        assert r["found"] == n_files and r["added"] + r["already_present"] == n_files, r
    assert schema.sources_info(ds)["s"]["count"] == n_files


def test_concurrent_loads_in_threads_add_each_file_once(tmp_path, faces, monkeypatch):
    monkeypatch.setattr(ingest, "CHUNK_SIZE", 37)  # many chunks: the loads interleave
    n = faces.identity_tree(tmp_path, {f"id{i}": 25 for i in range(12)})
    for round in range(ROUNDS):
        name = f"test-concurrent-{os.getpid()}-{round}"
        barrier, results, errors = threading.Barrier(2), [], []

        def load():
            barrier.wait()
            try:
                results.append(load_face_dataset(str(tmp_path), source="s", domain="synthetic",
                                                 dataset_name=name).to_dict())
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)

        threads = [threading.Thread(target=load) for _ in range(2)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            _check_concurrent(name, n, results)
        finally:
            if fo.dataset_exists(name):
                fo.delete_dataset(name)


_STARTER = """
import contextlib, os, sys, time
import fiftyone_plugin.ingest
from faceaudit_cli import main
folder, me, rounds, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
for r in range(rounds):  # each round: say ready, wait for the go, so that both loads start together
    open(os.path.join(folder, f"ready-{r}-{me}"), "w").close()
    while not os.path.exists(os.path.join(folder, f"go-{r}")):
        time.sleep(0.002)
    with open(os.path.join(folder, f"out-{r}-{me}.json"), "w") as out, contextlib.redirect_stdout(out):
        code = main([a.replace("ROUND", str(r)) for a in args])
    if code:
        sys.exit(code)
"""


def test_concurrent_load_commands_add_each_file_once(tmp_path, faces, cli_env):
    n = faces.identity_tree(tmp_path / "faces", {f"id{i}": 20 for i in range(10)})
    sync, rounds, prefix = tmp_path / "sync", 3, f"test-concurrent-cli-{os.getpid()}"
    sync.mkdir()
    args = ["load", "--dataset", f"{prefix}-ROUND", "--source", "s", "--domain", "real", "--json", "--quiet",
            str(tmp_path / "faces")]
    procs = [subprocess.Popen([sys.executable, "-c", _STARTER, str(sync), str(k), str(rounds), *args], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    try:
        for r in range(rounds):
            deadline = time.time() + 60
            while not all((sync / f"ready-{r}-{k}").exists() for k in range(2)) and time.time() < deadline:
                time.sleep(0.01)
            (sync / f"go-{r}").touch()
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0 and "Traceback" not in err, err
        for r in range(rounds):
            reports = [json.loads((sync / f"out-{r}-{k}.json").read_text()) for k in range(2)]
            _check_concurrent(f"{prefix}-{r}", n, reports)
    finally:
        for p in procs:
            p.kill()
        for r in range(rounds):
            if fo.dataset_exists(f"{prefix}-{r}"):
                fo.delete_dataset(f"{prefix}-{r}")


# ----------------------------------------------------------------------------- 8.2 names with '$'


def test_dollar_names_are_refused_before_anything_is_written(tmp_path, faces, dataset_name, capsys):
    from faceaudit_cli import main

    faces.identity_tree(tmp_path, {"a": 2})
    assert main(["load", "--dataset", dataset_name, "--source", "$source", "--domain", "real", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "faceaudit load: error: --source: must not start with '$' (MongoDB reads it as a field path): '$source'")
    assert not fo.dataset_exists(dataset_name)
    with pytest.raises(ParamError, match="dataset: must not start with '\\$'"):
        load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name="$faces")
    assert not fo.dataset_exists("$faces")


def test_a_stored_dollar_source_is_compared_literally(tmp_path, faces, dataset_name):
    """A dataset written before names were checked may hold a source named ``$source``: every
    comparison of a stored value with that name must treat it as text, not as a field path."""
    faces.identity_tree(tmp_path / "r", {"a": 3, "b": 3})
    faces.identity_tree(tmp_path / "s", {"c": 2}, start=10)
    load_face_dataset(str(tmp_path / "r"), source="real", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "s"), source="syn", domain="synthetic", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    ds._sample_collection.update_many({"source": "syn"}, {"$set": {"source": "$source"}})
    info = schema.sources_info(ds)
    info["$source"] = info.pop("syn")
    schema.set_info(ds, "sources", info)
    labels.ensure_label_schema(ds)
    n = len(labels.LABEL_FIELDS)
    states = np.full((ds.count(), n), -1, np.int8)
    labels.write_labels(ds, ds.values("_id"), states)
    ds.set_values("score", [float(i) for i in range(ds.count())])

    assert annotate.select_view(ds, source="$source").count() == 2
    assert views.attribute_state_view(ds.view(), "$source", "Male", "negative").count() == 2
    assert views.score_range_view(ds.view(), "$source", "score", 0, 100).count() == 2
    hist = views.score_histograms(ds.view(), "score", bins=4)
    assert {s: sum(c) for s, c in hist["counts"].items()} == {"$source": 2, "real": 6}
    filtered = ds.match(fo.ViewField("score") >= 0)  # a filtered view: the one-pass scan
    result = counts.count_states(filtered)
    assert dict(zip(result.sources, result.samples.tolist())) == {"$source": 2, "real": 6}
    assert counts._domain_of(ds.view(), "$source") == "synthetic"


# ----------------------------------------------------------------------------- 8.10 (part)


def test_unknown_dataset_error_lists_only_faceaudit_datasets(tmp_path, faces, dataset_name):
    other = f"someone-elses-{os.getpid()}"
    fo.Dataset(other, persistent=True)
    try:
        faces.identity_tree(tmp_path, {"a": 1})
        load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name)
        with pytest.raises(ValueError) as e:
            schema.open_dataset("no-such-dataset", create=False)
        assert other not in str(e.value) and dataset_name in str(e.value)
    finally:
        fo.delete_dataset(other)
