"""The plugin through FiftyOne's own machinery: discovery, immediate and delegated execution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError

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
    with pytest.raises(ExecutionError, match=f"LayoutError: {missing}: no such file or folder"):
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
