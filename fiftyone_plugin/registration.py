"""Whether the App will show faceaudit: FiftyOne finds plugins by walking its plugins folder, and
a link there that points at a deleted checkout (or another checkout's setup replacing it) makes
the operators and panels vanish from the App without a word. :func:`plugin_problem` says so in
one line, for the doors that send a user to the App."""

from __future__ import annotations

import os
from pathlib import Path

PLUGIN_NAME = "@faceaudit/face-audit"
LINK_NAME = "face-audit"  # what scripts/setup.sh links into the plugins folder


def plugin_root() -> Path | None:
    """This checkout's plugin folder (the repository root, with fiftyone.yml); None when the
    code runs without the plugin files (an install from a wheel)."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "fiftyone.yml").is_file() else None


def plugin_problem() -> str | None:
    """None when FiftyOne's plugins folder holds this checkout as :data:`PLUGIN_NAME`, enabled;
    else what is wrong and the command that mends it."""
    import fiftyone as fo
    import fiftyone.plugins as fop

    root = plugin_root()
    if root is None:
        return None
    folder = fo.config.plugins_dir
    mend = f"link this checkout with: ln -sfn {root} {os.path.join(folder or '~/fiftyone/__plugins__', LINK_NAME)}"
    found = [p for p in fop.list_plugins(enabled="all") if p.name == PLUGIN_NAME]
    if not found:
        link = os.path.join(folder, LINK_NAME) if folder else None
        why = (f" ({link} points at {os.readlink(link)}, which does not exist)"
               if link and os.path.islink(link) and not os.path.exists(link) else "")
        return f"the App will not show faceaudit: FiftyOne's plugins folder {folder} has no {PLUGIN_NAME}{why}; {mend}"
    where = Path(os.path.realpath(found[0].directory))
    if where != root:
        return (f"the App runs the faceaudit plugin of another checkout ({where}), not this one ({root}); {mend}")
    if PLUGIN_NAME not in {p.name for p in fop.list_plugins()}:
        return f"the faceaudit plugin is disabled in FiftyOne: fiftyone plugins enable {PLUGIN_NAME}"
    return None
