"""Labels a reader can read: each sample's states under the run's threshold as two lists of
attribute names, ``mac_positive`` and ``mac_undefined``, written with the labels (annotate and
import alike), derived for datasets labelled before they existed, within the 2 KB/sample
budget, and in the App: filtered by value in the sidebar, shown in the sample modal."""

from __future__ import annotations

import re
import time

import bson
import fiftyone as fo
import numpy as np
import pytest

from fiftyone import ViewField as F

from faceaudit.attributes import ATTRIBUTES
from fiftyone_plugin import labels
from fiftyone_plugin.ingest import load_face_dataset
from browser import ARTIFACTS, in_chromium, require_chromium, served
from test_labels import write_csv

MALE, YOUNG, SMILING = (ATTRIBUTES.index(a) for a in ("Male", "Young", "Smiling"))


def _loaded(tmp_path, faces, dataset_name, n: int = 6, source: str = "real-faces") -> fo.Dataset:
    faces.identity_tree(tmp_path / source, {f"{source}-{k}": 3 for k in range(n // 3)})
    load_face_dataset(str(tmp_path / source), source=source, domain="real", dataset_name=dataset_name)
    return fo.load_dataset(dataset_name)


def _threshold_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """As a model with t = 0.6 labels: Male at reliability 0.56 (undefined, sign +), Young
    positive at 0.9, Smiling negative at 0.8; the other 44 attributes not labelled (NaN)."""
    states = np.zeros((n, len(ATTRIBUTES)), dtype=np.int8)
    signed = np.full((n, len(ATTRIBUTES)), np.nan)
    states[:, YOUNG], states[:, SMILING] = 1, -1
    signed[:, MALE], signed[:, YOUNG], signed[:, SMILING] = 0.56, 0.9, -0.8
    return states, signed


def test_state_lists_follow_the_threshold_not_the_sign(tmp_path, faces, dataset_name):
    ds = _loaded(tmp_path, faces, dataset_name)
    labels.ensure_label_schema(ds)
    labels.write_labels(ds, ds.values("id"), *_threshold_labels(len(ds)))
    sample = ds.first()
    assert sample["mac_Male"] == 0.56 and sample[labels.CODE_FIELD][MALE] == "u"
    assert sample[labels.POSITIVE_FIELD] == ["Young"]  # Male's + sign is not positive under t
    assert sample[labels.UNDEFINED_FIELD] == ["Male"]  # and the 44 unlabelled are in no list
    assert ds.count_values(labels.POSITIVE_FIELD) == {"Young": len(ds)}
    faceaudit_group = next(g for g in ds.app_config.sidebar_groups if g.name == "faceaudit")
    assert faceaudit_group.paths[:2] == [labels.POSITIVE_FIELD, labels.UNDEFINED_FIELD]


def test_import_writes_the_same_lists_and_old_datasets_get_them(tmp_path, faces, dataset_name):
    ds = _loaded(tmp_path, faces, dataset_name)
    rng = np.random.default_rng(3)
    names = sorted(f"{p.parent.name}/{p.name}" for p in (tmp_path / "real-faces").rglob("*.jpg"))
    rows = [[n, n.split("/")[0], *rng.choice(["1", "-1", "0"], 47)] for n in names]
    labels.import_labels(ds, "real-faces", str(write_csv(tmp_path / "l.csv", rows)))

    def expected():
        codes = ds.values(labels.CODE_FIELD)
        return ([[a for a, c in zip(ATTRIBUTES, code) if c == "p"] for code in codes],
                [[a for a, c in zip(ATTRIBUTES, code) if c == "u"] for code in codes])

    def stored():
        return ds.values(labels.POSITIVE_FIELD), ds.values(labels.UNDEFINED_FIELD)

    assert stored() == expected() and sum(map(len, stored()[0])) > 0
    # a dataset labelled before the lists existed: they are derived from its labels, on the server
    for name in labels.STATE_LIST_FIELDS:
        ds.delete_sample_field(name)
    assert labels.POSITIVE_FIELD not in ds.get_field_schema()
    labels.ensure_label_schema(ds)
    assert stored() == expected()


def test_labels_fit_the_storage_budget(tmp_path, faces, dataset_name):
    """BSON bytes of the 50 label fields per sample with every attribute labelled and states
    drawn uniformly (31 of 47 names in the lists on average): under 2 KB (README, "Label schema")."""
    ds = _loaded(tmp_path, faces, dataset_name, n=30)
    labels.ensure_label_schema(ds)
    rng = np.random.default_rng(0)
    states = rng.integers(-1, 2, size=(len(ds), 47)).astype(np.int8)
    signed = np.where(states == 0, rng.uniform(-0.6, 0.6, states.shape), states * rng.uniform(0.6, 1, states.shape))
    labels.write_labels(ds, ds.values("id"), states, signed)
    ours = {*labels.LABEL_FIELDS, labels.CODE_FIELD, *labels.STATE_LIST_FIELDS}
    sizes = [len(bson.encode(doc)) - len(bson.encode({k: v for k, v in doc.items() if k not in ours}))
             for doc in ds._sample_collection.find()]
    assert len(sizes) == len(ds) and sum(sizes) / len(sizes) < 1900 and max(sizes) < 2048, sizes


@pytest.fixture
def app(tmp_path, faces, dataset_name):
    require_chromium()
    ds = _loaded(tmp_path, faces, dataset_name, n=6)
    labels.ensure_label_schema(ds)
    states, signed = _threshold_labels(len(ds))
    states[:2, MALE], signed[:2, MALE] = 1, 0.93  # two reliably male faces
    labels.write_labels(ds, ds.values("id"), states, signed)
    with served(ds) as (session, url):
        yield ds, url


@pytest.mark.browser
def test_sidebar_filters_the_state_lists_by_value_and_the_modal_shows_them(app):
    ds, url = app
    in_chromium(lambda page, _: _drive(page, ds, url), "labels-failure.png")


def _drive(page, ds, url):
    """Filter each list by value in the sidebar, then open a face in the modal."""
    for text in ("Dismiss", "Disable"):
        page.add_locator_handler(page.get_by_text(text, exact=True), lambda button: button.click())
    page.goto(url)
    page.get_by_text("6 samples", exact=True).wait_for(timeout=90_000)
    positive = ds.match(F(labels.POSITIVE_FIELD).contains("Male")).count()
    undefined = ds.match(F(labels.UNDEFINED_FIELD).contains("Male")).count()
    assert (positive, undefined) == (2, 4)  # the two reliably male faces; 0.56 < t is undefined
    _filter(page, labels.POSITIVE_FIELD, "Male")
    page.get_by_text(f"{positive} samples", exact=True).wait_for(timeout=60_000)
    page.mouse.move(800, 800)
    page.screenshot(path=str(ARTIFACTS / "labels-sidebar.png"))
    _reset(page, labels.POSITIVE_FIELD)
    page.get_by_text("6 samples", exact=True).wait_for(timeout=60_000)
    _filter(page, labels.UNDEFINED_FIELD, "Male")
    page.get_by_text(f"{undefined} samples", exact=True).wait_for(timeout=60_000)

    # the first face of the grid opens the modal, whose sidebar names the field a second time;
    # the grid re-renders after a filter, so a click may land in between: click until it opens
    deadline = time.time() + 90
    while page.get_by_text(labels.UNDEFINED_FIELD, exact=True).count() < 2:
        assert time.time() < deadline, "the modal did not open"
        page.mouse.click(420, 250)
        page.wait_for_timeout(3000)
    modal_field = page.get_by_text(labels.UNDEFINED_FIELD, exact=True).last
    modal_field.click()  # expands the list's values
    page.get_by_text(labels.POSITIVE_FIELD, exact=True).last.click()
    page.locator("[data-cy='sidebar-group-ATTRIBUTES: DEMOGRAPHICS']").last.click()  # mac_Male 0.56 beside
    page.get_by_text("0.56", exact=True).last.wait_for(timeout=60_000)
    text = page.inner_text("body")
    modal = text[text.rindex(labels.POSITIVE_FIELD):]
    assert re.match(rf"{labels.POSITIVE_FIELD}\s+1\s+Young\s+{labels.UNDEFINED_FIELD}\s+1\s+Male\s", modal), modal[:200]
    page.mouse.move(800, 990)
    page.screenshot(path=str(ARTIFACTS / "labels-modal.png"))


def _reset(page, field: str) -> None:
    """Click the Reset button of ``field``'s filter. Under load the sidebar can re-render after
    the grid's count changes and fold the field up: then the field is opened again first."""
    reset = page.get_by_text("Reset", exact=True).locator("visible=true")
    for _ in range(4):
        try:
            reset.first.click(timeout=15_000)
            return
        except Exception:
            page.get_by_text(field, exact=True).first.click()
    raise AssertionError(f"no Reset button in the sidebar filter of {field}")


def _filter(page, field: str, value: str) -> None:
    """Open ``field``'s filter in the sidebar, look ``value`` up and tick it (retried: the
    results list re-renders while the server answers, and a click may land in between)."""
    page.get_by_text(field, exact=True).first.click()
    box = page.get_by_placeholder(f"+ filter by {field}").first
    reset = page.get_by_text("Reset", exact=True).locator("visible=true")
    for _ in range(4):
        box.click()
        box.fill(value)
        result = page.get_by_text(value, exact=True).locator("visible=true").first
        result.wait_for(timeout=60_000)
        time.sleep(1)
        result.click()
        try:
            reset.first.wait_for(timeout=15_000)  # shown once a value is ticked
            return
        except Exception:
            continue
    raise AssertionError(f"could not tick {value} in the sidebar filter of {field}")
