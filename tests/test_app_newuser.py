"""The identity audit and curation as a new user meets them in the App (headless Chromium), on a
dataset shaped like the README's demo: real and synthetic sources of real LFW faces with real
dlib embeddings and ONE image per identity (so no genuine pairs). Two things that failed:

- the genuine histogram was an empty chart (no bars, a -100%..100% axis) beside a table of
  "n/a" with no word why; the panel now says that no identity has two images and what that
  leaves n/a;
- embed and export refused at run time (vectors of other settings than the stored ones, a
  folder that holds the view's images) and the App showed nothing: the form closed, no error,
  no result. The refusal now reaches the App in the CLI's words: in the form where it can be
  checked there, else in the App's notification (new-user review B4, C7).

One App serves both tests. Screenshots go to test-artifacts/newuser-*.png."""

from __future__ import annotations

import os
import uuid

import fiftyone as fo
import pytest
from browser import ARTIFACTS, require_chromium, served
from test_app_identity import _open_identity_panel
from test_app_operators import WAIT, _open_app, _open_operator, page  # noqa: F401  (the fixture)

from faceaudit.progress import drive
from fiftyone_plugin import identity as adapter
from fiftyone_plugin import schema
from fiftyone_plugin.embed import iter_embed
from fiftyone_plugin.export import iter_export
from fiftyone_plugin.ingest import load_face_dataset

pytestmark = pytest.mark.browser
IDENTITIES = 4  # per source, one image each, as the demo's


def _shot(page, step: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"newuser-{step}.png"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory, faces):
    """(dataset, its images' folder, the App's URL): two sources of one-image identities,
    embedded with dlib and audited, served by one App for the module."""
    require_chromium()
    root = tmp_path_factory.mktemp("newuser")
    name = f"test-newuser-{uuid.uuid4().hex[:8]}"
    for source, domain, start in (("real-faces", "real", 0), ("synth-faces", "synthetic", 40)):
        faces.identity_tree(root / source, {f"{source}-{k}": 1 for k in range(IDENTITIES)}, start=start)
        load_face_dataset(str(root / source), source=source, domain=domain, dataset_name=name)
    drive(iter_embed(name, model="dlib", device="cpu", batch_size=16, workers=0))
    ds = fo.load_dataset(name)
    adapter.identity_audit(ds, adapter.options(), tag=True, similarity_index=False)
    try:
        with served(ds) as (_session, url):
            yield ds, root, url
    finally:
        fo.delete_dataset(name)


def _refusal(job) -> str:
    """What the core refuses ``job`` with: the words the CLI prints."""
    with pytest.raises(ValueError) as refused:
        drive(job)
    return str(refused.value)


def test_one_image_per_identity_says_why_there_are_no_genuine_scores(demo, page):
    ds, _root, url = demo
    result = schema.get_info(ds, "identity")
    assert {s["genuine"]["count"] for s in result["sources"].values()} == {0}
    assert all(s["impostor"]["count"] == IDENTITIES * (IDENTITIES - 1) // 2 for s in result["sources"].values())
    try:
        _open_app(page, url, ds.count())
        _open_identity_panel(page)
        page.get_by_text("Metrics per source").wait_for(timeout=WAIT)
        page.get_by_text("impostor (non-mated) scores per source").first.wait_for(timeout=WAIT)  # drawn
        page.get_by_text("No genuine (mated) scores", exact=False).first.wait_for(timeout=WAIT)
        text = page.inner_text("body")
        assert "real-faces, synth-faces: no identity has two embedded images" in text, text[-3000:]
        assert "EER, FNMR, d', FDR and W1 genuine vs real are n/a" in text
        assert page.get_by_text("genuine (mated) scores per source").count() == 0  # no empty chart
        # new-user review C4: no image can be an outlier: no button that would show an empty grid
        page.get_by_text("0 tagged identity_outlier (below the threshold): nothing to show").wait_for(timeout=WAIT)
        assert page.get_by_role("button", name="Show the identity outliers").count() == 0
        _shot(page, "no-genuine")
    except Exception:
        _shot(page, "no-genuine-failure")
        raise


def _toast(page, message: str) -> None:
    """``message`` is shown in the App's notification itself, as a plain operator's refusal is
    (new-user review B4: a generator operator's showed "Operation failed: <operator>" only, its
    words at the end of a folded traceback)."""
    page.get_by_text(message, exact=False).first.wait_for(timeout=WAIT)
    assert page.get_by_text("Operation failed:", exact=False).count() == 0
    assert page.get_by_text("Error occurred during operator execution").count() == 0


def _field(page, label: str):
    return page.get_by_text(label, exact=True).first.locator("xpath=following::input[1]")


def test_embed_and_export_refusals_at_run_time_reach_the_app(demo, page, tmp_path):
    """Refusals the form can check are shown in the form (Execute disabled), the rest in the
    App's notification, in the CLI's words with the form's names for its options. B4: another
    model over dlib's vectors is refused on the form's new Overwrite box; ticked, a model file
    that does not load is refused at run time. C7: an unknown tag to leave out and a non-empty
    folder are refused in the export form; a folder that holds the view's images at run time."""
    ds, root, url = demo
    backbone = tmp_path / "backbone.pth"
    backbone.write_bytes(b"not a model")  # passes the form's check (a file); the run refuses
    settings_refusal = _refusal(iter_embed(ds.name, model="iresnet", checkpoint=str(backbone), device="cpu"))
    assert "other settings" in settings_refusal and settings_refusal.endswith(
        "or --overwrite to embed every sample again")  # the stored vectors are dlib's
    embed_refusal = _refusal(iter_embed(ds.name, model="iresnet", checkpoint=str(backbone), device="cpu",
                                        overwrite=True))
    assert "not a torch checkpoint" in embed_refusal
    export_refusal = _refusal(iter_export(ds.view(), str(root)))
    assert "never exports into" in export_refusal  # root holds both sources' folders
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "notes.txt").write_text("mine")
    folder_refusal = _refusal(iter_export(ds.view(), str(nonempty)))
    tag_refusal = _refusal(iter_export(ds.view(), str(tmp_path / "new"), exclude_tags=["nosuchtag"]))
    try:
        _open_app(page, url, ds.count())
        _open_operator(page, "face embeddings", "faceaudit: compute face embeddings")
        page.get_by_text("Compute face embeddings").first.wait_for(timeout=WAIT)
        page.get_by_text("IResNet", exact=True).click()
        _field(page, "Model file").fill(str(backbone))
        page.get_by_text("Run now", exact=True).click()
        inline = settings_refusal.replace("--overwrite", 'tick "Overwrite"')
        page.get_by_text(inline, exact=False).first.wait_for(timeout=WAIT)
        execute = page.get_by_role("button", name="Execute")
        assert execute.is_disabled()
        _shot(page, "embed-other-settings")
        page.get_by_text("Overwrite", exact=True).click()
        page.get_by_text(inline, exact=False).first.wait_for(state="detached", timeout=WAIT)
        page.wait_for_timeout(1500)  # the form's last resolve
        execute.click()
        _toast(page, f"embed failed: {embed_refusal}")
        _shot(page, "embed-refused")
        assert schema.get_info(ds, "embedding")["model"] == "dlib"
        assert ds.exists("face_embedding").count() == ds.count()  # nothing dropped

        _open_app(page, url, ds.count())
        _open_operator(page, "export training", "faceaudit: export training set")
        page.get_by_text("Export training set").first.wait_for(timeout=WAIT)
        _field(page, "Folder").fill(str(nonempty))
        page.get_by_text("Folder: " + folder_refusal.replace("pass --overwrite",
                                                             'tick "Empty a non-empty folder first"'),
                         exact=False).first.wait_for(timeout=WAIT)
        assert page.get_by_role("button", name="Execute").is_disabled()
        _shot(page, "export-nonempty")
        _field(page, "Folder").fill(str(tmp_path / "new"))
        page.get_by_text(folder_refusal[:40], exact=False).first.wait_for(state="detached", timeout=WAIT)
        tags = _field(page, "Leave out samples tagged")
        tags.fill("nosuchtag")
        tags.press("Enter")
        page.get_by_text(tag_refusal, exact=False).first.wait_for(timeout=WAIT)
        assert page.get_by_role("button", name="Execute").is_disabled()
        _shot(page, "export-unknown-tag")

        _open_app(page, url, ds.count())
        _open_operator(page, "export training", "faceaudit: export training set")
        page.get_by_text("Export training set").first.wait_for(timeout=WAIT)
        _field(page, "Folder").fill(str(root))  # not empty: ticked, the run refuses it for its images
        page.get_by_text("Empty a non-empty folder first", exact=True).click()
        page.get_by_text("Run now", exact=True).click()
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Execute").click()
        _toast(page, f"export failed: {export_refusal}")
        _shot(page, "export-refused")
        assert not (root / "manifest.json").exists() and not (tmp_path / "new").exists()
        assert all(os.path.isfile(p) for p in ds.values("filepath"))  # the refusal came before emptying
        assert sorted(p.name for p in nonempty.iterdir()) == ["notes.txt"]
    except Exception:
        _shot(page, "refused-failure")
        raise
