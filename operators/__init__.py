"""Thin operators: a form, progress and placement around one core function each."""

from .annotate import AnnotateAttributes
from .compare import ComputeAttributeComparison
from .embed import ComputeFaceEmbeddings
from .identity import ComputeIdentityAudit
from .load import LoadFaceDataset
from .outliers import FlagSyntheticOutliers, SelectSavedView

OPERATORS = (LoadFaceDataset, AnnotateAttributes, ComputeAttributeComparison, FlagSyntheticOutliers,
             SelectSavedView, ComputeFaceEmbeddings, ComputeIdentityAudit)
