"""Thin operators: a form, progress and placement around one core function each."""

from .load import LoadFaceDataset

OPERATORS = (LoadFaceDataset,)
