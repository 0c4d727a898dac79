"""Attribute labels: MAAD-Face CSV import/export, the compact code, the App-facing fields."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest

from faceaudit.attributes import ATTRIBUTES
from faceaudit.labels_io import LabelFileError, MAAD_HEADER, read_celeba_attributes, read_maad_csv
from fiftyone_plugin import labels
from fiftyone_plugin.ingest import load_face_dataset

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))


def write_csv(path, rows, header=MAAD_HEADER):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def random_rows(names, rng):
    return [[name, name.split("/")[0], *rng.choice(["1", "-1", "0"], size=47)] for name in names]


@pytest.fixture
def loaded(tmp_path, faces, dataset_name):
    root = tmp_path / "vgg"
    faces.identity_tree(root, {"n000002": 3, "n000017": 2})
    load_face_dataset(str(root), source="vgg", domain="real", dataset_name=dataset_name)
    names = sorted(f"{p.parent.name}/{p.name}" for p in root.rglob("*.jpg"))
    return fo.load_dataset(dataset_name), root, names


def test_codes_round_trip():
    states = np.random.default_rng(0).integers(-1, 2, size=(100, 47)).astype(np.int8)
    codes = labels.encode_codes(states)
    assert all(len(c) == 47 and set(c) <= set("pnu") for c in codes)
    assert np.array_equal(labels.decode_codes(codes), states)


def test_import_then_export_gives_back_the_rows(tmp_path, loaded, cli_env):
    ds, root, names = loaded
    rng = np.random.default_rng(1)
    rows = random_rows(names, rng) + [["n999999/0001.jpg", "n999999", *["1"] * 47]]
    src = write_csv(tmp_path / "maad.csv", rows)

    out = subprocess.run([FACEAUDIT, "import-labels", "--dataset", ds.name, "--source", "vgg", str(src)],
                         env=cli_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "5 samples labelled, 1 rows name no sample" in out.stdout and "n999999/0001.jpg" in out.stdout

    dst = tmp_path / "out.csv"
    out = subprocess.run([FACEAUDIT, "export-labels", "--dataset", ds.name, str(dst)],
                         env=cli_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with open(dst, newline="") as f:
        exported = list(csv.reader(f))
    assert tuple(exported[0]) == MAAD_HEADER
    assert exported[1:] == sorted(rows[:-1])

    # the App-facing fields agree with the code: +1 / -1 / 0 for imported labels
    ds.reload()
    sample = ds.match(fo.ViewField("filepath") == str(root / rows[0][0])).first()
    for attr, value in zip(ATTRIBUTES, rows[0][2:]):
        assert sample[labels.field_name(attr)] == float(value)
    assert labels.decode_codes([sample[labels.CODE_FIELD]])[0].tolist() == [int(v) for v in rows[0][2:]]
    # the sidebar groups the attributes by category
    groups = {g.name: g.paths for g in ds.app_config.sidebar_groups}
    assert groups["attributes: demographics"][:2] == ["mac_Male", "mac_Young"]
    # and a sidebar-style filter on one attribute matches the imported positives
    male = ds.match(fo.ViewField("mac_Male") > 0.5).values("filepath")
    assert sorted(male) == sorted(str(root / r[0]) for r in rows[:-1] if r[2] == "1")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda rows: rows[2].__setitem__(5, "2"), r"line 4: Senior is '2'; values must be 1, -1 or 0"),
        (lambda rows: rows[1].pop(), r"line 3: 48 columns, expected 49"),
        (lambda rows: rows[0].__setitem__(2, "yes"), r"line 2: Male is 'yes'"),
    ],
)
def test_malformed_rows_are_rejected_and_nothing_is_written(tmp_path, loaded, mutate, match):
    ds, _, names = loaded
    rows = random_rows(names, np.random.default_rng(2))
    mutate(rows)
    bad = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(LabelFileError, match=match):
        labels.import_labels(ds, "vgg", str(bad))
    assert len(ds.exists(labels.CODE_FIELD)) == 0


def test_wrong_columns(tmp_path):
    header = ["Filename", "Identity", *ATTRIBUTES[:-1], "Blurry"]
    bad = write_csv(tmp_path / "cols.csv", [], header=header)
    with pytest.raises(LabelFileError, match="line 1: missing attribute columns Attractive; unknown columns Blurry"):
        read_maad_csv(str(bad))


def test_unknown_source(tmp_path, loaded):
    ds, _, names = loaded
    src = write_csv(tmp_path / "maad.csv", random_rows(names, np.random.default_rng(3)))
    with pytest.raises(ValueError, match="source 'nope' is not in dataset"):
        labels.import_labels(ds, "nope", str(src))


def test_celeba_attributes_map_onto_maad(tmp_path):
    names = ["5_o_Clock_Shadow", "Eyeglasses", "Male", "Mouth_Slightly_Open", "Blurry"]
    text = f"2\n{' '.join(names)}\n000001.jpg  1 -1  1  1 -1\n000002.jpg -1  1 -1 -1  1\n"
    (tmp_path / "list_attr_celeba.txt").write_text(text)
    table = read_celeba_attributes(str(tmp_path / "list_attr_celeba.txt"))
    col = {a: i for i, a in enumerate(ATTRIBUTES)}
    assert table.filenames == ["000001.jpg", "000002.jpg"]
    assert table.states[:, col["Male"]].tolist() == [1, -1]
    assert table.states[:, col["5_o_Clock_Shadow"]].tolist() == [1, -1]
    assert table.states[:, col["No_Eyewear"]].tolist() == [1, -1]  # not Eyeglasses
    assert table.states[:, col["Mouth_Closed"]].tolist() == [-1, 1]  # not Mouth_Slightly_Open
    assert table.states[:, col["Asian"]].tolist() == [0, 0]  # CelebA has no such attribute
