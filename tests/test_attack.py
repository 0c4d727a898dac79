"""Findings of an adversarial pass over ``faceaudit run`` configs, shards and fan-out: each test
reproduces what was refused too late (after loading and annotating) or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from faceaudit.config import ConfigError, load_config


def _config(directory: Path, faces_dir: Path, extra: str = "", dataset: str = '"atk"', name: str = '"r"',
            bom: bool = False) -> Path:
    """A small valid config (one real, one synthetic source, agegender), with ``extra`` appended."""
    text = f'''dataset = {dataset}

[[sources]]
path = "{faces_dir}"
name = {name}
domain = "real"

[[sources]]
path = "{faces_dir}"
name = "s"
domain = "synthetic"

[model]
kind = "mac"
checkpoint = "{faces_dir / 'mac.pt'}"
{extra}
'''
    path = directory / "study.toml"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


@pytest.fixture
def faces_dir(tmp_path) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not read by the config")
    (folder / "mac.pt").write_bytes(b"PK\x03\x04 a zip's start: the config checks a checkpoint's type, not its weights")
    return folder


def _refused(path: Path, *expected: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    text = str(error.value)
    for part in expected:
        assert part in text, text
    return text


def test_two_reports_on_one_path_are_refused(tmp_path, faces_dir):
    # was: accepted, and the JSON report silently overwrote the HTML one
    config = _config(tmp_path, faces_dir, '[reports]\nhtml = "out/r.x"\njson = "out/r.x"')
    _refused(config, "line 18: reports.json:", "reports.html")
    # the same file spelt two ways is the same file
    config = _config(tmp_path, faces_dir, '[reports]\nhtml = "out/r.x"\ncsv = "out/../out/r.x"')
    _refused(config, "reports.csv:", "reports.html")
    # a report must not overwrite the config that asks for it (written last, after the whole run)
    _refused(_config(tmp_path, faces_dir, '[reports]\nhtml = "study.toml"'), "reports.html:", "the config")


def test_report_paths_that_cannot_be_written_are_refused_before_anything_runs(tmp_path, faces_dir):
    # was: refused only after load, annotate, compare and outliers, as "[Errno 17] File exists"
    _refused(_config(tmp_path, faces_dir, '[reports]\nhtml = "study.toml/r.html"'),
             "line 17: reports.html:", "is a file, not a folder")
    _refused(_config(tmp_path, faces_dir, '[reports]\ncsv = "faces"'), "reports.csv:", "is a folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root writes anywhere
            _refused(_config(tmp_path, faces_dir, '[reports]\njson = "locked/sub/r.json"'),
                     "reports.json:", "not writable")
    finally:
        locked.chmod(0o700)
    ok = load_config(str(_config(tmp_path, faces_dir, '[reports]\nhtml = "new/deeper/r.html"')))
    assert ok.reports.html == str(tmp_path / "new" / "deeper" / "r.html")


def test_a_source_path_that_is_a_plain_file_is_refused_by_the_config(tmp_path, faces_dir):
    # was: the sources before it were loaded, then "is a file, not a dataset folder or a .rec file"
    text = _config(tmp_path, faces_dir).read_text().replace(f'path = "{faces_dir}"\nname = "s"',
                                                            f'path = "{faces_dir / "a.png"}"\nname = "s"')
    (tmp_path / "study.toml").write_text(text)
    _refused(tmp_path / "study.toml", "line 9: sources[1].path:", "a.png", "not a dataset folder or a .rec file")
    rec = faces_dir / "train.rec"
    rec.write_bytes(b"")
    (tmp_path / "study.toml").write_text(text.replace("a.png\"\nname", "train.rec\"\nname"))
    assert load_config(str(tmp_path / "study.toml")).sources[1].path == str(rec)


@pytest.mark.parametrize("key,value", [("dataset", '["a"]'), ("dataset", "5"), ("name", "{a = 1}"),
                                       ("name", "true")])
def test_names_of_the_wrong_type_are_refused(tmp_path, faces_dir, key, value):
    # was: dataset = ["a"] created the dataset "['a']", name = {a = 1} the source "{'a': 1}"
    config = _config(tmp_path, faces_dir, **{key: value})
    _refused(config, f"{'sources[0].' if key == 'name' else ''}{key}:", "expected text")


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path, faces_dir):
    # was: "not valid TOML: Invalid statement (at line 1, column 1)" (editors on Windows write a BOM)
    assert load_config(str(_config(tmp_path, faces_dir, bom=True))).dataset == "atk"


from test_scale import tiny_mac  # noqa: E402,F401 - a fixture


def test_reports_follow_new_outlier_settings_and_name_the_configured_tag(faces, tmp_path, tiny_mac,  # noqa: F811
                                                                         dataset_name):
    # was: changing [outliers] top re-tagged the faces but kept the old HTML ("reports up to date":
    # it said 3 faces were tagged when 4 were), and a config's own tag was not the one shown
    from fiftyone_plugin.pipeline import run_study

    faces.identity_tree(tmp_path / "real", {f"p{k}": 3 for k in range(3)})
    faces.identity_tree(tmp_path / "synth", {f"q{k}": 3 for k in range(3)}, start=20)
    text = f'''dataset = "{dataset_name}"
[[sources]]
path = "{tmp_path / 'real'}"
name = "r"
domain = "real"
[[sources]]
path = "{tmp_path / 'synth'}"
name = "s"
domain = "synthetic"
[model]
checkpoint = "{tiny_mac}"
device = "cpu"
workers = 0
[outliers]
top = 3
tag = "suspect"
[reports]
html = "r.html"
'''
    config = tmp_path / "study.toml"
    config.write_text(text)
    run_study(load_config(str(config)), echo=lambda line: None)
    html = (tmp_path / "r.html").read_text()
    assert "3 faces carry the tag <code>suspect</code>" in html
    config.write_text(text.replace("top = 3", "top = 4"))
    study = run_study(load_config(str(config)), echo=lambda line: None)
    assert study.steps["outliers"] == "4 synthetic samples tagged 'suspect'"
    assert study.written == [str(tmp_path / "r.html")], study.steps
    assert "4 faces carry the tag <code>suspect</code>" in (tmp_path / "r.html").read_text()


def test_fan_out_of_one_source_does_not_block_or_report_another(faces, tmp_path, tiny_mac, dataset_name):  # noqa: F811
    # was: after `annotate --delegate --shards 2 --source r`, the same for --source s queued nothing
    # and reported r's operations as s's shards ("queued"): s was never labelled by the launchers
    from fiftyone_plugin.fanout import fan_out, shard_status
    from fiftyone_plugin.ingest import load_face_dataset

    # 16 faces a source: a shard is the hashed _id modulo the count, and with 6 faces one of the
    # two shards was empty in 1 run of 32 (CI of stop 13: only "0/2" queued)
    faces.identity_tree(tmp_path / "real", {f"p{k}": 8 for k in range(2)})
    faces.identity_tree(tmp_path / "synth", {f"q{k}": 8 for k in range(2)}, start=20)
    load_face_dataset(str(tmp_path / "real"), source="r", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)
    options = {"model": "mac", "checkpoint": tiny_mac, "device": "cpu", "batch_size": 2}
    assert fan_out(dataset_name, 2, options, source="r").queued == ["0/2", "1/2"]
    assert {s.state for s in shard_status(dataset_name, 2, source="s").shards} == {None}  # nothing of s queued
    second = fan_out(dataset_name, 2, options, source="s")
    assert second.queued == [s.shard for s in second.shards if s.left], second.summary()
    assert second.queued and all(s.state == "queued" for s in second.shards if s.left)
    assert fan_out(dataset_name, 2, options, source="s").queued == []  # and only once
    assert fan_out(dataset_name, 2, options, source="r").queued == []


def test_two_fan_outs_at_once_queue_each_shard_once(faces, tmp_path, tiny_mac, dataset_name):  # noqa: F811
    # was: two `annotate --delegate --shards 3` started together both saw no operation and both
    # queued: shards with two operations, each labelled by two launchers
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import fiftyone as fo
    from fiftyone.operators.delegated import DelegatedOperationService

    from fiftyone_plugin.fanout import fan_out, shard_operations
    from fiftyone_plugin.ingest import load_face_dataset

    # 48 faces: with 16, one of 4 shards (hashed _id modulo 4) was empty in about 1 run in 25
    faces.identity_tree(tmp_path / "synth", {f"q{k}": 12 for k in range(4)})
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)
    options = {"model": "mac", "checkpoint": tiny_mac, "device": "cpu", "batch_size": 2}
    for count in (2, 3, 4):
        start = threading.Barrier(3)

        def queue(_):
            start.wait()
            return fan_out(dataset_name, count, options).queued

        with ThreadPoolExecutor(3) as pool:
            queued = list(pool.map(queue, range(3)))
        ops = shard_operations(dataset_name, fo.load_dataset(dataset_name).view())
        mine = {shard: len(group) for shard, group in ops.items()}
        assert mine == {f"{i}/{count}": 1 for i in range(count)}, queued
        assert sorted(s for q in queued for s in q) == sorted(mine), queued
        for group in ops.values():  # clear the queue for the next round
            for op in group:
                DelegatedOperationService().delete_operation(op.id)


def test_fan_out_checks_the_checkpoint_and_queues_its_absolute_path(faces, tmp_path, tiny_mac, dataset_name,  # noqa: F811
                                                                   monkeypatch):
    # was: `annotate --delegate --shards 2 --checkpoint /etc/passwd` queued two operations that
    # every launcher then failed, and a relative --checkpoint was queued as it was, so launchers
    # (another working folder, another host) looked for it relative to their own folder
    import shutil

    import fiftyone as fo

    from fiftyone_plugin.fanout import fan_out, shard_operations
    from fiftyone_plugin.ingest import load_face_dataset

    faces.identity_tree(tmp_path / "synth", {f"q{k}": 3 for k in range(2)})
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)
    (tmp_path / "bogus.pt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    shutil.copy(tiny_mac, tmp_path / "mac.pt")
    monkeypatch.chdir(tmp_path)
    for bad, model in (("bogus.pt", "mac"), ("missing.pt", "mac"), ("bogus.pt", None)):  # the App: None
        with pytest.raises(ValueError, match=bad):
            fan_out(dataset_name, 2, {"model": model, "checkpoint": bad, "device": "cpu"})
        assert shard_operations(dataset_name) == {}
    assert fan_out(dataset_name, 2, {"model": "mac", "checkpoint": "mac.pt", "device": "cpu"}).queued
    ops = shard_operations(dataset_name, fo.load_dataset(dataset_name).view())
    assert {op.context.request_params["params"]["checkpoint"] for group in ops.values() for op in group} == \
        {str(tmp_path / "mac.pt")}


def test_label_files_keep_names_that_begin_or_end_with_a_space(tmp_path):
    # was: export-labels wrote the folder " sp" as it is and import-labels stripped it to "sp", so
    # the row named no sample ("1 rows name no sample of the source (e.g. sp/x6.png)")
    from faceaudit.labels_io import read_maad_csv, write_maad_csv

    names = [(" sp/a.png", " sp"), ("tail /b.png", "tail "), ("\ttab/c.png", "\ttab"), ("=x/d.png", "=x")]
    write_maad_csv(str(tmp_path / "l.csv"), [(f, i, [1] * 47) for f, i in names])
    table = read_maad_csv(str(tmp_path / "l.csv"))
    assert list(zip(table.filenames, table.identities)) == names


def test_a_study_without_a_synthetic_source_is_refused_before_loading(faces, tmp_path, tiny_mac,  # noqa: F811
                                                                      dataset_name):
    # was: every source was loaded and annotated (hours on a real study), then compare said
    # "the view has no synthetic source to compare with"
    import fiftyone as fo

    from fiftyone_plugin.ingest import load_face_dataset
    from fiftyone_plugin.pipeline import run_study

    faces.identity_tree(tmp_path / "real", {f"p{k}": 2 for k in range(2)})
    faces.identity_tree(tmp_path / "synth", {f"q{k}": 2 for k in range(2)}, start=20)
    config = tmp_path / "study.toml"
    config.write_text(f'dataset = "{dataset_name}"\n[[sources]]\npath = "{tmp_path / "real"}"\nname = "r"\n'
                      f'domain = "real"\n[model]\ncheckpoint = "{tiny_mac}"\ndevice = "cpu"\n')
    with pytest.raises(ValueError, match="no synthetic source"):
        run_study(load_config(str(config)), echo=lambda line: None)
    assert not fo.dataset_exists(dataset_name)
    # a synthetic source loaded into the dataset before counts: the config may list only the rest
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)
    assert run_study(load_config(str(config)), echo=lambda line: None).steps["compare"] == "computed"


def test_run_refuses_demo_options_with_a_config_and_repeats_them_in_its_app_hint(tmp_path, faces_dir, capsys):
    # was: `run study.toml --dataset other` ignored --dataset without a word, and the demo's last
    # line, `faceaudit run --app`, left out --dataset/--dir: it opened (and re-ran) another dataset
    from faceaudit_cli import main
    from faceaudit_cli.main import app_hint, build_parser

    config = _config(tmp_path, faces_dir)
    assert main(["run", str(config), "--dataset", "other"]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["run", str(config), "--dir", "x"]) == 2
    assert "--dir" in capsys.readouterr().err
    demo = build_parser().parse_args(["run", "--dataset", "mine", "--dir", "/tmp/d d"])
    assert app_hint(demo) == "faceaudit run --dir '/tmp/d d' --dataset mine --app"  # pytest's argv: not a path to faceaudit
    assert app_hint(build_parser().parse_args(["run", "s.toml"])) == "faceaudit run s.toml --app"


@pytest.mark.parametrize("text", ["real\u202egnp.exe", "a\u2066b", "line\u2028break", "para\u2029x"])
def test_names_refuse_bidi_overrides_and_line_separators(text):
    # was: accepted; a right-to-left override shows "real\u202egnp.exe" as "realexe.png" in a
    # terminal, the App and the report (Trojan Source), and U+2028/U+2029 break lines
    from faceaudit import params

    with pytest.raises(params.ParamError, match="source: must not contain"):
        params.name("source", text)


def test_names_keep_joiners_that_scripts_need():
    from faceaudit import params

    assert params.name("source", "می\u200cخواهم") == "می\u200cخواهم"  # Persian zero-width non-joiner


def test_compare_checks_its_output_files_before_computing(tmp_path, faces_dir, capsys, dataset_name):
    # was: `compare --html study.toml/x.html` or two outputs on one file computed and stored the
    # comparison, then failed with "[Errno 20] Not a directory" (or wrote one file over the other)
    import fiftyone as fo

    from faceaudit_cli import main
    from fiftyone_plugin.compare import stored_comparison
    from fiftyone_plugin.ingest import load_face_dataset

    load_face_dataset(str(faces_dir), source="s", domain="synthetic", dataset_name=dataset_name,
                      check_images=False)
    for outputs, problem in ((["--html", str(faces_dir / "a.png" / "x.html")], "is a file, not a folder"),
                             (["--csv", str(tmp_path / "o"), "--json", str(tmp_path / "o")], "is also"),
                             (["--json", str(faces_dir)], "is a folder")):
        assert main(["compare", "--dataset", dataset_name, *outputs]) == 2
        assert problem in capsys.readouterr().err
    assert stored_comparison(fo.load_dataset(dataset_name)) is None


def test_a_lock_left_by_a_killed_fan_out_expires(faces, tmp_path, tiny_mac, dataset_name):  # noqa: F811
    import datetime as dt
    import time

    import fiftyone.core.odm as foo_db

    from fiftyone_plugin import fanout
    from fiftyone_plugin.ingest import load_face_dataset

    faces.identity_tree(tmp_path / "synth", {"q": 3})
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)
    locks = foo_db.get_db_conn()[fanout.LOCKS]
    old = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(seconds=fanout.LOCK_EXPIRES + 5)
    locks.insert_one({"_id": f"fan_out:{dataset_name}", "owner": "killed", "renewed_at": old})
    start = time.monotonic()
    assert fanout.fan_out(dataset_name, 1, {"model": "mac", "checkpoint": tiny_mac}).queued == ["0/1"]
    assert time.monotonic() - start < 30 and locks.find_one({"_id": f"fan_out:{dataset_name}"}) is None


def test_fan_out_with_another_shard_count_while_shards_are_live_is_refused(faces, tmp_path, tiny_mac,  # noqa: F811
                                                                           dataset_name):
    # was: `--shards 3` after `--shards 2` (still queued) queued three more operations over the
    # same samples: every sample labelled twice, by two launchers
    from fiftyone_plugin.fanout import fan_out, shard_operations
    from fiftyone_plugin.ingest import load_face_dataset

    faces.identity_tree(tmp_path / "synth", {f"q{k}": 3 for k in range(3)})
    load_face_dataset(str(tmp_path / "synth"), source="s", domain="synthetic", dataset_name=dataset_name)
    options = {"model": "mac", "checkpoint": tiny_mac}
    queued = fan_out(dataset_name, 2, options).queued
    with pytest.raises(ValueError, match="--shards 2"):
        fan_out(dataset_name, 3, options)
    assert sorted(shard_operations(dataset_name)) == sorted(queued)
