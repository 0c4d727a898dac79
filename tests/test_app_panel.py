"""The attribute-comparison panel in the real App, driven as a user drives it (issue 9): sidebar
filters applied in the browser, the Category and States controls, a bar click with a grid sort
in the view bar, Back, and a dataset with an unlabelled source. One App server for the module;
each test brings its own dataset and opens it by URL. Screenshots of each step go to
test-artifacts/panel-*.png."""

from __future__ import annotations

import re
import socket
import time

import fiftyone as fo
import numpy as np
import pytest
from fiftyone import ViewField as F

from faceaudit.attributes import ATTRIBUTES, CATEGORIES, CATEGORY_OF
from fiftyone_plugin import labels
from fiftyone_plugin.ingest import load_face_dataset
from browser import close_in_background, connected
from test_app import ARTIFACTS, CHROMIUM, FLAGS, _open, _open_panel, _press
from test_labels import write_csv

pytestmark = pytest.mark.browser
CODE = {"1": "p", "-1": "n", "0": "u"}
STATE_OF = {"p": "positive", "n": "negative", "u": "undefined"}

# every plot of the panel: its title, its traces' data and what plotly drew
PLOTS_JS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => {
  const box = gd.getBoundingClientRect();
  return {
    title: (gd._fullLayout && gd._fullLayout.title && gd._fullLayout.title.text) || '',
    barmode: gd._fullLayout && gd._fullLayout.barmode,
    legend: gd.querySelectorAll('g.legend g.traces').length,
    bars: gd.querySelectorAll('g.point path').length,
    right: box.right,
    barsRight: Math.max(0, ...[...gd.querySelectorAll('g.point path')].map(p => p.getBoundingClientRect().right)),
    traces: (gd.data || []).map(t => ({name: t.name, x: t.x, y: t.y, orientation: t.orientation || 'v',
                                      customdata: t.customdata, color: t.marker && t.marker.color})),
  };
})"""


@pytest.fixture(scope="module")
def server():
    """One App server for the module (a test opens its own dataset by URL)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it as root)")
    pytest.importorskip("playwright")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    session = connected(fo.launch_app(remote=True, port=port))
    yield session, f"http://127.0.0.1:{port}/datasets/"
    close_in_background(session)


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            browser.close()


def _labelled(tmp_path, faces, name, sources, seed=5, blank=()) -> dict[str, list[list[str]]]:
    """Load ``sources`` ({source: (domain, identities, labelled)}) with random labels (``blank``
    attributes all undefined); returns the label rows per labelled source."""
    rng = np.random.default_rng(seed)
    rows_by_source = {}
    for k, (source, (domain, ids, labelled)) in enumerate(sources.items()):
        root = tmp_path / f"src{k}"
        prefix = source if source.isalnum() or "-" in source else f"s{k}"
        faces.identity_tree(root, {f"{prefix}-{i}": 4 for i in range(ids)}, start=7 * k)
        load_face_dataset(str(root), source=source, domain=domain, dataset_name=name)
        if not labelled:
            continue
        names = sorted(f"{p.parent.name}/{p.name}" for p in root.rglob("*.jpg"))
        rows = [[n, n.split("/")[0], *rng.choice(["1", "-1", "0"], 47)] for n in names]
        for row in rows:
            for attr in blank:
                row[2 + ATTRIBUTES.index(attr)] = "0"
        labels.import_labels(fo.load_dataset(name), source, str(write_csv(tmp_path / f"{k}.csv", rows)))
        rows_by_source[source] = rows
    return rows_by_source


def _panel_on_two_sources(page, url: str, tmp_path, faces, dataset_name) -> tuple[dict, dict]:
    """A labelled real source (4 identities) and a synthetic one (3), the App on them and the
    panel open with its bars drawn; returns the label rows and the overview plot."""
    rows = _labelled(tmp_path, faces, dataset_name, {"real-faces": ("real", 4, True),
                                                       "synth-faces": ("synthetic", 3, True)})
    _open(page, url + dataset_name, 28)
    _open_panel(page)
    page.get_by_text("real-faces (real, 16 labelled)").wait_for(timeout=120_000)
    return rows, _wait_plot(page, "per attribute", lambda p: p["bars"] > 0)


def raw_share(rows, attr: str, state: str, states=("positive", "negative", "undefined")) -> float:
    codes = [CODE[r[2 + ATTRIBUTES.index(attr)]] for r in rows]
    kept = [c for c in codes if STATE_OF[c] in states]
    return sum(STATE_OF[c] == state for c in kept) / len(kept)


def _plots(page) -> list[dict]:
    return page.evaluate(PLOTS_JS)


def _plot(page, title: str) -> dict:
    found = [p for p in _plots(page) if title in p["title"]]
    assert found, f"no plot titled {title!r}: {[p['title'] for p in _plots(page)]}"
    return found[0]


def _wait_plot(page, title: str, check, timeout: float = 90) -> dict:
    """Wait until the plot titled ``title`` satisfies ``check`` (the App re-renders plots late)."""
    deadline, plot = time.time() + timeout, None
    while time.time() < deadline:
        found = [p for p in _plots(page) if title in p["title"]]
        plot = found[0] if found else None
        if plot is not None and check(plot):
            return plot
        time.sleep(0.5)
    raise AssertionError(f"plot {title!r} never passed the check; last seen: {plot and {k: v for k, v in plot.items() if k != 'traces'}}")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"panel-{name}.png"))


def _sidebar_filter(page, field: str, values: list[str]) -> None:
    """Tick ``values`` of a string field in the App's sidebar, as a user does."""
    box = page.get_by_placeholder(f"+ filter by {field}")
    for _ in range(3):  # a click on the field's name opens (or closes) its filter; right after
        if box.is_visible():  # the page loads, the sidebar may not answer the first click yet
            break
        page.get_by_text(field, exact=True).first.click()
        try:
            box.wait_for(timeout=10_000)
        except Exception:
            continue
    for value in values:
        box.click()
        box.fill(value)
        page.get_by_text(value, exact=True).last.wait_for()
        box.press("Enter")
        time.sleep(1)


def _session_view(session, check, timeout: float = 30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        view = session.view
        if view is not None and check(view):
            return view
        time.sleep(0.3)
    raise AssertionError(f"the session's view never passed the check: {session.view}")


def test_sidebar_filters_hold_and_the_numbers_follow_them(server, page, tmp_path, faces, dataset_name):
    """9.3: filters ticked in the sidebar while the panel is open: the grid keeps them, the
    panel counts the filtered faces (raw shares, 9.9)."""
    _, url = server
    rows, _ = _panel_on_two_sources(page, url, tmp_path, faces, dataset_name)
    _sidebar_filter(page, "identity", ["real-faces-1", "synth-faces-0"])  # with the panel open
    page.get_by_text("8 samples", exact=True).wait_for()
    page.get_by_text("real-faces (real, 4 labelled)").wait_for(timeout=90_000)
    _shot(page, "filter-open")
    time.sleep(5)  # the reset came within ~2 s of a view event
    assert page.get_by_text("8 samples", exact=True).is_visible(), "the sidebar filter was dropped"
    assert "synth-faces (synthetic, 4 labelled)" in page.inner_text("body")

    _sidebar_filter(page, "identity", ["real-faces-2"])  # with the panel open
    page.get_by_text("12 samples", exact=True).wait_for()
    page.get_by_text("real-faces (real, 8 labelled)").wait_for(timeout=90_000)
    time.sleep(5)
    _shot(page, "filter-added")
    assert page.get_by_text("12 samples", exact=True).is_visible(), "the sidebar filter was dropped"
    _assert_overview_counts(page, rows, {"real-faces": ("real-faces-1", "real-faces-2"),
                                         "synth-faces": ("synth-faces-0",)})


def _still_shown(page, text: str, failure: str, timeout: float = 20) -> None:
    """``text`` is shown, or comes back within ``timeout`` s (a loaded machine is slow)."""
    try:
        page.get_by_text(text, exact=True).wait_for(timeout=timeout * 1000)
    except Exception as error:
        counts = re.findall(r"\d+ samples?", page.inner_text("body"))
        raise AssertionError(f"{failure}: the grid shows {counts[:1]}, not {text!r}") from error


def _assert_overview_counts(page, rows, kept: dict[str, tuple[str, ...]]) -> None:
    """The overview's bars are the raw positive shares of the ``kept`` identities' rows."""
    for trace in _plot(page, "per attribute")["traces"]:
        source = trace["customdata"][0][0]
        mine = [r for r in rows[source] if r[1] in kept[source]]
        values = trace["x"] if trace["orientation"] == "h" else trace["y"]
        attrs = [c[1] for c in trace["customdata"]]
        assert values == pytest.approx([raw_share(mine, a, "positive") for a in attrs], abs=1e-9)


def test_a_filter_set_before_the_panel_opens_holds_and_so_after_a_control_change(server, page, tmp_path,
                                                                                 faces, dataset_name):
    """9.3, second half: a sidebar filter active when the panel opens. Opening any panel saves
    the session's spaces and the App's reload drops the filter ~1-2 s later (FiftyOne 1.22; the
    built-in Histograms panel too); the panel puts it back. A control (a button) writes no panel
    state: the filter holds too."""
    _, url = server
    rows = _labelled(tmp_path, faces, dataset_name, {"real-faces": ("real", 4, True),
                                                       "synth-faces": ("synthetic", 3, True)})
    _open(page, url + dataset_name, 28)
    _sidebar_filter(page, "identity", ["real-faces-1", "synth-faces-0"])  # before the panel opens
    page.get_by_text("8 samples", exact=True).wait_for()
    _open_panel(page)
    page.get_by_text("real-faces (real, 4 labelled)").wait_for(timeout=90_000)
    time.sleep(6)  # the reload that drops the filter comes within ~2 s of the open
    _shot(page, "filter-then-open")
    _still_shown(page, "8 samples", "opening the panel dropped the sidebar filter")
    body = page.inner_text("body")
    assert "real-faces (real, 4 labelled)" in body and "synth-faces (synthetic, 4 labelled)" in body
    kept = {"real-faces": ("real-faces-1",), "synth-faces": ("synth-faces-0",)}
    _assert_overview_counts(page, rows, kept)

    _press(page, "Category \u25b8", "Category: Demographics")
    _wait_plot(page, "per attribute", lambda p: len(p["traces"][0]["y"]) < 15, timeout=60)
    time.sleep(6)
    _shot(page, "filter-then-control")
    _still_shown(page, "8 samples", "a control change dropped the sidebar filter")
    assert "synth-faces (synthetic, 4 labelled)" in page.inner_text("body")
    _assert_overview_counts(page, rows, kept)
    time.sleep(12)  # past the panel's restore window (15 s): nothing drops the filter later
    assert page.get_by_text("8 samples", exact=True).is_visible(), "the sidebar filter was dropped late"


def test_controls_replace_the_charts_and_a_drill_down_survives_a_sort(server, page, tmp_path, faces, dataset_name):
    """9.4 (Category, States: bar counts), 9.7 (legend, one colour per source), 9.12 (the
    Attribute dropdown follows a click; "1 face"), 9.5 (drill-down with a sort, then Back)."""
    session, url = server
    _, overview = _panel_on_two_sources(page, url, tmp_path, faces, dataset_name)
    _shot(page, "open")
    assert overview["legend"] == 2  # one legend entry per source
    attribute = _wait_plot(page, "state shares per source", lambda p: p["bars"] == 6)
    colours = {t["customdata"][0][0]: t["color"] for t in overview["traces"]}
    assert len(set(colours.values())) == 2
    assert {t["customdata"][0][0]: t["color"] for t in attribute["traces"]} == colours

    _press(page, "Category \u25b8", "Category: Demographics")
    demographics = [a for a in ATTRIBUTES if CATEGORY_OF[a] == "Demographics"]
    overview = _wait_plot(page, "per attribute", lambda p: p["bars"] == 2 * len(demographics), timeout=60)
    _shot(page, "category-demographics")
    assert {c[1] for t in overview["traces"] for c in t["customdata"]} == set(demographics)

    _press(page, "binary", "States: binary")
    attribute = _wait_plot(page, "state shares per source", lambda p: p["bars"] == 4, timeout=60)
    _shot(page, "states-binary")
    assert all("undefined" not in (t["x"] if t["orientation"] == "v" else t["y"]) for t in attribute["traces"])

    session.view = fo.load_dataset(dataset_name).sort_by("filepath", reverse=True)  # a grid sort
    page.get_by_text("SortBy").first.wait_for(state="attached")  # the App has it in its view bar
    time.sleep(3)
    # a bar of the overview that is not the first attribute: the dropdown must follow the click
    overview = _plot(page, "per attribute")
    bars = page.locator(".js-plotly-plot").filter(has=page.get_by_text(overview["title"])).locator("g.point path")
    bars.nth(3).click(force=True)
    drill = page.get_by_text("Showing ")
    drill.wait_for(timeout=60_000)
    text = drill.inner_text()
    _shot(page, "drill-down")
    source, attr, state = (text.split(" of ", 1)[1].split(" with ")[0].strip("* "),
                           *text.split(" with ", 1)[1].split(";")[0].strip("* ").split(" = "))
    attr, state = attr.strip("* "), state.strip("* ")
    from fiftyone_plugin.views import attribute_state_view

    sorted_view = fo.load_dataset(dataset_name).sort_by("filepath", reverse=True)
    expected = attribute_state_view(sorted_view, source, attr, state).count()
    assert [type(s).__name__ for s in session.view._stages] == ["SortBy"]  # the view is kept
    assert ("Showing 1 face " if expected == 1 else f"Showing the {expected} faces ") in text
    page.get_by_text(f"{expected} sample" + ("" if expected == 1 else "s"), exact=True).wait_for()
    page.get_by_text(f"Attribute: {attr}", exact=True).wait_for()  # the dropdown follows the click
    time.sleep(5)  # the view events of the drill-down (and the sort) have come back
    _shot(page, "drill-down-sorted")
    back = page.get_by_role("button", name="Back")
    assert back.is_visible(), "Back is gone from a drill-down"
    assert "no synthetic source" not in page.inner_text("body")
    box, width = back.bounding_box(), page.viewport_size["width"]
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, f"Back is clipped: {box}"
    back.click()
    page.get_by_text("28 samples", exact=True).wait_for()
    page.get_by_text("real-faces (real, 16 labelled)").wait_for(timeout=60_000)
    time.sleep(3)
    _shot(page, "back")
    assert "real-faces (real, 16 labelled)" in page.inner_text("body")
    assert not page.get_by_text("Showing ").count()


def test_an_unlabelled_source_and_a_one_domain_view_show_what_can_be_shown(server, page, tmp_path, faces,
                                                                          dataset_name):
    """9.6 (an unlabelled source; a one-domain view), 8.6 (a source name is text, not
    markdown), 9.9 (an attribute no one labelled is marked, not KL 0), 9.8 (the realness
    histogram: grouped, every bar inside the plot)."""
    from fiftyone_plugin import outliers

    _, url = server
    odd = "[x](http://e.invalid) ![i](u.png)"
    _labelled(tmp_path, faces, dataset_name,
              {"real-faces": ("real", 4, True), "synth-faces": ("synthetic", 3, True), odd: ("synthetic", 1, False)},
              blank=("Attractive",))
    ds = fo.load_dataset(dataset_name)
    outliers.score_realness(ds)
    _open(page, url + dataset_name, 32)
    _open_panel(page)
    page.get_by_text("real-faces (real, 16 labelled)").wait_for(timeout=90_000)
    overview = _wait_plot(page, "per attribute", lambda p: p["bars"] > 0)
    _shot(page, "unlabelled-source")
    body = page.inner_text("body")
    assert "has no labelled samples" in body and odd in body
    assert page.locator("a[href^='http://e.invalid']").count() == 0
    assert page.locator("img[src='u.png']").count() == 0
    assert {t["customdata"][0][0] for t in overview["traces"]} == {"real-faces", "synth-faces"}
    assert "not labelled" in body and "Attractive" in body
    table = page.locator("table", has_text="KL(real || synth)").first
    assert table.locator("tr").count() > 10 and "Attractive" not in table.inner_text()

    histogram = _wait_plot(page, "realness_nll per source", lambda p: p["bars"] > 0)
    page.get_by_text("realness_nll per source").scroll_into_view_if_needed()
    _shot(page, "realness")
    assert histogram["barmode"] != "overlay"
    assert histogram["barsRight"] <= histogram["right"] + 0.5, "the last bar is cut off"

    _sidebar_filter(page, "identity", ["real-faces-1"])  # one domain left
    page.get_by_text("real-faces (real, 4 labelled)").wait_for(timeout=90_000)
    overview = _wait_plot(page, "per attribute", lambda p: len(p["traces"]) == 1)
    _shot(page, "one-domain")
    assert "no synthetic source" in page.inner_text("body")
    assert page.get_by_text("4 samples", exact=True).is_visible()
