"""Issue 15.10: the overview chart never spends its "top 15" on attributes no source labelled,
and never draws a not-labelled attribute as 100% "undefined" (not labelled is not a state)."""

from __future__ import annotations

import numpy as np

from faceaudit import report, stats
from faceaudit.attributes import ATTRIBUTES


def _result(unlabelled: int):
    """Two sources; the first ``unlabelled`` attributes are undefined everywhere, the others
    get random counts (an independent reference: which attributes have any +/- label)."""
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 9, size=(2, len(ATTRIBUTES), 3)).astype(np.int64)
    counts[:, :unlabelled, :2] = 0
    return stats.compare(["r", "s"], ["real", "synthetic"], counts.sum((1, 2)) // len(ATTRIBUTES), counts,
                         "three", 0.5).to_json(), set(ATTRIBUTES[:unlabelled])


def test_top_holds_labelled_attributes_only():
    result, unlabelled = _result(40)  # 7 labelled: fewer than 15
    figure = report.overview_figure(result, "positive", None, report.TOP_N)
    shown = [c[1] for c in figure["data"][0]["customdata"]]
    assert sorted(shown) == sorted(set(ATTRIBUTES) - unlabelled)


def test_undefined_bars_leave_not_labelled_attributes_empty():
    result, unlabelled = _result(5)
    figure = report.overview_figure(result, "undefined")  # all 47
    for trace in figure["data"]:
        for (_, attr, _), share in zip(trace["customdata"], trace["x"]):
            assert (share is None) == (attr in unlabelled), attr
    assert all(f"{a} (not labelled)" in figure["data"][0]["y"] for a in unlabelled)


def test_source_names_are_text_in_the_legend_and_the_hover():
    """plotly reads trace names and hover text as markup: an attacker's source name must arrive
    as text (escaped), while a click still gets the source as it is stored."""
    from faceaudit.report import attribute_figure, overview_figure

    markup = "<b onmouseover=alert(1)>synth</b>"
    counts = np.random.default_rng(4).integers(1, 9, size=(2, len(ATTRIBUTES), 3)).astype(np.int64)
    result = stats.compare(["r", markup], ["real", "synthetic"], counts.sum((1, 2)) // len(ATTRIBUTES), counts,
                           "three", 0.5).to_json()
    for figure in (overview_figure(result), attribute_figure(result, "Male")):
        traces = [t for t in figure["data"] if t.get("customdata")]
        mine = [t for t in traces if t["customdata"][0][0] == markup]
        assert mine and all("<b" not in t["name"] and "&lt;b" in t["name"] for t in mine)
        assert all(t["meta"] == "&lt;b onmouseover=alert(1)&gt;synth&lt;/b&gt;" and "%{meta}" in t["hovertemplate"]
                   for t in mine)
