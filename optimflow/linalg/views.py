"""Matrix views of N-d leaves (Flax layout, optax.contrib dimension numbers)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from optax.contrib import MuonDimensionNumbers

DimensionNumbers = MuonDimensionNumbers
DimensionNumbersOrFn = Union[DimensionNumbers, Any, Callable[[Any], Any], None]
Orientation = Literal['wide', 'keep']


def flax_dimension_numbers(
  ndim: int, num_batch_axes: int = 0
) -> DimensionNumbers:
  """Flax layout: leading batch axes, then fan-in axes, then the output axis.

  Args:
    ndim: rank of the leaf (``>= 2 + num_batch_axes``).
    num_batch_axes: leading axes that index separate matrices (scanned layers,
      experts).

  Returns:
    ``MuonDimensionNumbers`` with ``reduction_axis`` the axes
    ``num_batch_axes .. ndim - 2`` and ``output_axis = ndim - 1``.

  Examples:
    >>> from optimflow import linalg
    >>> linalg.flax_dimension_numbers(4)  # conv kernel (h, w, in, out)
    MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))
    >>> linalg.flax_dimension_numbers(3, num_batch_axes=1)  # scanned Dense
    MuonDimensionNumbers(reduction_axis=(1,), output_axis=(2,))
  """
  if ndim - num_batch_axes < 2:
    raise ValueError(
      f'a leaf of rank {ndim} with {num_batch_axes} batch axes has no '
      'matrix view: it needs at least 2 non-batch axes.'
    )
  return DimensionNumbers(
    reduction_axis=tuple(range(num_batch_axes, ndim - 1)),
    output_axis=(ndim - 1,),
  )


def canonical_axes(
  axis: Union[int, Sequence[int]], ndim: int
) -> tuple[int, ...]:
  axis = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
  for ax in axis:
    if not -ndim <= ax < ndim:
      raise ValueError(f'axis {ax} is out of range for rank {ndim}')
  return tuple(int(ax) % ndim for ax in axis)


@dataclasses.dataclass(frozen=True)
class MatrixView:
  """How a leaf of shape ``shape`` maps to a stack of ``(batch, m, n)``.

  The view transposes the leaf to ``(batch axes, reduction axes, output
  axes)`` and flattens it to ``(batch, fan_in, fan_out)``; with
  ``transposed`` the last two axes are swapped so that ``m <= n``.

  Attributes:
    shape: the leaf's shape.
    perm: transpose taking the leaf to (batch, reduction, output) axis order.
    batch: number of matrices in the leaf.
    fan_in: product of the reduction axes.
    fan_out: product of the output axes.
    transposed: whether the matrices are ``(fan_out, fan_in)``.
  """

  shape: tuple[int, ...]
  perm: tuple[int, ...]
  batch: int
  fan_in: int
  fan_out: int
  transposed: bool

  @property
  def matrix_shape(self) -> tuple[int, int]:
    """``(m, n)`` of each matrix in the stack."""
    if self.transposed:
      return (self.fan_out, self.fan_in)
    return (self.fan_in, self.fan_out)

  def to_matrices(self, x: jax.Array) -> jax.Array:
    """The leaf as a ``(batch, m, n)`` stack."""
    if self.perm != tuple(range(len(self.shape))):
      x = jnp.transpose(x, self.perm)
    x = x.reshape((self.batch, self.fan_in, self.fan_out))
    return jnp.swapaxes(x, 1, 2) if self.transposed else x

  def from_matrices(self, y: jax.Array) -> jax.Array:
    """Inverse of :meth:`to_matrices`."""
    if self.transposed:
      y = jnp.swapaxes(y, 1, 2)
    y = y.reshape(tuple(self.shape[p] for p in self.perm))
    if self.perm != tuple(range(len(self.shape))):
      y = jnp.transpose(y, np.argsort(self.perm))
    return y


def matrix_view(
  shape: Sequence[int],
  dimension_numbers: Optional[DimensionNumbers] = None,
  *,
  orient: Orientation = 'wide',
  path: str = '',
) -> MatrixView:
  """The :class:`MatrixView` of a leaf.

  Args:
    shape: the leaf's shape.
    dimension_numbers: which axes are fan-in and fan-out; ``None`` is the Flax
      default (:func:`flax_dimension_numbers`).
    orient: ``'wide'`` swaps the matrices to ``m <= n`` (the cheap side for
      Newton-Schulz); ``'keep'`` leaves them ``(fan_in, fan_out)``.
    path: the leaf's path, used in error messages.

  Returns:
    A :class:`MatrixView`.

  Raises:
    ValueError: the leaf has fewer than 2 dimensions or the axes overlap.

  Examples:
    >>> from optimflow import linalg
    >>> v = linalg.matrix_view((3, 3, 16, 8))  # conv kernel
    >>> v.batch, v.fan_in, v.fan_out, v.matrix_shape
    (1, 144, 8, (8, 144))
  """
  shape = tuple(int(d) for d in shape)
  where = f' at {path}' if path else ''
  if len(shape) < 2:
    raise ValueError(
      f'the leaf{where} has shape {shape}: a matrix method needs at least '
      '2 dimensions. Send it to the other branch (a matrix filter or a '
      'None dimension number).'
    )
  if dimension_numbers is None:
    dimension_numbers = flax_dimension_numbers(len(shape))
  red = canonical_axes(dimension_numbers.reduction_axis, len(shape))
  out = canonical_axes(dimension_numbers.output_axis, len(shape))
  if not red or not out or set(red) & set(out):
    raise ValueError(
      f'dimension numbers {dimension_numbers}{where} (shape {shape}) need '
      'non-empty, disjoint reduction and output axes.'
    )
  batch_axes = tuple(a for a in range(len(shape)) if a not in red + out)
  fan_in = math.prod(shape[a] for a in red)
  fan_out = math.prod(shape[a] for a in out)
  if orient not in ('wide', 'keep'):
    raise ValueError(f"orient={orient!r}: choose 'wide' or 'keep'.")
  return MatrixView(
    shape=shape,
    perm=batch_axes + red + out,
    batch=math.prod(shape[a] for a in batch_axes),
    fan_in=fan_in,
    fan_out=fan_out,
    transposed=orient == 'wide' and fan_in > fan_out,
  )


def _is_dims_leaf(x: Any) -> bool:
  return x is None or isinstance(x, DimensionNumbers)


def resolve_dimension_numbers(
  dimension_numbers: DimensionNumbersOrFn, tree: Any
) -> list[Optional[DimensionNumbers]]:
  """Dimension numbers for each leaf of ``tree``, in ``jax.tree.leaves`` order.

  Args:
    dimension_numbers: ``None`` (Flax default for every leaf), one
      ``MuonDimensionNumbers`` for every leaf, a tree (or prefix of ``tree``)
      of them where ``None`` marks leaves that have no matrix view, or a
      callable taking ``tree`` and returning such a tree.
    tree: the parameters or updates.

  Returns:
    A list with one entry per leaf; ``None`` entries are not matrices. With
    ``dimension_numbers=None`` every leaf of rank ``>= 2`` gets its Flax
    default and lower-rank leaves get ``None``.
  """
  leaves = jax.tree.leaves(tree)
  if dimension_numbers is None:
    return [
      flax_dimension_numbers(jnp.ndim(x)) if jnp.ndim(x) >= 2 else None
      for x in leaves
    ]
  if isinstance(dimension_numbers, DimensionNumbers):
    return [dimension_numbers] * len(leaves)
  if callable(dimension_numbers):
    dimension_numbers = dimension_numbers(tree)
  marker = object()
  full = jax.tree.map(
    lambda d, sub: jax.tree.map(lambda _: (marker, d), sub),
    dimension_numbers,
    tree,
    is_leaf=_is_dims_leaf,
  )
  pairs = jax.tree.leaves(
    full, is_leaf=lambda x: isinstance(x, tuple) and x[:1] == (marker,)
  )
  return [d for _, d in pairs]
