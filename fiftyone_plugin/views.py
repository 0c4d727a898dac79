"""Views the App opens: the faces behind a number."""

from __future__ import annotations

from fiftyone import ViewField as F

from faceaudit.attributes import ATTRIBUTES

from . import labels, schema

STATE_CHARS = {"positive": "p", "negative": "n", "undefined": "u"}


def attribute_state_view(view, source: str, attribute: str, state: str):
    """The samples of ``view`` from ``source`` whose ``attribute`` is in ``state``."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}")
    if state not in STATE_CHARS:
        raise ValueError(f"unknown state {state!r}: positive, negative or undefined")
    j = ATTRIBUTES.index(attribute)
    return view.match(
        (F(schema.SOURCE) == source)
        & (F(labels.CODE_FIELD).substr(start=j, count=1) == STATE_CHARS[state])
    )
