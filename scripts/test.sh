#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-browser.sh
# Two workers (pytest-xdist), one test file each at a time: most tests wait on subprocesses,
# mongod or the browser, so two share the 2 cores of a CI machine well. FACEAUDIT_TEST_WORKERS=0: one process.
exec .venv/bin/python -m pytest -n "${FACEAUDIT_TEST_WORKERS:-2}" --dist loadfile "$@"
