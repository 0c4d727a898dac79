#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-browser.sh
# Two workers (pytest-xdist), one test file each at a time: most tests wait on subprocesses,
# mongod or the browser, so two share the 2 cores of a CI machine well. FACEAUDIT_TEST_WORKERS=0: one process.
WORKERS=${FACEAUDIT_TEST_WORKERS:-2}
# One OpenMP/BLAS thread per core and worker: two workers whose torch processes each spin two
# threads on two cores ran a MAC training 4x slower (147 s vs 35 s side by side, bench-free probe).
if [ "$WORKERS" -gt 0 ]; then
  THREADS=$(( $(nproc) / WORKERS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
fi
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadfile "$@"
