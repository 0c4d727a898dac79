"""Python panels of the faceaudit plugin."""

from .attribute_comparison import AttributeComparisonPanel
from .identity_audit import IdentityAuditPanel

PANELS = (AttributeComparisonPanel, IdentityAuditPanel)
