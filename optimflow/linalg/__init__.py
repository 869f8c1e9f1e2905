"""Shared matrix maths: matrix views of N-d leaves and Newton-Schulz iterations.

Modules: :mod:`~optimflow.linalg.views` (matrix views of N-d leaves),
:mod:`~optimflow.linalg.grouped` (same-shape stacking, matrix-by-matrix maps),
:mod:`~optimflow.linalg.newton_schulz` (the iterations and whitening
coefficients). Every name is re-exported here.

Matrix methods (Muon, AuON, SWAN) act on a *matrix view* of each parameter.
Axes follow ``optax.contrib.MuonDimensionNumbers``: the ``reduction_axis``
axes are the fan-in (flattened into the rows of the view), the ``output_axis``
axes the fan-out (the columns), and every other axis is a batch axis (scanned
layers, heads): each batch element is its own matrix. The Flax default is a
``Dense`` kernel ``(in, out)`` and a conv kernel ``(..., in, out)``: reduce over
all axes but the last (:func:`flax_dimension_numbers`).

Same-shape matrices are stacked (:func:`map_matrices`, :func:`apply_grouped`)
so that each shape compiles one iteration. The iterations run a stack as one
batched computation on GPU/TPU and as a ``lax.map`` of 2-D products on CPU,
where XLA's batched products inside the loop measured slower. The iterations:

* :func:`newton_schulz`: Muon's quintic iteration
  ``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` formed on the smaller side;
* :func:`gram_newton_schulz`: the same iterates computed in the ``m x m`` Gram
  space (``X_k = Q_k X_0``, ``R_k = X_k X_k^T``), which needs fewer FLOPs
  when ``n > 1.5 m``;
* :func:`orthogonalize`: Frobenius normalisation followed by either of them;
* :func:`whiten`: SWAN's ``(X X^T)^{-1/2} X``, the same two iterations with
  per-step cubic coefficients (:func:`whitening_coeffs`);
* :func:`polar_factor`: the exact ``U V^T`` by SVD, a reference for tests.

FLOPs for an ``m x n`` matrix, ``m <= n``, ``r = n / m``, ``s`` steps, in units
of ``m^3`` multiply-adds: plain ``s (2 r + 1)``, Gram ``2 r + 4 s - 3``
(``s >= 2``). For ``s = 5`` and ``r = 4`` (an MLP kernel) that is 45 against 25.
"""

from optimflow._src.tree import leaf_paths
from optimflow.linalg.grouped import MATRIXWISE_BACKENDS
from optimflow.linalg.grouped import apply_grouped
from optimflow.linalg.grouped import map_matrices
from optimflow.linalg.grouped import matrixwise
from optimflow.linalg.newton_schulz import MUON_COEFFS
from optimflow.linalg.newton_schulz import WHITEN_CUSHION
from optimflow.linalg.newton_schulz import WHITEN_FLOOR
from optimflow.linalg.newton_schulz import NSMethod
from optimflow.linalg.newton_schulz import WhitenNormalization
from optimflow.linalg.newton_schulz import frobenius_normalize
from optimflow.linalg.newton_schulz import gram_is_cheaper
from optimflow.linalg.newton_schulz import gram_newton_schulz
from optimflow.linalg.newton_schulz import newton_schulz
from optimflow.linalg.newton_schulz import orthogonalize
from optimflow.linalg.newton_schulz import polar_factor
from optimflow.linalg.newton_schulz import whiten
from optimflow.linalg.newton_schulz import whitening_coeffs
from optimflow.linalg.views import DimensionNumbers
from optimflow.linalg.views import DimensionNumbersOrFn
from optimflow.linalg.views import MatrixView
from optimflow.linalg.views import Orientation
from optimflow.linalg.views import canonical_axes
from optimflow.linalg.views import flax_dimension_numbers
from optimflow.linalg.views import matrix_view
from optimflow.linalg.views import resolve_dimension_numbers

__all__ = (
  'DimensionNumbers',
  'DimensionNumbersOrFn',
  'MATRIXWISE_BACKENDS',
  'MUON_COEFFS',
  'MatrixView',
  'NSMethod',
  'Orientation',
  'WHITEN_CUSHION',
  'WHITEN_FLOOR',
  'WhitenNormalization',
  'apply_grouped',
  'canonical_axes',
  'flax_dimension_numbers',
  'frobenius_normalize',
  'gram_is_cheaper',
  'gram_newton_schulz',
  'leaf_paths',
  'map_matrices',
  'matrix_view',
  'matrixwise',
  'newton_schulz',
  'orthogonalize',
  'polar_factor',
  'resolve_dimension_numbers',
  'whiten',
  'whitening_coeffs',
)
