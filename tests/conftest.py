"""Test set-up: a FiftyOne database and plugins directory of the test run's own.

The run's mongod (FiftyOne's bundled one, a real server, not a mock) serves the database folder
below. It is started the way ``faceaudit`` commands start theirs (faceaudit_cli.database: found
by its folder, started under a lock) and FiftyOne is pointed at it by FIFTYONE_DATABASE_URI:
FiftyOne's own service would attach to any FiftyOne database service running on the machine,
whatever its folder, so two runs at once (``pytest -n 2`` workers, or another checkout's tests)
would share one database and one run's delegated-operation launchers would run the other's
operations. It is stopped when the run ends. Set FIFTYONE_DATABASE_URI beforehand to run the
suite against another MongoDB instead. These variables must be set before anything imports
fiftyone, hence at module level.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = Path(tempfile.mkdtemp(prefix="faceaudit-tests-"))
OWN_DATABASE = not os.environ.get("FIFTYONE_DATABASE_URI")
if OWN_DATABASE:
    os.environ["FIFTYONE_DATABASE_DIR"] = str(RUN_DIR / "db")
os.environ["FIFTYONE_PLUGINS_DIR"] = str(RUN_DIR / "plugins")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
(RUN_DIR / "plugins").mkdir()
(RUN_DIR / "plugins" / "face-audit").symlink_to(REPO)

import pytest  # noqa: E402

from facefixtures import FaceImages  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def database():
    """Connect once for the whole run (every `faceaudit` subprocess uses the same server, by
    FIFTYONE_DATABASE_URI); stop the run's own mongod at the end."""
    import fiftyone as fo

    fo.list_datasets()
    yield


def _xdist_controller(config) -> bool:
    """Whether this process only hands tests to ``pytest -n`` workers (it runs none itself)."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config):
    """Start the run's own mongod (before the test modules import fiftyone), in each process
    that runs tests."""
    if OWN_DATABASE and not _xdist_controller(config):
        from faceaudit_cli import database

        database.ensure_database()  # sets FIFTYONE_DATABASE_URI to the folder's own mongod
        # commands see the address as one the user gave (the tests' messages name it so), not
        # as the service of a database folder
        os.environ.pop(database.MANAGED, None)


def pytest_unconfigure(config):
    if OWN_DATABASE and not _xdist_controller(config):
        from faceaudit_cli import database

        database.stop_database(str(RUN_DIR / "db"))
    # each run's database folder is some 300 MB: left behind, a few dozen runs fill a disk (a CI
    # machine's pip install then fails for want of space). FACEAUDIT_KEEP_TEST_DB=1 keeps it.
    if not os.environ.get("FACEAUDIT_KEEP_TEST_DB"):
        shutil.rmtree(RUN_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def faces() -> FaceImages:
    """Real face images (LFW crops shipped with scikit-image) to write into fixtures."""
    return FaceImages.load()


@pytest.fixture
def dataset_name():
    """A fresh dataset name; the dataset is deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for `faceaudit` subprocesses: the same database and plugins as the tests."""
    return dict(os.environ)


@pytest.fixture
def collection():
    """A scratch MongoDB collection in FiftyOne's database, dropped after the test."""
    import fiftyone.core.odm as foo_db

    coll = foo_db.get_db_conn()[f"scratch-{uuid.uuid4().hex[:8]}"]
    yield coll
    coll.drop()


def pytest_collection_modifyitems(config, items):
    """Browser tests get one rerun (pytest-rerunfailures; the summary lists each rerun as R).
    Under two workers on two cores, FiftyOne's App sometimes reloads its page state while a test
    drives it (a panel opened, a session reconnecting) and a filter or a panel message is gone:
    that is open in issue 15, and one rerun keeps it from hiding every other result of a CI run."""
    for item in items:
        if item.get_closest_marker("browser") is not None and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=1))
    _longest_files_first(items)


#: test files by their time in a CI run (the summary's "seconds per test file", stop 20, fresh
#: clone, two workers, longest first): pytest-xdist's ``--dist loadfile`` hands files to the
#: workers in collection order, so longest first keeps one worker from idling at the end
LONGEST_FILES = ("test_app_panel", "test_app_errors", "test_faults", "test_app_runs", "test_app", "test_scale",
                 "test_annotate", "test_app_operators", "test_integrity_runs", "test_cli", "test_embed",
                 "test_app_identity", "test_app_smaller", "test_app_newuser", "test_run", "test_integrity_state",
                 "test_export", "test_locks", "test_app_labels", "test_app_panel_layout", "test_integrity_service",
                 "test_adversity_io", "test_identity", "test_plugin", "test_adversity_load", "test_compare")


#: seconds per test file (setup, call and teardown of its tests), summed as reports arrive
_FILE_SECONDS: dict[str, float] = defaultdict(float)
_STARTED = time.monotonic()


def pytest_runtest_logreport(report):
    """Add each phase's duration to its file's total (under xdist, in the controller)."""
    _FILE_SECONDS[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter):
    """Print the files by total time, longest first: the figures to order LONGEST_FILES by."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("seconds per test file (to order LONGEST_FILES by)")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:25]:
        terminalreporter.write_line(f"{seconds:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f}  all files "
                                f"({time.monotonic() - _STARTED:.0f} s wall)")


def _longest_files_first(items) -> None:
    """Reorder ``items`` in place: the files of :data:`LONGEST_FILES` first, in that order, then
    the rest as collected (each file's tests keep their order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
