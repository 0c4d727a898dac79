"""Thin operators: a form, progress and placement around one core function each."""

from .annotate import AnnotateAttributes
from .compare import ComputeAttributeComparison
from .export import ExportTrainingSet
from .load import LoadFaceDataset
from .outliers import FlagSyntheticOutliers, SelectSavedView
from .rebalance import RebalanceSyntheticSource

OPERATORS = (LoadFaceDataset, AnnotateAttributes, ComputeAttributeComparison, FlagSyntheticOutliers,
             SelectSavedView, ExportTrainingSet, RebalanceSyntheticSource)
