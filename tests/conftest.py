"""Test set-up: a FiftyOne database and plugins directory of the test run's own.

FiftyOne starts its bundled mongod on the database directory below (a real server, not a mock).
Set FIFTYONE_DATABASE_URI beforehand to run the suite against another MongoDB instead.
These variables must be set before anything imports fiftyone, hence at module level.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = Path(tempfile.mkdtemp(prefix="faceaudit-tests-"))
if not os.environ.get("FIFTYONE_DATABASE_URI"):
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
    """Connect once for the whole run. FiftyOne's database service stops mongod when its last
    client exits; holding a client here keeps one server up for every `faceaudit` subprocess,
    instead of a stop/start race between two of them."""
    import fiftyone as fo

    fo.list_datasets()
    yield


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
