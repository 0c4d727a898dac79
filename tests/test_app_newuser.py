"""The identity audit and curation as a new user meets them in the App (headless Chromium), on a
dataset shaped like the README's demo: real and synthetic sources of real LFW faces with real
dlib embeddings and ONE image per identity (so no genuine pairs). Two things that failed:

- the genuine histogram was an empty chart (no bars, a -100%..100% axis) beside a table of
  "n/a" with no word why; the panel now says that no identity has two images and what that
  leaves n/a;
- embed and export refused at run time (vectors of other settings than the stored ones, a
  folder that holds the view's images) and the App showed nothing: the form closed, no error,
  no result. The refusal now reaches the App's error display in the CLI's words.

One App serves both tests. Screenshots go to test-artifacts/newuser-*.png."""

from __future__ import annotations

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


def _shown(page, message: str) -> None:
    """``message`` reaches the user: in the App's error display (its details) or a notification."""
    error = page.get_by_text("Error occurred during operator execution").first
    words = page.get_by_text(message, exact=False).first
    error.or_(words).wait_for(timeout=WAIT)
    if error.is_visible():
        error.click()  # its details
    words.wait_for(timeout=WAIT)


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
        _shot(page, "no-genuine")
    except Exception:
        _shot(page, "no-genuine-failure")
        raise


def test_embed_and_export_refusals_at_run_time_reach_the_app(demo, page, tmp_path):
    ds, root, url = demo
    backbone = tmp_path / "backbone.pth"
    backbone.write_bytes(b"not a model")  # passes the form's check (a file); the run refuses
    embed_refusal = _refusal(iter_embed(ds.name, model="iresnet", checkpoint=str(backbone), device="cpu"))
    assert "other settings" in embed_refusal  # the stored vectors are dlib's
    export_refusal = _refusal(iter_export(ds.view(), str(root)))
    assert "never exports into" in export_refusal  # root holds both sources' folders
    try:
        _open_app(page, url, ds.count())
        _open_operator(page, "face embeddings", "faceaudit: compute face embeddings")
        page.get_by_text("Compute face embeddings").first.wait_for(timeout=WAIT)
        page.get_by_text("IResNet", exact=True).click()
        page.get_by_text("Model file", exact=True).first.locator("xpath=following::input[1]").fill(str(backbone))
        page.get_by_text("Run now", exact=True).click()
        page.wait_for_timeout(1500)  # the form's last resolve
        page.get_by_role("button", name="Execute").click()
        _shown(page, embed_refusal)
        _shot(page, "embed-refused")
        assert schema.get_info(ds, "embedding")["model"] == "dlib"

        _open_app(page, url, ds.count())
        _open_operator(page, "export training", "faceaudit: export training set")
        page.get_by_text("Export training set").first.wait_for(timeout=WAIT)
        page.get_by_text("Folder", exact=True).first.locator("xpath=following::input[1]").fill(str(root))
        page.get_by_text("Run now", exact=True).click()
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Execute").click()
        _shown(page, export_refusal)
        _shot(page, "export-refused")
        assert not (root / "manifest.json").exists()
    except Exception:
        _shot(page, "refused-failure")
        raise
