"""Thin operators: a form, progress and placement around one core function each."""

from .annotate import AnnotateAttributes
from .compare import ComputeAttributeComparison
from .embed import ComputeFaceEmbeddings
from .export import ExportTrainingSet
from .identity import ComputeIdentityAudit
from .load import LoadFaceDataset
from .outliers import FlagSyntheticOutliers, FollowSavedView, SelectSavedView
from .rebalance import RebalanceSyntheticSource

OPERATORS = (LoadFaceDataset, AnnotateAttributes, ComputeAttributeComparison, FlagSyntheticOutliers,
             SelectSavedView, FollowSavedView, ComputeFaceEmbeddings, ComputeIdentityAudit, ExportTrainingSet,
             RebalanceSyntheticSource)
