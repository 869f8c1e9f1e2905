"""Shared matrix maths: matrix views of N-d leaves and Newton-Schulz iterations.

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

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from optax.contrib import MuonDimensionNumbers

DimensionNumbers = MuonDimensionNumbers
DimensionNumbersOrFn = Union[
    DimensionNumbers, Any, Callable[[Any], Any], None
]
Orientation = Literal['wide', 'keep']
NSMethod = Literal['auto', 'plain', 'gram']

#: Keller Jordan's quintic coefficients (a, b, c).
MUON_COEFFS = (3.4445, -4.7750, 2.0315)

_Path = tuple[Any, ...]


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


def _axes(axis: Union[int, Sequence[int]], ndim: int) -> tuple[int, ...]:
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
  red = _axes(dimension_numbers.reduction_axis, len(shape))
  out = _axes(dimension_numbers.output_axis, len(shape))
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
    return [flax_dimension_numbers(jnp.ndim(x)) if jnp.ndim(x) >= 2 else None
            for x in leaves]
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


def leaf_paths(tree: Any) -> list[str]:
  """``jax.tree_util.keystr`` of every leaf, in ``jax.tree.leaves`` order."""
  return [
      jax.tree_util.keystr(p)
      for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def _group_indices(keys: Sequence[Any]) -> dict[Any, list[int]]:
  groups: dict[Any, list[int]] = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  return groups


def apply_grouped(
    fn: Callable[[jax.Array], jax.Array],
    stacks: Sequence[jax.Array],
    *,
    group: bool = True,
) -> list[jax.Array]:
  """Applies a batched matrix function to ``(batch, m, n)`` stacks.

  Stacks with the same ``(m, n)`` and dtype are concatenated, passed to ``fn``
  in one call and split again, so a transformer's dozens of same-shape kernels
  become a few large batched computations.

  Args:
    fn: maps a ``(B, m, n)`` array to a ``(B, ...)`` array, matrix by matrix.
    stacks: the inputs, each ``(batch_i, m_i, n_i)``.
    group: concatenate same-shape stacks (``False``: one call per stack).

  Returns:
    ``fn``'s output for each input, in input order.
  """
  out: list[Optional[jax.Array]] = [None] * len(stacks)
  if not group:
    return [fn(s) for s in stacks]
  keys = [(s.shape[1:], s.dtype) for s in stacks]
  for idx in _group_indices(keys).values():
    if len(idx) == 1:
      out[idx[0]] = fn(stacks[idx[0]])
      continue
    sizes = [stacks[i].shape[0] for i in idx]
    result = fn(jnp.concatenate([stacks[i] for i in idx], axis=0))
    splits = np.cumsum(sizes)[:-1].tolist()
    for i, part in zip(idx, jnp.split(result, splits, axis=0)):
      out[i] = part
  return out  # type: ignore[return-value]


def _explicit_spec(x: Any) -> Optional[jax.sharding.PartitionSpec]:
  """The partition spec of ``x`` if it is sharded over Explicit mesh axes."""
  try:
    sharding = jax.typeof(x).sharding
  except (TypeError, AttributeError):
    return None
  mesh, spec = getattr(sharding, 'mesh', None), getattr(sharding, 'spec', None)
  if mesh is None or spec is None or all(s is None for s in spec):
    return None
  explicit = jax.sharding.AxisType.Explicit
  if not any(t == explicit for t in getattr(mesh, 'axis_types', ())):
    return None
  return spec


def map_matrices(
    fn: Callable[[jax.Array], jax.Array],
    tree: Any,
    dimension_numbers: DimensionNumbersOrFn = None,
    *,
    orient: Orientation = 'wide',
    group: bool = True,
    compute_dtype: Optional[jax.typing.DTypeLike] = jnp.float32,
    finalize: Optional[Callable[[MatrixView, jax.Array], jax.Array]] = None,
    sharding: Any = None,
) -> Any:
  """Applies a batched matrix function to the matrix view of every leaf.

  Each leaf is viewed as a ``(batch, m, n)`` stack (:class:`MatrixView`),
  cast to ``compute_dtype``, same-shape stacks are grouped into one call of
  ``fn`` (:func:`apply_grouped`), and the results are mapped back to the
  leaves' shapes and dtypes. Leaves whose dimension number is ``None`` pass
  through unchanged; ``None`` and ``optax.MaskedNode`` leaves are kept.

  Leaves sharded over Explicit mesh axes (sharding in types) are gathered
  before the matrix work and resharded to their own spec after it, so the
  output has the input's type; under Auto sharding the compiler decides.

  Args:
    fn: maps ``(B, m, n)`` to ``(B, m, n)``, matrix by matrix.
    tree: a pytree of arrays.
    dimension_numbers: see :func:`resolve_dimension_numbers`.
    orient: ``'wide'`` (``m <= n``) or ``'keep'`` (``(fan_in, fan_out)``).
    group: stack same-shape matrices into one call.
    compute_dtype: dtype ``fn`` sees (at least float32 by default); ``None``
      keeps each leaf's dtype.
    finalize: ``finalize(view, y)`` applied to each leaf's result in its leaf
      shape, before the cast back (e.g. a per-leaf scale).
    sharding: how to distribute the work over a device mesh: ``None`` (gather
      Explicit-sharded leaves, as above), ``'stacked'``, ``'gather'``,
      ``'local'`` or an :class:`optimflow.sharding.MatrixSharding` (see
      :func:`optimflow.sharding.map_views`).

  Returns:
    A tree like ``tree``.

  Raises:
    ValueError: a leaf with a matrix dimension number has fewer than 2 dims;
      the message names its path.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow import linalg
    >>> tree = {'a': jnp.ones((2, 3)), 'b': 2 * jnp.ones((3, 2))}
    >>> out = linalg.map_matrices(lambda x: x * x.shape[0], tree)
    >>> out['a'][0, 0].item(), out['b'][0, 0].item()  # both seen as 2 x 3
    (2.0, 4.0)
  """
  leaves, treedef = jax.tree.flatten(tree)
  dims = resolve_dimension_numbers(dimension_numbers, tree)
  explicit = dimension_numbers is not None
  paths = leaf_paths(tree) if leaves else []
  todo, views, specs, stacks = [], [], [], []
  for i, (x, d) in enumerate(zip(leaves, dims)):
    if explicit and d is None:
      continue  # not a matrix: passes through
    # With the default rule every leaf must be a matrix: a None here (rank
    # < 2) makes matrix_view raise, naming the path.
    view = matrix_view(jnp.shape(x), d, orient=orient, path=paths[i])
    spec = None if sharding is not None else _explicit_spec(x)
    if spec is not None:
      x = jax.sharding.reshard(x, jax.sharding.PartitionSpec())
    dtype = x.dtype if compute_dtype is None else jnp.promote_types(
        x.dtype, compute_dtype)
    todo.append(i)
    views.append(view)
    specs.append(spec)
    stacks.append(x.astype(dtype) if sharding is not None
                  else view.to_matrices(x.astype(dtype)))
  if sharding is not None:  # leaf-shaped results, in the leaves' layouts
    from optimflow import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    results = sharding_lib.map_views(fn, stacks, views, group=group,
                                     sharding=sharding,
                                     paths=[paths[i] for i in todo])
  else:
    results = [view.from_matrices(y) for view, y in
               zip(views, apply_grouped(fn, stacks, group=group))]
  out = list(leaves)
  for i, view, spec, y in zip(todo, views, specs, results):
    if finalize is not None:
      y = finalize(view, y)
    y = y.astype(leaves[i].dtype)
    out[i] = y if spec is None else jax.sharding.reshard(y, spec)
  return jax.tree.unflatten(treedef, out)


def _safe_divide(x: jax.Array, d: jax.Array) -> jax.Array:
  return jnp.where(d > 0, x / jnp.where(d > 0, d, 1), 0)


def frobenius_normalize(x: jax.Array, eps: jax.typing.ArrayLike = 1e-7):
  """``x / (||x||_F + eps)`` over the last two axes; zero stays zero.

  Args:
    x: ``(..., m, n)`` array.
    eps: added to the norm.

  Returns:
    The normalised array.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  return _safe_divide(x, norm + eps)


def _coeff_table(coeffs: Any, steps: int, dtype) -> jax.Array:
  table = jnp.asarray(coeffs, dtype=dtype)
  if table.ndim == 1:
    if table.shape != (3,):
      raise ValueError(f'ns_coeffs must have shape (3,) or (steps, 3), got '
                       f'{table.shape}.')
    return jnp.broadcast_to(table, (steps, 3))
  if table.shape != (steps, 3):
    raise ValueError(f'ns_coeffs has shape {table.shape}: a (steps, 3) table '
                     f'needs {steps} rows for steps={steps}.')
  return table


def _check_steps(steps: Any) -> int:
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
    raise ValueError(f'steps={steps!r} is invalid: steps must be an integer '
                     '>= 1 (a static Python int).')
  if steps < 1:
    raise ValueError(f'steps={steps!r} is invalid: steps must be an integer '
                     '>= 1.')
  return int(steps)


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def _gram(x: jax.Array) -> jax.Array:
  """``x x^T`` over the last two axes without materialising ``x^T``."""
  return jnp.einsum('...ik,...jk->...ij', x, x,
                    precision=jax.lax.Precision.HIGHEST)


def _wide(fn):
  """Runs ``fn`` on the ``m <= n`` orientation of ``(..., m, n)``."""

  @functools.wraps(fn)
  def wrapped(x, *args, **kwargs):
    if x.shape[-2] > x.shape[-1]:
      return jnp.swapaxes(fn(jnp.swapaxes(x, -1, -2), *args, **kwargs), -1, -2)
    return fn(x, *args, **kwargs)

  return wrapped


#: Backends on which the iterations run a stack matrix by matrix.
MATRIXWISE_BACKENDS = ('cpu',)


def matrixwise(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """Decorator: runs ``fn`` on ``(..., m, n)`` one matrix at a time on CPU.

  On CPU, XLA runs 2-D matrix products through its multi-threaded matmul,
  while the batched products of a Newton-Schulz loop measured 1.2x (512x512)
  to 2.5x (256x256) slower on a 2-core machine; a ``lax.map`` keeps one
  compiled body per shape, and the elementwise work around the products
  (normalisation, scaling) runs on one matrix at a time, in cache. Elsewhere
  (GPU, TPU) the stack runs batched.

  Args:
    fn: ``fn(x, *args, **kwargs)`` acting matrix by matrix on the last two
      axes of ``x`` (leading axes are a batch).

  Returns:
    The wrapped function (same signature).
  """

  @functools.wraps(fn)
  def wrapped(x, *args, **kwargs):
    batch = x.shape[:-2]
    if math.prod(batch) <= 1 or jax.default_backend() not in (
        MATRIXWISE_BACKENDS):
      return fn(x, *args, **kwargs)
    flat = x.reshape((-1,) + x.shape[-2:])
    out = jax.lax.map(lambda m: fn(m, *args, **kwargs), flat)
    return out.reshape(batch + out.shape[-2:])

  return wrapped


def _is_cubic(coeffs: Any) -> bool:
  """Whether a concrete coefficient table has ``c = 0`` in every row.

  Cubic steps skip the ``R^2`` product. A traced table counts as quintic.
  """
  try:
    return not np.any(np.asarray(coeffs, dtype=np.float64)[..., 2])
  except (TypeError, jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return False


def _poly(r: jax.Array, c: jax.Array, cubic: bool) -> jax.Array:
  """``a I + b R + c R^2`` for coefficients ``c = (a, b, c)``."""
  eye = jnp.eye(r.shape[-1], dtype=r.dtype)
  p = c[0] * eye + c[1] * r
  return p if cubic else p + c[2] * _mm(r, r)


@_wide
@matrixwise
def newton_schulz(
    x: jax.Array,
    steps: int = 5,
    coeffs: Any = MUON_COEFFS,
) -> jax.Array:
  """Quintic Newton-Schulz iteration on ``(..., m, n)`` matrices.

  .. math::

    A_k = X_k X_k^\\top, \\qquad
    X_{k+1} = a X_k + (b A_k + c A_k^2) X_k,

  formed on the smaller side (the ``m x m`` Gram when ``m <= n``, else the
  transpose). Each singular value follows ``s -> a s + b s^3 + c s^5``; with
  Keller Jordan's coefficients and ``||X_0||_op <= 1`` five steps map
  ``s in [1e-3, 1]`` into about ``[0.47, 1.20]`` and ``s >= 1e-2`` into
  ``[0.68, 1.13]``: not a projection, but close to the polar factor ``U V^T``.
  The loop is rolled (``lax.fori_loop``). Leading axes are a batch (on CPU
  run one matrix at a time in a ``lax.map``, elsewhere batched).

  Args:
    x: ``(..., m, n)`` input with spectral norm at most about 1 (normalise
      first, see :func:`orthogonalize`).
    steps: number of iterations, a static int ``>= 1``.
    coeffs: ``(a, b, c)`` or a ``(steps, 3)`` table of per-step coefficients.

  Returns:
    The iterate after ``steps`` steps, same shape and dtype as ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow import linalg
    >>> x = jnp.diag(jnp.array([0.9, 0.5, 0.05]))
    >>> y = linalg.newton_schulz(x)
    >>> [round(v, 2) for v in jnp.diag(y).tolist()]
    [0.68, 0.77, 0.76]

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  steps = _check_steps(steps)
  return _plain_iterate(x, _coeff_table(coeffs, steps, x.dtype),
                        _is_cubic(coeffs))


def _plain_iterate(x, table, cubic, gram=None):
  """:func:`newton_schulz`'s loop; ``gram`` is ``x x^T`` when known."""

  def step(c, x, a):
    if cubic:
      return c[0] * x + c[1] * _mm(a, x)
    return c[0] * x + _mm(c[1] * a + c[2] * _mm(a, a), x)

  start = 0
  if gram is not None:
    x, start = step(table[0], x, gram), 1
  return jax.lax.fori_loop(start, table.shape[0],
                           lambda i, x: step(table[i], x, _gram(x)), x)


@_wide
@matrixwise
def gram_newton_schulz(
    x: jax.Array,
    steps: int = 5,
    coeffs: Any = MUON_COEFFS,
) -> jax.Array:
  """The Newton-Schulz iterates of :func:`newton_schulz`, run in Gram space.

  Every iterate is ``X_k = Q_k X_0`` with ``Q_k`` a polynomial in
  ``A_0 = X_0 X_0^T``, so all ``m x m`` matrices commute and

  .. math::

    P_k = a I + b R_k + c R_k^2, \\quad
    Q_{k+1} = P_k Q_k, \\quad
    R_{k+1} = P_k^2 R_k, \\quad
    X_s = Q_s X_0,

  with ``R_0 = A_0``. Only the first Gram and the last product touch the long
  side ``n``: ``2 r + 4 s - 3`` units of ``m^3`` against ``s (2 r + 1)`` for
  the plain iteration (``r = n / m``), a win when ``r > 1.5``. In float32 the
  result agrees with the plain iteration to about ``1e-5`` relative: errors in
  the small eigenvalues of ``R`` only enter ``P`` through ``b R``.

  Args:
    x: ``(..., m, n)`` input with spectral norm at most about 1.
    steps: number of iterations, a static int ``>= 1``.
    coeffs: ``(a, b, c)`` or a ``(steps, 3)`` table.

  Returns:
    The same iterate as :func:`newton_schulz` up to rounding.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optimflow import linalg
    >>> x = jax.random.normal(jax.random.key(0), (16, 64)) / 40
    >>> y1, y2 = linalg.newton_schulz(x), linalg.gram_newton_schulz(x)
    >>> bool(jnp.allclose(y1, y2, atol=1e-5))
    True

  References:
    Dao et al., `Gram Newton-Schulz
    <https://tridao.me/blog/2026/gram-newton-schulz/>`_, 2026.
  """
  steps = _check_steps(steps)
  return _gram_iterate(x, _coeff_table(coeffs, steps, x.dtype),
                       _is_cubic(coeffs))


def _gram_iterate(x, table, cubic, gram=None):
  """:func:`gram_newton_schulz`'s loop; ``gram`` is ``x x^T`` when known."""
  steps = table.shape[0]
  r = _gram(x) if gram is None else gram
  p = _poly(r, table[0], cubic)
  if steps == 1:
    return _mm(p, x)
  q = p
  r = _mm(p, _mm(p, r))

  def body(i, carry):
    q, r = carry
    p = _poly(r, table[i], cubic)
    return _mm(p, q), _mm(p, _mm(p, r))

  q, r = jax.lax.fori_loop(1, steps - 1, body, (q, r))
  p = _poly(r, table[steps - 1], cubic)
  return _mm(_mm(p, q), x)


def gram_is_cheaper(m: int, n: int, steps: int) -> bool:
  """Whether :func:`gram_newton_schulz` needs fewer FLOPs than the plain one.

  Args:
    m: rows.
    n: columns.
    steps: iterations.

  Returns:
    True when ``max(m, n) > 1.5 min(m, n)`` and ``steps >= 2``.
  """
  small, large = sorted((m, n))
  return steps >= 2 and 2 * large > 3 * small


@matrixwise
def orthogonalize(
    x: jax.Array,
    steps: int = 5,
    coeffs: Any = MUON_COEFFS,
    *,
    eps: jax.typing.ArrayLike = 1e-7,
    method: NSMethod = 'auto',
) -> jax.Array:
  """Muon's orthogonalisation: ``NS_steps(X / (||X||_F + eps))``.

  Runs in ``x``'s dtype over the last two axes (leading axes are a batch).

  Args:
    x: ``(..., m, n)`` matrices.
    steps: Newton-Schulz iterations (static int ``>= 1``).
    coeffs: ``(a, b, c)`` or a ``(steps, 3)`` table.
    eps: added to the Frobenius norm; a zero matrix stays zero.
    method: ``'plain'`` (:func:`newton_schulz`), ``'gram'``
      (:func:`gram_newton_schulz`) or ``'auto'`` (Gram when
      :func:`gram_is_cheaper`).

  Returns:
    The approximately semi-orthogonal matrices, same shape as ``x``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optimflow import linalg
    >>> x = jax.random.normal(jax.random.key(0), (32, 128))
    >>> s = jnp.linalg.svd(linalg.orthogonalize(x), compute_uv=False)
    >>> bool((s > 0.6).all() and (s < 1.25).all())
    True
  """
  if method not in ('auto', 'plain', 'gram'):
    raise ValueError(f"method={method!r}: choose 'auto', 'plain' or 'gram'.")
  x = frobenius_normalize(x, eps)
  if method == 'auto':
    method = 'gram' if gram_is_cheaper(*x.shape[-2:], steps) else 'plain'
  if method == 'gram':
    return gram_newton_schulz(x, steps, coeffs)
  return newton_schulz(x, steps, coeffs)


def polar_factor(x: jax.Array) -> jax.Array:
  """Exact polar factor ``U V^T`` of ``x = U S V^T`` by SVD (test reference).

  Args:
    x: ``(..., m, n)`` matrices.

  Returns:
    ``U V^T``, the closest semi-orthogonal matrix to ``x`` in Frobenius norm.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow import linalg
    >>> linalg.polar_factor(jnp.array([[2.0, 0.0], [0.0, -3.0]]))
    Array([[ 1.,  0.],
           [ 0., -1.]], dtype=float32)
  """
  u, _, vt = jnp.linalg.svd(x, full_matrices=False)
  return u @ vt


__all__ = (
    'DimensionNumbers',
    'MUON_COEFFS',
    'MatrixView',
    'apply_grouped',
    'flax_dimension_numbers',
    'frobenius_normalize',
    'gram_is_cheaper',
    'gram_newton_schulz',
    'leaf_paths',
    'map_matrices',
    'matrixwise',
    'matrix_view',
    'newton_schulz',
    'orthogonalize',
    'polar_factor',
    'resolve_dimension_numbers',
)


# ---------------------------------------------------------------------------
# Whitening (SWAN): the coupled Newton-Schulz inverse square root.

WhitenNormalization = Literal['frobenius', 'gram']

#: The smallest normalised singular value the default whitening schedule is
#: designed to whiten (:func:`whitening_coeffs`).
WHITEN_FLOOR = 1e-2
#: Headroom above 1 for rounding in the normalisation: each scaled cubic is
#: designed on ``[l, WHITEN_CUSHION]``, so ``s`` a little above 1 stays positive.
WHITEN_CUSHION = 1.01


def whitening_coeffs(
    steps: int,
    beta: Optional[float] = None,
    floor: float = WHITEN_FLOOR,
    cushion: float = WHITEN_CUSHION,
) -> np.ndarray:
  """Per-step cubics ``s -> a s + b s^3`` for the whitening iteration.

  * ``beta`` a float: the constant cubic ``s <- beta (3 - s^2) s`` of SWAN's
    Algorithm 2, rows ``(3 beta, -beta, 0)``; ``beta = 1/2`` is Higham's
    convergent scheme, ``s -> 1`` for ``s`` in ``(0, sqrt 3)``.
  * ``beta=None``: the scaled Newton-Schulz iteration of Chen and Chow
    (2014). If every singular value lies in ``[l, u]``, the step
    ``g(s) = alpha s (3 - alpha^2 s^2) / 2`` with

    .. math::  \alpha^2 = 3 / (u^2 + u l + l^2)

    is the cubic of this family with ``g(l) = g(u)``; it maps ``[l, u]`` onto
    ``[g(l), 1]``, and the next step is designed for that interval. Small
    singular values grow by about ``1.5 sqrt 3 = 2.6`` per step instead of
    1.5, and the steps turn into Higham's as ``l -> 1``. Starting from
    ``[floor, cushion]`` with the defaults, the lower end after ``k`` steps is
    0.71, 0.955, 0.9988 and 1 - 5e-7 for ``k = 5, 6, 7, 8``; Higham's ``k =
    10`` maps ``s = 0.01`` to 0.53 and needs ``s >= 0.03`` for 0.98.

  Args:
    steps: iterations (``>= 1``).
    beta: constant step scale, or ``None`` for the scaled schedule.
    floor: lower end ``l`` of the starting interval (``beta=None``), in
      ``(0, 1)``.
    cushion: upper end ``u`` used for every step (``beta=None``), ``>= 1``:
      room for rounding above the normalised spectral bound 1.

  Returns:
    A ``(steps, 3)`` float64 table of ``(a, b, 0)`` rows, for
    :func:`newton_schulz` and :func:`gram_newton_schulz`.

  Examples:
    >>> from optimflow import linalg
    >>> linalg.whitening_coeffs(2, beta=0.5).tolist()
    [[1.5, -0.5, 0.0], [1.5, -0.5, 0.0]]
    >>> t = linalg.whitening_coeffs(7)
    >>> s = 0.01
    >>> for a, b, _ in t:
    ...   s = a * s + b * s**3
    >>> round(float(s), 3)
    0.999

  References:
    Chen and Chow, `A stable scaling of Newton-Schulz for improving the sign
    function computation of a Hermitian matrix
    <https://www.osti.gov/biblio/1226765>`_, 2014.
  """
  steps = _check_steps(steps)
  if beta is not None:
    try:
      beta = float(beta)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
      raise ValueError(
          f'beta={beta!r} must be a concrete number: it fixes the '
          'coefficient table at trace time (with optax.inject_hyperparams, '
          "list 'ns_beta' in static_args).") from e
    return np.tile(np.array([3.0 * beta, -beta, 0.0]), (steps, 1))
  if not 0 < floor < 1 or cushion < 1:
    raise ValueError(f'floor={floor!r}, cushion={cushion!r}: need '
                     '0 < floor < 1 <= cushion.')
  low, rows = float(floor), []
  for _ in range(steps):
    alpha = math.sqrt(3.0 / (cushion * cushion + cushion * low + low * low))
    rows.append((1.5 * alpha, -0.5 * alpha**3, 0.0))
    low = min(0.5 * alpha * s * (3.0 - alpha * alpha * s * s)
              for s in (low, cushion))
  return np.array(rows)


@_wide
def whiten(
    x: jax.Array,
    steps: int = 7,
    beta: Optional[float] = None,
    *,
    eps: jax.typing.ArrayLike = 1e-7,
    normalization: WhitenNormalization = 'frobenius',
    method: NSMethod = 'auto',
) -> jax.Array:
  """SWAN's GradWhitening ``(X X^T)^{-1/2} X`` by coupled Newton-Schulz.

  ``X`` is first scaled to ``X_0 = X / (c + eps)`` with ``c = ||X||_F``
  (``'frobenius'``, SWAN's Algorithm 2) or ``c = ||X X^T||_F^{1/2}``
  (``'gram'``: a tighter bound on the spectral norm, so small singular values
  start larger), then every singular value ``s`` of ``X_0`` goes through
  ``steps`` cubics ``s <- a_k s + b_k s^3`` (:func:`whitening_coeffs`: the
  constant ``beta`` of Algorithm 2, or ``beta=None`` for the scaled schedule)
  towards 1, so the result approaches the polar factor ``U V^T``.

  The iteration is Muon's: :func:`gram_newton_schulz` with the cubic table is
  Algorithm 2's coupled inverse square root on the smaller Gram side
  (``Q_k = Z_k -> (X_0 X_0^T)^{-1/2}``, ``R_k = Z_k Y_k -> I``,
  ``Delta = Z_k X_0``), and :func:`newton_schulz` the same iterate formed on
  ``X``. ``method`` picks the cheaper (:func:`gram_is_cheaper`): in units of
  ``m^3`` for ``r = n / m``, ``2 r + 3 k - 3`` (Gram) against ``2 r k``
  (plain; cubic steps skip the ``R^2`` product).

  A zero singular value stays zero, but its direction in the Gram inverse
  root grows as ``prod a_k`` (``1.5^k`` for Higham's), which amplifies
  rounding: run in float32.

  Args:
    x: ``(..., m, n)`` matrices (leading axes are a batch).
    steps: iterations, a static int ``>= 1``.
    beta: constant step scale (``1/2`` converges, larger values overshoot),
      or ``None`` for the scaled schedule (static).
    eps: added to the normalising constant ``c``; a zero matrix stays zero.
    normalization: ``'frobenius'`` or ``'gram'`` (static).
    method: ``'auto'``, ``'gram'`` (coupled) or ``'plain'`` (static).

  Returns:
    ``Delta``, same shape and dtype as ``x``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optimflow import linalg
    >>> x = jax.random.normal(jax.random.key(0), (32, 128))
    >>> s = jnp.linalg.svd(linalg.whiten(x), compute_uv=False)
    >>> bool((s > 0.99).all() and (s < 1.01).all())
    True

  References:
    Ma, Gong, Scetbon, Meeds, `SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.

    Higham, `Stable iterations for the matrix square root
    <https://doi.org/10.1023/A:1019150005407>`_, Numerical Algorithms, 1997.
  """
  steps = _check_steps(steps)
  if normalization not in ('frobenius', 'gram'):
    raise ValueError(f"normalization={normalization!r}: choose 'frobenius' or "
                     "'gram'.")
  if method not in ('auto', 'plain', 'gram'):
    raise ValueError(f"method={method!r}: choose 'auto', 'plain' or 'gram'.")
  a = None
  if normalization == 'frobenius':
    c2 = jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)
  else:
    a = _gram(x)
    c2 = jnp.sqrt(jnp.sum(jnp.square(a), axis=(-2, -1), keepdims=True))
  inv = _safe_divide(jnp.ones_like(c2), jnp.sqrt(c2) + eps)
  x = x * inv
  if a is not None:  # the iteration's first Gram, already formed
    a = a * (inv * inv)
  if method == 'auto':
    method = 'gram' if gram_is_cheaper(*x.shape[-2:], steps) else 'plain'
  iterate = _gram_iterate if method == 'gram' else _plain_iterate
  table = whitening_coeffs(steps, beta)
  return iterate(x, jnp.asarray(table, x.dtype), True, a)


__all__ += ('WHITEN_FLOOR', 'whiten', 'whitening_coeffs')  # type: ignore[operator]
