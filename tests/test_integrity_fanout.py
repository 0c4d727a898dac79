"""Fan-out and status tell the truth about queued work (issue 16 item 14): a fan-out with other
settings, or over a selection that overlaps live shards, is refused; status shows a running
shard's silence (stale past the limit) and a failed shard's reason."""

from __future__ import annotations

import pytest

from test_scale import tiny_mac  # noqa: F401 - a fixture


def _two_sources(faces, tmp_path, dataset_name):
    from fiftyone_plugin.ingest import load_face_dataset

    # 8 + 8 faces: the shards are the hashed _id modulo the count, so a shard of a handful of
    # samples can be empty (6 samples in one of 2 shards: 1 run in 32), and a test of both shards fails
    faces.identity_tree(tmp_path / "real", {f"p{k}": 4 for k in range(2)})
    faces.identity_tree(tmp_path / "synth", {f"q{k}": 4 for k in range(2)}, start=20)
    load_face_dataset(str(tmp_path / "real"), source="r", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)


def test_fan_out_with_other_settings_or_an_overlapping_selection_is_refused(faces, tmp_path, tiny_mac,  # noqa: F811
                                                                           dataset_name):
    # was: "queued now: nothing" for a fan-out with another threshold while shards were queued,
    # and `--source s --shards 3` queued while whole-dataset shards were queued (labelled twice)
    from fiftyone_plugin.fanout import fan_out, shard_operations

    _two_sources(faces, tmp_path, dataset_name)
    options = {"model": "mac", "checkpoint": tiny_mac, "device": "cpu", "batch_size": 2}
    assert fan_out(dataset_name, 2, options).queued == ["0/2", "1/2"]
    with pytest.raises(ValueError, match="other settings"):
        fan_out(dataset_name, 2, {**options, "threshold": 0.99})
    with pytest.raises(ValueError, match="another selection .* shares 8 samples"):
        fan_out(dataset_name, 3, options, source="s")
    assert fan_out(dataset_name, 2, options).queued == []  # the same fan-out again: nothing new, no error
    assert sorted(shard_operations(dataset_name)) == ["0/2", "1/2"]


def test_status_shows_a_silent_worker_and_a_failed_shards_reason(faces, tmp_path, tiny_mac,  # noqa: F811
                                                                 dataset_name):
    # was: a SIGKILLed worker's shard showed "running" with no age; a failed shard's reason was
    # only in the launcher's log
    import datetime as dt

    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult

    from fiftyone_plugin import fanout

    _two_sources(faces, tmp_path, dataset_name)
    options = {"model": "mac", "checkpoint": tiny_mac, "device": "cpu"}
    fanout.fan_out(dataset_name, 2, options)
    ops = fanout.shard_operations(dataset_name)
    service = DelegatedOperationService()
    dead, failed = ops["0/2"][-1], ops["1/2"][-1]
    service.set_running(dead.id)
    service.set_failed(failed.id, result=ExecutionResult(error="Traceback ...\nOSError: disk full on /scratch"))
    # the worker of shard 0 was killed 20 minutes ago: its operation's last sign of life is old
    import fiftyone.core.odm as foo_db

    old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(minutes=20)
    foo_db.get_db_conn()["delegated_ops"].update_one(
        {"_id": dead.id}, {"$set": {"updated_at": old, "started_at": old}})
    report = fanout.shard_status(dataset_name, 2)
    text = report.summary()
    by = {s.shard: s for s in report.shards}
    assert by["0/2"].state == "running" and by["0/2"].silent_s >= 1190, text
    assert "STALE" in text and "last sign of life 1" in text, text
    assert by["1/2"].state == "failed" and by["1/2"].error == "OSError: disk full on /scratch", text
    assert "disk full on /scratch" in text


def test_workers_with_other_shard_counts_are_refused(faces, tmp_path, tiny_mac, dataset_name):  # noqa: F811
    # was: workers started with 0/2 and 1/3 (inconsistent WORLD_SIZE) both exited 0, labelling
    # some samples twice and leaving others unlabelled
    import fiftyone as fo

    from faceaudit.progress import drive
    from fiftyone_plugin.annotate import iter_annotate
    from fiftyone_plugin.labels import CODE_FIELD

    _two_sources(faces, tmp_path, dataset_name)
    options = {"checkpoint": tiny_mac, "device": "cpu", "batch_size": 4}
    first = drive(iter_annotate(dataset_name, shard=(0, 2), **options), lambda e: None)
    with pytest.raises(ValueError, match="split in 2 shards .* not 3"):
        drive(iter_annotate(dataset_name, shard=(1, 3), **options), lambda e: None)
    second = drive(iter_annotate(dataset_name, shard=(1, 2), **options), lambda e: None)
    assert first.labelled + second.labelled == 16
    assert len(fo.load_dataset(dataset_name).exists(CODE_FIELD)) == 16
    # a finished labelling may be split anew
    drive(iter_annotate(dataset_name, shard=(2, 3), **options), lambda e: None)
