"""Issue 15.10's smaller points, as a new user meets them in the App (headless Chromium, one App
server for all of them): the forms name a refused field by its label, the load's result says what
layout it detected in the App's words, annotate starts on the offline models and runs now at 213
faces, the flag dialog opened from the grid's menu is not under the toolbar, the panel's choices
are words and an attribute no model labelled is not drawn as 100% undefined, the scores a flag
writes sit in the faceaudit sidebar group (not PRIMITIVES), and mac_code stays out of the modal's
way. Screenshots: test-artifacts/smaller-*.png."""

from __future__ import annotations

import pytest

from fiftyone_plugin import labels
from fiftyone_plugin.ingest import load_face_dataset
from test_app_errors import _field, _labelled_by_agegender, _patient_app_server  # noqa: F401
from test_app_operators import WAIT, _open_app, _open_operator, _set_view, _until, app, page  # noqa: F401

pytestmark = pytest.mark.browser
MORE = 201  # unlabelled faces beside the fixture's 12: above the old Run-now size (200)

# each radio of the open form: its value and whether it is ticked
RADIOS_JS = "() => Object.fromEntries([...document.querySelectorAll('input[type=radio]')].map(r => [r.value, r.checked]))"
# whether the centre of the element with text ``label`` is that element (nothing drawn over it)
ON_TOP_JS = """(label) => {
  const e = [...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && e.textContent.trim() === label
                                                         && e.closest('[role=dialog], .MuiDialog-root, .MuiModal-root'));
  if (!e) return 'no element labelled ' + label + ' in the dialog';
  const r = e.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;
  const top = document.elementFromPoint(x, y);
  return top && (top === e || e.contains(top) || top.contains(e)) ? true
    : 'covered by ' + (top ? top.tagName + '.' + String(top.className).slice(0, 40) : 'nothing') + ' at ' + [x, y];
}"""

# how many elements with text ``text`` a user sees: drawn on top at their centre
SHOWN_JS = """(text) => [...document.querySelectorAll('*')].filter(e => e.childElementCount === 0
    && e.textContent.trim() === text).filter(e => {
  const r = e.getBoundingClientRect();
  if (!r.width || !r.height) return false;
  const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
  return top && (top === e || e.contains(top));
}).length"""


# the sidebar group a field's row sits in: the nearest group header above the row (the App draws
# the sidebar as one list of group headers and field rows)
GROUP_OF_JS = """(field) => {
  const entries = [...document.querySelectorAll("[data-cy^='sidebar-group-entry-']")];
  if (!entries.length) return null;
  const headers = entries.map(h => [h.getAttribute('data-cy').slice('sidebar-group-entry-'.length), h.getBoundingClientRect().top]);
  const left = entries[0].getBoundingClientRect().left, right = entries[0].getBoundingClientRect().right;
  const row = [...document.querySelectorAll('*')].find(e => {  // in the sidebar's column, not the view bar
    const r = e.getBoundingClientRect();
    return e.childElementCount === 0 && e.textContent.trim() === field && r.left >= left && r.right <= right
      && !e.closest('[role=dialog], .MuiModal-root');
  });
  if (!row) return null;
  const top = row.getBoundingClientRect().top;
  const above = headers.filter(([, y]) => y <= top).sort((a, b) => b[1] - a[1]);
  return above.length ? above[0][0] : null;
}"""


def _shot(page, step: str) -> None:
    from test_app import ARTIFACTS

    page.screenshot(path=str(ARTIFACTS / f"smaller-{step}.png"))


def _refused(page, shown: str, internal: str) -> None:
    """The form shows ``shown`` (the field's label and the problem), never ``internal`` (the
    parameter's name), and keeps Execute disabled."""
    page.get_by_text(shown, exact=True).first.wait_for(timeout=WAIT)
    assert internal not in page.inner_text("body")
    assert page.get_by_role("button", name="Execute").is_disabled()


def _cancel(page) -> None:
    page.get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Cancel").wait_for(state="detached", timeout=WAIT)


def test_forms_results_sidebar_and_panel_speak_the_apps_words(app, page, tmp_path, faces):
    from test_app import _open_panel, _press
    from test_app_panel import _wait_plot

    ds, session, url = app
    _labelled_by_agegender(ds)  # 12 faces: 4 attributes labelled, 43 not
    faces.identity_tree(tmp_path / "bulk", {f"bulk-{k}": 67 for k in range(3)})
    load_face_dataset(str(tmp_path / "bulk"), source="bulk", domain="synthetic", dataset_name=ds.name)
    faces.identity_tree(tmp_path / "more", {"more-0": 2, "more-1": 2}, start=60)
    total = 12 + MORE
    try:
        _open_app(page, url, total)

        # 4: annotate starts on the offline models (no MAC checkpoint is known) and runs now at 213
        _open_operator(page, "annotate", "faceaudit: annotate 47 face attributes")
        page.get_by_text("Annotate face attributes").wait_for(timeout=WAIT)
        page.get_by_text("Stochastic passes").wait_for(state="detached", timeout=WAIT)  # MAC-only field
        radios = page.evaluate(RADIOS_JS)
        assert radios.get("agegender") and not radios.get("mac"), radios
        assert radios.get("false") and not radios.get("true"), f"not Run now at {total} faces: {radios}"
        # 2: a refused value names the field as the form labels it
        _field(page, "Batch size").fill("0")
        _refused(page, "Batch size: must be at least 1, got 0", "batch_size")
        _shot(page, "annotate")
        _cancel(page)

        # 1 and 2: the load form, then the load's result in the App's words
        _open_operator(page, "load face", "faceaudit: load face dataset")
        page.get_by_text("Load face dataset").first.wait_for(timeout=WAIT)
        _field(page, "Path").fill(str(tmp_path / "more"))
        _field(page, "Source name").fill("more-faces")
        page.get_by_text("Domain", exact=True).first.locator("xpath=following::*[@role='combobox'][1]").click()
        page.get_by_role("option", name="real").click()
        _field(page, "Limit").fill("-5")
        _refused(page, "Limit: must be at least 1, got -5", "limit:")
        _field(page, "Limit").fill("")
        page.get_by_text("Limit: must be at least", exact=False).first.wait_for(state="detached", timeout=WAIT)
        page.get_by_text("Run now", exact=True).click()
        page.wait_for_timeout(1500)  # the form's last resolve
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("format detected: 'folders' (sub-folders hold images", exact=False).first.wait_for(timeout=WAIT)
        _shot(page, "load-result")
        assert "--format" not in page.inner_text("body")
        page.get_by_role("button", name="Done").click()
        page.get_by_text(f"{total + 4} samples", exact=True).wait_for(timeout=WAIT)

        # 2 and 5: alpha -1 and bootstrap -3 in the compare form: the labels, not "greater than 0"
        _open_operator(page, "compare attributes", "faceaudit: compare attributes (real vs synthetic KL)")
        page.get_by_text("Compare attributes").first.wait_for(timeout=WAIT)
        _field(page, "Smoothing alpha (pseudo-count per state)").fill("-1")
        _field(page, "Bootstrap resamples (0: none)").fill("-3")
        _refused(page, "Smoothing alpha (pseudo-count per state): must be at least 0, got -1", "alpha:")
        _refused(page, "Bootstrap resamples (0: none): must be at least 0, got -3", "bootstrap:")
        assert page.get_by_text("Value must be greater than 0").count() == 0
        _shot(page, "compare")
        _cancel(page)

        # 5: the flag dialog from the grid's menu: Top K / Threshold are not under the toolbar
        page.locator("[data-item-id$='/flag_synthetic_outliers']").first.click()
        page.get_by_text("Flag synthetic outliers").first.wait_for(timeout=WAIT)
        page.get_by_text("Top K", exact=True).first.wait_for(timeout=WAIT)
        page.wait_for_timeout(1000)
        _shot(page, "flag-from-the-grid")
        for label in ("Top K", "Threshold on realness_nll"):
            assert page.evaluate(ON_TOP_JS, label) is True, page.evaluate(ON_TOP_JS, label)
        _field(page, "K").fill("-5")
        _refused(page, "K: must be at least 1, got -5", "top:")
        _field(page, "K").fill("1")
        page.get_by_text("K: must be at least", exact=False).first.wait_for(state="detached", timeout=WAIT)
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("1 synthetic faces tagged 'outlier'", exact=False).first.wait_for(timeout=WAIT)
        page.get_by_role("button", name="Close").click()
        page.get_by_text("1 sample", exact=True).wait_for(timeout=WAIT)  # its saved view, selected late
        # 5: the new score sits in the faceaudit group, not under PRIMITIVES, without a reload
        groups = {f: page.evaluate(GROUP_OF_JS, f) for f in ("realness_nll", "identity_disagreement")}
        assert all((g or "").lower() == "faceaudit" for g in groups.values()), groups
        # 3: a face in the modal: mac_code is not a 47-letter string in the way
        _set_view(session, ds.view())
        page.get_by_text(f"{total + 4} samples", exact=True).wait_for(timeout=WAIT)
        assert _until(lambda: _modal_open(page), 90), "the modal did not open"
        _shot(page, "modal")
        _check_modal(page)
        page.keyboard.press("Escape")
        page.get_by_text(labels.POSITIVE_FIELD, exact=True).nth(1).wait_for(state="detached", timeout=WAIT)
        # 5: the panel: sort choices are words; Bars show = undefined leaves not-labelled empty
        _open_panel(page)
        page.get_by_text("real-faces (real, 6 labelled)", exact=False).first.wait_for(timeout=WAIT)
        for words in ("KL(real || synth)", "KL(synth || real)", "JS"):
            page.get_by_role("button", name=words, exact=True).first.wait_for(timeout=WAIT)
        assert "kl_real_synth" not in page.inner_text("body")
        _press(page, "undefined", "Bars show: undefined")
        _press(page, "all", "Attributes (top 15 or all): all")
        overview = _wait_plot(page, "per attribute", lambda p: len(p["traces"][0]["customdata"]) == 47)
        _shot(page, "panel-undefined")
        for trace in overview["traces"]:
            values = trace["x"] if trace["orientation"] == "h" else trace["y"]
            drawn = {c[1]: v for c, v in zip(trace["customdata"], values)}
            assert {a for a, v in drawn.items() if v is not None} <= {"Male", "Young", "Middle_Aged", "Senior"}, drawn

    except Exception:
        _shot(page, "failure")
        try:
            page.get_by_text("Error occurred during operator execution").first.click(timeout=2000)
            page.wait_for_timeout(1000)
            print("APPERROR", page.inner_text("body")[-3000:])
        except Exception:
            pass
        raise


def _modal_open(page) -> bool:
    if page.get_by_text(labels.POSITIVE_FIELD, exact=True).count() >= 2:
        return True
    page.mouse.click(420, 250)
    page.wait_for_timeout(3000)
    return False


def _check_modal(page) -> None:
    """The modal's sidebar shows the readable fields and folds the codes away: their group is
    shown, mac_code is not drawn (a folded group keeps its rows in the page, clipped: what a
    user sees is what is on top at the row's centre)."""
    group = page.locator(f"[data-cy='sidebar-group-entry-{labels.CODES_GROUP.upper()}']")
    assert group.locator("visible=true").count() >= 1
    assert page.evaluate(SHOWN_JS, labels.POSITIVE_FIELD) >= 1
    assert page.evaluate(SHOWN_JS, labels.CODE_FIELD) == 0
