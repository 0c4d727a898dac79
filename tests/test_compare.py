"""`faceaudit compare` against scipy on labels the test brought in with `faceaudit import-labels`."""

from __future__ import annotations

import json
import re

import fiftyone as fo
import numpy as np
import pytest
from scipy.stats import entropy

from faceaudit.attributes import ATTRIBUTES
from clirun import faceaudit as run
from test_labels import write_csv

SOURCES = {"real-a": ("real", 30), "real-b": ("real", 20), "syn-a": ("synthetic", 25), "syn-b": ("synthetic", 15)}
STATE_VALUE = {"positive": "1", "negative": "-1", "undefined": "0"}




@pytest.fixture(scope="module")
def labelled(tmp_path_factory, faces):
    """Four sources with random labels; synthetic sources never have 'undefined' Male or
    'positive' Bald, so alpha=0 gives empty synthetic bins. Returns (dataset, env, rows per source)."""
    import os
    import uuid

    from fiftyone_plugin.ingest import load_face_dataset

    root = tmp_path_factory.mktemp("compare")
    name = f"test-compare-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    rng = np.random.default_rng(42)
    rows_by_source = {}
    for source, (domain, n) in SOURCES.items():
        layout = {f"{source}-id{k}": 5 for k in range(n // 5)}
        faces.identity_tree(root / source, layout)
        names = sorted(f"{p.parent.name}/{p.name}" for p in (root / source).rglob("*.jpg"))
        load_face_dataset(str(root / source), source=source, domain=domain, dataset_name=name)
        rows = []
        for fname in names:
            values = rng.choice(["1", "-1", "0"], size=47, p=[0.3, 0.5, 0.2])
            if domain == "synthetic":
                values[ATTRIBUTES.index("Male")] = rng.choice(["1", "-1"])
                values[ATTRIBUTES.index("Bald")] = rng.choice(["-1", "0"])
            rows.append([fname, fname.split("/")[0], *values])
        run(["import-labels", "--dataset", name, "--source", source, str(write_csv(root / f"{source}.csv", rows))], env)
        rows_by_source[source] = rows
    yield name, env, rows_by_source, root
    fo.delete_dataset(name)


def expected_counts(rows):
    values = np.array([r[2:] for r in rows])
    return {a: {st: int((values[:, j] == v).sum()) for st, v in STATE_VALUE.items()} for j, a in enumerate(ATTRIBUTES)}


def smoothed(counts: dict, states, alpha):
    c = np.array([counts[s] for s in states], dtype=float) + alpha
    return c / c.sum()


def scipy_kl(p, q):
    value = entropy(p, q)  # scipy's reference KL, in nats
    return None if np.isinf(value) else value


def scipy_js(p, q):
    m = (p + q) / 2
    return 0.5 * entropy(p, m) + 0.5 * entropy(q, m)


@pytest.mark.parametrize("states", ["three", "binary"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_counts_and_divergences_equal_scipy(labelled, tmp_path, states, alpha):
    name, env, rows_by_source, _ = labelled
    out = tmp_path / "cmp.json"
    run(["compare", "--dataset", name, "--states", states, "--alpha", str(alpha), "--json", str(out)], env)
    result = json.loads(out.read_text())
    state_names = ["positive", "negative", "undefined"] if states == "three" else ["positive", "negative"]
    assert result["states"] == state_names and result["alpha"] == alpha
    assert result["sources"] == {s: {"domain": d, "count": n, "labelled": n} for s, (d, n) in SOURCES.items()}

    truth = {s: expected_counts(rows) for s, rows in rows_by_source.items()}
    real = {a: {st: sum(truth[s][a][st] for s in ("real-a", "real-b")) for st in STATE_VALUE} for a in ATTRIBUTES}
    synth = {a: {st: sum(truth[s][a][st] for s in ("syn-a", "syn-b")) for st in STATE_VALUE} for a in ATTRIBUTES}
    infinite_seen = 0
    for attr in ATTRIBUTES:
        entry = result["attributes"][attr]
        assert entry["counts"] == {s: truth[s][attr] for s in SOURCES}
        for s in SOURCES:  # the shares are raw: smoothing lives inside the divergences only
            want = smoothed(truth[s][attr], state_names, 0.0)
            assert [entry["distributions"][s][st] for st in state_names] == pytest.approx(want, abs=1e-12)
        p, q = smoothed(real[attr], state_names, alpha), smoothed(synth[attr], state_names, alpha)
        rvs = entry["real_vs_synthetic"]
        for key, want in (("kl_real_synth", scipy_kl(p, q)), ("kl_synth_real", scipy_kl(q, p)), ("js", scipy_js(p, q))):
            if want is None:
                assert rvs[key] is None and "infinite" in rvs[key + "_reason"]
                infinite_seen += 1
            else:
                assert rvs[key] == pytest.approx(want, abs=1e-9)
        for a in SOURCES:
            for b in SOURCES:
                want = scipy_kl(smoothed(truth[a][attr], state_names, alpha), smoothed(truth[b][attr], state_names, alpha))
                got = entry["pairwise"][a][b]
                assert (got is None and want is None) or got == pytest.approx(want, abs=1e-9)
    if alpha == 0:  # the planted empty synthetic bins: Bald positive always; Male undefined (three states)
        assert result["attributes"]["Bald"]["real_vs_synthetic"]["kl_real_synth"] is None
        assert infinite_seen >= (2 if states == "three" else 1)
    else:
        assert infinite_seen == 0


def test_table_html_and_csv_show_the_json_numbers(labelled, tmp_path):
    name, env, _, _ = labelled
    paths = {k: tmp_path / f"r.{k}" for k in ("json", "html", "csv")}
    run(["compare", "--dataset", name, "--html", str(paths["html"]), "--csv", str(paths["csv"]),
                 "--json", str(paths["json"])], env)
    result = json.loads(paths["json"].read_text())
    page = paths["html"].read_text()
    assert "<script src=" not in page and "Plotly" in page  # self-contained: plotly.js inlined
    kl_table = page[page.index('<table id="kl">'):]
    cells = re.findall(r'<tr><td>([\w]+)</td><td>[^<]*</td><td class="num">([^<]+)</td><td class="num">([^<]+)</td>',
                       kl_table[:kl_table.index("</table>")])
    assert len(cells) == 47  # every attribute has defined labels here
    for attr, kl_rs, kl_sr in cells:  # 4 significant digits: tiny divergences stay visible
        rvs = result["attributes"][attr]["real_vs_synthetic"]
        assert kl_rs == f"{rvs['kl_real_synth']:.4g}" and kl_sr == f"{rvs['kl_synth_real']:.4g}"
    csv_lines = paths["csv"].read_text().splitlines()
    assert len(csv_lines) == 48 and csv_lines[0].startswith("attribute,category,kl_real_synth")
    male = next(line for line in csv_lines if line.startswith("Male,"))
    assert float(male.split(",")[2]) == result["attributes"]["Male"]["real_vs_synthetic"]["kl_real_synth"]
    printed = run(["compare", "--dataset", name], env).stdout.splitlines()
    kls = [float(line.split()[-3]) for line in printed[3:]]
    assert kls == sorted(kls, reverse=True) and len(kls) == 47  # sorted by KL(real || synth)


def test_bootstrap_interval_contains_the_estimate(labelled, tmp_path):
    name, env, _, _ = labelled
    out = tmp_path / "b.json"
    run(["compare", "--dataset", name, "--bootstrap", "50", "--json", str(out)], env)
    result = json.loads(out.read_text())
    assert result["bootstrap"]["iterations"] == 50
    inside = 0
    for attr in ATTRIBUTES:
        rvs = result["attributes"][attr]["real_vs_synthetic"]
        lo, hi = rvs["bootstrap"]["kl_real_synth"]
        assert lo <= hi
        inside += lo <= rvs["kl_real_synth"] <= hi
    assert inside >= 40  # a percentile interval usually covers the plug-in estimate


def test_the_view_decides_what_is_counted(labelled):
    from fiftyone_plugin.compare import compute_comparison

    name, _, rows_by_source, _ = labelled
    ds = fo.load_dataset(name)
    view = ds.match(fo.ViewField("source").is_in(["real-a", "syn-a"]))
    _, result = compute_comparison(view)
    assert set(result["sources"]) == {"real-a", "syn-a"}
    assert result["attributes"]["Male"]["counts"]["syn-a"] == expected_counts(rows_by_source["syn-a"])["Male"]


@pytest.mark.parametrize("args, message", [
    (["--alpha", "-1"], "alpha: must be at least 0, got -1"),
    (["--attributes", "Blurry"], "unknown attribute 'Blurry'"),
])
def test_bad_parameters(labelled, args, message):
    name, env, _, _ = labelled
    proc = run(["compare", "--dataset", name, *args], env, check=False, process=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr


def test_bad_views(labelled, tmp_path, faces, dataset_name):
    from fiftyone_plugin.compare import CompareError, compute_comparison
    from fiftyone_plugin.ingest import load_face_dataset

    name, _, _, _ = labelled
    ds = fo.load_dataset(name)
    with pytest.raises(CompareError, match="no synthetic source to compare with"):
        compute_comparison(ds.match(fo.ViewField("domain") == "real"))
    with pytest.raises(CompareError, match="no samples with a source"):
        compute_comparison(ds.match(fo.ViewField("source") == "nope"))
    faces.identity_tree(tmp_path / "x", {"a": 2})
    load_face_dataset(str(tmp_path / "x"), source="x", domain="real", dataset_name=dataset_name)
    with pytest.raises(CompareError, match="has no mac_\\* labels yet"):
        compute_comparison(fo.load_dataset(dataset_name))


def test_operator_stores_the_comparison_on_the_dataset(labelled):
    import fiftyone.operators as foo

    from fiftyone_plugin.compare import stored_comparison

    name, _, _, _ = labelled
    ds = fo.load_dataset(name)
    result = foo.execute_operator("@faceaudit/face-audit/compute_attribute_comparison",
                                  ctx={"dataset": ds, "params": {"states": "binary", "alpha": 1.0,
                                                                 "open_panel": False}})
    assert result.error is None and result.result["sources"] == 4
    ds.reload()
    stored = stored_comparison(ds)
    assert stored["states"] == ["positive", "negative"] and stored["alpha"] == 1.0
    assert set(stored["attributes"]) == set(ATTRIBUTES)


def test_counts_cache_follows_label_changes(labelled, tmp_path):
    from fiftyone_plugin import counts, labels

    name, _, rows_by_source, root = labelled
    ds = fo.load_dataset(name)
    before = counts.cached_counts(ds.view())
    assert counts.cached_counts(ds.view()) is before  # cached
    rows = [list(r) for r in rows_by_source["syn-b"]]
    col = 2 + ATTRIBUTES.index("Smiling")
    flipped = sum(r[col] != "1" for r in rows)
    for r in rows:
        r[col] = "1"
    try:
        labels.import_labels(ds, "syn-b", str(write_csv(tmp_path / "flip.csv", rows)))
        after = counts.cached_counts(ds.view())
        i, j = after.sources.index("syn-b"), ATTRIBUTES.index("Smiling")
        assert after is not before
        assert after.counts[i, j, 0] == before.counts[i, j, 0] + flipped
    finally:  # put the module fixture's labels back
        labels.import_labels(ds, "syn-b", str(write_csv(tmp_path / "back.csv", rows_by_source["syn-b"])))


@pytest.mark.parametrize("damage", ["pp", "q" * 47])
def test_a_damaged_code_is_named_not_miscounted(tmp_path, faces, dataset_name, damage):
    """A mac_code written by something else (wrong length or letters) stops the count with a
    message, on the whole dataset (index scan) and on a filtered view (document scan)."""
    from fiftyone_plugin import counts, labels
    from fiftyone_plugin.compare import compute_comparison
    from fiftyone_plugin.ingest import load_face_dataset

    for source, domain in (("r", "real"), ("s", "synthetic")):
        faces.identity_tree(tmp_path / source, {f"{source}0": 3})
        load_face_dataset(str(tmp_path / source), source=source, domain=domain, dataset_name=dataset_name)
        rows = [[f"{source}0/{p.name}", f"{source}0", *["1"] * 47] for p in sorted((tmp_path / source / f"{source}0").iterdir())]
        labels.import_labels(fo.load_dataset(dataset_name), source, str(write_csv(tmp_path / f"{source}.csv", rows)))
    ds = fo.load_dataset(dataset_name)
    compute_comparison(ds)  # intact: counts fine
    sample = ds.first()
    sample[labels.CODE_FIELD] = damage
    sample.save()
    counts.CACHE.clear()
    for view in (ds, ds.match(fo.ViewField("identity") != "nobody")):
        with pytest.raises(ValueError, match="mac_code that is not 47 characters of p, n, u"):
            compute_comparison(view)


def _counts(*rows):
    """(S, A, 3) counts: one row per source, each attribute given the same (p, n, u)."""
    return np.array([[row] * len(ATTRIBUTES) for row in rows], dtype=np.int64)


def test_js_is_finite_with_alpha_zero_and_equals_scipy():
    """JS is bounded by ln 2 whatever the supports; scipy's jensenshannon squared is the reference."""
    from scipy.spatial.distance import jensenshannon

    from faceaudit import stats

    comparison = stats.compare(["r", "s"], ["real", "synthetic"], [5, 5], _counts((5, 0, 0), (0, 5, 0)),
                               "three", 0.0)
    assert np.allclose(comparison.js, np.log(2))
    p, q = np.array([0.7, 0.3, 0.0]), np.array([0.0, 0.4, 0.6])
    assert stats.js_divergence(p, q) == pytest.approx(jensenshannon(p, q) ** 2)
    rvs = comparison.to_json()["attributes"]["Male"]["real_vs_synthetic"]
    assert rvs["js"] == pytest.approx(np.log(2)) and rvs["kl_real_synth"] is None  # KL is inf, JS is not


def test_an_attribute_no_source_labelled_is_marked_not_zero():
    from faceaudit import report, stats

    counts = _counts((3, 2, 1), (1, 4, 1))
    j = ATTRIBUTES.index("Attractive")
    counts[:, j] = [0, 0, 6]  # every face undefined: a model that does not predict it
    for states, alpha in (("three", 0.5), ("binary", 0.0)):
        result = stats.compare(["r", "s"], ["real", "synthetic"], [6, 6], counts, states, alpha).to_json()
        entry = result["attributes"]["Attractive"]
        assert entry["labelled"] is False and entry["real_vs_synthetic"]["kl_real_synth"] is None
        assert entry["real_vs_synthetic"]["kl_real_synth_reason"].startswith("not labelled")
        assert "Attractive" not in [r["attribute"] for r in report.kl_rows(result)]
        assert report.not_labelled(result) == ["Attractive"]
        row = next(r for r in report.kl_rows(result, sort="attribute") if r["attribute"] == "Attractive")
        assert report.cell(row, "js") == "not labelled"
        assert all(r["kl_real_synth"] is not None for r in report.kl_rows(result))


def test_a_partial_view_gives_what_can_be_computed():
    """An unlabelled source, or only one domain: an error by default (the CLI), a result with
    notes when asked (the panel): raw shares of the labelled sources, no divergence."""
    from faceaudit import stats

    counts = _counts((3, 1, 0), (0, 0, 0))
    with pytest.raises(stats.StatsError, match="source 'u' has no labelled samples"):
        stats.compare(["r", "u"], ["real", "synthetic"], [4, 2], counts)
    result = stats.compare(["r", "u"], ["real", "synthetic"], [4, 2], counts, partial=True).to_json()
    assert result["notes"][0] == "source 'u' has no labelled samples in this view"
    assert "no synthetic source to compare with" in result["notes"][1]
    male = result["attributes"]["Male"]
    assert male["distributions"]["r"] == {"positive": 0.75, "negative": 0.25, "undefined": 0.0}
    assert male["distributions"]["u"] == {"positive": None, "negative": None, "undefined": None}
    assert male["real_vs_synthetic"]["kl_real_synth"] is None
    assert "no synthetic source" in male["real_vs_synthetic"]["kl_real_synth_reason"]
    assert male["pairwise"]["r"]["r"] == 0.0 and male["pairwise"]["r"]["u"] is None


def test_source_colours_are_stable_and_figures_show_raw_shares():
    from faceaudit import report, stats

    result = stats.compare(["r", "s"], ["real", "synthetic"], [4, 4], _counts((3, 1, 0), (1, 1, 2)),
                           "three", 2.0).to_json()
    overview = report.overview_figure(result, "positive", "Demographics")
    assert [len(t["y"]) for t in overview["data"]] == [7, 7]
    assert overview["data"][0]["x"][0] == 0.75  # raw 3/4, not (3+2)/(4+6)
    assert {t["marker"]["color"] for t in overview["data"]} == {report.source_color("r"), report.source_color("s")}
    bigger = stats.compare(["a", "r", "s"], ["real", "real", "synthetic"], [4, 4, 4],
                           _counts((1, 1, 0), (3, 1, 0), (1, 1, 2))).to_json()
    assert report.source_colors(bigger)["r"] == report.source_colors(result)["r"]  # adding a source changes none
    assert len(report.overview_figure(result, top=report.TOP_N)["data"][0]["y"]) == report.TOP_N
