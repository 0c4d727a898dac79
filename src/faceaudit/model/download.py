"""Checkpoint downloads that never cache what is not a checkpoint.

Rules (README, "The MAC"):

* ``https://`` only; plain ``http://`` (no integrity, no authenticity) only when explicitly
  allowed: ``allow_http=True`` or the environment variable ``FACEAUDIT_ALLOW_HTTP=1``.
* An optional expected digest in the URL's fragment, ``https://host/mac.pt#sha256=<64 hex>``:
  a download (or a cached file) with another digest is refused.
* The download goes to a temporary file beside the cache entry; it is moved into the cache only
  after it loads as a checkpoint (and matches the digest). A 200 reply carrying an HTML page
  (a captive portal, a login page) is therefore never cached.
* The cache is ``$FACEAUDIT_CACHE_DIR``, else ``~/.cache/faceaudit``.
* Every error names the URL and the cache path (the file to delete to download again).
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

CACHE_DIR_ENV = "FACEAUDIT_CACHE_DIR"
ALLOW_HTTP_ENV = "FACEAUDIT_ALLOW_HTTP"
TIMEOUT_S = 60
_CHUNK = 1 << 20
_SHA256 = re.compile(r"sha256=([0-9a-fA-F]{64})")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def cache_dir() -> str:
    """``$FACEAUDIT_CACHE_DIR``, else ``~/.cache/faceaudit``."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "faceaudit")


def http_allowed(allow_http: bool | None) -> bool:
    """``allow_http`` if given, else the ``FACEAUDIT_ALLOW_HTTP`` environment variable."""
    if allow_http is not None:
        return bool(allow_http)
    return os.environ.get(ALLOW_HTTP_ENV, "").strip().lower() in ("1", "true", "yes")


def parse_url(url: str, allow_http: bool | None = None) -> tuple[str, str | None]:
    """``url`` -> (the URL to fetch, without its fragment; the expected SHA-256 or None)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not http_allowed(allow_http):
        raise CheckpointError(
            f"{url}: plain http is refused (the download could be altered on the way); use https, "
            f"or allow http explicitly with {ALLOW_HTTP_ENV}=1 (best with a #sha256=... digest)")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CheckpointError(f"{url}: not a checkpoint file or an https:// URL")
    expected = None
    if parts.fragment:
        match = _SHA256.fullmatch(parts.fragment)
        if not match:
            raise CheckpointError(f"{url}: the URL's fragment must be #sha256=<64 hex digits>")
        expected = match.group(1).lower()
    return urllib.parse.urlunsplit(parts._replace(fragment="")), expected


def cache_path(url: str, folder: str | None = None) -> str:
    """Where ``url`` (without fragment) is cached: a hash of the URL plus its file name."""
    name = os.path.basename(urllib.parse.urlsplit(url).path) or "checkpoint"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100]
    return os.path.join(folder or cache_dir(), hashlib.sha256(url.encode()).hexdigest()[:16] + "-" + name)


def fetch(url: str, load: Callable[[str, str], object], allow_http: bool | None = None,
          folder: str | None = None):
    """Load the checkpoint at ``url`` with ``load(path, name)``, from the cache or downloaded.

    ``load`` must raise :class:`CheckpointError` for a file that is not a checkpoint; a download
    it refuses is deleted, not cached."""
    plain, expected = parse_url(url, allow_http)
    target = cache_path(plain, folder)
    if os.path.exists(target):
        _check_digest(target, expected, url, f"the cached file {target} (delete it to download again)")
        return _load(load, target, url, f"delete the cached file {target} to download again")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.part-{os.getpid()}"
    try:
        _download(plain, tmp, url, target)
        _check_digest(tmp, expected, url, "the download (nothing was cached)")
        payload = _load(load, tmp, url, f"nothing was cached at {target}")
        os.replace(tmp, target)
        return payload
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _download(plain: str, tmp: str, url: str, target: str) -> None:
    try:
        with urllib.request.urlopen(plain, timeout=TIMEOUT_S) as reply, open(tmp, "wb") as f:
            while chunk := reply.read(_CHUNK):
                f.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise CheckpointError(f"{url}: download failed ({reason}); nothing was cached at {target}") from None


def _check_digest(path: str, expected: str | None, url: str, what: str) -> None:
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise CheckpointError(f"{url}: {what} has SHA-256 {digest.hexdigest()}, expected {expected}")


def _load(load: Callable[[str, str], object], path: str, url: str, hint: str):
    try:
        return load(path, url)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; {hint}") from None
