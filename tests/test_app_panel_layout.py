"""Issue 15.7: the attribute-comparison panel is mostly charts; in the App at a 1280x800 window
the mouse wheel over a chart scrolls the panel (the chart keeps its axis ranges), the charts
follow each other without empty boxes between them, and the control rows fit the panel (no
horizontal scrollbar, no button or title cut off). Screenshots: test-artifacts/panel-layout-*.png."""

from __future__ import annotations

import time

import pytest

from test_app_panel import _panel_on_two_sources, _shot, _wait_plot
from test_app_panel import page, server  # noqa: F401  (fixtures: one App server for the module)

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1280, "height": 800}
MAX_GAP_PX = 60
#: the buttons of the control rows above the charts (States, Bars show, Attributes, alpha,
#: Category)
CONTROL_BUTTONS = ("three", "binary", "positive", "negative", "undefined", "top 15", "all", "0", "0.1", "0.25",
                   "0.5", "1", "\u25c2 Category", "Category \u25b8")  # between one block of the panel (a chart, a row, a text) and the next

# the panel's own scrolling box (FiftyOne 1.22: the panel's content sits in a box with
# overflow auto) and, inside it, every block a user sees, in page coordinates
LAYOUT_JS = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  let box = gd;
  while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowY)) box = box.parentElement;
  const rect = (e) => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const shown = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const blocks = [...box.querySelectorAll('.js-plotly-plot, button, table, p, h1, h2, h3')]
    .filter(e => shown(e) && !e.closest('.modebar') && !(e.tagName !== 'DIV' && e.closest('.js-plotly-plot')))
    .map(e => ({what: e.classList.contains('js-plotly-plot') ? 'chart: ' + ((e._fullLayout.title || {}).text || '')
                                                              : e.tagName + ': ' + e.textContent.trim().slice(0, 40),
                chart: e.classList.contains('js-plotly-plot'), ...rect(e)}));
  const ancestors = []; for (let e = box; e; e = e.parentElement) ancestors.push(e);
  const overflowing = [...box.querySelectorAll('*'), ...ancestors].filter(e => !e.closest('.js-plotly-plot')
      && e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible')
    .map(e => e.tagName + '.' + String(e.className).slice(0, 30) + ' ' + (e.textContent || '').slice(0, 30) + ': '
              + e.scrollWidth + ' > ' + e.clientWidth);
  // each chart's title, as plotly drew it
  const titles = [...box.querySelectorAll('.js-plotly-plot')].map(gd => {
    const t = gd.querySelector('.g-gtitle text'); const r = gd.getBoundingClientRect();
    return {what: 'chart title: ' + (t ? t.textContent : ''), chartLeft: r.left, chartRight: r.right, ...(t ? rect(t) : {})}; });
  const beyond = [...box.querySelectorAll('*')].filter(e => !e.closest('.js-plotly-plot') && shown(e)
      && e.getBoundingClientRect().right > box.getBoundingClientRect().left + box.clientWidth + 0.5)
    .map(e => e.tagName + '.' + String(e.className).slice(0, 30) + ' ' + e.textContent.slice(0, 30) + ': right '
              + e.getBoundingClientRect().right).slice(0, 8);
  return {beyond, box: {...rect(box), scrollTop: box.scrollTop, scrollWidth: box.scrollWidth, clientWidth: box.clientWidth,
                scrollHeight: box.scrollHeight, clientHeight: box.clientHeight},
          blocks, overflowing, titles, viewport: {width: innerWidth, height: innerHeight},
          pageScrollWidth: document.documentElement.scrollWidth};
}"""

# the axis ranges of every chart, by title
RANGES_JS = """() => Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].map(gd => [
  (gd._fullLayout.title || {}).text || '',
  [gd._fullLayout.xaxis && gd._fullLayout.xaxis.range, gd._fullLayout.yaxis && gd._fullLayout.yaxis.range]]))"""


def _layout(page) -> dict:
    return page.evaluate(LAYOUT_JS)


def _gaps(blocks: list[dict]) -> list[tuple[float, str, str]]:
    """The empty vertical space after each block (until the next one starts), largest first."""
    blocks = sorted(blocks, key=lambda b: b["top"])
    gaps, bottom, last = [], blocks[0]["bottom"], blocks[0]["what"]
    for b in blocks[1:]:
        if b["top"] > bottom:
            gaps.append((b["top"] - bottom, last, b["what"]))
        if b["bottom"] >= bottom:
            bottom, last = b["bottom"], b["what"]
    return sorted(gaps, reverse=True)


def test_the_wheel_scrolls_the_panel_charts_are_packed_and_the_controls_fit(server, page, tmp_path, faces,
                                                                          dataset_name):
    _, url = server
    page.set_viewport_size(VIEWPORT)
    try:
        _panel_on_two_sources(page, url, tmp_path, faces, dataset_name)
        _wait_plot(page, "state shares per source", lambda p: p["bars"] > 0)
        _wait_plot(page, "pairwise", lambda p: True)
        time.sleep(2)  # the App sizes the charts to their boxes after they draw
        _shot(page, "layout-1280")
        layout = _layout(page)

        # the control rows and the title fit: no horizontal scrollbar, nothing cut off
        box, width = layout["box"], layout["viewport"]["width"]
        assert box["scrollWidth"] <= box["clientWidth"], f"the panel scrolls sideways: {box}; {layout['beyond']}"
        assert layout["pageScrollWidth"] <= width, "the page scrolls sideways"
        assert not layout["overflowing"], f"cut off inside the panel: {layout['overflowing']}"
        title = [b for b in layout["blocks"] if "Real vs synthetic face attributes" in b["what"]]
        assert title, "no title"
        controls = [b for b in layout["blocks"] if b["what"].startswith("BUTTON: ")]
        names = {b["what"][len("BUTTON: "):] for b in controls}
        assert set(CONTROL_BUTTONS) <= names, f"controls missing: {set(CONTROL_BUTTONS) - names}"
        for t in layout["titles"]:
            assert "left" in t, f"a chart without a title: {t}"
            assert t["left"] >= t["chartLeft"] - 0.5 and t["right"] <= t["chartRight"] + 0.5, f"{t['what']} is cut off: {t}"
        for b in title + controls:
            assert b["left"] >= box["left"] - 0.5 and b["right"] <= min(box["right"], width) + 0.5, \
                f"{b['what']} is cut off: {b} (panel {box}, window {width})"

        # the charts follow each other: no empty box below a chart
        gaps = _gaps(layout["blocks"])
        assert not gaps or gaps[0][0] <= MAX_GAP_PX, f"empty space in the panel: {gaps[:3]}"
        charts = [b for b in layout["blocks"] if b["chart"]]
        assert len(charts) >= 4

        # the wheel over a chart scrolls the panel; the chart keeps its axis ranges
        overview = charts[0]
        page.mouse.move((overview["left"] + overview["right"]) / 2, overview["top"] + 150)
        ranges = page.evaluate(RANGES_JS)
        page.mouse.wheel(0, 300)
        deadline = time.time() + 10
        while _layout(page)["box"]["scrollTop"] < 100 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # a zoom, if any, would have redrawn by now
        after = _layout(page)["box"]["scrollTop"]
        _shot(page, "layout-after-wheel")
        assert page.evaluate(RANGES_JS) == ranges, "the wheel zoomed a chart"
        assert after >= 100, f"the wheel over a chart did not scroll the panel (scrollTop {after})"
        for k, title in enumerate(("state shares per source", "KL divergence per attribute", "pairwise")):
            page.get_by_text(title).first.scroll_into_view_if_needed()
            _shot(page, f"layout-scrolled-{k + 1}")
    except Exception:
        _shot(page, "layout-failure")
        raise
