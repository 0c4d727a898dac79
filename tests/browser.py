"""Shared by the browser tests: Debian's chromium driven by Playwright, the App served on a free
port, and screenshots under test-artifacts/ (the failure's too)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _ShortRetry:
    """``time`` as FiftyOne's session client sees it, with its retry pause cut from 10 s to 0.25 s.

    The client pings the App server for 10 s, then sleeps 10 s before it tries again; the server
    (a new process that imports FiftyOne) takes longer than 10 s to answer on a loaded CI machine,
    so each App start waited those 10 s idle: about 35 starts a run. Tests only."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, 0.25))


def _shorten_the_client_retry() -> None:
    import fiftyone.core.session.client as client

    client.time = _ShortRetry()


_shorten_the_client_retry()


def require_chromium() -> None:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it as root)")
    pytest.importorskip("playwright")


@contextmanager
def served(dataset):
    """The App on ``dataset`` at a free port; yields (session, the dataset's URL)."""
    import fiftyone as fo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = connected(fo.launch_app(dataset, remote=True, port=port))
    try:
        yield session, f"http://127.0.0.1:{port}/datasets/{dataset.name}"
    finally:
        close_in_background(session)


def close_in_background(session) -> None:
    """Close ``session``; the App server is told to stop at once, and the wait for it to exit
    (about 6 s: it lets open connections finish) goes on while the next test starts."""
    threading.Thread(target=session.close, name="close the App", daemon=True).start()


def connected(session, timeout: float = 120):
    """``session`` once its client is subscribed to the App server; returns it.

    FiftyOne 1.22's ``Session`` opens its client before it starts the server, so the client's
    first connection fails and it retries 10 s later ("Could not connect session"). When it
    connects it sends its state to the App, which loads that state as a new page: a page the
    test opened meanwhile loses its sidebar filters, or its dataset if the session has none.
    So no page opens before that."""
    client, deadline = session._client, time.time() + timeout
    while not client._connected and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the subscription (with the state it sends) follows the successful ping
    return session


def in_chromium(drive: Callable, failure: str, viewport=(1600, 1000), **context_options) -> None:
    """Run ``drive(page, context)`` in a fresh headless Chromium; on an error, a full-page
    screenshot goes to test-artifacts/``failure``."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, **context_options)
        page = context.new_page()
        try:
            drive(page, context)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / failure), full_page=True)
            raise
        finally:
            browser.close()
