"""Realness outliers and identity consistency on labels brought in with `faceaudit import-labels`."""

from __future__ import annotations

import json
import re

import fiftyone as fo
import numpy as np
import pytest

from faceaudit import outliers as core
from faceaudit.attributes import ATTRIBUTES
from fiftyone_plugin import labels, outliers
from fiftyone_plugin.ingest import load_face_dataset
from clirun import faceaudit as run
from test_labels import write_csv

COL = {a: ATTRIBUTES.index(a) for a in ATTRIBUTES}
# never positive in real data (nor in typical synthetic rows): the planted images have them all
PLANTED_STATES = {a: "1" for a in ("Bald", "Wearing_Hat", "Eyeglasses", "Goatee", "Gray_Hair",
                                   "Double_Chin", "Wearing_Necktie", "Heavy_Makeup")}




def typical_row(rng, name, identity):
    values = rng.choice(["1", "-1", "0"], size=47, p=[0.3, 0.6, 0.1])
    for attr in PLANTED_STATES:
        values[COL[attr]] = "-1"
    return [name, identity, *values]


@pytest.fixture(scope="module")
def world(tmp_path_factory, faces):
    """real (identities), synth (identities; 4 planted outlier images, 2 planted inconsistent
    identities) and flatgan (no identities)."""
    import os
    import uuid

    root = tmp_path_factory.mktemp("outliers")
    name = f"test-outliers-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    rng = np.random.default_rng(11)
    layouts = {"real": {f"r{k}": 5 for k in range(8)}, "synth": {f"s{k}": 5 for k in range(8)}}
    planted_images, inconsistent = set(), {"s2", "s5"}
    for source, layout in layouts.items():
        faces.identity_tree(root / source, layout)
        load_face_dataset(str(root / source), source=source, domain="real" if source == "real" else "synthetic",
                          dataset_name=name)
        rows = []
        for identity, n in layout.items():
            stable = {a: rng.choice(["1", "-1"]) for a in core.STABLE_ATTRIBUTES}
            for k in range(n):
                row = typical_row(rng, f"{identity}/{k:04d}.jpg", identity)
                for a, v in stable.items():
                    row[2 + COL[a]] = v
                if identity in inconsistent:  # Male and Asian flip within the identity
                    row[2 + COL["Male"]] = "1" if k % 2 else "-1"
                    row[2 + COL["Asian"]] = "-1" if k % 2 else "1"
                if source == "synth" and identity in ("s1", "s6") and k < 2:
                    for a, v in PLANTED_STATES.items():
                        row[2 + COL[a]] = v
                    planted_images.add(str(root / source / row[0]))
                rows.append(row)
        run(["import-labels", "--dataset", name, "--source", source, str(write_csv(root / f"{source}.csv", rows))], env)
    for i in range(6):
        faces.write(root / "flat" / f"{i}.jpg", i)
    load_face_dataset(str(root / "flat"), source="flatgan", domain="synthetic", dataset_name=name)
    flat_rows = [typical_row(rng, f"{i}.jpg", "") for i in range(6)]
    run(["import-labels", "--dataset", name, "--source", "flatgan", str(write_csv(root / "flat.csv", flat_rows))], env)
    yield name, env, planted_images, inconsistent
    fo.delete_dataset(name)


def test_planted_outliers_rank_first_get_tagged_and_clear_cleanly(world):
    name, env, planted, _ = world
    ds = fo.load_dataset(name)
    ds.match(fo.ViewField("source") == "real").limit(3).tag_samples("keep-me")  # other tags stay
    out = run(["outliers", "--dataset", name, "--top", str(len(planted))], env)
    assert f"{len(planted)} synthetic samples tagged 'outlier'" in out.stdout
    ds.reload()
    ranked = ds.match(fo.ViewField("domain") == "synthetic").sort_by(outliers.SCORE_FIELD, reverse=True)
    assert set(ranked.limit(len(planted)).values("filepath")) == planted
    assert set(ds.match_tags("outlier").values("filepath")) == planted
    saved = ds.load_saved_view(outliers.OUTLIERS_VIEW)
    assert set(saved.values("filepath")) == planted

    # the server-side scores equal the numpy reference
    from fiftyone_plugin.counts import cached_counts

    c = cached_counts(ds.view())
    real_counts = c.counts[[i for i, d in enumerate(c.domains) if d == "real"]].sum(0)
    codes, scores = ds.exists("mac_code").values(["mac_code", outliers.SCORE_FIELD])
    want = core.realness_nll(labels.state_indices(codes), real_counts)
    assert np.allclose(scores, want, atol=1e-9)

    before = {f: (tags, code) for f, tags, code in zip(*ds.values(["filepath", "tags", "mac_code"]))}
    out = run(["outliers", "--dataset", name, "--clear"], env)
    assert f"removed from {len(planted)} samples" in out.stdout
    ds.reload()
    after = {f: (tags, code) for f, tags, code in zip(*ds.values(["filepath", "tags", "mac_code"]))}
    assert ds.count_sample_tags() == {"keep-me": 3}
    for f, (tags, code) in before.items():
        assert after[f] == ([t for t in tags if t != "outlier"], code)


def test_threshold_and_joint_model(world):
    name, _, planted, _ = world
    ds = fo.load_dataset(name)
    joint = ("Bald", "Wearing_Hat", "Eyeglasses")
    for states, alpha in (("binary", 0.25), ("three", 0.5)):
        outliers.score_realness(ds, states=states, alpha=alpha, joint=joint)
        ds.reload()
        codes, domains, scores = ds.exists("mac_code").values(["mac_code", "domain", outliers.SCORE_FIELD])
        assert np.allclose(scores, _reference_nll(codes, domains, states, alpha, joint), atol=1e-9)
    planted_scores = ds.match(fo.ViewField("filepath").is_in(list(planted))).values(outliers.SCORE_FIELD)
    threshold = min(planted_scores)
    n = outliers.flag_outliers(ds, threshold=threshold)
    assert n == len(planted)  # the unseen combination alone sets them apart
    outliers.clear_outliers(ds)


def _reference_nll(codes, domains, states: str, alpha: float, joint: tuple[str, ...]) -> np.ndarray:
    """Realness NLL computed here from the codes alone: per attribute -log((count + alpha) /
    total) over the real samples' states (binary: the undefined state neither counted nor scored),
    plus, for ``joint``, -log of the smoothed share of the real samples with the same combination."""
    index = np.array([["pnu".index(ch) for ch in code] for code in codes])
    real = index[np.array(domains) == "real"]
    kinds = 2 if states == "binary" else 3
    total = np.zeros(len(codes))
    cols = [ATTRIBUTES.index(a) for a in joint]
    for j in range(len(ATTRIBUTES)):
        if j in cols:
            continue
        counts = np.array([(real[:, j] == s).sum() for s in range(kinds)], float) + alpha
        nll = np.append(-np.log(counts / counts.sum()), [0.0] * (3 - kinds))
        total += nll[index[:, j]]
    combos = [tuple(row) for row in real[:, cols]]
    for i, row in enumerate(index[:, cols]):
        total[i] -= np.log((combos.count(tuple(row)) + alpha) / (len(combos) + alpha * 3 ** len(cols)))
    return total


def test_identity_consistency(world, tmp_path):
    name, env, _, inconsistent = world
    run(["outliers", "--dataset", name, "--top", "1"], env)
    ds = fo.load_dataset(name)
    ds.reload()
    synth = ds.match(fo.ViewField("source") == "synth")
    per_identity = dict(zip(*synth.values(["identity", outliers.DISAGREEMENT_FIELD])))
    top = sorted(per_identity, key=per_identity.get, reverse=True)[:2]
    assert set(top) == inconsistent and all(per_identity[i] > 0 for i in inconsistent)
    assert all(v == 0 for i, v in per_identity.items() if i not in inconsistent)

    out = tmp_path / "cmp.json"
    run(["compare", "--dataset", name, "--json", str(out)], env)
    ic = json.loads(out.read_text())["identity_consistency"]
    assert ic["real"]["applicable"] and ic["real"]["mean_disagreement"] == 0
    assert ic["synth"]["mean_disagreement"] == pytest.approx(np.mean([per_identity[i] for i in per_identity]))
    assert {w["identity"] for w in ic["synth"]["worst"][:2]} == inconsistent
    assert ic["flatgan"] == {"applicable": False, "identities": 0, "mean_disagreement": None,
                             "per_attribute": {}, "worst": [], "reason": "the source has no identities"}
    assert fo.load_dataset(name).match(fo.ViewField("source") == "flatgan").exists(
        outliers.DISAGREEMENT_FIELD).count() == 0  # not applicable is not zero
    outliers.clear_outliers(ds)


def test_operator_in_the_grid_actions(world):
    import fiftyone.operators as foo

    name, _, planted, _ = world
    ds = fo.load_dataset(name)
    result = foo.execute_operator("@faceaudit/face-audit/flag_synthetic_outliers",
                                  ctx={"dataset": ds, "params": {"mode": "top", "top": len(planted)}})
    assert result.error is None and result.result["tagged"] == len(planted)
    result = foo.execute_operator("@faceaudit/face-audit/flag_synthetic_outliers",
                                  ctx={"dataset": ds, "params": {"mode": "clear"}})
    assert result.result["cleared"] == len(planted)


def test_bad_input(tmp_path, faces, dataset_name, world):
    faces.identity_tree(tmp_path / "a", {"x": 2})
    load_face_dataset(str(tmp_path / "a"), source="a", domain="synthetic", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    with pytest.raises(outliers.OutlierError, match="no mac_\\* labels yet"):
        outliers.score_realness(ds)
    rows = [[f"x/{k:04d}.jpg", "x", *["1"] * 47] for k in range(2)]
    from fiftyone_plugin.labels import import_labels

    import_labels(ds, "a", str(write_csv(tmp_path / "a.csv", rows)))
    with pytest.raises(outliers.OutlierError, match="no real source with labels to score against"):
        outliers.score_realness(ds)
    name, env, _, _ = world
    proc = run(["outliers", "--dataset", name, "--top", "0"], env, check=False, process=True, timeout=300)
    assert proc.returncode == 2 and "top: must be at least 1, got 0" in proc.stderr


def test_realness_histograms_share_bins_and_count_every_scored_sample(world):
    from fiftyone_plugin.views import score_histograms, score_range_view

    name, _, _, _ = world
    ds = fo.load_dataset(name)
    outliers.score_realness(ds)
    ds.reload()
    hist = score_histograms(ds.view(), outliers.SCORE_FIELD, bins=12)
    assert len(hist["edges"]) == 13 and set(hist["counts"]) == {"real", "synth", "flatgan"}
    for source, counts in hist["counts"].items():
        assert sum(counts) == ds.match(fo.ViewField("source") == source).exists(outliers.SCORE_FIELD).count()
        k = int(np.argmax(counts))
        view = score_range_view(ds.view(), source, outliers.SCORE_FIELD, hist["edges"][k], hist["edges"][k + 1])
        assert view.count() == counts[k]


def _snapshot(ds) -> tuple:
    """Everything an outliers run writes: scores, tags, the stored settings and the saved view."""
    ds.reload()
    info = ds.info.get("faceaudit", {}).get("realness")
    saved = ds.has_saved_view(outliers.OUTLIERS_VIEW) and ds.load_saved_view(outliers.OUTLIERS_VIEW).values("id")
    return (dict(zip(*ds.values(["id", outliers.SCORE_FIELD]))), dict(zip(*ds.values(["id", "tags"]))),
            info and {k: v for k, v in info.items() if k != "at"}, saved)


OUTLIERS_REFUSALS = [
    (["--top", "-5", "--alpha", "2"], "top: must be at least 1, got -5"),
    (["--threshold", "nan"], "threshold: must be a finite number"),
    (["--threshold", "inf"], "threshold: must be a finite number"),
    (["--top", "3", "--alpha", "nan"], "alpha: must be a finite number"),
    (["--top", "3", "--alpha", "-1"], "alpha: must be at least 0"),
    (["--top", "3", "--tag", "$tags"], "tag: must not start with '$'"),
    (["--top", "3", "--joint", "Male", "Nope"], "unknown attribute 'Nope'"),
]


def _flagged(ds, top: int) -> tuple:
    outliers.score_realness(ds)
    outliers.flag_outliers(ds, top=top)
    return _snapshot(ds)


def test_bad_arguments_refused_before_anything_is_written(world, capsys):
    """A refused run leaves scores, tags, stored settings and the saved view as they were: the
    real command once (`--top 0` with other scoring settings), then the same main() in-process."""
    from faceaudit_cli.main import main

    name, env, planted, _ = world
    ds = fo.load_dataset(name)
    before = _flagged(ds, len(planted))
    proc = run(["outliers", "--dataset", name, "--top", "0", "--alpha", "2"], env, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "faceaudit outliers: error: --top: must be at least 1, got 0"
    assert _snapshot(ds) == before
    for args, message in OUTLIERS_REFUSALS:
        assert main(["outliers", "--dataset", name, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("faceaudit outliers: error: ") and message in err, (args, err)
        assert _snapshot(ds) == before, args
    outliers.clear_outliers(ds)


OPERATOR_REFUSALS = [
    ({"mode": "top", "top": "0"}, "K: must be at least 1"),
    ({"mode": "top", "top": -5}, "K: must be at least 1"),
    ({"mode": "threshold", "threshold": "nan"}, "realness_nll at least: must be a finite number"),
    ({"mode": "top", "top": 3, "tag": "$x"}, "Tag: must not start with '$'"),
    ({"mode": "sideways"}, "mode"),  # the form refuses it
]


def test_operator_refuses_bad_arguments_before_anything_is_written(world):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    name, env, planted, _ = world
    ds = fo.load_dataset(name)
    before = _flagged(ds, len(planted))
    for params, message in OPERATOR_REFUSALS:
        with pytest.raises(ExecutionError, match=re.escape(message)):
            foo.execute_operator("@faceaudit/face-audit/flag_synthetic_outliers",
                                 ctx={"dataset": ds, "params": params})
        assert _snapshot(ds) == before, params
    outliers.clear_outliers(ds)


def test_operator_form_defaults_come_from_the_data(world):
    """K defaults to 5% of the scored synthetic faces, the threshold to the K-th highest score."""
    import fiftyone.operators as foo

    name, _, _, _ = world
    ds = fo.load_dataset(name)
    outliers.score_realness(ds)
    ds.reload()
    synthetic = ds.match(fo.ViewField("domain") == "synthetic").exists(outliers.SCORE_FIELD)
    k, t = outliers.suggested_defaults(ds)
    assert k == max(1, round(0.05 * synthetic.count()))
    assert t == sorted(synthetic.values(outliers.SCORE_FIELD), reverse=True)[k - 1]
    result = foo.execute_operator("@faceaudit/face-audit/flag_synthetic_outliers",
                                  ctx={"dataset": ds, "params": {"mode": "threshold", "threshold": t}})
    assert result.error is None, result.error
    assert result.result["tagged"] == synthetic.match(fo.ViewField(outliers.SCORE_FIELD) >= t).count() >= k
    assert result.result["message"].startswith(f"{result.result['tagged']} synthetic faces tagged 'outlier'")
    # new-user review C8: the grid moves to the saved view; the result says so
    assert result.result["message"].endswith(f"The grid now shows the saved view {outliers.OUTLIERS_VIEW}; choose "
                                             "another in the saved-view menu above the grid, or clear it there for "
                                             "the whole dataset")
    outliers.clear_outliers(ds)


def test_a_reviewed_face_is_kept_out_of_flagging_and_counted_apart(world):
    """Issue 15 item 8: untagging a false positive and flagging again with the same K tagged it
    again. Tagged ``reviewed_keep`` (by the App's keep mode, or any tagging), it stays out."""
    name, env, planted, _ = world
    ds = fo.load_dataset(name)
    k = len(planted)
    run(["outliers", "--dataset", name, "--top", str(k)], env)
    ds.reload()
    ranked = ds.match(fo.ViewField("domain") == "synthetic").sort_by(outliers.SCORE_FIELD, reverse=True)
    ids, paths = ranked.values(["id", "filepath"])
    reviewed = ids[0]  # the highest score: a "false positive" a person looked at
    assert outliers.keep_reviewed(ds, [reviewed]) == 1
    ds.reload()
    assert core.REVIEWED_KEEP_TAG == outliers.REVIEWED_KEEP_TAG == "reviewed_keep"
    assert ds[reviewed].tags == ["reviewed_keep"]
    try:
        out = run(["outliers", "--dataset", name, "--top", str(k)], env)
        assert f"{k} synthetic samples tagged 'outlier'; 1 reviewed face kept (tag 'reviewed_keep')" in out.stdout
        ds.reload()
        tagged = set(ds.match_tags("outlier").values("id"))
        assert tagged == set(ids[1:k + 1])  # K counts the faces not reviewed: the next one comes in
        assert reviewed not in tagged and reviewed not in ds.load_saved_view(outliers.OUTLIERS_VIEW).values("id")
        out = run(["outliers", "--dataset", name, "--threshold", "-1"], env)  # every scored face...
        ds.reload()
        assert reviewed not in set(ds.match_tags("outlier").values("id"))  # ...but the reviewed one
        assert len(ds.match_tags("outlier")) == len(ids) - 1
    finally:
        ds.untag_samples(["reviewed_keep", "outlier"])


def test_a_grid_sort_that_replaces_a_saved_views_order_is_told_apart(dataset_name):
    """Issue 15.9's check behind clear_grid_sort: the App's grid sort (its extended SortBy) that
    differs from a saved view's own last sort replaces that order; the same sort, no grid sort,
    or a view without a sort of its own does not; the App's ?view= slug names the view."""
    from fiftyone_plugin.views import grid_sort_replaces, saved_view_of_slug

    ds = fo.Dataset(dataset_name)
    ds.save_view("by_score", ds.match_tags("outlier").sort_by("realness_nll", reverse=True))
    ds.save_view("plain view", ds.match_tags("outlier"))

    def grid(field, reverse):
        return {"fiftyone.core.stages.SortBy": {"field_or_expr": field, "reverse": reverse, "create_index": False}}

    assert grid_sort_replaces(ds, "by_score", grid("realness_nll", False)) == (("realness_nll", False),
                                                                              ("realness_nll", True))
    assert grid_sort_replaces(ds, "by_score", grid("filepath", True)) == (("filepath", True), ("realness_nll", True))
    assert grid_sort_replaces(ds, "by_score", grid("realness_nll", True)) is None
    assert grid_sort_replaces(ds, "by_score", {}) is None and grid_sort_replaces(ds, "by_score", None) is None
    assert grid_sort_replaces(ds, "plain view", grid("filepath", False)) is None
    assert grid_sort_replaces(ds, "no such view", grid("filepath", False)) is None
    assert saved_view_of_slug(ds, "by-score") == "by_score" and saved_view_of_slug(ds, "plain-view") == "plain view"
    assert saved_view_of_slug(ds, "nothing") is None
