"""The identity-audit panel in the real App (issue 13, item 4), driven as a user drives it: open
it from the "+" beside the Samples tab, see the genuine / impostor histograms and the metrics
table, click the planted leak's row: the grid shows exactly the synthetic identity's faces and
its real match's. The dataset is test_identity's: real LFW faces with real dlib embeddings and a
planted leak, collision and wrong face. Screenshots go to test-artifacts/identity-*.png."""

from __future__ import annotations

import json
import re
import time

import fiftyone as fo
import pytest
from browser import ARTIFACTS, in_chromium, require_chromium, served
from test_app import _open
from test_app_panel import PLOTS_JS, _session_view, _wait_plot
from test_identity import THRESHOLD, world  # noqa: F401  (the fixture: real faces, dlib vectors)

from faceaudit.report import num
from fiftyone_plugin import identity as adapter
from fiftyone_plugin import schema


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"identity-{name}.png"))


def _open_identity_panel(page) -> None:
    page.locator("[data-cy='new-panel-btn']").or_(page.get_by_title("New panel")).first.click()
    page.get_by_text("faceaudit: identity audit").first.click()


@pytest.mark.browser
def test_histograms_table_and_a_leak_click_shows_both_identities(world):  # noqa: F811
    require_chromium()
    name, wrong_path, _ = world
    ds = fo.load_dataset(name)
    result = adapter.identity_audit(ds, adapter.options(threshold=THRESHOLD), tag=True, similarity_index=False,
                                    visualization=True)
    assert schema.get_info(ds, "identity")["threshold"] == THRESHOLD
    leak = result["leakage"]["synth"]["top"][0]  # the planted leak: s_leak is r0's face
    assert (leak["identity"], leak["real_identity"]) == ("s_leak", "r0")
    expected = set(ds.match((fo.ViewField("source") == "synth") & (fo.ViewField("identity") == "s_leak")).values("filepath")) \
        | set(ds.match((fo.ViewField("source") == "real") & (fo.ViewField("identity") == "r0")).values("filepath"))
    total = ds.count()

    with served(ds) as (session, url):
        def drive(page, _context):
            page.set_default_timeout(60_000)
            _open(page, url, total)
            _identity_form(page)
            _open_identity_panel(page)
            page.get_by_text("Metrics per source").wait_for(timeout=90_000)
            for kind in ("genuine", "impostor"):
                plot = _wait_plot(page, f"{kind} (", lambda p: p["bars"] > 0)
                shown = {t["name"].split(" (")[0]: t for t in plot["traces"]}
                assert set(shown) == {"real", "synth"}  # flatgan has no identities
                for source, trace in shown.items():
                    counts = result["sources"][source][kind]["histogram"]
                    assert trace["customdata"] == counts  # the stored aggregates, nothing per sample
                    assert trace["y"] == pytest.approx([c / sum(counts) for c in counts])
            _shot(page, "open")
            table = page.locator("table", has_text="uniqueness").first
            text = table.inner_text()
            for label in ("identities", "EER", "FNMR @ FMR 1e-2", "d'", "FDR", "uniqueness", "consistency"):
                assert label in text, label
            for source in ("real", "synth"):
                r = result["sources"][source]
                for key in ("eer", "d_prime", "uniqueness"):
                    assert num(r[key]) in text, (source, key)
            body = page.inner_text("body")
            assert "flatgan" in body  # named as not applicable

            row = page.get_by_role("button", name=re.compile(r"s_leak .*r0: cosine"))
            row.scroll_into_view_if_needed()
            _shot(page, "leakage")
            row.click()
            page.get_by_text(f"{len(expected)} samples", exact=True).wait_for(timeout=60_000)
            view = _session_view(session, lambda v: len(v) == len(expected))
            assert set(view.values("filepath")) == expected
            assert view.values("identity") == ["r0"] * 4 + ["s_leak"] * 3  # the real match beside it
            # new-user review C3: which faces, counted per identity (it read as if the synthetic
            # identity had 7), and the status and Back also above the list clicked, in sight
            status = page.get_by_text("Showing synth / s_leak (3 faces) beside its real match real / r0 (4 faces)")
            status.first.wait_for(timeout=60_000)
            time.sleep(3)
            assert status.count() == 2  # at the top, and above the leakage list
            assert page.get_by_role("button", name="Back to the whole dataset").count() == 2
            assert _in_sight(page, status.last) and not _in_sight(page, status.first)
            _shot(page, "leak-click")
            page.get_by_role("button", name=re.compile(r"s_c1 = s_c2")).click()  # the planted collision
            view = _session_view(session, lambda v: set(v.values("identity")) == {"s_c1", "s_c2"})
            assert view.count() == ds.match(fo.ViewField("identity").is_in(["s_c1", "s_c2"])).count() == 4
            page.get_by_text("4 samples", exact=True).wait_for(timeout=60_000)
            c1, c2 = (ds.match((fo.ViewField("source") == "synth") & (fo.ViewField("identity") == i)).count()
                      for i in ("s_c1", "s_c2"))
            collision = page.get_by_text(f"Showing the collision of synth: s_c1 ({c1} faces) and s_c2 ({c2} faces)")
            collision.last.wait_for(timeout=60_000)
            time.sleep(2)
            assert _in_sight(page, collision.last)
            assert page.get_by_text("Showing synth / s_leak", exact=False).count() == 0
            _shot(page, "collision-click")
            summary = page.get_by_text("threshold", exact=False).first.inner_text()
            assert "(--" not in page.inner_text("body") and "((" not in summary, summary  # C5
            page.get_by_role("button", name="Show the identity outliers").click()
            outliers = ds.match_tags(adapter.OUTLIER_TAG)
            view = _session_view(session, lambda v: len(v) == outliers.count() and "identity_outlier" in str(v))
            sims = view.values(adapter.SIMILARITY_FIELD)
            assert sims == sorted(sims) and sims and max(sims) < THRESHOLD
            assert view.values("filepath")[0] == wrong_path  # the planted wrong face first
            page.get_by_text(f"{len(sims)} sample" + ("" if len(sims) == 1 else "s"), exact=True).wait_for()
            page.get_by_text("Showing the identity outlier (1 face)" if len(sims) == 1 else
                             f"Showing the {len(sims)} identity outliers, lowest identity_similarity first").last.wait_for()
            time.sleep(2)
            _shot(page, "outliers")
            page.get_by_role("button", name="Back to the whole dataset").last.click()  # the one in sight
            page.get_by_text(f"{total} samples", exact=True).wait_for(timeout=60_000)
            _embeddings_map(page, ds)

        in_chromium(drive, "identity-failure.png")


def _identity_form(page) -> None:
    """The identity audit's form as a new user reads it (new-user review C6): Clear is an action
    of its own, the default rule says its value, the cosine field starts at it."""
    from test_app_operators import _dismiss_offer, _open_operator

    _dismiss_offer(page)  # before the form: the pop-up over it could not be dismissed
    _open_operator(page, "identity audit", "faceaudit: identity audit (genuine/impostor, uniqueness, collisions, leakage)")
    page.get_by_text("0.9 for dlib", exact=True).wait_for(timeout=60_000)
    assert page.get_by_text("Clear the identity tags", exact=True).count() == 1
    page.get_by_text("A cosine threshold", exact=True).click()
    field = page.get_by_text("Cosine threshold", exact=True).first.locator("xpath=following::input[1]")
    field.wait_for(timeout=60_000)
    assert float(field.input_value()) == 0.9
    page.get_by_text("Register the similarity index", exact=True).wait_for()
    _shot(page, "form")
    page.get_by_role("button", name="Cancel").click()


def _in_sight(page, locator) -> bool:
    """Whether ``locator``'s element lies inside the browser window (not scrolled out of sight)."""
    box = locator.bounding_box()
    return box is not None and 0 <= box["y"] and box["y"] + box["height"] <= page.viewport_size["height"]


def _embeddings_map(page, ds) -> None:
    """FiftyOne's Embeddings panel on the audit's 2-D map (``face_map``), as a user opens it: the
    panel lists the map, a click shows every embedded face as a point, coloured by source."""
    page.locator("[data-cy='new-panel-btn']").or_(page.get_by_title("New panel")).first.click()
    page.get_by_text("Embeddings", exact=True).first.click()
    page.get_by_text(adapter.VISUALIZATION_KEY, exact=True).first.click()  # the panel lists its maps
    embedded = ds.exists(adapter.EMBEDDING_FIELD)
    page.get_by_text(f"{embedded.count()} points", exact=True).wait_for(timeout=60_000)
    page.get_by_text("Color by", exact=True).first.click()
    page.get_by_role("option", name="source", exact=True).or_(page.get_by_text("source", exact=True)).last.click()
    time.sleep(3)
    _shot(page, "embeddings")
    panel = page.locator("body").inner_text()
    for source, n in embedded.count_values("source").items():  # the legend: each source, its points
        assert re.search(rf"\b{re.escape(source)}\s+{n}\b", panel), (source, n, panel[-400:])
