"""faceaudit's delegated operations on a dataset, of every kind (load, annotate, compare, ...),
with their state and, for a failed one, its error: what ``faceaudit status`` and the panel show,
so that a run the App queued and a worker failed is never invisible."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass

PLUGIN_PREFIX = "@faceaudit/face-audit/"


@dataclass
class DelegatedRun:
    operation: str  # the operator's name, e.g. "load_face_dataset"
    state: str  # queued, scheduled, running, completed, failed
    queued_at: str | None
    finished_at: str | None
    error: str | None  # a failed run's message (the last line of its traceback), else None
    id: str

    def line(self) -> str:
        when = self.finished_at or self.queued_at or "?"
        return f"{self.operation} {self.state} ({when})" + (f": {self.error}" if self.error else "")


def _iso(t: dt.datetime | None) -> str | None:
    return t.replace(microsecond=0).isoformat() if t is not None else None


def _error(op) -> str | None:
    result = getattr(op, "run_state", None) == "failed" and getattr(op, "result", None)
    if not result:
        return None
    message = getattr(result, "error_message", None)
    if message:
        return str(message)
    lines = [line for line in str(getattr(result, "error", "") or "").strip().splitlines() if line.strip()]
    if not lines:
        return "failed (no message)"
    # "faceaudit.readers.LayoutError: /x: no images found" -> the message, as the CLI prints it
    return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1].strip())


def delegated_runs(dataset_name: str, limit: int = 20) -> list[DelegatedRun]:
    """faceaudit's delegated operations on ``dataset_name``, newest first (at most ``limit``)."""
    from fiftyone.operators.delegated import DelegatedOperationService

    ops = [op for op in DelegatedOperationService().list_operations(dataset_name=dataset_name)
           if str(op.operator).startswith(PLUGIN_PREFIX)]
    ops.sort(key=lambda o: o.queued_at or dt.datetime.min, reverse=True)
    return [DelegatedRun(str(op.operator)[len(PLUGIN_PREFIX):], str(op.run_state), _iso(op.queued_at),
                         _iso(op.completed_at or op.failed_at), _error(op), str(op.id))
            for op in ops[:limit]]


def runs_summary(runs: list[DelegatedRun]) -> str:
    if not runs:
        return "delegated faceaudit operations: none"
    return "\n".join(["delegated faceaudit operations (newest first):", *(f"  {r.line()}" for r in runs)])


def runs_to_list(runs: list[DelegatedRun]) -> list[dict]:
    return [asdict(r) for r in runs]
