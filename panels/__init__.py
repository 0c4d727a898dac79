"""Python panels of the faceaudit plugin."""

from .attribute_comparison import AttributeComparisonPanel

PANELS = (AttributeComparisonPanel,)
