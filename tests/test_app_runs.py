"""Issue 15, items 2, 3, 6 and 9, as a user meets them in the App (headless Chromium, one App
server for the module, each test opening its own dataset): a first dataset loaded from the App
with no dataset open (3); a delegated load that fails in the worker is visible in the panel
with the loader's words (2), in a panel opened before the worker ran, by itself (6); the panel
follows an untag of an outlier and a Run-now annotate without a browser reload (6); the outlier
view is in score order after a grid sort (9). Screenshots: test-artifacts/runs-*.png."""

from __future__ import annotations

import json
import re
import threading
import time

import fiftyone as fo
import pytest

from fiftyone_plugin.ingest import load_face_dataset
from test_app import ARTIFACTS, _open_panel
from test_app_errors import _field, _patient_app_server  # noqa: F401  (autouse: the App gets 300 s to bind)
from test_app_operators import WAIT, _open_app, _open_operator, _until
from test_app_panel import page, server  # noqa: F401  (fixtures: one App server for the module)

pytestmark = pytest.mark.browser
SORT_STAGE = "fiftyone.core.stages.SortBy"  # the App's extended stage for the grid's Sort by


def _shot(page, step: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"runs-{step}.png"))


def _choose(page, label: str, option: str) -> None:
    """Pick ``option`` in the form's dropdown labelled ``label``."""
    page.get_by_text(label, exact=True).first.locator("xpath=following::*[@role='combobox'][1]").click()
    page.get_by_role("option", name=option).click()


def _dismiss(page) -> None:
    try:
        page.get_by_text("Dismiss", exact=True).click(timeout=15_000)
    except Exception:  # the Enterprise pop-up did not show this time
        pass


def test_a_first_dataset_loads_from_the_app_with_no_dataset_open(server, page, tmp_path, faces, dataset_name):
    """Item 3: the App with no dataset open offers the load operator with a dataset-name field;
    Run now creates the dataset and the App opens it."""
    session, url = server
    session.clear_dataset()  # the App's index page: no dataset open
    faces.identity_tree(tmp_path / "first", {f"first-{k}": 3 for k in range(2)})
    try:
        page.goto(url.rsplit("/datasets/", 1)[0] + "/")
        _dismiss(page)
        _open_operator(page, "load face", "faceaudit: load face dataset")
        name = _field(page, "Dataset name")
        name.wait_for(timeout=WAIT)
        name.fill(dataset_name)
        _field(page, "Path").fill(str(tmp_path / "first"))
        _field(page, "Source name").fill("first-faces")
        _choose(page, "Domain", "real")
        page.get_by_text("Run now", exact=True).click()
        page.wait_for_timeout(1500)  # the form's last resolve
        _shot(page, "first-dataset-form")
        assert page.get_by_text("none: set the options below").count() >= 1, "the Preset box is blank (15.10)"
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("6 samples", exact=True).wait_for(timeout=WAIT)  # the App opened it
        _shot(page, "first-dataset-open")
        assert dataset_name in page.url
        assert fo.dataset_exists(dataset_name)
        assert fo.load_dataset(dataset_name)._sample_collection.count_documents({"source": "first-faces"}) == 6
    except Exception:
        _shot(page, "first-dataset-failure")
        raise


def test_a_delegated_load_that_fails_in_the_worker_shows_in_the_open_panel(server, page, tmp_path, faces,
                                                                          dataset_name):
    """Item 2: a delegated load of a folder without faces passes the form (only the worker
    finds no images), is queued, and fails; the panel names the failed run with the loader's
    words. Item 6: the panel is open, showing the run queued, before the worker takes it, and
    shows the failure by itself within seconds (its timer), with no click and no reload."""
    from fiftyone.operators.delegated import DelegatedOperationService

    _, url = server
    faces.identity_tree(tmp_path / "real", {f"real-{k}": 3 for k in range(2)})
    load_face_dataset(str(tmp_path / "real"), source="real-faces", domain="real", dataset_name=dataset_name)
    empty = tmp_path / "no-faces-here"
    empty.mkdir()
    service = DelegatedOperationService()
    try:
        _open_app(page, url + dataset_name, 6)
        _open_operator(page, "load face", "faceaudit: load face dataset")
        _field(page, "Path").fill(str(empty))
        _field(page, "Source name").fill("more-faces")
        _choose(page, "Domain", "synthetic")
        page.get_by_text("Delegate", exact=True).click()
        schedule = page.get_by_role("button", name="Schedule")
        schedule.wait_for(timeout=WAIT)
        page.wait_for_timeout(1500)  # the form's last resolve
        schedule.click()
        assert _until(lambda: len(service.list_operations(dataset_name=dataset_name)) == 1, 60), "nothing queued"
        _open_panel(page)
        page.get_by_text("load_face_dataset queued", exact=False).first.wait_for(timeout=WAIT)
        page.wait_for_timeout(5000)  # the views and reloads of the panel's open have come back
        _shot(page, "queued-run-in-panel")
        # what `fiftyone delegated launch` runs; in a thread of its own (this one runs Playwright's
        # event loop, and the operation's executor calls asyncio.run)
        worker = threading.Thread(target=service.execute_queued_operations, kwargs={"dataset_name": dataset_name})
        worker.start()
        worker.join(timeout=300)  # the page is left alone meanwhile: no click, no reload
        (op,) = service.list_operations(dataset_name=dataset_name)
        assert op.run_state == "failed"
        failed = page.get_by_text("load_face_dataset failed", exact=False).first
        failed.wait_for(timeout=20_000)  # the panel's timer ticks every 3 s
        _shot(page, "failed-run-in-panel")
        text = failed.inner_text()
        assert f"{empty}: no images found in any known layout" in text, text
        assert "Traceback" not in text
        # nothing to compare (no labels): no chart is drawn as an empty box (15.10)
        assert page.get_by_text("Nothing to compare").count() == 1 and page.locator(".js-plotly-plot").count() == 0
    except Exception:
        _shot(page, "failed-run-failure")
        raise


def test_the_panel_follows_an_untag_of_an_outlier(server, page, tmp_path, faces, dataset_name):
    """Item 6: the user removes the outlier tag of one face of the saved outlier view with the
    App's own tagger: the grid shows one face fewer, and so does the panel, without a reload
    (the panel's numbers are keyed on the samples' last write, see counts.freshness). Item 6's
    Run-now annotate is test_app_errors' test_the_panel_follows_a_run_now_annotate..."""
    from fiftyone_plugin import outliers
    from test_app import _open
    from test_app_panel import _labelled

    session, url = server
    _labelled(tmp_path, faces, dataset_name, {"real-faces": ("real", 4, True), "synth-faces": ("synthetic", 3, True)})
    ds = fo.load_dataset(dataset_name)
    outliers.flag_synthetic_outliers(ds, outliers.outlier_options(top=3))
    try:
        _open(page, url + dataset_name, 28)
        page.get_by_text("Unsaved view").click()  # the saved-view selector
        page.get_by_text(outliers.OUTLIERS_VIEW).first.click()
        page.get_by_text("3 samples", exact=True).wait_for(timeout=WAIT)
        _open_panel(page)
        page.get_by_text("synth-faces (synthetic, 3 labelled)").wait_for(timeout=WAIT)

        looker = page.locator("[data-cy='looker']").first  # the user ticks one face in the grid
        looker.hover()
        looker.locator("[class*='lookerCheckbox']").first.click()
        assert _until(lambda: len(session.selected) == 1, 30), "the face was not selected"
        (untagged,) = session.selected
        page.locator("[data-cy='action-tag-sample-labels']").first.click()  # the grid's tag button
        tagger = page.locator("[data-cy='tagger-container']").locator("xpath=..")
        tagger.get_by_text(outliers.OUTLIER_TAG, exact=True).click()  # untick the tag
        _shot(page, "untag-tagger")
        tagger.get_by_text("Apply", exact=True).click()
        assert _until(lambda: ds._sample_collection.count_documents({"tags": outliers.OUTLIER_TAG}) == 2, 60)
        page.get_by_text("2 samples", exact=True).wait_for(timeout=WAIT)
        page.get_by_text("synth-faces (synthetic, 2 labelled)").wait_for(timeout=WAIT)  # no reload
        _shot(page, "untag-panel")
        assert outliers.OUTLIER_TAG not in fo.load_dataset(dataset_name)[untagged].tags
    except Exception:
        _shot(page, "untag-failure")
        raise


class _Grid:
    """The grid's pages of samples as the App asks the server for them (``paginateSamples``)
    and gets them: the grid sort each request carries, the filepaths each answer lists."""

    def __init__(self, page):
        self.page, self.sorts, self.orders = page, [], []
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request) -> None:
        if "/graphql" in request.url and "paginateSamples" in (request.post_data or ""):
            variables = json.loads(request.post_data).get("variables") or {}
            stage = (variables.get("extendedStages") or {}).get(SORT_STAGE)  # or, where the App
            if stage:  # queries indexed fields only ("query performance"), its own variables
                self.sorts.append((stage["field_or_expr"], bool(stage["reverse"])))
            else:
                sort = variables.get("sortBy")
                self.sorts.append((sort, bool(variables.get("desc"))) if sort else None)

    def _response(self, response) -> None:
        if "/graphql" not in response.url:
            return
        try:
            body = json.loads(response.text())
        except Exception:
            return
        edges = (((body.get("data") or {}).get("samples") or {}).get("edges")) or []
        if edges:
            self.orders.append([e["node"]["sample"]["filepath"] for e in edges])

    def sort_by(self, page, field: str) -> None:
        """The grid's *Sort by* (its toolbar, as a user picks a field; lowest first)."""
        names = page.get_by_text(field, exact=True)  # the sidebar's field, then the box's choice
        for _ in range(3):  # right after the page loads, the box may not take the first click
            before = names.count()
            box = page.get_by_placeholder("Sort by").first
            box.click(force=True)
            box.fill(field)
            if self._until(lambda: names.count() > before, 10):
                break
        names.last.click()
        assert self._until(lambda: self.sorts[-1:] == [(field, False)], 60), self.sorts[-1:]

    def _until(self, condition, seconds: float) -> bool:
        """Playwright hands over the page's events only while the test calls into it: wait in
        the page, not in time.sleep."""
        deadline = time.time() + seconds
        while not condition() and time.time() < deadline:
            self.page.wait_for_timeout(300)
        return condition()

    def shows(self, faces, check, seconds: float = 60) -> list[str]:
        """The newest page of ``faces`` only (the grid's other pages are the views it showed
        before) once it passes ``check``; the newest such page for the failure."""
        def newest():
            return next((o for o in reversed(self.orders) if set(o) <= set(faces)), [])

        self._until(lambda: check(newest()), seconds)
        return newest()


def _scores(ds) -> dict[str, float]:
    """realness_nll of the outlier-tagged faces, read from the database."""
    from fiftyone_plugin import outliers

    docs = ds._sample_collection.find({"tags": outliers.OUTLIER_TAG}, {"filepath": 1, outliers.SCORE_FIELD: 1})
    return {d["filepath"]: d[outliers.SCORE_FIELD] for d in docs}


def _in_score_order(shown: list[str], scores: dict[str, float]) -> bool:
    """``shown`` is every outlier, highest realness_nll first (ties in any order)."""
    return sorted(shown) == sorted(scores) and all(
        scores[a] >= scores[b] for a, b in zip(shown, shown[1:]))


def test_the_outlier_view_is_in_score_order_after_a_grid_sort(server, page, tmp_path, faces, dataset_name):
    """Item 9: a grid *Sort by* realness_nll (lowest first, the App's default) set by the user
    on the whole dataset comes back when ``synthetic_outliers`` is selected: the App keeps it in
    the browser per dataset and applies it after the saved view's own sort (highest first).
    Selecting the view from the saved-view selector (no faceaudit panel open), and from the flag
    operator (which shows the saved view it saves), shows the outliers highest score first, the scores
    read from the database; a sort the user sets on the view itself is kept (and the panel
    names it)."""
    from fiftyone_plugin import outliers
    from test_app import _open
    from test_app_panel import _labelled

    _, url = server
    _labelled(tmp_path, faces, dataset_name, {"real-faces": ("real", 4, True), "synth-faces": ("synthetic", 3, True)})
    ds = fo.load_dataset(dataset_name)
    outliers.flag_synthetic_outliers(ds, outliers.outlier_options(top=4))
    scores = _scores(ds)
    try:
        _open(page, url + dataset_name, 28)
        grid = _Grid(page)
        grid.sort_by(page, outliers.SCORE_FIELD)  # the whole dataset, lowest score first
        page.get_by_text("Unsaved view").click()  # the saved-view selector
        page.get_by_text(outliers.OUTLIERS_VIEW).first.click()
        page.get_by_text("4 samples", exact=True).wait_for(timeout=WAIT)
        shown = grid.shows(scores, lambda order: _in_score_order(order, scores))
        _shot(page, "outliers-from-selector")
        assert _in_score_order(shown, scores), (
            f"the saved view shows scores {[scores.get(f) for f in shown]} (grid sort {grid.sorts[-1:]})")

        grid.sort_by(page, outliers.SCORE_FIELD)  # the user's own sort on the view: kept
        shown = grid.shows(scores, lambda order: order == sorted(scores, key=scores.get))
        assert shown == sorted(scores, key=scores.get), "the user's sort of the outlier view was undone"
        _open_panel(page)  # which names it
        page.get_by_text(re.compile(r"Sort by \(realness_nll, lowest first\) replaces the order of the saved "
                                    r"view")).first.wait_for(timeout=WAIT)

        _open_operator(page, "flag synthetic", "faceaudit: flag synthetic outliers")
        page.get_by_text("Tag the K synthetic faces").wait_for(timeout=WAIT)
        _field(page, "K").fill("3")
        page.wait_for_timeout(1500)  # the form's last resolve
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("3 synthetic faces tagged 'outlier'").first.wait_for(timeout=WAIT)
        page.get_by_role("button", name="Close").click()
        page.get_by_text("3 samples", exact=True).wait_for(timeout=WAIT)
        scores = _scores(ds)
        assert len(scores) == 3
        shown = grid.shows(scores, lambda order: _in_score_order(order, scores))
        _shot(page, "outliers-from-operator")
        assert _in_score_order(shown, scores), (
            f"the flag operator's view shows scores {[scores.get(f) for f in shown]} (grid sort {grid.sorts[-1:]})")
    except Exception:
        _shot(page, "outliers-order-failure")
        raise
