"""Settings keys: what a stored result was made with, compared with what is asked for now.

A stored result (labels, embeddings, a comparison, a set of reports) is current only if it was
made with the settings a rerun asks for. Each such result records :func:`settings_key` of its
settings (a short digest of their canonical JSON); a rerun computes the key of its own settings
and redoes the work where :func:`is_current` says the stored key differs. Files that a result
depends on (a checkpoint) enter the settings through :func:`file_digest`, so a retrained file
at the same path is a change and the same file at another path is not.

Pure Python: nothing here imports FiftyOne or torch.
"""

from __future__ import annotations

import hashlib
import json
import os

KEY_LENGTH = 16  # hex digits: 64 bits, plenty to tell settings apart


def canonical(settings: dict) -> str:
    """``settings`` as JSON with sorted keys (tuples and lists alike), the form that is hashed."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def settings_key(settings: dict) -> str:
    """A short, stable digest of ``settings`` (equal settings give equal keys in every process)."""
    return hashlib.sha256(canonical(settings).encode()).hexdigest()[:KEY_LENGTH]


def is_current(stored_key: str | None, settings: dict) -> bool:
    """Whether a result stored with ``stored_key`` was made with ``settings``."""
    return stored_key is not None and stored_key == settings_key(settings)


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a local file's content; a URL is returned as it is (its ``#sha256=``
    part, where given, pins the content)."""
    if "://" in path:
        return path
    digest = hashlib.sha256()
    with open(os.path.realpath(path), "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return "sha256:" + digest.hexdigest()
