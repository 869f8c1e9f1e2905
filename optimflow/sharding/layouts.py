"""Layouts of parameters and optimizer state: FSDP, replicated, state shardings."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from optimflow.sharding.matrix import MeshLike
from optimflow.sharding.matrix import mesh_sizes


def fsdp_specs(
  params: Any,
  mesh: MeshLike,
  axes: Optional[Union[str, Sequence[str]]] = None,
  min_size: int = 0,
) -> Any:
  """FSDP (ZeRO-3) layout: each leaf sharded along its largest divisible axis.

  Every leaf with at least ``min_size`` entries is split over the devices of
  ``axes`` along its largest axis whose size they divide (the first such
  axis on ties); other leaves (scalars, small or indivisible ones) are
  replicated.

  Args:
    params: a pytree of arrays or ``jax.ShapeDtypeStruct``.
    mesh: the device mesh.
    axes: mesh axes to shard over (one name or several, major first);
      ``None``: all of them.
    min_size: leaves with fewer entries stay replicated.

  Returns:
    A tree like ``params`` of ``PartitionSpec``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optimflow import sharding
    >>> mesh = jax.make_mesh((2, 4), ('data', 'model'))
    >>> sharding.fsdp_specs({'w': jnp.ones((6, 16)), 'b': jnp.ones(3)}, mesh)
    {'b': P(None,), 'w': P(None, ('data', 'model'))}
  """
  sizes = mesh_sizes(mesh)
  if axes is None:
    axes = tuple(mesh.axis_names)
  elif isinstance(axes, str):
    axes = (axes,)
  axes = tuple(axes)
  unknown = [a for a in axes if a not in sizes]
  if unknown:
    raise ValueError(
      f'axes={axes!r}: {unknown} are not axes of the mesh '
      f'{tuple(mesh.axis_names)}.'
    )
  devices = math.prod(sizes[a] for a in axes)
  entry = axes[0] if len(axes) == 1 else axes

  def spec(x):
    shape = tuple(np.shape(x))
    if math.prod(shape) < max(min_size, 1) or devices == 1:
      return _replicated(x)
    candidates = [i for i, d in enumerate(shape) if d % devices == 0]
    if not candidates:
      return _replicated(x)
    dim = max(candidates, key=lambda i: (shape[i], -i))
    return P(*[entry if i == dim else None for i in range(len(shape))])

  return jax.tree.map(spec, params)


def _replicated(x: Any) -> P:
  # One None per axis: the form jit gives its outputs, so a step's outputs
  # match its inputs exactly and the step is not compiled twice.
  return P(*(None,) * len(np.shape(x)))


def replicated_specs(params: Any) -> Any:
  """Data-parallel layout: every leaf replicated (``P(None, ...)``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow import sharding
    >>> sharding.replicated_specs({'w': jnp.ones((2, 2)), 's': jnp.ones(())})
    {'s': P(), 'w': P(None, None)}
  """
  return jax.tree.map(_replicated, params)


def named(mesh: MeshLike, specs: Any) -> Any:
  """``NamedSharding(mesh, spec)`` for every ``PartitionSpec`` of ``specs``.

  Examples:
    >>> import jax
    >>> from jax.sharding import PartitionSpec as P
    >>> from optimflow import sharding
    >>> mesh = jax.make_mesh((8,), ('data',))
    >>> sharding.named(mesh, {'w': P('data')})['w'].spec
    P('data',)
  """
  return jax.tree.map(
    lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P)
  )


def state_shardings(
  tx: optax.GradientTransformation,
  params: Any,
  param_shardings: Any = None,
  *,
  replicated: Optional[jax.sharding.Sharding] = None,
) -> Any:
  """Shardings for ``tx.init(params)`` derived from the parameters' shardings.

  Each state leaf that holds a copy of a parameter (a moment, an EMA, a
  masked branch's buffer) is recognised by its path ending with that
  parameter's path and by its shape, and gets that parameter's sharding;
  everything else (step counters, injected hyperparameters, scalar
  statistics) is replicated. Works for any optax transformation, including
  ``optax.partition`` / ``masked`` states and states whose parameter trees
  have a different structure; ``init`` is only traced
  (``jax.eval_shape``), nothing is allocated.

  Use the result as ``out_shardings`` of a jitted ``init``, in
  ``jax.jit(step, in_shardings=..., out_shardings=...)`` under Auto mesh
  axes, or to ``jax.device_put`` a restored checkpoint.

  Args:
    tx: the transformation.
    params: the parameters (arrays or ``jax.ShapeDtypeStruct``).
    param_shardings: a tree like ``params`` of ``jax.sharding.Sharding``;
      ``None`` reads ``params``' own ``.sharding``.
    replicated: sharding for the non-parameter leaves; default
      ``NamedSharding(mesh, P())`` on the parameters' mesh.

  Returns:
    A tree like ``tx.init(params)`` of shardings.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jax.sharding import PartitionSpec as P
    >>> from optimflow import sharding
    >>> mesh = jax.make_mesh((8,), ('data',))
    >>> params = {'w': jnp.ones((16, 4))}
    >>> shardings = sharding.named(mesh, sharding.fsdp_specs(params, mesh))
    >>> tx = optax.adam(1e-3)
    >>> sh = sharding.state_shardings(tx, params, shardings)
    >>> sh[0].mu['w'].spec, sh[0].count.spec
    (P('data', None), P())
  """
  if param_shardings is None:
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
  abstract = jax.eval_shape(tx.init, params)
  p_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  s_leaves = jax.tree.leaves(
    param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
  )
  if len(p_leaves) != len(s_leaves):
    raise ValueError(
      f'param_shardings has {len(s_leaves)} leaves but params has '
      f'{len(p_leaves)}: give one sharding per parameter.'
    )
  table = {}
  for (path, x), sh in zip(p_leaves, s_leaves):
    table[tuple(path)] = (tuple(np.shape(x)), sh)
  lengths = sorted({len(k) for k in table}, reverse=True)
  if replicated is None:
    meshes = [getattr(sh, 'mesh', None) for sh in s_leaves]
    meshes = [m for m in meshes if m is not None]
    if not meshes:
      raise ValueError(
        'the parameters carry no NamedSharding: pass '
        'param_shardings or replicated.'
      )
    replicated = NamedSharding(meshes[0], P())

  def pick(path, leaf):
    path = tuple(path)
    for n in lengths:
      if n > len(path):
        continue
      hit = table.get(path[len(path) - n :])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract)
