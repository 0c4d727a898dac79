"""Issue 8.7: database faults. Every test here starts MongoDB servers of its own (the bundled
mongod, on 127.0.0.1, in a temporary dbpath) and points ``faceaudit`` subprocesses at them with
FIFTYONE_DATABASE_URI; FiftyOne's shared database service is never touched.

* a single mongod SIGKILLed during ``load`` and during ``annotate``, then restarted (an unclean
  shutdown: MongoDB's estimated collection count reads 0 until validated): the killed command says
  one line, the rerun completes, and the result equals a clean run's;
* a 3-member replica set whose primary is SIGKILLed during ``annotate`` and ``load``: the run
  completes (retryable writes), or says one line and a rerun completes, with a clean run's result.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

import fiftyone

MONGOD = Path(fiftyone.__file__).parent / "db" / "bin" / "mongod"
FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))
LOAD_IMAGES = 13_000  # more than the loader's 10,000-sample chunk: a kill lands mid-load
ANNOTATE_IMAGES = 96
BATCH = "8"

pytestmark = pytest.mark.skipif(not MONGOD.exists(), reason="needs FiftyOne's bundled mongod")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mongod:
    """One mongod process of the test's own (never FiftyOne's shared service)."""

    def __init__(self, dbpath: Path, repl_set: str | None = None):
        self.dbpath, self.port, self.repl_set = dbpath, free_port(), repl_set
        dbpath.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.start()

    def start(self) -> None:
        args = [str(MONGOD), "--dbpath", str(self.dbpath), "--port", str(self.port), "--bind_ip", "127.0.0.1",
                "--nounixsocket", "--quiet", "--logpath", str(self.dbpath / "mongod.log"), "--logappend",
                "--wiredTigerCacheSizeGB", "0.25"]
        if self.repl_set:
            args += ["--replSet", self.repl_set]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            try:
                with MongoClient(self.host, serverSelectionTimeoutMS=500, directConnection=True) as c:
                    c.admin.command("ping")
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"mongod on {self.host} did not start (see {self.dbpath}/mongod.log)")
                time.sleep(0.2)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no checkpoint (the unclean shutdown users get from a crash)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """At the end of a test: its data is thrown away, so no clean shutdown is needed."""
        if self.proc and self.proc.poll() is None:
            self.kill()


def cli_env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FIFTYONE_DATABASE_DIR", "FIFTYONE_DATABASE_URI")}
    env["FIFTYONE_DATABASE_URI"] = uri
    return env


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([FACEAUDIT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(args: list[str], env: dict, timeout: float = 240) -> tuple[int, str, str]:
    return finish(start(args, env), timeout)


def samples(client: MongoClient, dataset: str):
    """The samples collection of a FiftyOne dataset, read with plain pymongo."""
    db = client["fiftyone"]
    doc = db.datasets.find_one({"name": dataset}, {"sample_collection_name": 1})
    return None if doc is None else db[doc["sample_collection_name"]]


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    """Poll ``condition()`` until true; fail if ``proc`` ends first (the kill would come too late)."""
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            _, out, err = finish(proc)
            pytest.fail(f"the command ended before {what}: rc={proc.returncode}\n{out}\n{err[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def safe(condition):
    def check():
        try:
            return condition()
        except Exception:  # noqa: BLE001 - the collection may not exist yet
            return False
    return check


def loaded_rows(coll, root: Path) -> list[tuple]:
    """What a load wrote, independent of ids and times: (relative path, source, domain, identity)."""
    rows = [(os.path.relpath(d["filepath"], root), d.get("source"), d.get("domain"), d.get("identity"))
            for d in coll.find({}, {"filepath": 1, "source": 1, "domain": 1, "identity": 1})]
    return sorted(rows)


def labels_by_file(coll, root: Path) -> dict[str, tuple]:
    """Each sample's labels: the code and every mac_ field."""
    out = {}
    for d in coll.find({}):
        fields = tuple(sorted((k, v) for k, v in d.items() if k.startswith("mac_")))
        out[os.path.relpath(d["filepath"], root)] = fields
    return out


def assert_one_line_fault(rc: int, err: str, address: str) -> None:
    assert rc == 3, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line and "it/s" not in line
             and "s/it" not in line and not line.startswith("\r")]
    fault = [line for line in lines if "error:" in line]
    assert len(fault) == 1 and "Traceback" not in err, err[-3000:]
    assert f"the connection to the database at mongodb://{address} was lost" in fault[0]
    assert "run the same command again to continue" in fault[0]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def jpegs(faces):
    return [faces.jpeg(i) for i in range(len(faces.arrays))]


def write_tree(root: Path, jpegs: list[bytes], n: int, per_identity: int = 40) -> Path:
    for k in range(n):
        folder = root / f"id{k // per_identity:05d}"
        if k % per_identity == 0:
            folder.mkdir(parents=True)
        (folder / f"{k:06d}.jpg").write_bytes(jpegs[k % len(jpegs)])
    return root


@pytest.fixture(scope="module")
def load_tree(tmp_path_factory, jpegs):
    return write_tree(tmp_path_factory.mktemp("load") / "faces", jpegs, LOAD_IMAGES)


@pytest.fixture(scope="module")
def annotate_tree(tmp_path_factory, jpegs):
    return write_tree(tmp_path_factory.mktemp("annotate") / "faces", jpegs, ANNOTATE_IMAGES, per_identity=8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny MAC (random weights: the labels only need to be deterministic)."""
    import torch

    from faceaudit.model import MAC, MACConfig, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mac") / "mac.pt"
    save_checkpoint(MAC(MACConfig(backbone="tiny", input_size=32, embedding_size=32, hidden=(32,),
                                  branch_hidden=8, mc_passes=4)).eval(), str(path))
    return str(path)


def annotate_args(checkpoint: str, dataset: str) -> list[str]:
    return ["annotate", "--checkpoint", checkpoint, "--device", "cpu", "--batch-size", BATCH, "--workers", "0",
            "--quiet", "--dataset", dataset]


def clean_then_unlabel(env: dict, client: MongoClient, checkpoint: str, tree: Path, dataset: str) -> dict:
    """Load ``tree``, annotate it cleanly, keep the labels, then remove them all again."""
    rc, _, err = run(["load", str(tree), "--source", "faces", "--domain", "real", "--quiet", "--dataset", dataset], env)
    assert rc == 0, err[-3000:]
    rc, _, err = run(annotate_args(checkpoint, dataset), env)
    assert rc == 0, err[-3000:]
    coll = samples(client, dataset)
    clean = labels_by_file(coll, tree)
    assert len(clean) == ANNOTATE_IMAGES and all(dict(v).get("mac_code") for v in clean.values())
    fields = {k for v in clean.values() for k, _ in v}
    coll.update_many({}, {"$unset": dict.fromkeys(fields, "")})
    return clean


def expected_load(root: Path) -> list[tuple]:
    """A clean load's result, from the folder itself: every file once, identity = its folder."""
    return sorted((os.path.relpath(p, root), "faces", "real", p.parent.name) for p in root.rglob("*.jpg"))


@pytest.fixture
def mongod(tmp_path):
    server = Mongod(tmp_path / "db")
    yield server
    server.stop()


def uri_of(server: Mongod) -> str:
    return f"mongodb://{server.host}/?serverSelectionTimeoutMS=2000"


# ----------------------------------------------------------------------------- single mongod


def test_mongod_killed_during_load_then_rerun_equals_a_clean_load(mongod, load_tree):
    env = cli_env(uri_of(mongod))
    client = MongoClient(mongod.host, serverSelectionTimeoutMS=2000)
    load = ["load", str(load_tree), "--source", "faces", "--domain", "real", "--quiet", "--dataset", "faults"]
    proc = start(load, env)
    wait_for(safe(lambda: samples(client, "faults").estimated_document_count() > 0), proc, "the first chunk was written")
    mongod.kill()
    rc, out, err = finish(proc)
    assert_one_line_fault(rc, err, mongod.host)

    mongod.start()  # unclean shutdown: WiredTiger recovers, the fast counts are stale
    rc, out, err = run(load, env)
    assert rc == 0, err[-3000:]
    client = MongoClient(mongod.host, serverSelectionTimeoutMS=2000)
    assert loaded_rows(samples(client, "faults"), load_tree) == expected_load(load_tree)


def test_mongod_killed_during_annotate_then_rerun_equals_a_clean_run(mongod, annotate_tree, checkpoint):
    env = cli_env(uri_of(mongod))
    client = MongoClient(mongod.host, serverSelectionTimeoutMS=2000)
    clean = clean_then_unlabel(env, client, checkpoint, annotate_tree, "faults")

    proc = start(annotate_args(checkpoint, "faults"), env)
    wait_for(safe(lambda: samples(client, "faults").count_documents({"mac_code": {"$exists": True}}) > 0),
             proc, "the first labels were written")
    mongod.kill()
    rc, _, err = finish(proc)
    assert_one_line_fault(rc, err, mongod.host)

    mongod.start()
    client = MongoClient(mongod.host, serverSelectionTimeoutMS=2000)
    # what users hit: after the unclean shutdown MongoDB's estimated count may read 0
    estimated = samples(client, "faults").estimated_document_count()
    rc, out, err = run(annotate_args(checkpoint, "faults"), env)
    assert rc == 0, f"estimated count after restart: {estimated}\n{err[-3000:]}"
    assert labels_by_file(samples(client, "faults"), annotate_tree) == clean


# ----------------------------------------------------------------------------- replica set


@pytest.fixture
def replica_set(tmp_path):
    members = [Mongod(tmp_path / f"rs{i}", repl_set="rs0") for i in range(3)]
    try:
        with MongoClient(members[0].host, directConnection=True) as c:
            c.admin.command("replSetInitiate", {
                "_id": "rs0",
                "members": [{"_id": i, "host": m.host, "priority": 1} for i, m in enumerate(members)],
                "settings": {"electionTimeoutMillis": 1000, "heartbeatIntervalMillis": 200},
            })
        client = MongoClient(",".join(m.host for m in members), replicaSet="rs0", serverSelectionTimeoutMS=30000)
        client.admin.command("ping")  # waits for a primary
        yield members, client
    finally:
        for m in members:
            m.stop()


def primary_of(members, client) -> Mongod:
    host = "%s:%d" % client.primary
    return next(m for m in members if m.host == host)


def test_replica_set_primary_killed_during_annotate_and_load(replica_set, annotate_tree, load_tree, checkpoint):
    members, client = replica_set
    hosts = ",".join(m.host for m in members)
    env = cli_env(f"mongodb://{hosts}/?replicaSet=rs0&serverSelectionTimeoutMS=15000")
    clean = clean_then_unlabel(env, client, checkpoint, annotate_tree, "faults")
    annotate = annotate_args(checkpoint, "faults")

    proc = start(annotate, env)
    wait_for(safe(lambda: samples(client, "faults").count_documents({"mac_code": {"$exists": True}}) > 0),
             proc, "the first labels were written")
    primary_of(members, client).kill()
    rc, _, err = finish(proc)
    if rc != 0:  # allowed: one line, then a rerun completes
        assert_one_line_fault(rc, err, hosts)
        rc, _, err = run(annotate, env)
    assert rc == 0, err[-3000:]
    assert labels_by_file(samples(client, "faults"), annotate_tree) == clean

    # load: the new primary killed mid-load (two members left, then one: it restarts the first)
    killed = next(m for m in members if m.proc.poll() is not None)
    killed.start()
    client.admin.command("ping")
    load = ["load", str(load_tree), "--source", "more", "--domain", "synthetic", "--quiet", "--dataset", "faults"]
    proc = start(load, env)
    wait_for(safe(lambda: samples(client, "faults").count_documents({"source": "more"}) > 0), proc,
             "the first chunk was written")
    primary_of(members, client).kill()
    rc, _, err = finish(proc)
    if rc != 0:
        assert_one_line_fault(rc, err, hosts)
        rc, _, err = run(load, env)
    assert rc == 0, err[-3000:]
    coll = samples(client, "faults")
    paths = [d["filepath"] for d in coll.find({"source": "more"}, {"filepath": 1})]
    assert len(paths) == len(set(paths)) == LOAD_IMAGES


# ----------------------------------------------------------------------------- the message itself


def test_fault_message_names_the_address_without_credentials_and_the_wait_is_bounded(monkeypatch):
    from faceaudit_cli import common

    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongodb://alice:s3cret@db1:27017,db2:27018/fiftyone?replicaSet=rs0")
    assert common.database_address() == "mongodb://db1:27017,db2:27018"
    # a URI without its own wait gets the CLI's bounded one; the user's own choice is kept
    uri = common.with_option("mongodb://db1:27017/fiftyone?replicaSet=rs0",
                             f"serverSelectionTimeoutMS={common.SERVER_SELECTION_MS}")
    assert uri.endswith(f"&serverSelectionTimeoutMS={common.SERVER_SELECTION_MS}")
    # an address where nothing answers is refused at once, in one line (issue 16 item 15)
    monkeypatch.setenv("FIFTYONE_DATABASE_URI", "mongodb://db1/?serverSelectionTimeoutMS=2000")
    with pytest.raises(ValueError, match="nothing answers at mongodb://db1"):
        common.fiftyone_env()
    assert os.environ["FIFTYONE_DATABASE_URI"] == "mongodb://db1/?serverSelectionTimeoutMS=2000"
