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

from .operators import OPERATORS  # noqa: E402


def register(plugin):
    for operator in OPERATORS:
        plugin.register(operator)
