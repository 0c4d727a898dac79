"""Issue 8, what comes in and goes out: checkpoints (memory, downloads), CSV cells that a
spreadsheet would run, names printed to a terminal, MAAD-Face CSV quirks.

Downloads are tested against real HTTP(S) servers on 127.0.0.1 (http.server in a thread; the
https one with a self-signed certificate made by openssl and trusted through SSL_CERT_FILE).
"""

from __future__ import annotations

import csv
import hashlib
import http.server
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
import torch

from faceaudit.attributes import ATTRIBUTES
from faceaudit.labels_io import MAAD_HEADER, read_label_file
from faceaudit.model import MAC, MACConfig, CheckpointError, load_checkpoint, save_checkpoint
from faceaudit.textsafe import csv_cell, csv_uncell, printable
from fiftyone_plugin import labels
from fiftyone_plugin.ingest import load_face_dataset

TINY = dict(backbone="tiny", embedding_size=64, hidden=(64,), branch_hidden=16)


def tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    save_checkpoint(MAC(MACConfig(**TINY)).eval(), str(path))
    return path


# ----------------------------------------------------------------------------- 8.4 memory


def test_a_small_checkpoint_declaring_huge_layers_is_refused_before_allocating(tmp_path):
    """A 2.5 KB file whose config declares 20,000-wide layers: refused with the shapes named,
    and the process never holds the 1.6 GB such a layer would take."""
    path = tmp_path / "bomb.pt"
    torch.save({"format": "faceaudit-mac", "version": 1,
                "config": {**MACConfig(**TINY).to_dict(), "embedding_size": 20_000, "hidden": [20_000]},
                "state_dict": {"head.branch_b2": torch.zeros(47, 2)}}, str(path))
    assert path.stat().st_size < 5_000
    script = (
        "import resource, sys, torch\n"
        "from faceaudit.model import CheckpointError, load_checkpoint\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load_checkpoint(sys.argv[1])\n"
        "    print('LOADED')\n"
        "except CheckpointError as e:\n"
        "    print('ERROR', e)\n"
        "print('GROWTH_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    growth_kb = int(out.stdout.rsplit("GROWTH_KB", 1)[1])
    assert growth_kb < 200_000, f"loading grew the process by {growth_kb // 1024} MB\n{out.stdout}"
    assert f"ERROR {path}: weights do not fit the model" in out.stdout
    assert "missing" in out.stdout


def test_checkpoint_with_a_nonsense_config_is_a_clear_error(tmp_path):
    path = tmp_path / "neg.pt"
    torch.save({"format": "faceaudit-mac", "version": 1,
                "config": {**MACConfig(**TINY).to_dict(), "hidden": [-5]}, "state_dict": {}}, str(path))
    with pytest.raises(CheckpointError, match=f"{path}: bad config in checkpoint"):
        load_checkpoint(str(path))


# ----------------------------------------------------------------------------- 8.5 downloads


class Server:
    """A real HTTP(S) server on 127.0.0.1 serving ``body`` (settable) for every GET."""

    def __init__(self, certfile: str | None = None):
        self.body, self.content_type, self.requests = b"", "application/octet-stream", []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FACEAUDIT_CACHE_DIR", str(folder))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FACEAUDIT_ALLOW_HTTP", raising=False)
    return folder


@pytest.fixture
def http_server():
    server = Server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    pem = folder / "localhost.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(pem), "-out", str(pem)], check=True, capture_output=True)
    return str(pem)


def cached_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_plain_http_is_refused_unless_allowed(tmp_path, cache, http_server, monkeypatch):
    http_server.body = tiny_checkpoint(tmp_path / "mac.pt").read_bytes()
    url = f"{http_server.base}/mac.pt"
    with pytest.raises(CheckpointError, match="plain http is refused.*FACEAUDIT_ALLOW_HTTP=1"):
        load_checkpoint(url)
    assert http_server.requests == []
    assert load_checkpoint(url, allow_http=True).cfg.backbone == "tiny"
    monkeypatch.setenv("FACEAUDIT_ALLOW_HTTP", "1")
    assert load_checkpoint(url).cfg.backbone == "tiny"
    assert len(http_server.requests) == 1  # the second load came from the cache
    assert len(cached_files(cache)) == 1


def test_https_with_a_trusted_certificate_needs_no_permission(tmp_path, cache, certificate, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", certificate)
    server = Server(certfile=certificate)
    try:
        server.body = tiny_checkpoint(tmp_path / "mac.pt").read_bytes()
        assert load_checkpoint(f"{server.base}/mac.pt", attributes=ATTRIBUTES).cfg.backbone == "tiny"
        assert server.requests == ["/mac.pt"]
    finally:
        server.close()


def test_https_with_an_untrusted_certificate_is_refused(tmp_path, cache, certificate, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = Server(certfile=certificate)
    try:
        server.body = tiny_checkpoint(tmp_path / "mac.pt").read_bytes()
        with pytest.raises(CheckpointError, match=r"download failed \(.*CERTIFICATE_VERIFY_FAILED.*nothing was cached at "):
            load_checkpoint(f"{server.base}/mac.pt")
        assert cached_files(cache) == []
    finally:
        server.close()


def test_a_captive_portal_page_is_never_cached(tmp_path, cache, http_server):
    http_server.body, http_server.content_type = b"<html><body>Please log in</body></html>", "text/html"
    url = f"{http_server.base}/models/mac.pt"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(url, allow_http=True)
    text = str(err.value)
    assert text.startswith(f"{url}: not a loadable torch checkpoint") and f"nothing was cached at {cache}" in text
    assert cached_files(cache) == []
    # once the network is right, the same command works (the page did not stick in the cache)
    http_server.body = tiny_checkpoint(tmp_path / "mac.pt").read_bytes()
    assert load_checkpoint(url, allow_http=True).cfg.backbone == "tiny"


def test_a_torch_file_that_is_not_a_mac_checkpoint_is_not_cached(tmp_path, cache, http_server):
    torch.save({"weight": torch.zeros(3)}, str(tmp_path / "other.pt"))
    http_server.body = (tmp_path / "other.pt").read_bytes()
    with pytest.raises(CheckpointError, match="not a faceaudit MAC checkpoint.*nothing was cached"):
        load_checkpoint(f"{http_server.base}/mac.pt", allow_http=True)
    assert cached_files(cache) == []


def test_expected_sha256(tmp_path, cache, http_server):
    body = tiny_checkpoint(tmp_path / "mac.pt").read_bytes()
    http_server.body = body
    good = hashlib.sha256(body).hexdigest()
    bad = hashlib.sha256(b"something else").hexdigest()
    url = f"{http_server.base}/mac.pt"
    with pytest.raises(CheckpointError, match=f"has SHA-256 {good}, expected {bad}"):
        load_checkpoint(f"{url}#sha256={bad}", allow_http=True)
    assert cached_files(cache) == []
    with pytest.raises(CheckpointError, match="fragment must be #sha256=<64 hex digits>"):
        load_checkpoint(f"{url}#sha256=abc", allow_http=True)
    assert load_checkpoint(f"{url}#sha256={good}", allow_http=True).cfg.backbone == "tiny"
    # a cached file that no longer matches (changed on disk) is refused, naming it
    (entry,) = cached_files(cache)
    (cache / entry).write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match=f"the cached file {cache / entry} .*delete it"):
        load_checkpoint(f"{url}#sha256={good}", allow_http=True)


def test_a_bad_cached_file_names_the_file_to_delete(tmp_path, cache, http_server):
    from faceaudit.model.download import cache_path

    url = f"{http_server.base}/mac.pt"
    target = Path(cache_path(url))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"<html>cached by an older version</html>")
    with pytest.raises(CheckpointError, match=f"delete the cached file {target} to download again"):
        load_checkpoint(url, allow_http=True)


# ----------------------------------------------------------------------------- 8.6 / 8.10 CSV, terminal

FACEAUDIT = str(Path(sys.executable).with_name("faceaudit"))
FORMULAS = ['=HYPERLINK("evil.example","x")', "@SUM(1+1)", "-dash", "+plus", "'quoted", "plain"]


def write_rows(path: Path, rows, encoding="utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(MAAD_HEADER)
        w.writerows(rows)
    return path


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def run_cli(*args, env=None):
    return subprocess.run([FACEAUDIT, *args], env=env or dict(os.environ), capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def formula_source(tmp_path, faces, dataset_name):
    """Identity folders named like spreadsheet formulas, loaded as source ``vgg``, and label rows
    for them as a MAAD-Face file gives them (formulas as plain text)."""
    root = tmp_path / "vgg"
    faces.identity_tree(root, {name: 1 for name in FORMULAS})
    load_face_dataset(str(root), source="vgg", domain="real", dataset_name=dataset_name)
    rng = np.random.default_rng(3)
    rows = [[f"{name}/0000.jpg", name, *rng.choice(["1", "-1", "0"], size=47)] for name in FORMULAS]
    return fo.load_dataset(dataset_name), sorted(rows)


def test_csv_cells_round_trip():
    for text in [*FORMULAS, "\tTAB", "\rCR", "''", "'", "", "-1"]:
        assert csv_uncell(csv_cell(text)) == text
        assert not csv_cell(text).startswith(("=", "+", "-", "@", "\t", "\r"))


def test_export_neutralises_formulas_and_import_reads_them_back(tmp_path, formula_source):
    ds, rows = formula_source
    labels.import_labels(ds, "vgg", str(write_rows(tmp_path / "in.csv", rows)))
    out = run_cli("export-labels", "--dataset", ds.name, str(tmp_path / "out.csv"))
    assert out.returncode == 0, out.stderr
    exported = read_rows(tmp_path / "out.csv")[1:]
    for row in exported:  # no text cell a spreadsheet would run; label cells stay numbers
        assert not row[0].startswith(("=", "+", "-", "@", "\t", "\r")), row[0]
        assert not row[1].startswith(("=", "+", "-", "@", "\t", "\r")), row[1]
        assert set(row[2:]) <= {"1", "-1", "0"}
    assert {r[1] for r in exported} >= {"'=HYPERLINK(\"evil.example\",\"x\")", "'@SUM(1+1)", "'-dash", "''quoted"}
    # and what export wrote, import reads back as the original names
    table = read_label_file(str(tmp_path / "out.csv"))
    assert sorted(zip(table.filenames, table.identities)) == [(r[0], r[1]) for r in rows]
    out = run_cli("import-labels", "--dataset", ds.name, "--source", "vgg", str(tmp_path / "out.csv"))
    assert out.returncode == 0, out.stderr
    assert f"{len(rows)} samples labelled" in out.stdout and "name no sample" not in out.stdout


def test_compare_csv_neutralises_source_names(tmp_path, faces, dataset_name):
    from faceaudit import report
    from fiftyone_plugin.compare import compute_comparison

    rng = np.random.default_rng(4)
    for k, (source, domain) in enumerate([("@SUM(1+1)", "real"), ("-synth", "synthetic")]):
        root = tmp_path / f"s{k}"
        faces.identity_tree(root, {"a": 3, "b": 3}, start=6 * k)
        load_face_dataset(str(root), source=source, domain=domain, dataset_name=dataset_name)
        names = sorted(f"{p.parent.name}/{p.name}" for p in root.rglob("*.jpg"))
        rows = [[n, n[0], *rng.choice(["1", "-1", "0"], size=47)] for n in names]
        labels.import_labels(fo.load_dataset(dataset_name), source, str(write_rows(tmp_path / f"{k}.csv", rows)))
    _, result = compute_comparison(fo.load_dataset(dataset_name))
    text = report.to_csv(result)
    header, *body = list(csv.reader(text.splitlines()))
    assert "'@SUM(1+1):positive" in header and "'-synth:negative" in header
    assert all(not cell.startswith(("=", "+", "-", "@")) for cell in header)
    for row in body:  # the numbers are numbers
        assert all(float(v) >= 0 for v in row[2:] if v != "inf")


def test_label_files_with_a_byte_order_mark_are_read(tmp_path, formula_source):
    ds, rows = formula_source
    path = write_rows(tmp_path / "bom.csv", rows, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert labels.import_labels(ds, "vgg", str(path)).labelled == len(rows)
    celeba = tmp_path / "list_attr_celeba.txt"
    celeba.write_text("1\nMale Smiling\n000001.jpg 1 -1\n", encoding="utf-8-sig")
    table = read_label_file(str(celeba))
    assert table.filenames == ["000001.jpg"]


def test_export_keeps_the_identity_the_imported_file_gave(tmp_path, faces, dataset_name):
    """MAAD-Face's released CSV has the integer class id in Identity (2 for n000002)."""
    root = tmp_path / "vgg"
    faces.identity_tree(root, {"n000002": 2, "n000017": 1})
    load_face_dataset(str(root), source="vgg", domain="real", dataset_name=dataset_name)
    ds = fo.load_dataset(dataset_name)
    rows = [["n000002/0000.jpg", "2", *["1"] * 47], ["n000002/0001.jpg", "2", *["-1"] * 47],
            ["n000017/0000.jpg", "17", *["0"] * 47]]
    labels.import_labels(ds, "vgg", str(write_rows(tmp_path / "released.csv", rows)))
    labels.export_labels(ds, str(tmp_path / "out.csv"))
    assert read_rows(tmp_path / "out.csv")[1:] == rows
    assert sorted(ds.distinct("identity")) == ["n000002", "n000017"]  # the folder names stay


def test_names_with_escape_sequences_are_printed_escaped(tmp_path, formula_source):
    ds, rows = formula_source
    evil = "\x1b]0;pwned\x07\x1b[2J"
    bad = rows + [[f"x{evil}\nFAKE LINE/0001.jpg", "x", *["1"] * 47]]
    out = run_cli("import-labels", "--dataset", ds.name, "--source", "vgg", str(write_rows(tmp_path / "e.csv", bad)))
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\nFAKE LINE/0001.jpg" in out.stdout
    assert printable("a\x1b[2J\nb\tc", keep_layout=True) == "a\\x1b[2J\nb\tc"


def test_no_mongodb_version_notice_from_any_command(tmp_path, formula_source):
    ds, rows = formula_source
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DATABASE_VALIDATION"}
    out = run_cli("export-labels", "--dataset", ds.name, str(tmp_path / "out.csv"), env=env)
    assert out.returncode == 0, out.stderr
    assert "oldest supported" not in (out.stdout + out.stderr).lower()
