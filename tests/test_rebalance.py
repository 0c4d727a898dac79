"""``faceaudit rebalance``'s refusals on the real mongod and real face images: a tag or view name
that belongs to faceaudit or another of its tools, and attributes no sample has a label for.
The subset it chooses is tested in tests/test_export.py (test_rebalance_planted_imbalance_...)."""

from __future__ import annotations

import numpy as np

import fiftyone as fo
from clirun import in_process
from faceaudit.attributes import ATTRIBUTES
from fiftyone_plugin import identity, labels, outliers
from fiftyone_plugin.ingest import load_face_dataset
from fiftyone_plugin.rebalance import rebalance_source


def _world(faces, tmp_path, name: str) -> fo.Dataset:
    """real (6 identities x 3, half male) and syn (10 x 3, 7 male); Bald undefined on every sample."""
    faces.identity_tree(tmp_path / "real", {f"r{k}": 3 for k in range(6)})
    faces.identity_tree(tmp_path / "syn", {f"s{k}": 3 for k in range(10)}, start=20)
    load_face_dataset(str(tmp_path / "real"), source="real", domain="real", dataset_name=name)
    load_face_dataset(str(tmp_path / "syn"), source="syn", domain="synthetic", dataset_name=name)
    ds = fo.load_dataset(name)
    ids, identities = ds.values(["id", "identity"])
    states = np.full((len(ids), len(ATTRIBUTES)), -1, np.int8)
    states[:, ATTRIBUTES.index("Bald")] = 0
    for i, ident in enumerate(identities):
        states[i, ATTRIBUTES.index("Male")] = 1 if int(ident[1:]) < (3 if ident[0] == "r" else 7) else -1
    labels.ensure_label_schema(ds)
    labels.write_labels(ds, ids, states)
    return ds


def _state(ds):
    ds.reload()
    return ds.count_sample_tags(), {v: list(ds.load_saved_view(v).values("id")) for v in ds.list_saved_views()}


def test_tags_and_views_of_faceaudit_and_its_other_tools_are_refused(faces, tmp_path, dataset_name):
    """--tag unreadable tagged healthy synthetic faces unreadable (and untagged the damaged ones);
    --tag identity_leaks replaced the identity audit's saved view; --tag outlier erased the
    outlier tags. Each is refused in one line before anything is written; the default tag, and a
    rerun over rebalance's own view, still work."""
    ds = _world(faces, tmp_path, dataset_name)
    syn = ds.match({"source": "syn"})
    syn.limit(1).tag_samples("unreadable")
    syn.skip(1).limit(2).tag_samples(outliers.OUTLIER_TAG)
    ds.save_view(outliers.OUTLIERS_VIEW, ds.match_tags(outliers.OUTLIER_TAG))
    ds.save_view(identity.VIEWS[identity.LEAK_TAG], syn.limit(3))
    ds.save_view("my_picks", syn.skip(5).limit(2))  # a user's own view
    before = _state(ds)
    for tag, problem in [("unreadable", "is reserved"), ("identity_leak", "is reserved"),
                         (outliers.OUTLIER_TAG, "faceaudit outliers"),
                         (identity.VIEWS[identity.LEAK_TAG], "faceaudit identity"),
                         (outliers.OUTLIERS_VIEW, "faceaudit outliers"), ("my_picks", "a saved view")]:
        proc = in_process(["rebalance", "--dataset", dataset_name, "--source", "syn", "--attributes", "Male",
                           "--tag", tag])
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (tag, proc.stderr)
        assert tag in proc.stderr and problem in proc.stderr, (tag, proc.stderr)
        assert _state(ds) == before, tag
    for _ in range(2):  # its own view is replaced by a rerun
        report = rebalance_source(ds, "syn", ["Male"], keep=0.5)
    assert report["view"] == "rebalanced" and ds.has_saved_view("rebalanced")
    tags, views = _state(ds)
    assert tags["unreadable"] == 1 and tags[outliers.OUTLIER_TAG] == 2
    assert {v: views[v] for v in before[1]} == before[1]


def test_attributes_that_no_sample_has_a_label_for_are_refused(faces, tmp_path, dataset_name):
    """--attributes Bald, undefined on every sample: "KL 0, kept all" with no warning. Refused in
    one line naming the attribute; an unlabelled synthetic source too."""
    _world(faces, tmp_path, dataset_name)
    ds = fo.load_dataset(dataset_name)
    before = _state(ds)
    proc = in_process(["rebalance", "--dataset", dataset_name, "--source", "syn", "--attributes", "Male", "Bald"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Bald" in proc.stderr and "undefined on every labelled sample" in proc.stderr, proc.stderr
    faces.identity_tree(tmp_path / "unl", {"u1": 2, "u2": 2}, start=50)
    load_face_dataset(str(tmp_path / "unl"), source="unl", domain="synthetic", dataset_name=dataset_name)
    proc = in_process(["rebalance", "--dataset", dataset_name, "--source", "unl", "--attributes", "Male"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "'unl'" in proc.stderr and "no labelled sample" in proc.stderr, proc.stderr
    assert _state(ds) == before


def test_other_tools_names_in_params_are_the_tools_own():
    """params (pure Python) lists the other tools' tag and view names; they must be the adapters'."""
    from faceaudit import params

    names = {outliers.OUTLIER_TAG, outliers.OUTLIERS_VIEW, *identity.VIEWS.values()}
    assert names <= set(params.OTHER_TOOLS_NAMES)
