"""The house's import rule: the core (src/faceaudit) imports nothing of FiftyOne or of the doors."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "src" / "faceaudit"
FORBIDDEN = ("fiftyone", "fiftyone_plugin", "faceaudit_cli", "operators", "panels", "bson", "pymongo")


def test_the_core_imports_no_fiftyone_and_no_door():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(CORE)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN]
    assert not offenders, "the core imports FiftyOne or a door: " + ", ".join(offenders)
