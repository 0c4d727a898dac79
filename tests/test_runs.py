"""Issue 15 item 2: a delegated faceaudit run that fails is visible. `faceaudit status` lists
every kind of faceaudit delegated operation on the dataset (not only annotate shards) with its
state, and a failed one with the error in the loader's words."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import fiftyone.operators as foo
import pytest
from fiftyone.operators.delegated import DelegatedOperationService
from fiftyone.operators.executor import ExecutionError

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))
LOAD_URI = "@faceaudit/face-audit/load_face_dataset"


def test_status_lists_failed_and_completed_delegated_runs_of_every_kind(tmp_path, faces, dataset_name, cli_env):
    faces.identity_tree(tmp_path / "real", {"a": 2})
    ds = fo.Dataset(dataset_name)
    missing, empty = tmp_path / "no-such-folder", tmp_path / "empty"
    empty.mkdir()
    # what the form can check is refused before anything is queued (item 2: refuse up front)
    with pytest.raises(ExecutionError, match=f"Reason: {missing}: no such file or folder"):
        foo.execute_operator(LOAD_URI, ctx={"dataset": ds, "request_delegation": True, "params": {
            "path": str(missing), "source": "real", "domain": "real"}})
    assert DelegatedOperationService().list_operations(dataset_name=dataset_name) == []
    for path in (empty, tmp_path / "real"):  # as the App's Delegate queues them
        queued = foo.execute_operator(LOAD_URI, ctx={"dataset": ds, "request_delegation": True, "params": {
            "path": str(path), "source": "real", "domain": "real"}})
        assert queued.delegated
    DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)
    states = sorted(op.run_state for op in DelegatedOperationService().list_operations(dataset_name=dataset_name))
    assert states == ["completed", "failed"]

    out = subprocess.run([FACEAUDIT, "status", "--dataset", dataset_name], env=cli_env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "load_face_dataset completed" in out.stdout
    assert "load_face_dataset failed" in out.stdout
    assert f"{empty}: no images found in any known layout" in out.stdout  # the CLI's words, no traceback
    assert "Traceback" not in out.stdout

    out = subprocess.run([FACEAUDIT, "status", "--dataset", dataset_name, "--json"], env=cli_env,
                         capture_output=True, text=True, timeout=300)
    runs = json.loads(out.stdout)["operations"]
    assert sorted(r["state"] for r in runs) == ["completed", "failed"]
    (failed,) = [r for r in runs if r["state"] == "failed"]
    assert failed["operation"] == "load_face_dataset" and failed["error"].startswith(f"{empty}: no images found")
