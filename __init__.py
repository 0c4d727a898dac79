"""The faceaudit FiftyOne plugin (``@faceaudit/face-audit``): registers its operators and panels.

FiftyOne re-imports this file whenever it builds an operator registry (every App request), so it
stays light: the operators import the heavy modules inside ``execute``.
"""

import os
import sys

try:  # installed with `pip install -e .` (the README's setup)
    import faceaudit  # noqa: F401
    import fiftyone_plugin  # noqa: F401
except ImportError:  # plugin directory used without installing the package
    _root = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.join(_root, "src"), _root]

if __package__:  # imported by FiftyOne as fiftyone.plugins.orgs.faceaudit.face_audit
    from .operators import OPERATORS
    from .panels import PANELS
else:  # imported as a plain module (pytest imports a rootdir __init__.py this way): no plugin
    OPERATORS, PANELS = (), ()


def register(plugin):
    for operator in (*OPERATORS, *PANELS):
        plugin.register(operator)
