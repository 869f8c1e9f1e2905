"""Diagnostics: Hessian top eigenvalue and worst/average-case sharpness.

Modules: :mod:`~optimflow.diagnostics.measures`; every name is re-exported
here.
"""

from optimflow.diagnostics.measures import hessian_top_eigenvalue
from optimflow.diagnostics.measures import sharpness

__all__ = (
  'hessian_top_eigenvalue',
  'sharpness',
)
