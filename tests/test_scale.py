"""Annotation spread over workers: `--shard I/N` subprocesses (one SIGKILLed and restarted),
torchrun's `--shard auto`, and delegated shards run by `fiftyone delegated launch` workers.
Every sample ends labelled exactly once, with the labels one process gives."""

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

from fiftyone_plugin import labels
from fiftyone_plugin.annotate import shard_match, todo_view
from fiftyone_plugin.ingest import load_face_dataset

BIN = Path(sys.executable).parent
FACEAUDIT = str(BIN / "faceaudit")
N_FACES = 120


@pytest.fixture(scope="module")
def tiny_mac(tmp_path_factory) -> str:
    """An untrained tiny MAC: its labels are arbitrary but fixed, which is all sharding needs."""
    import torch

    from faceaudit.model import MAC, MACConfig
    from faceaudit.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = MAC(MACConfig(backbone="tiny", embedding_size=32, hidden=(32,), branch_hidden=8, mc_passes=4,
                        threshold=0.55))
    path = tmp_path_factory.mktemp("mac") / "tiny.pt"
    save_checkpoint(net, str(path))
    return str(path)


@pytest.fixture
def two_copies(faces, tmp_path, dataset_name):
    """The same faces loaded twice: ``dataset_name`` for the sharded run, a copy for one process."""
    faces.identity_tree(tmp_path / "ids", {f"id{k:03d}": 6 for k in range(N_FACES // 6)})
    load_face_dataset(str(tmp_path / "ids"), source="s", domain="synthetic", dataset_name=dataset_name)
    single = dataset_name + "-single"
    fo.load_dataset(dataset_name).clone(single, persistent=True)
    yield dataset_name, single
    fo.delete_dataset(single)


def annotate_args(dataset: str, ckpt: str, *extra: str) -> list[str]:
    return ["annotate", "--dataset", dataset, "--checkpoint", ckpt, "--device", "cpu", "--batch-size", "2",
            "--workers", "0", "--json", "--quiet", *extra]


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    return json.loads(out)


def start(args, env) -> subprocess.Popen:
    return subprocess.Popen([FACEAUDIT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def one_process(name: str, ckpt: str):
    """The reference: the whole dataset labelled by one process (this one), unsharded."""
    from faceaudit.progress import drive
    from fiftyone_plugin.annotate import iter_annotate

    return drive(iter_annotate(name, checkpoint=ckpt, device="cpu", batch_size=2, workers=0))


def labels_by_path(name: str) -> dict[str, tuple]:
    ds = fo.load_dataset(name)
    ds.reload()
    fields = ["filepath", labels.CODE_FIELD, *labels.LABEL_FIELDS]
    return {row[0]: tuple(row[1:]) for row in zip(*ds.values(fields))}


def shard_sizes(name: str, n: int) -> list[int]:
    ds = fo.load_dataset(name)
    return [ds.mongo([{"$match": shard_match((i, n))}]).count() for i in range(n)]


def test_shards_partition_the_samples(two_copies):
    name, _ = two_copies
    labels.ensure_label_schema(fo.load_dataset(name))
    for n in (1, 2, 3, 7):
        sizes = shard_sizes(name, n)
        assert sum(sizes) == N_FACES and min(sizes) > 0  # disjoint and covering, none empty
    ds = fo.load_dataset(name)
    ids = [set(todo_view(ds.view(), (i, 3)).values("id")) for i in range(3)]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and len(set.union(*ids)) == N_FACES


def test_two_shard_workers_one_killed_and_restarted_equal_one_process(tiny_mac, two_copies, cli_env):
    name, single = two_copies
    first = start(annotate_args(name, tiny_mac, "--shard", "0/2"), cli_env)
    second = start(annotate_args(name, tiny_mac, "--shard", "1/2"), cli_env)
    samples = fo.load_dataset(name)._sample_collection
    shard0 = {"$and": [shard_match((0, 2)), {labels.CODE_FIELD: {"$exists": True}}]}
    deadline = time.time() + 240
    while samples.count_documents(shard0) < 10:
        assert first.poll() is None, "shard 0 ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    partial = samples.count_documents(shard0)
    sizes = shard_sizes(name, 2)
    assert 10 <= partial < sizes[0]

    restarted = start(annotate_args(name, tiny_mac, "--shard", "0/2"), cli_env)
    single_report = one_process(single, tiny_mac).to_dict()  # meanwhile, here
    restarted, other = finish(restarted), finish(second)

    # exactly once: each worker labelled only what was left of its own shard
    assert other["shard"] == "1/2" and other["labelled"] == sizes[1]
    assert restarted["shard"] == "0/2" and restarted["labelled"] == sizes[0] - partial
    assert single_report["labelled"] == N_FACES
    sharded, one = labels_by_path(name), labels_by_path(single)
    assert len(sharded) == N_FACES and all(v[0] is not None for v in sharded.values())
    assert sharded == one  # the same labels, bit for bit, as one process


# -m slow (63 s): the shard workers' CLI path runs in the two-worker test above, and RANK /
# WORLD_SIZE / LOCAL_RANK parsing in test_shard_and_device_from_torchrun_or_slurm_env
@pytest.mark.slow
def test_torchrun_shard_auto(tiny_mac, two_copies, cli_env, tmp_path):
    name, single = two_copies
    logs = tmp_path / "logs"
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", "2", "--log-dir", str(logs), "--redirects", "1",
         "--no-python", FACEAUDIT, *annotate_args(name, tiny_mac, "--shard", "auto")],
        env={**cli_env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports = [json.loads(p.read_text()) for p in sorted(logs.rglob("stdout.log"))]
    assert sorted(r["shard"] for r in reports) == ["0/2", "1/2"]
    assert {r["device"] for r in reports} == {"cpu"}
    assert sum(r["labelled"] for r in reports) == N_FACES
    one_process(single, tiny_mac)
    assert labels_by_path(name) == labels_by_path(single)


def test_selection_streams_in_bounded_chunks_and_skips_what_others_labelled(two_copies):
    import numpy as np

    from fiftyone_plugin.annotate import iter_chunks

    name, _ = two_copies
    ds = fo.load_dataset(name)
    labels.ensure_label_schema(ds)
    chunks = iter_chunks(todo_view(ds.view()), chunk=50)
    first_ids, _ = next(chunks)
    assert len(first_ids) == 50
    everything = todo_view(ds.view()).values("_id")
    later = [i for i in everything if i > first_ids[-1]][:30]  # another worker labels these now
    ones = np.ones((len(later), len(labels.LABEL_FIELDS)), dtype=np.int8)
    labels.write_labels(ds, later, ones)
    rest = [i for ids, _ in chunks for i in ids]
    assert max(len(ids) for ids, _ in iter_chunks(todo_view(ds.view()), chunk=50)) <= 50
    assert sorted(first_ids + rest + later) == sorted(everything)  # each once, none of theirs
    assert not set(rest) & set(later)



def _ops_by_state(name: str) -> dict[str, list]:
    from fiftyone_plugin.fanout import shard_operations

    states: dict[str, list] = {}
    for shard, ops in shard_operations(name).items():
        for op in ops:
            states.setdefault(op.run_state, []).append(shard)
    return states


def _wait(condition, what: str, timeout: float = 240):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_delegated_shards_on_two_launchers_one_killed(tiny_mac, two_copies, cli_env, tmp_path):
    name, single = two_copies
    delegate = ["annotate", "--dataset", name, "--checkpoint", tiny_mac, "--device", "cpu", "--batch-size", "1",
                "--delegate", "--shards", "4", "--json"]
    queued = json.loads(subprocess.run([FACEAUDIT, *delegate], env=cli_env, capture_output=True, text=True,
                                       check=True).stdout)
    assert queued["queued"] == ["0/4", "1/4", "2/4", "3/4"]
    again = json.loads(subprocess.run([FACEAUDIT, *delegate], env=cli_env, capture_output=True, text=True,
                                      check=True).stdout)
    assert again["queued"] == []  # all four are queued already

    def launcher(k):
        log = open(tmp_path / f"launcher{k}.log", "w")
        return subprocess.Popen([str(BIN / "fiftyone"), "delegated", "launch"], env=cli_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    first, second = launcher(0), launcher(1)
    try:
        _wait(lambda: len(_ops_by_state(name).get("running", [])) == 2, "both launchers to run a shard")
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and its image readers
        first.wait()
        _wait(lambda: len(_ops_by_state(name).get("completed", [])) == 3, "the other launcher to do the rest")
        states = _ops_by_state(name)
        assert len(states["running"]) == 1 and "queued" not in states  # the dead worker's shard
        dead = states["running"][0]
        time.sleep(2)
        resumed = json.loads(subprocess.run([FACEAUDIT, *delegate, "--stale-after", "1"], env=cli_env,
                                            capture_output=True, text=True, check=True).stdout)
        assert resumed["queued"] == [dead] and len(resumed["failed_stale"]) == 1
        _wait(lambda: len(_ops_by_state(name).get("completed", [])) == 4, "the re-queued shard")
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
    states = _ops_by_state(name)
    assert sorted(states["completed"]) == ["0/4", "1/4", "2/4", "3/4"]  # each shard completed once
    assert states["failed"] == [dead] and set(states) == {"completed", "failed"}

    status = subprocess.run([FACEAUDIT, "status", "--dataset", name], env=cli_env, capture_output=True,
                            text=True, check=True).stdout
    assert "0 samples left to label in 4 shards" in status
    shard_lines = [line for line in status.splitlines() if line.strip().startswith("shard ")]
    assert len(shard_lines) == 4 and all("completed" in line for line in shard_lines)
    assert status.count("annotate_attributes completed") == 4  # the runs list: each shard's run once
    one_process(single, tiny_mac)
    assert labels_by_path(name) == labels_by_path(single)


def test_shard_and_device_from_torchrun_or_slurm_env():
    from faceaudit import params

    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2"}
    assert params.shard("auto", env=torchrun) == (3, 8) and params.shard("auto", env=slurm) == (5, 16)
    assert params.shard("auto", env={}) == (0, 1) and params.shard(" 1 / 4 ") == (1, 4)
    assert params.rank_device("auto", True, torchrun) == "cuda:1"
    assert params.rank_device("cuda", True, slurm) == "cuda:2"
    assert params.rank_device("auto", False, torchrun) == "auto"  # no CUDA: the engine picks the CPU
    assert params.rank_device("cuda:0", True, torchrun) == "cuda:0"  # an explicit GPU is kept
    for bad, message in [("4/4", "below the shard count"), ("1-4", "expected I/N"), ("-1/4", "expected I/N")]:
        with pytest.raises(params.ParamError, match=message):
            params.shard(bad)
    with pytest.raises(params.ParamError, match="LOCAL_RANK: expected a whole number"):
        params.rank_device("auto", True, {"LOCAL_RANK": "x"})
    assert params.shards("4") == 4
    with pytest.raises(params.ParamError, match="shards: must be at least 1"):
        params.shards(0)
    with pytest.raises(params.ParamError, match="stale_after: must be more than 0"):
        params.seconds("stale_after", "0")


def test_operator_form_splits_into_n_delegated_jobs(tiny_mac, two_copies):
    import fiftyone.operators as foo
    from fiftyone.operators.delegated import DelegatedOperationService

    from fiftyone_plugin.fanout import ANNOTATE_URI

    name, _ = two_copies
    ds = fo.load_dataset(name)
    params = {"checkpoint": tiny_mac, "device": "cpu", "batch_size": 4, "shards": 3, "delegate": False}
    result = foo.execute_operator(ANNOTATE_URI, ctx={"dataset": ds, "params": params})
    assert result.error is None and not result.delegated
    assert sorted(_ops_by_state(name)["queued"]) == ["0/3", "1/3", "2/3"]
    DelegatedOperationService().execute_queued_operations(dataset_name=name)
    assert sorted(_ops_by_state(name)["completed"]) == ["0/3", "1/3", "2/3"]
    ds.reload()
    assert ds.exists(labels.CODE_FIELD).count() == N_FACES
