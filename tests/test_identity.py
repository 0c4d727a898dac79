"""The identity audit on real faces (scikit-image's LFW crops) with real dlib embeddings.

Identities are one face and its augmented copies (flip, darker, a tighter crop); planted: a
synthetic identity made of a real identity's face (a leak), two synthetic identities of one face
(a collision), and one image of another person inside a synthetic identity (a wrong face).
Every statistic is checked against a reference computed here from the stored embeddings with
every pair (numpy, sklearn's roc_curve)."""

from __future__ import annotations

import importlib.util
import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image

import fiftyone as fo
from faceaudit import identity as core
from fiftyone_plugin import identity as adapter
from fiftyone_plugin import schema
from fiftyone_plugin.ingest import load_face_dataset

THRESHOLD = 0.95  # on these 112 px LFW crops different people reach ~0.94 (docs/identity.md)
DISTINCT = 0.90  # faces used as different people are below this with each other


class Dlib:
    """dlib's ResNet: the whole image as the face box, 5-point alignment, 150 px chip, normalised."""

    def __init__(self):
        import dlib

        folder = os.path.join(os.path.dirname(importlib.util.find_spec("face_recognition_models").origin), "models")
        self.dlib = dlib
        self.shape = dlib.shape_predictor(os.path.join(folder, "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(os.path.join(folder, "dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        shape = self.shape(image, self.dlib.rectangle(0, 0, w - 1, h - 1))
        v = np.array(self.net.compute_face_descriptor(self.dlib.get_face_chip(image, shape, 150)))
        return (v / np.linalg.norm(v)).astype(np.float32)


def augment(image: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return np.ascontiguousarray(image[:, ::-1])
    if k == 2:
        return np.clip(image.astype(float) * 0.85, 0, 255).astype(np.uint8)
    if k == 3:
        return np.asarray(Image.fromarray(image[4:-4, 4:-4]).resize(image.shape[:2][::-1]))
    return image


@pytest.fixture(scope="module")
def world(tmp_path_factory, faces):
    """Sources real (12 identities x 4: 1056 impostor pairs), synth (6 + the planted ones) and flatgan (no identities)."""
    net = Dlib()
    root = tmp_path_factory.mktemp("identity")
    # faces that are different people by a margin (the LFW subset repeats a few people)
    base, chosen = {}, []
    for i, face in enumerate(faces.arrays):
        base[i] = net(face)
        if all(float(base[i] @ base[j]) < DISTINCT for j in chosen):
            chosen.append(i)
        if len(chosen) == 22:
            break
    assert len(chosen) == 22, len(chosen)
    real_faces, synth_faces, wrong, flat_faces = chosen[:12], chosen[12:18], chosen[18], chosen[19:22]
    plan = {"real": {f"r{k}": [(f, a) for a in range(4)] for k, f in enumerate(real_faces)},
            "synth": {f"s{k}": [(f, a) for a in range(4)] for k, f in enumerate(synth_faces[:4])}}
    plan["synth"]["s_leak"] = [(real_faces[0], a) for a in (1, 2, 3)]  # a real person's face
    plan["synth"]["s_c1"] = [(synth_faces[4], a) for a in (0, 1)]  # one face, two identities
    plan["synth"]["s_c2"] = [(synth_faces[4], a) for a in (2, 3)]
    plan["synth"]["s_wrong"] = [(synth_faces[5], a) for a in range(4)] + [(wrong, 0)]  # one intruder
    name = f"test-identity-{uuid.uuid4().hex[:8]}"
    for source, layout in plan.items():
        for identity, images in layout.items():
            for n, (f, a) in enumerate(images):
                path = root / source / identity / f"{n:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(augment(faces.arrays[f], a)).save(path)
        load_face_dataset(str(root / source), source=source, domain="real" if source == "real" else "synthetic",
                          dataset_name=name)
    for k, f in enumerate(flat_faces):
        path = root / "flat" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(faces.arrays[f]).save(path)
    load_face_dataset(str(root / "flat"), source="flatgan", domain="synthetic", dataset_name=name)
    ds = fo.load_dataset(name)
    paths = ds.values("filepath")
    ds.set_values(adapter.EMBEDDING_FIELD, [net(np.asarray(Image.open(p).convert("RGB"))) for p in paths])
    schema.set_info(ds, "embedding", {"model": "dlib", "checkpoint": None, "dim": 128, "threshold": 0.9,
                                      "preprocessing": "whole image as the face box, 5-point alignment, 150 px chip"})
    wrong_path = str(root / "synth" / "s_wrong" / "04.png")
    yield name, wrong_path, root
    fo.delete_dataset(name)


def reference(ds, source):
    """Every genuine and impostor score of ``source`` from the stored embeddings."""
    view = ds.match({schema.SOURCE: source})
    x = np.stack(view.values(adapter.EMBEDDING_FIELD)).astype(np.float64)
    labels = np.array(view.values(schema.IDENTITY))
    s = x @ x.T
    i, j = np.triu_indices(len(x), 1)
    same = labels[i] == labels[j]
    return x, labels, s[i, j][same], s[i, j][~same]


def run_cli(argv, capsys):
    from cli.main import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def audited(world, tmp_path_factory):
    name, _, root = world
    from cli.main import main

    out = tmp_path_factory.mktemp("identity-out")
    assert main(["identity", "--dataset", name, "--threshold", str(THRESHOLD), "--tag",
                 "--json", str(out / "id.json"), "--html", str(out / "id.html"), "--csv", str(out / "id.csv")]) == 0
    return json.loads((out / "id.json").read_text()), out


def test_metrics_equal_every_pair_reference(world, audited):
    from sklearn.metrics import roc_curve

    name, _, _ = world
    result, _ = audited
    ds = fo.load_dataset(name)
    assert result["threshold"] == THRESHOLD and result["threshold_rule"].startswith("given")
    assert result["model"] == "dlib"
    for source in ("real", "synth"):
        r = result["sources"][source]
        x, labels, gen, imp = reference(ds, source)
        assert r["identities"] == len(set(labels)) and r["samples"] == len(x)
        assert r["genuine"]["count"] == len(gen) and r["impostor"]["count"] == len(imp)
        assert r["impostor"]["sampling"].startswith("every pair")
        for got, ref in ((r["genuine"], gen), (r["impostor"], imp)):
            assert got["mean"] == pytest.approx(ref.mean(), abs=1e-6)
            assert got["std"] == pytest.approx(ref.std(), abs=1e-6)  # population std
        d = abs(gen.mean() - imp.mean()) / np.sqrt((gen.var() + imp.var()) / 2)
        assert r["d_prime"] == pytest.approx(d, rel=1e-5)
        assert r["fdr"] == pytest.approx((gen.mean() - imp.mean()) ** 2 / (gen.var() + imp.var()), rel=1e-5)
        # EER: sklearn's ROC on every pair; ours is read on a grid of step 0.001
        fpr, tpr, th = roc_curve(np.r_[np.ones(len(gen)), np.zeros(len(imp))], np.r_[gen, imp])
        k = int(np.argmin(np.abs(fpr - (1 - tpr))))
        t = r["eer_threshold"]
        fmr_at = [float((imp >= u).mean()) for u in (t - core.GRID_STEP, t + core.GRID_STEP)]
        fnmr_at = [float((gen < u).mean()) for u in (t - core.GRID_STEP, t + core.GRID_STEP)]
        lo, hi = min(fmr_at + fnmr_at), max(fmr_at + fnmr_at)
        assert lo - 1e-9 <= r["eer"] <= hi + 1e-9
        assert min(fpr[k], 1 - tpr[k]) - (hi - lo) - 1e-9 <= r["eer"] <= max(fpr[k], 1 - tpr[k]) + (hi - lo) + 1e-9
        # FNMR at FMR 1e-2 where the impostor count allows (>= 1000 pairs), null with a reason otherwise
        if len(imp) >= 1000:
            edge = core.EDGES[np.argmax([(imp >= e).mean() <= 1e-2 for e in core.EDGES])]
            assert r["fnmr_at_fmr"]["1e-2"] == pytest.approx(float((gen < edge).mean()))
        assert r["fnmr_at_fmr"]["1e-4"] is None and "needs at least 100000" in r["fnmr_at_fmr_null_reason"]["1e-4"]
        # centres, consistency, uniqueness (greedy in identity order), packing
        ids = sorted(set(labels))
        centres = np.stack([x[labels == i].mean(0) for i in ids])
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        own = np.einsum("ij,ij->i", x, centres[[ids.index(v) for v in labels]])
        several = np.array([np.sum(labels == v) >= 2 for v in labels])  # an image alone is its own centre
        assert r["consistency"] == pytest.approx(float((own[several] >= THRESHOLD).mean()))
        kept = []
        for c in range(len(ids)):
            if all(centres[c] @ centres[k2] < THRESHOLD for k2 in kept):
                kept.append(c)
        assert r["uniqueness"] == pytest.approx(len(kept) / len(ids))
        cs = centres @ centres.T
        np.fill_diagonal(cs, -np.inf)
        assert r["packing"]["max"] == pytest.approx(float(cs.max()), abs=1e-5)
        assert r["collision_pairs"] == int((np.triu(cs, 1) >= THRESHOLD).sum())
        # per sample: identity_similarity to the centre of the identity's other images
        view = ds.match({schema.SOURCE: source})
        stored = np.array(view.values(adapter.SIMILARITY_FIELD), dtype=float)
        for n in range(len(x)):
            others = x[(labels == labels[n]) & (np.arange(len(x)) != n)].sum(0)
            assert stored[n] == pytest.approx(float(x[n] @ others / np.linalg.norm(others)), abs=1e-5)
    # leakage: nearest real centre of every synthetic image, and the identity-level share
    real_x, real_labels, _, _ = reference(ds, "real")
    real_ids = sorted(set(real_labels))
    real_c = np.stack([real_x[real_labels == i].mean(0) for i in real_ids])
    real_c /= np.linalg.norm(real_c, axis=1, keepdims=True)
    for source in ("synth", "flatgan"):
        view = ds.match({schema.SOURCE: source})
        x = np.stack(view.values(adapter.EMBEDDING_FIELD)).astype(np.float64)
        stored = np.array(view.values(adapter.NEAREST_REAL_FIELD), dtype=float)
        np.testing.assert_allclose(stored, (x @ real_c.T).max(1), atol=1e-5)
        assert result["leakage"][source]["sample_share_above_threshold"] == pytest.approx(
            float(((x @ real_c.T).max(1) >= THRESHOLD).mean()))
    assert result["sources"]["flatgan"]["applicable"] is False
    # the real source has no vs_real, the synthetic one has both distances, computed from its scores
    vs = result["sources"]["synth"]["vs_real"]
    _, _, gen_s, _ = reference(ds, "synth")
    _, _, gen_r, _ = reference(ds, "real")
    from scipy.stats import wasserstein_distance

    assert vs["genuine"]["wasserstein"] == pytest.approx(wasserstein_distance(gen_s, gen_r), abs=2 * core.GRID_STEP)
    assert vs["impostor"]["kl"] >= 0


def test_planted_leak_collision_and_wrong_face_come_first(world, audited):
    name, wrong_path, _ = world
    result, _ = audited
    leak = result["leakage"]["synth"]
    assert leak["top"][0]["identity"] == "s_leak" and leak["top"][0]["real_identity"] == "r0"
    assert leak["top"][0]["similarity"] >= THRESHOLD > leak["top"][1]["similarity"]
    assert leak["share_above_threshold"] == pytest.approx(1 / result["sources"]["synth"]["identities"])
    collisions = result["sources"]["synth"]["collisions"]
    assert {collisions[0]["identity_a"], collisions[0]["identity_b"]} == {"s_c1", "s_c2"}
    assert result["sources"]["real"]["collisions"] == []
    ds = fo.load_dataset(name)
    worst = result["sources"]["synth"]["outliers"][0]
    assert ds[worst["sample"]].filepath == wrong_path
    lowest = ds.match({schema.SOURCE: "synth"}).sort_by(adapter.SIMILARITY_FIELD).first()
    assert lowest.filepath == wrong_path
    # tags and saved views
    leaked = ds.match_tags(adapter.LEAK_TAG)
    assert set(leaked.values(schema.IDENTITY)) == {"s_leak"} and set(leaked.values(schema.DOMAIN)) == {"synthetic"}
    assert set(ds.match_tags(adapter.COLLISION_TAG).values(schema.IDENTITY)) == {"s_c1", "s_c2"}
    outliers = ds.load_saved_view(adapter.VIEWS[adapter.OUTLIER_TAG])
    assert outliers.first().filepath == wrong_path
    assert result["tagged"][adapter.LEAK_TAG] == 3 and result["tagged"][adapter.COLLISION_TAG] == 4
    # the Brain similarity index: the App's sort by similarity finds the leak's real face
    assert adapter.BRAIN_KEY in ds.list_brain_runs()
    leak_sample = ds.match({schema.IDENTITY: "s_leak"}).first()
    near = ds.sort_by_similarity(leak_sample.id, k=5, brain_key=adapter.BRAIN_KEY)
    assert "r0" in near.values(schema.IDENTITY)
    # the Embeddings panel's map: every embedded sample, the 2-D projection of the stored vectors
    assert result["visualization"] == {"brain_key": adapter.VISUALIZATION_KEY, "method": adapter.visualization_method(
        ds.exists(adapter.EMBEDDING_FIELD).count())}
    viz = ds.load_brain_results(adapter.VISUALIZATION_KEY)
    mapped = ds.select(viz.current_sample_ids, ordered=True)
    assert len(viz.current_sample_ids) == ds.exists(adapter.EMBEDDING_FIELD).count()
    if result["visualization"]["method"] == "pca":  # reference: numpy's SVD of the centred vectors
        x = np.stack(mapped.values(adapter.EMBEDDING_FIELD)).astype(np.float64)
        x -= x.mean(0)
        expected = x @ np.linalg.svd(x, full_matrices=False)[2][:2].T
        got = np.asarray(viz.current_points, dtype=np.float64)
        assert np.allclose(np.abs(got), np.abs(expected), atol=1e-3)  # each axis up to its sign
    assert schema.get_info(ds, "identity")["sources"]["synth"]["collisions"][0]["similarity"] == collisions[0]["similarity"]


def test_reports_show_the_identity_audit(world, audited):
    result, out = audited
    page = (out / "id.html").read_text()
    for anchor in ('id="identity-metrics"', 'id="identity-leakage"', 'id="identity-collisions"', "s_leak", "s_c1",
                   "genuine (mated) scores per source"):
        assert anchor in page
    rows = (out / "id.csv").read_text().splitlines()
    assert rows[0] == "source,metric,value" and any(r.startswith("synth,EER,") for r in rows)
    # the leakage line in counts (it read "1 of its identities" for a share of 1.0), from the vectors
    ds = fo.load_dataset(world[0])
    real, synth = (_centres(ds, s) for s in ("real", "synth"))
    leaking = int(((synth @ real.T).max(axis=1) >= THRESHOLD).sum())
    assert f"{leaking} of {len(synth)} ({leaking / len(synth):.1%}) identities" in page
    from faceaudit.report import identity_audit_section

    assert 'id="identity-audit"' in identity_audit_section({"identity": result})


def _snapshot(ds):
    ds.reload()
    docs = list(ds._sample_collection.find({}, {"tags": 1, adapter.SIMILARITY_FIELD: 1, adapter.NEAREST_REAL_FIELD: 1}).sort("_id"))
    return docs, json.dumps(schema.get_info(ds, "identity"), sort_keys=True, default=str), ds.list_saved_views()


@pytest.mark.parametrize("argv, message", [
    (["--threshold", "1.5"], "threshold: must be at most 1"),
    (["--threshold", "nan"], "threshold: must be a finite number"),
    (["--threshold", "-1.0000001"], "threshold: must be at least -1, got -1.0000001"),  # was "got -1"
    (["--fmr", "0"], "fmr: must be between 0 and 1"),
    (["--fmr", "1"], "fmr: must be between 0 and 1"),
    (["--fmr", "1e-6"], "fmr: the real sources have"),
    (["--fmr", "5e-324"], "fmr: must be at least"),  # 10 / FMR overflowed: a traceback
    (["--fmr", "1e-300"], "fmr: must be at least"),  # a 300-digit pair count in the message
    (["--max-pairs", "5"], "--max-pairs: must be at least 100"),
    (["--seed", "-1"], "seed: must be at least 0"),
])
def test_bad_arguments_refused_before_anything_is_written(world, audited, capsys, argv, message):
    name, _, _ = world
    ds = fo.load_dataset(name)
    before = _snapshot(ds)
    code, out, err = run_cli(["identity", "--dataset", name, *argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(ds) == before


def test_dataset_without_embeddings_refused(faces, tmp_path, dataset_name, capsys):
    faces.identity_tree(tmp_path / "r", {"a": 2, "b": 2})
    load_face_dataset(str(tmp_path / "r"), source="r", domain="real", dataset_name=dataset_name)
    code, _, err = run_cli(["identity", "--dataset", dataset_name, "--threshold", "0.5"], capsys)
    assert code == 2 and "has no face_embedding" in err and len(err.strip().splitlines()) == 1
    ds = fo.load_dataset(dataset_name)
    assert adapter.SIMILARITY_FIELD not in ds.get_field_schema() and schema.get_info(ds, "identity") is None


def test_reviewed_keep_is_never_an_outlier_and_clear_removes_tags(world, audited):
    name, wrong_path, _ = world
    ds = fo.load_dataset(name)
    wrong = ds.match({"filepath": wrong_path}).first()
    wrong.tags.append(adapter.KEEP_TAG)
    wrong.save()
    try:
        adapter.identity_audit(ds, adapter.options(threshold=THRESHOLD), tag=True, similarity_index=False)
        assert wrong_path not in ds.match_tags(adapter.OUTLIER_TAG).values("filepath")
    finally:
        wrong.tags.remove(adapter.KEEP_TAG)
        wrong.save()
    assert adapter.clear_tags(ds) > 0
    assert not ds.match_tags(list(adapter.TAGS)).count()
    assert not any(v in ds.list_saved_views() for v in adapter.VIEWS.values())


def test_a_rerun_overwrites_in_place_and_clears_what_it_no_longer_computes(world, audited):
    """The audit rewrites each sample's values in place (no unset-everything pass first): a
    sample whose vector is gone loses its values, a real sample loses a stale nearest-real value,
    the rest equal the first run's, and both fields stay indexed for the sidebar."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        fields = (adapter.SIMILARITY_FIELD, adapter.NEAREST_REAL_FIELD)
        before = {f: ds.values(f) for f in fields}
        gone = ds.match({schema.SOURCE: "synth", adapter.SIMILARITY_FIELD: {"$ne": None}}).first()
        real = ds.match({schema.SOURCE: "real"}).first()
        gone[adapter.EMBEDDING_FIELD] = None
        gone.save()
        real[adapter.NEAREST_REAL_FIELD] = 0.5  # as if the source had been synthetic last time
        real.save()
        adapter.identity_audit(ds, adapter.options(threshold=THRESHOLD), similarity_index=False)
        gone.reload()
        real.reload()
        assert gone[adapter.SIMILARITY_FIELD] is None and gone[adapter.NEAREST_REAL_FIELD] is None
        assert real[adapter.NEAREST_REAL_FIELD] is None and real[adapter.SIMILARITY_FIELD] is not None
        ids = ds.values("id")
        after = {f: ds.values(f) for f in fields}
        changed = {i for f in fields for i, a, b in zip(ids, before[f], after[f]) if a != b}
        assert gone.id in changed and len(changed - {gone.id}) <= 4  # the intruder's identity mates move
        indexed = {tuple(spec["key"]) for spec in ds._sample_collection.list_indexes()}
        assert {(f,) for f in fields} <= indexed
    finally:
        ds.delete()


def test_default_and_fmr_rules(world):
    name, _, _ = world
    ds = fo.load_dataset(name)
    result = adapter.identity_audit(ds, adapter.options(), similarity_index=False)
    assert result["threshold"] == core.MODEL_THRESHOLDS["dlib"][0] and "dlib" in result["threshold_rule"]
    result = adapter.identity_audit(ds, adapter.options(fmr=0.01), similarity_index=False)
    _, _, _, imp = reference(ds, "real")
    t = result["threshold"]
    assert (imp >= t).mean() <= 0.01 < (imp >= t - core.GRID_STEP).mean()
    assert result["threshold_rule"].startswith("FMR 0.01")
    assert result["sources"]["real"]["impostor"]["count"] == len(imp) >= 1000


def test_sampled_impostors_are_seeded_uniform_and_sized(world):
    """Above --max-pairs: exactly max_pairs scores, the same for the same seed, and their mean
    within a few standard errors of the every-pair mean."""
    name, _, _ = world
    ds = fo.load_dataset(name)
    found = adapter.plans(ds)
    runs = []
    for seed in (1, 1, 2):
        audit, order = core.ordered_audit(found, core.audit_options(threshold=THRESHOLD, max_pairs_=150, seed=seed))
        for source in order:
            list(audit.feed(source, adapter.read_source(ds, source, batch=7)))
        runs.append(audit.finish().result["sources"]["real"]["impostor"])
    assert runs[0]["count"] == 150 and runs[0]["sampling"].startswith("seeded uniform sample")
    assert runs[0] == runs[1] and runs[0]["mean"] != runs[2]["mean"]
    _, _, _, imp = reference(ds, "real")
    assert abs(runs[0]["mean"] - imp.mean()) < 5 * imp.std() / np.sqrt(150)


def test_operator(world):
    import fiftyone.operators as foo

    name, _, _ = world
    ds = fo.load_dataset(name)
    result = foo.execute_operator("@faceaudit/face-audit/compute_identity_audit",
                                  ctx={"dataset": ds, "params": {"rule": "threshold", "threshold": THRESHOLD,
                                                                 "max_pairs": 1000, "tag": True, "delegate": False}})
    assert result.error is None, result.error
    assert result.result["tagged"][adapter.LEAK_TAG] == 3
    assert result.result["leakage"]["synth"] == pytest.approx(1 / 8)
    from fiftyone.operators.executor import ExecutionError

    before = _snapshot(ds)
    with pytest.raises(ExecutionError, match="threshold: must be at most 1"):
        foo.execute_operator("@faceaudit/face-audit/compute_identity_audit",
                             ctx={"dataset": ds, "params": {"rule": "threshold", "threshold": 2.0}})
    assert _snapshot(ds) == before
    cleared = foo.execute_operator("@faceaudit/face-audit/compute_identity_audit",
                                   ctx={"dataset": ds, "params": {"rule": "clear"}})
    assert cleared.result["cleared"] > 0


def _identity_form(ds, p: dict) -> dict:
    from fiftyone.operators.executor import ExecutionContext
    from fiftyone.operators.registry import OperatorRegistry

    ctx = ExecutionContext(request_params={"dataset_name": ds.name, "params": p})
    return OperatorRegistry().get_operator("@faceaudit/face-audit/compute_identity_audit").resolve_input(ctx).type


def test_the_operator_form_as_a_new_user_reads_it(world):
    """New-user review C6: clearing is an action of its own, not a threshold rule; the default
    rule names the stored model's threshold; the cosine field starts at it; the similarity index
    can be left out. C5: no CLI option in the App's words (the FMR refusal is the form's, the
    result's rule has no "(--threshold)"). C8: the result says which view the grid now shows."""
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    name, _, _ = world
    ds = fo.load_dataset(name)
    form = _identity_form(ds, {})
    assert form.properties["action"].type.values == ["audit", "clear"]
    assert form.properties["rule"].type.values == ["default", "threshold", "fmr"]
    default = form.properties["rule"].view.choices[0]
    assert default.description == f"{core.MODEL_THRESHOLDS['dlib'][0]:g} for dlib"
    assert form.properties["similarity_index"].default is True
    assert _identity_form(ds, {"rule": "threshold"}).properties["threshold"].default == core.MODEL_THRESHOLDS["dlib"][0]
    assert list(_identity_form(ds, {"action": "clear"}).properties) == ["action"]

    fields = _identity_form(ds, {"rule": "fmr", "fmr": 1e-6}).properties
    assert fields["fmr"].invalid and [k for k, v in fields.items() if v.invalid] == ["fmr"]
    with pytest.raises(core.IdentityError) as refused:  # what `faceaudit identity --fmr 1e-6` says
        adapter.check_audit(ds, adapter.options(fmr=1e-6))
    assert "needs at least 10,000,000" in str(refused.value)
    words = str(refused.value).replace("--max-pairs", '"Impostor pairs per source"').replace(
        "give --threshold", 'give "A cosine threshold"')
    assert fields["fmr"].error_message == words and "--" not in words
    before = _snapshot(ds)
    with pytest.raises(ExecutionError, match="Validation error"):
        foo.execute_operator("@faceaudit/face-audit/compute_identity_audit",
                             ctx={"dataset": ds, "params": {"rule": "fmr", "fmr": 1e-6, "delegate": "false"}})
    assert _snapshot(ds) == before

    result = foo.execute_operator("@faceaudit/face-audit/compute_identity_audit", ctx={"dataset": ds, "params": {
        "rule": "threshold", "threshold": THRESHOLD, "max_pairs": 1000, "tag": True, "similarity_index": False,
        "delegate": "false"}})
    message = result.result["message"]
    assert message.startswith(f"threshold {THRESHOLD:.4g} (given") and "--" not in message, message
    assert "((" not in message and "))" not in message, message
    assert message.endswith(". The grid now shows the saved view identity_leaks; choose another in the "
                            "saved-view menu above the grid, or clear it there for the whole dataset")
    cleared = foo.execute_operator("@faceaudit/face-audit/compute_identity_audit",
                                   ctx={"dataset": ds, "params": {"action": "clear"}})
    assert cleared.result["cleared"] > 0 and not ds.match_tags(list(adapter.TAGS)).count()


@pytest.mark.parametrize("bad, problem", [
    (np.ones(64, np.float32) / 8, "has 64 components but dataset.info's embedding (dlib) says 128"),
    (np.full(128, np.nan, np.float32), "not finite"),
    (np.r_[np.full(127, 0.0), np.inf].astype(np.float32), "not finite"),
    (np.zeros(128, np.float32), "zero vector"),
])
def test_a_hostile_stored_vector_is_refused_in_one_line(world, audited, capsys, bad, problem):
    """A vector written by hand (``set_values``) with another dimension, NaN / inf components or
    no length: one line naming the sample and the problem (before: a numpy traceback, or NaN
    statistics stored in dataset.info), and the first source's bad vector stops the audit before
    its values, the result in dataset.info, the tags or the views change."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        victim = ds.match({schema.SOURCE: "real"}).first()
        victim[adapter.EMBEDDING_FIELD] = bad
        victim.save()
        before = _snapshot(ds)
        code, out, err = run_cli(["identity", "--dataset", ds.name, "--threshold", str(THRESHOLD), "--tag"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert problem in err and victim.id in err and adapter.EMBEDDING_FIELD in err, err
        assert _snapshot(ds) == before
    finally:
        ds.delete()


def test_vectors_of_another_dimension_than_recorded_are_refused(world, audited, capsys):
    """Every vector 64-d while dataset.info's embedding says 128 (vectors of another model written
    over the field): refused, naming both."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        ds.set_values(adapter.EMBEDDING_FIELD, [np.ones(64, np.float32) / 8] * len(ds))
        before = _snapshot(ds)
        code, out, err = run_cli(["identity", "--dataset", ds.name, "--threshold", str(THRESHOLD)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "64" in err and "128" in err and "dataset.info" in err, err
        assert _snapshot(ds) == before
    finally:
        ds.delete()


def test_vectors_that_are_not_unit_length_are_normalised(world, audited):
    """The audit's scores are cosines: a vector stored at 10x its length (before: a genuine mean
    of -1.96, cosines outside [-1, 1]) gives the same result as the unit one."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        opts = adapter.options(threshold=THRESHOLD)
        first = adapter.identity_audit(ds, opts, similarity_index=False)
        for sample in ds.match({schema.SOURCE: {"$in": ["real", "synth"]}}).limit(5):
            sample[adapter.EMBEDDING_FIELD] = sample[adapter.EMBEDDING_FIELD].astype(np.float32) * 10
            sample.save()
        second = adapter.identity_audit(ds, opts, similarity_index=False)
        for source in ("real", "synth"):
            a, b = first["sources"][source], second["sources"][source]
            for kind in ("genuine", "impostor"):
                assert b[kind]["mean"] == pytest.approx(a[kind]["mean"], abs=1e-3)
            assert b["eer"] == pytest.approx(a["eer"], abs=1e-3) and b["uniqueness"] == a["uniqueness"]
        sims = np.array(ds.values(adapter.SIMILARITY_FIELD), dtype=float)
        assert np.nanmax(np.abs(sims)) <= 1 + 1e-3
    finally:
        ds.delete()


def test_a_second_audit_while_one_runs_is_refused(world, audited, capsys):
    """Two audits at once left one run's result in dataset.info and the other's tags on the
    samples (seen: `identity --tag --threshold 0.3` and, a second later, `--threshold 0.6
    --no-similarity-index`: info said 0.3 with 84 leaks tagged, the samples held 0.6's tags). While
    an audit holds the dataset, a second one, --clear and an embed run are refused in one line and
    change nothing; a lock left by a killed audit on this host (its process gone) is taken over at once."""
    import fiftyone.core.odm as foo_db

    from fiftyone_plugin import locks

    name, _, _ = world
    ds = fo.load_dataset(name)
    before = _snapshot(ds)
    vectors = ds.values(adapter.EMBEDDING_FIELD)
    with adapter.one_at_a_time(ds):  # as another process's audit would hold it
        for argv in (["identity", "--threshold", str(THRESHOLD), "--tag"], ["identity", "--clear"],
                     ["embed", "--overwrite", "--device", "cpu"]):
            code, out, err = run_cli([*argv, "--dataset", name], capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert "an identity audit" in err and str(os.getpid()) in err, err
        assert _snapshot(ds) == before
    assert _vectors_equal(ds.values(adapter.EMBEDDING_FIELD), vectors)
    _left_by_a_killed_run(name, exclusive=_killed_holder("an identity audit"), shared=[])
    code, out, err = run_cli(["identity", "--dataset", name, "--threshold", str(THRESHOLD), "--tag",
                              "--no-similarity-index"], capsys)
    assert code == 0, err
    assert foo_db.get_db_conn()[locks.LOCKS].find_one({"_id": locks.vectors_key(name)}) is None
    strip = lambda docs: [{k: v for k, v in d.items() if k != "tags"} for d in docs]  # noqa: E731
    assert strip(_snapshot(ds)[0]) == strip(before[0])  # the same vectors: the same values


def test_an_audit_while_embed_writes_vectors_is_refused(world, audited, capsys):
    """An embed run (``--overwrite`` or new samples) beside an audit changed the vectors the audit
    was reading: its figures judged vectors of no run. Embed runs (two shards here) hold the
    vectors together; an audit or --clear meanwhile is refused in one line naming the embed run
    and changes nothing; an embed entry left by a killed run (its process gone) does not block."""
    import fiftyone.core.odm as foo_db

    from fiftyone_plugin import embed as stored
    from fiftyone_plugin import locks

    name, _, _ = world
    ds = fo.load_dataset(name)
    before = _snapshot(ds)
    with stored.writing_vectors(ds), stored.writing_vectors(ds):  # two shards at once: both get in
        for argv in (["--threshold", str(THRESHOLD), "--tag"], ["--clear"]):
            code, out, err = run_cli(["identity", "--dataset", name, *argv], capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert "faceaudit embed (writing face_embedding) is running" in err and str(os.getpid()) in err, err
        assert _snapshot(ds) == before
    _left_by_a_killed_run(name, shared=[_killed_holder("faceaudit embed")])
    code, out, err = run_cli(["identity", "--dataset", name, "--threshold", str(THRESHOLD), "--tag",
                              "--no-similarity-index"], capsys)
    assert code == 0, err
    assert foo_db.get_db_conn()[locks.LOCKS].find_one({"_id": locks.vectors_key(name)}) is None


def _killed_holder(what: str) -> dict:
    """A lock entry as a run on this host leaves it when killed: fresh, but its process is gone."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = schema.utc_now()
    return {"owner": "killed", "what": what, "host": socket.gethostname(), "pid": int(dead.stdout),
            "since": now, "renewed_at": now}


def _left_by_a_killed_run(name: str, **doc) -> None:
    import fiftyone.core.odm as foo_db

    from fiftyone_plugin import locks

    foo_db.get_db_conn()[locks.LOCKS].insert_one({"_id": locks.vectors_key(name), **doc})


def _vectors_equal(a, b) -> bool:
    return len(a) == len(b) and all((x is None and y is None) or (x is not None and y is not None and
                                                                  np.array_equal(x, y)) for x, y in zip(a, b))


def test_an_identity_that_is_not_text_is_refused_in_one_line(world, audited, capsys):
    """An identity stored as a number by a raw database write (FiftyOne's set_values refuses it;
    pymongo does not): before, a TypeError traceback from sorting numbers with strings."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        victim = ds.match({schema.SOURCE: "synth"}).first()
        ds._sample_collection.update_one({"_id": victim._id}, {"$set": {schema.IDENTITY: 5}})
        before = _snapshot(ds)
        code, out, err = run_cli(["identity", "--dataset", ds.name, "--threshold", str(THRESHOLD)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "identity" in err and "synth" in err and "5" in err and "not text" in err, err
        assert _snapshot(ds) == before
    finally:
        ds.delete()


def _centres(ds, source) -> np.ndarray:
    """Each identity's normalised mean embedding (the audit's centres), from the stored vectors."""
    x, labels, _, _ = reference(ds, source)
    centres = np.stack([x[labels == i].mean(0) for i in sorted(set(labels))])
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _singleton_audit(names=("real", "synth")) -> dict:
    """An audit of two sources of 20 one-image identities each (random unit vectors)."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = dict(zip(names, (range(0, 20), range(20, 40))))
    plans = {name: core.SourcePlan("real" if name == names[0] else "synthetic", {f"p{i}": 1 for i in r}, len(r))
             for name, r in rows.items()}

    def read(name):
        r = rows[name]
        yield core.Chunk(list(r), [f"p{i}" for i in r], vectors[r.start:r.stop])

    return core.run_audit(plans, read, core.audit_options(threshold=0.5), "dlib").result


def test_hostile_source_names_and_singletons_in_the_reports():
    """A source named like a formula is a text cell in the CSV, one named like markup is text
    in the chart legend; consistency of one-image identities is n/a, not a trivial 1 (an image
    alone is its own centre)."""
    import csv
    import io

    from faceaudit.identity_report import histogram_figure, to_csv

    formula, markup = "=cmd|' /C calc'!A0", "<b onmouseover=alert(1)>s</b>"
    result = _singleton_audit((formula, markup))
    cells = {row[0] for row in csv.reader(io.StringIO(to_csv(result)))}
    assert "'" + formula in cells and formula not in cells
    names = [trace["name"] for trace in histogram_figure(result, "impostor")["data"]]
    assert names and not any("<" in n for n in names) and any("&lt;b onmouseover" in n for n in names)
    assert all(s["consistency"] is None for s in result["sources"].values())


def test_the_report_says_why_a_source_has_no_genuine_scores():
    """One image per identity (the README's demo): the HTML report says why there is no genuine
    chart and what it leaves n/a, as the panel does, instead of drawing an empty chart."""
    from faceaudit.identity_report import section

    result = _singleton_audit()
    assert result["sources"]["synth"]["genuine"]["count"] == 0 and result["sources"]["synth"]["eer"] is None
    page = section(result)
    assert 'id="identity-no-genuine"' in page and "no identity has two embedded images" in page
    assert "genuine (mated) scores per source" not in page  # no empty chart
    assert "non-mated) scores per source" in page and 'id="identity-no-impostor"' not in page


def test_identity_scores_join_the_faceaudit_sidebar_group(dataset_name):
    """On a labelled dataset (the demo's), the audit's per-sample scores go in the sidebar's
    faceaudit group, not under PRIMITIVES (where new fields land once the groups are set)."""
    import fiftyone as fo

    from fiftyone_plugin import labels, schema

    ds = schema.open_dataset(dataset_name)
    labels.ensure_label_schema(ds)
    adapter.ensure_fields(ds)
    ds.reload()
    groups = {g.name: g.paths for g in ds.app_config.sidebar_groups}
    for name in (adapter.SIMILARITY_FIELD, adapter.NEAREST_REAL_FIELD):
        assert name in groups["faceaudit"], groups["faceaudit"]
        assert all(name not in paths for group, paths in groups.items() if group != "faceaudit")
    plain = fo.Dataset(f"{dataset_name}-plain")  # not labelled: FiftyOne's own groups are left alone
    try:
        adapter.ensure_fields(plain)
        assert not plain.app_config.sidebar_groups
    finally:
        plain.delete()


def test_a_source_is_judged_by_its_recorded_domain_not_its_samples(world, audited):
    """Most of the synthetic source's samples without `domain` (another tool's write) and a few
    saying "real": the audit took the domain of whichever group MongoDB returned first and judged
    synth as real (no leakage computed). The source's recorded domain decides."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        coll = ds._sample_collection
        synth = [d["_id"] for d in coll.find({schema.SOURCE: "synth"}, {"_id": 1}).sort(schema.IDENTITY, 1)]
        coll.update_many({"_id": {"$in": synth[:-6]}}, {"$unset": {schema.DOMAIN: ""}})
        coll.update_many({"_id": {"$in": synth[-6:-3]}}, {"$set": {schema.DOMAIN: "real"}})
        result = adapter.identity_audit(ds, adapter.options(threshold=THRESHOLD), similarity_index=False)
        expected, _ = audited
        assert result["sources"]["synth"]["domain"] == "synthetic"
        assert result["leakage"]["synth"]["share_above_threshold"] == expected["leakage"]["synth"]["share_above_threshold"]
        assert result["sources"]["real"]["genuine"] == expected["sources"]["real"]["genuine"]
    finally:
        ds.delete()


def test_an_audit_without_tag_removes_the_earlier_audits_tags_and_views(world, audited, capsys):
    """A rerun without --tag at threshold 0.99 stored no leak, yet the earlier run's samples stayed
    tagged identity_leak and its saved views showed them. Now they are removed, and it says so."""
    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        tagged = ds.match_tags(list(adapter.TAGS)).count()
        assert tagged and set(adapter.VIEWS.values()) <= set(ds.list_saved_views())
        code, out, err = run_cli(["identity", "--dataset", ds.name, "--threshold", "0.99", "--no-similarity-index"],
                                 capsys)
        assert code == 0, err
        ds.reload()
        assert ds.match_tags(list(adapter.TAGS)).count() == 0
        assert not set(adapter.VIEWS.values()) & set(ds.list_saved_views())
        assert f"removed the earlier audit's identity tags from {tagged} samples" in out, out
        stored = schema.get_info(ds, "identity")
        assert stored["untagged"]["samples"] == tagged and "tagged" not in stored
    finally:
        ds.delete()


def test_an_audit_of_one_face_is_stored_without_the_map(faces, tmp_path, dataset_name, capsys):
    """One embedded face: the audit failed at the 2-D map step (sklearn's "n_components=2 must be
    between 1 and min(n_samples, n_features)=1") after the scores and the similarity index were
    written, and stored no result. The map is skipped below MAP_MIN_POINTS and the result says why."""
    faces.identity_tree(tmp_path / "r", {"p": 1})
    load_face_dataset(str(tmp_path / "r"), source="r", domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    ds.set_values(adapter.EMBEDDING_FIELD, [Dlib()(np.asarray(Image.open(p).convert("RGB"))) for p in ds.values("filepath")])
    schema.set_info(ds, "embedding", {"model": "dlib", "checkpoint": None, "dim": 128, "threshold": 0.9})
    code, out, err = run_cli(["identity", "--dataset", dataset_name, "--threshold", "0.5"], capsys)
    assert code == 0, err
    ds.reload()
    stored = schema.get_info(ds, "identity")
    assert stored is not None and stored["similarity_index"]["brain_key"] == adapter.BRAIN_KEY
    assert "1 embedded sample" in stored["visualization"]["skipped"], stored["visualization"]
    assert adapter.VISUALIZATION_KEY not in ds.list_brain_runs()
    assert "face_map not made: " in out, out


def _npy(array, allow_pickle=False) -> bytes:
    import io
    import zlib

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return zlib.compress(buf.getvalue())


def test_stored_values_that_are_no_vector_are_refused_naming_the_sample(world, audited, capsys):
    """Raw writes of another tool: a dict (a TypeError traceback), bytes that are not zlib (a
    zlib.error traceback), text (a line naming no sample), complex numbers (accepted with a
    ComplexWarning), a pickled object array, a list of text, a boolean. Each: one line naming the
    sample and the problem, and nothing written."""
    import warnings

    from bson import ObjectId

    name, _, _ = world
    ds = fo.load_dataset(name).clone()
    try:
        victim = ds.match({schema.SOURCE: "synth"}).last()
        before = _snapshot(ds)
        for value, problem in [({"a": 1}, "is a dict"), (b"\x00\x01notzlib", "not FiftyOne's vector encoding"),
                               ("hello", "is a str ('hello')"), (_npy(np.ones(128, np.complex64)), "complex64 values"),
                               (_npy(np.array(["a"] * 128, dtype=object), True), "not a numeric .npy array"),
                               (["x"] * 128, "holds text"), (True, "is a bool")]:
            ds._sample_collection.update_one({"_id": ObjectId(victim.id)}, {"$set": {adapter.EMBEDDING_FIELD: value}})
            with warnings.catch_warnings():
                warnings.simplefilter("error", np.exceptions.ComplexWarning)
                code, out, err = run_cli(["identity", "--dataset", ds.name, "--threshold", str(THRESHOLD), "--tag"],
                                         capsys)
            assert code == 2 and len(err.strip().splitlines()) == 1, (value, err)
            assert problem in err and victim.id in err and adapter.EMBEDDING_FIELD in err, (value, err)
            assert _snapshot(ds) == before, value
    finally:
        ds.delete()
