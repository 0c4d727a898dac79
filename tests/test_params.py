"""The shared argument validation: strings from the App's forms, Python values, bad values named."""

from __future__ import annotations

import pytest

from faceaudit import params as P


@pytest.mark.parametrize("value, expected", [("false", False), ("true", True), (False, False), (True, True),
                                             ("0", False), (1, True), (None, None), ("", None)])
def test_booleans_from_forms_and_python(value, expected):
    assert P.to_bool("delegate", value) is expected


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1.5", float("nan"), "x", True])
def test_threshold_refuses_what_is_not_a_reliability(value):
    with pytest.raises(P.ParamError, match="^threshold: "):
        P.threshold(value)


@pytest.mark.parametrize("value, expected", [("0.6", 0.6), (0, 0.0), (1, 1.0), (None, None)])
def test_threshold_accepts_reliabilities(value, expected):
    assert P.threshold(value) == expected


@pytest.mark.parametrize("value", [0, -2, "2.5", "nan", False])
def test_mc_passes_at_least_one(value):
    with pytest.raises(P.ParamError, match="^mc_passes: "):
        P.mc_passes(value)


def test_ints_from_form_strings():
    assert P.batch_size("32") == 32 and P.mc_passes("5") == 5 and P.mc_passes("") is None


@pytest.mark.parametrize("value", ["$source", "a\x1b]0;owned\x07", "two\nlines", " padded", "x" * 201, ""])
def test_names_that_would_be_read_as_paths_or_print_escapes_are_refused(value):
    with pytest.raises(P.ParamError, match="^source: "):
        P.name("source", value)


@pytest.mark.parametrize("value", ["bupt-balancedface", "a.b", "../x", '{"$gt": ""}', "名前", "<b>x</b>"])
def test_ordinary_names_pass_unchanged(value):
    assert P.name("source", value) == value


def test_shards():
    assert P.shard("1/4") == (1, 4) and P.shard(None) is None
    assert P.shard("auto", {"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert P.shard("auto", {"SLURM_PROCID": "2", "SLURM_NTASKS": "5"}) == (2, 5)
    assert P.shard("auto", {}) == (0, 1)
    for bad in ("4/4", "-1/2", "1/0", "a/b", "1-2"):
        with pytest.raises(P.ParamError, match="^shard: "):
            P.shard(bad)


def test_devices():
    assert P.device("cuda:1") == "cuda:1" and P.device(None) == "auto"
    with pytest.raises(P.ParamError, match="^device: "):
        P.device("gpu; rm -rf /")


def test_export_folder_refuses_a_folder_that_holds_something_else(tmp_path):
    """The export form's check (new-user review C7): a new or empty folder, or one holding an
    export's own file (the run compares it with the view), passes; a non-empty one only with
    overwrite; the words are the run's (faceaudit.export._state says params.not_empty)."""
    assert P.export_folder(str(tmp_path / "new")) == str(tmp_path / "new")
    assert P.export_folder(str(tmp_path)) == str(tmp_path)  # empty
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(P.ParamError) as refused:
        P.export_folder(str(tmp_path))
    assert refused.value.param == "out" and refused.value.problem == P.not_empty(str(tmp_path), 1)
    assert P.export_folder(str(tmp_path), overwrite="true") == str(tmp_path)
    assert P.export_folder(str(tmp_path), resumable=("notes.txt",)) == str(tmp_path)
    with pytest.raises(P.ParamError, match="is a file, not a folder"):
        P.export_folder(str(tmp_path / "notes.txt"))


def test_overwrite_is_one_job():
    assert P.overwrite("true") is True and P.overwrite(None) is False and P.overwrite(False, shards=4) is False
    with pytest.raises(P.ParamError, match="embed in one job"):
        P.overwrite(True, shards=2)
