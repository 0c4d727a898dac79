"""Thin operators: a form, progress and placement around one core function each."""

from .annotate import AnnotateAttributes
from .load import LoadFaceDataset

OPERATORS = (LoadFaceDataset, AnnotateAttributes)
