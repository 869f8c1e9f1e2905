"""Same-shape stacking: one batched computation per matrix shape."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from optimflow._src.tree import leaf_paths
from optimflow.linalg.views import DimensionNumbersOrFn
from optimflow.linalg.views import MatrixView
from optimflow.linalg.views import Orientation
from optimflow.linalg.views import matrix_view
from optimflow.linalg.views import resolve_dimension_numbers


def group_indices(keys: Sequence[Any]) -> dict[Any, list[int]]:
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
  for idx in group_indices(keys).values():
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
  leaves' shapes and dtypes. Leaves whose dimension number is ``None`` and
  empty leaves (a zero-size axis) pass through unchanged; ``None`` and
  ``optax.MaskedNode`` leaves are kept.

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
      Explicit-sharded leaves, as above) or an object with a ``map_views``
      method, such as :class:`optimflow.sharding.MatrixSharding` (see
      :func:`optimflow.sharding.map_views`; ``linalg`` never imports
      ``sharding``, the dependency points the other way).

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
  if sharding is not None and not hasattr(sharding, 'map_views'):
    raise ValueError(
      f'sharding={sharding!r} is not supported here: pass '
      f'optimflow.sharding.MatrixSharding({sharding!r}) (linalg takes the '
      'layout object; the optimizers accept the mode name).'
    )
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
    if math.prod(view.shape) == 0:
      continue  # an empty leaf (a zero-size axis) passes through
    spec = None if sharding is not None else _explicit_spec(x)
    if spec is not None:
      x = jax.sharding.reshard(x, jax.sharding.PartitionSpec())
    dtype = (
      x.dtype
      if compute_dtype is None
      else jnp.promote_types(x.dtype, compute_dtype)
    )
    todo.append(i)
    views.append(view)
    specs.append(spec)
    stacks.append(
      x.astype(dtype)
      if sharding is not None
      else view.to_matrices(x.astype(dtype))
    )
  if sharding is not None:  # leaf-shaped results, in the leaves' layouts
    results = sharding.map_views(
      fn, stacks, views, group=group, paths=[paths[i] for i in todo]
    )
  else:
    results = [
      view.from_matrices(y)
      for view, y in zip(views, apply_grouped(fn, stacks, group=group))
    ]
  out = list(leaves)
  for i, view, spec, y in zip(todo, views, specs, results):
    if finalize is not None:
      y = finalize(view, y)
    y = y.astype(leaves[i].dtype)
    out[i] = y if spec is None else jax.sharding.reshard(y, spec)
  return jax.tree.unflatten(treedef, out)


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
      MATRIXWISE_BACKENDS
    ):
      return fn(x, *args, **kwargs)
    flat = x.reshape((-1,) + x.shape[-2:])
    out = jax.lax.map(lambda m: fn(m, *args, **kwargs), flat)
    return out.reshape(batch + out.shape[-2:])

  return wrapped
