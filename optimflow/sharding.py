"""Sharded parameters: state shardings, layouts, and stacked Newton-Schulz.

Every optimflow transformation runs under JAX's own SPMD (``jax.jit`` with
``NamedSharding``, Explicit or Auto mesh axes): elementwise methods keep each
state leaf in its parameter's layout, and the conformance suite checks that
``update`` preserves the state's shardings and compiles once. This module adds
what a multi-device run needs beyond that.

**Layouts.** :func:`fsdp_specs` shards every parameter along its largest
divisible axis (FSDP / ZeRO-3 style), :func:`replicated_specs` keeps a copy
per device (data parallel); :func:`named` turns specs into ``NamedSharding``.
:func:`state_shardings` derives the optimizer state's shardings from the
parameters' (each parameter-shaped state leaf gets its parameter's sharding,
counters and hyperparameters are replicated), for ``jax.jit``'s
``out_shardings`` or ``jax.device_put`` of a restored checkpoint.

**Matrix methods.** Muon, AuON/Hybrid-AuON and SWAN need whole matrices. Left
to the compiler (optax's Muon), a sharded Newton-Schulz iteration all-reduces
partial Gram matrices at every step; gathering every matrix on every device
instead (what these methods do by default on Explicit meshes) repeats the
whole iteration on each device. :class:`MatrixSharding` picks one of

* ``'stacked'``: same-shape matrices (same layout) are stacked, the stack axis
  is sharded over the mesh so each device orthogonalises whole matrices of its
  own (``shard_map``: no collective inside the iteration), with one reshard in
  and one out, each a sequence of single-axis moves that XLA lowers to
  all-to-alls. A group with fewer matrices than devices is sharded over the
  subset of mesh axes that leaves the fewest matrices per device (zero
  matrices pad the stack to a multiple); a single matrix is gathered.
* ``'gather'``: all-gather every matrix and compute it redundantly on every
  device (the default on Explicit meshes, ``sharding=None``).
* ``'local'``: no resharding; the compiler partitions the matrix maths in the
  parameter's layout (cheapest for AuON without Newton-Schulz, whose only
  cross-device work is two scalar reductions per matrix).

Pass it as ``sharding=`` to :func:`optimflow.muon`, :func:`optimflow.auon`,
:func:`optimflow.hybrid_auon`, :func:`optimflow.swan` or their
``scale_by_*`` blocks (a string gives that mode with the ambient mesh).
The stacked mode knows each leaf's layout when the mesh axes are Explicit
(sharding in types); under Auto axes the layout is only known to the compiler,
so the stack is constrained in one step and XLA chooses the reshard.

:func:`collective_counts` and :func:`collective_bytes` read a compiled HLO
module and report its all-gather / all-reduce / all-to-all /
collective-permute / reduce-scatter ops.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from jax.sharding import AxisType, PartitionSpec as P
  >>> import optimflow
  >>> from optimflow import sharding
  >>> mesh = jax.make_mesh((2, 4), ('data', 'model'),
  ...                      axis_types=(AxisType.Explicit,) * 2)
  >>> params = {'w': jnp.ones((16, 8)), 'b': jnp.zeros(8)}
  >>> specs = sharding.fsdp_specs(params, mesh)
  >>> specs
  {'b': P(('data', 'model'),), 'w': P(('data', 'model'), None)}
  >>> tx = optimflow.muon(0.02, adam_learning_rate=3e-3, sharding='stacked')
  >>> with jax.set_mesh(mesh):
  ...   params = jax.device_put(params, sharding.named(mesh, specs))
  ...   state = tx.init(params)
  ...   u, state = jax.jit(tx.update)(params, state, params)
  >>> u['w'].sharding.spec == specs['w']
  True
  >>> state_sh = sharding.state_shardings(tx, params, sharding.named(mesh, specs))
  >>> state_sh.inner_states['matrix'].inner_state[0].mu['w'].spec
  P(('data', 'model'), None)
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any, Callable, Literal, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from optimflow import _checks
from optimflow import linalg

Mode = Literal['stacked', 'gather', 'local']
MODES = ('stacked', 'gather', 'local')
MeshLike = Union[jax.sharding.Mesh, jax.sharding.AbstractMesh]
COLLECTIVES = ('all-gather', 'all-reduce', 'all-to-all', 'collective-permute',
               'reduce-scatter')


@dataclasses.dataclass(frozen=True)
class MatrixSharding:
  """How matrix methods distribute their whole-matrix work across devices.

  Attributes:
    mode: ``'stacked'``, ``'gather'`` or ``'local'`` (see the module
      docstring).
    mesh: the mesh; ``None`` takes it from the leaves' types (Explicit axes)
      or from ``jax.set_mesh``. Without a mesh of more than one device every
      mode is the single-device computation.
    axes: mesh axes the stack axis may be sharded over (``'stacked'``);
      ``None``: all of them.
    specs: under Auto mesh axes, the parameters' layouts (a tree like the
      parameters of ``PartitionSpec`` or ``NamedSharding``), matched to the
      leaves by path; the stacked mode then reshards by single-axis moves
      and pins each result to its parameter's layout, as it does from the
      types under Explicit axes. Without it XLA chooses both reshards.

  Under Explicit axes, ``'local'`` runs the matrix maths in an
  ``auto_axes`` region, which cannot close over hyperparameters traced by
  ``optax.inject_hyperparams``; ``'stacked'`` and ``'gather'`` can.

  Examples:
    >>> from optimflow import sharding
    >>> sharding.MatrixSharding('stacked', axes=('model',)).mode
    'stacked'
  """

  mode: Mode = 'stacked'
  mesh: Optional[MeshLike] = None
  axes: Optional[tuple[str, ...]] = None
  specs: Any = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    _checks.check_choice('mode', self.mode, MODES)
    if self.axes is not None:
      object.__setattr__(self, 'axes', tuple(self.axes))

  def spec_of(self, path: str) -> Optional[P]:
    """The layout given in ``specs`` for the leaf at ``path``, if any."""
    if self.specs is None:
      return None
    table = {
        jax.tree_util.keystr(k): getattr(v, 'spec', v)
        for k, v in jax.tree_util.tree_flatten_with_path(
            self.specs, is_leaf=_is_spec)[0]}
    return table.get(path)


def _is_spec(x: Any) -> bool:
  return isinstance(x, (P, NamedSharding)) or x is None


ShardingArg = Optional[Union[str, MatrixSharding]]


def as_matrix_sharding(sharding: ShardingArg) -> Optional[MatrixSharding]:
  """Validates a ``sharding=`` argument: ``None``, a mode name or the object.

  Raises:
    ValueError: an unknown mode or type.
  """
  # (by name too: pytest's importlib mode can load this module twice)
  if sharding is None or isinstance(sharding, MatrixSharding) or (
      type(sharding).__name__ == 'MatrixSharding'):
    return sharding
  if isinstance(sharding, str) and sharding in MODES:
    return MatrixSharding(sharding)
  raise ValueError(
      f'sharding={sharding!r} is not supported: choose None, one of '
      f'{", ".join(repr(m) for m in MODES)} or a '
      'optimflow.sharding.MatrixSharding.')


# ---------------------------------------------------------------------------
# Specs of leaves and of their matrix views.

_Entry = tuple[str, ...]  # mesh axes of one array dimension, major first


def _entry(e: Any) -> _Entry:
  if e is None or e is P.UNCONSTRAINED:
    return ()
  return (e,) if isinstance(e, str) else tuple(e)


def _spec(entries: Sequence[_Entry]) -> P:
  return P(*[None if not e else (e[0] if len(e) == 1 else e) for e in entries])


def _typed_sharding(x: Any) -> tuple[Optional[MeshLike], Optional[P]]:
  """``(mesh, spec)`` of ``x`` when its mesh axes are Explicit, else Nones."""
  try:
    sh = jax.typeof(x).sharding
  except (TypeError, AttributeError):
    return None, None
  mesh, spec = getattr(sh, 'mesh', None), getattr(sh, 'spec', None)
  if mesh is None or spec is None or getattr(mesh, 'empty', True):
    return None, None
  if not any(t == AxisType.Explicit for t in mesh.axis_types):
    return None, None
  return mesh, spec


def _view_entries(view: linalg.MatrixView,
                  spec: P) -> tuple[list[_Entry], tuple[_Entry, _Entry]]:
  """The leaf spec with which :meth:`MatrixView.to_matrices` stays local.

  A reshape that merges axes is local when only the major one is sharded, so
  sharding on the other merged axes and on the batch axes (which stacking
  concatenates) is dropped. Axes of size 1 carry no layout and are skipped.

  Returns:
    The reduced leaf entries and the view's ``(m, n)`` entries.
  """
  ndim = len(view.shape)
  entries = [_entry(e) for e in tuple(spec) + (None,) * (ndim - len(spec))]
  targets = (view.batch, view.fan_in, view.fan_out)
  segment, prod, major = 0, 1, [None, None, None]
  for a in view.perm:
    size = view.shape[a]
    while segment < 2 and prod == targets[segment] and size > 1:
      segment, prod = segment + 1, 1
    prod *= size
    if segment == 0 or size == 1 or major[segment] is not None:
      entries[a] = ()
    else:
      major[segment] = a
  m_entry, n_entry = (entries[a] if a is not None else () for a in major[1:])
  if view.transposed:
    m_entry, n_entry = n_entry, m_entry
  return entries, (m_entry, n_entry)


def _stack_axes(
    count: int, sizes: dict[str, int], axes: Sequence[str]
) -> tuple[str, ...]:
  """Mesh axes to shard a stack of ``count`` matrices over.

  The subset of ``axes`` (in mesh order) that leaves the fewest matrices per
  device, then the least zero padding, then uses the most devices.

  Examples:
    >>> from optimflow.sharding import _stack_axes
    >>> sizes = {'data': 2, 'model': 4}
    >>> _stack_axes(16, sizes, ('data', 'model')), _stack_axes(3, sizes,
    ...                                                        ('data', 'model'))
    (('data', 'model'), ('model',))
    >>> _stack_axes(1, sizes, ('data', 'model'))  # one matrix: gathered
    ()
  """
  best, best_key = (), None
  for r in range(len(axes) + 1):
    for subset in itertools.combinations(axes, r):
      devices = math.prod(sizes[a] for a in subset)
      per_device = -(-count // devices)
      key = (per_device, per_device * devices - count, -devices)
      if best_key is None or key < best_key:
        best, best_key = subset, key
  return best


def _resolve_mesh(cfg: MatrixSharding, xs: Sequence[jax.Array]):
  """``(mesh, explicit)``: leaves' Explicit mesh, else ``cfg.mesh``, else
  the ambient mesh; ``(None, False)`` when there is none of > 1 device."""
  for x in xs:
    mesh, _ = _typed_sharding(x)
    if mesh is not None:
      return (mesh, True) if mesh.size > 1 else (None, False)
  mesh = cfg.mesh
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      mesh = None
  if mesh is None or mesh.size <= 1:
    return None, False
  return mesh, False


class _Layout:
  """Layout changes in the mode of the mesh axes.

  Explicit axes: ``jax.sharding.reshard`` between known specs, and the
  reshapes of the matrix views in ``auto_axes`` regions (Explicit typing has
  no rule for splitting a sharded axis). Auto axes: sharding constraints.
  """

  def __init__(self, mesh: MeshLike, explicit: bool):
    self.mesh, self.explicit = mesh, explicit

  def constrain(self, x: jax.Array, spec: P) -> jax.Array:
    if self.explicit:
      return x if jax.typeof(x).sharding.spec == spec else (
          jax.sharding.reshard(x, spec))
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def apply(self, fn, x: jax.Array, spec: Optional[P]) -> jax.Array:
    """``fn(x)``, a layout-only function, with its result laid out as
    ``spec`` (``None``: the compiler's choice, Auto axes only)."""
    if self.explicit:
      return jax.sharding.auto_axes(fn, out_sharding=spec)(x)
    y = fn(x)
    return y if spec is None else self.constrain(y, spec)

  def partitioned(self, fn, x: jax.Array, spec: P) -> jax.Array:
    """``fn(x)`` partitioned by the compiler, result laid out as ``spec``."""
    if not self.explicit:
      return fn(x)
    return jax.sharding.auto_axes(fn, out_sharding=spec)(x)

  def device_local(self, fn, x: jax.Array, spec: P) -> jax.Array:
    """``fn`` with each device mapping its own block of ``x`` (laid out as
    ``spec``, sharded on the leading axis only).

    Explicit axes: the sharding in types already makes every op of a
    matrix-by-matrix ``fn`` local (a collective would need an explicit
    reshard), and ``fn`` may close over traced hyperparameters. Auto axes:
    ``shard_map``.
    """
    if self.explicit and not (len(spec) and _entry(spec[0])):
      return fn(x)  # replicated
    if self.explicit:
      # (devices, block, m, n), vmapped over the sharded axis: ``fn`` sees
      # an unsharded block, as under shard_map.
      sizes = _mesh_sizes(self.mesh)
      devices = math.prod(sizes[a] for a in _entry(spec[0]))
      split = P(spec[0], None, None, None)
      y = jax.vmap(fn)(jnp.reshape(
          x, (devices, x.shape[0] // devices) + x.shape[1:],
          out_sharding=split))
      return jnp.reshape(y, x.shape, out_sharding=spec)
    return jax.shard_map(fn, mesh=self.mesh, in_specs=spec, out_specs=spec)(x)


def _stacked(fn, stack: jax.Array, lay: _Layout, cfg: MatrixSharding,
             entries: Optional[tuple[_Entry, _Entry]]) -> jax.Array:
  """``fn`` on a ``(B, m, n)`` stack with its first axis sharded.

  ``entries`` is the stack's known ``(m, n)`` layout, or None (Auto axes
  without :attr:`MatrixSharding.specs`: the compiler reshards).
  """
  mesh = lay.mesh
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  allowed = tuple(mesh.axis_names) if cfg.axes is None else cfg.axes
  unknown = [a for a in allowed if a not in sizes]
  if unknown:
    raise ValueError(f'MatrixSharding axes={allowed!r}: {unknown} are not '
                     f'axes of the mesh {tuple(mesh.axis_names)}.')
  count = stack.shape[0]
  target = _stack_axes(count, sizes, allowed)
  devices = math.prod(sizes[a] for a in target)
  if devices == 1:  # a single matrix: gathered, computed on every device
    y = lay.device_local(fn, lay.constrain(stack, P()), P())
    return y if entries is None else lay.constrain(y, _spec([(), *entries]))
  padded = -(-count // devices) * devices
  if padded > count:
    stack = jnp.pad(stack, ((0, padded - count), (0, 0), (0, 0)))
  # One mesh axis at a time, from its matrix dimension to the stack axis
  # (an all-to-all each); axes that the stack is not sharded over are
  # gathered; the remaining target axes only slice locally.
  path = []
  if entries is not None:
    layout = [(), *entries]
    path.append(_spec(layout))
    for dim in (2, 1):
      moved = tuple(a for a in layout[dim] if a in target)
      dropped = tuple(a for a in layout[dim] if a not in target)
      if dropped:  # not a stack axis: gathered
        layout[dim] = moved
        path.append(_spec(layout))
      if moved:  # the whole entry in one all-to-all
        layout[dim], layout[0] = (), layout[0] + moved
        path.append(_spec(layout))
    layout[0] += tuple(a for a in target if a not in layout[0])
    stack_spec = _spec(layout)
  else:
    stack_spec = P(target)
  for spec in path[1:]:
    stack = lay.constrain(stack, spec)
  stack = lay.constrain(stack, stack_spec)
  y = lay.device_local(fn, stack, P(stack_spec[0]))
  for spec in reversed(path):
    y = lay.constrain(y, spec)
  return y[:count] if padded > count else y


def map_views(
    fn: Callable[[jax.Array], jax.Array],
    xs: Sequence[jax.Array],
    views: Sequence[linalg.MatrixView],
    *,
    group: bool = True,
    sharding: ShardingArg = 'stacked',
    paths: Optional[Sequence[str]] = None,
) -> list[jax.Array]:
  """``fn`` on the matrix view of each leaf, distributed over the mesh.

  The engine behind the ``sharding=`` option of the matrix methods
  (:func:`optimflow.linalg.map_matrices` calls it). ``fn`` must act matrix by
  matrix on a ``(B, m, n)`` stack (leading axis a batch) and keep zero
  matrices finite (they pad the stack).

  Args:
    fn: maps ``(B, m, n)`` to ``(B, m, n)``.
    xs: the leaves, each of the shape of its view.
    views: each leaf's :class:`~optimflow.linalg.MatrixView`.
    group: stack same-shape matrices (of the same layout).
    sharding: a mode or :class:`MatrixSharding`.
    paths: the leaves' ``jax.tree_util.keystr`` paths (for
      :attr:`MatrixSharding.specs`).

  Returns:
    ``fn``'s results in the leaves' shapes, each in its leaf's layout when
    that is known (Explicit axes, or ``specs``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optimflow import linalg, sharding
    >>> xs = [jnp.ones((4, 6)), 2 * jnp.ones((6, 4))]
    >>> views = [linalg.matrix_view(x.shape) for x in xs]
    >>> ys = sharding.map_views(lambda s: s * s.shape[-1], xs, views)
    >>> ys[0][0, 0].item(), ys[1][0, 0].item()  # both seen as 4 x 6
    (6.0, 12.0)
  """
  cfg = as_matrix_sharding(sharding)
  mesh, explicit = _resolve_mesh(cfg, xs)
  if mesh is None:
    stacks = [v.to_matrices(x) for v, x in zip(views, xs)]
    return [v.from_matrices(y) for v, y in
            zip(views, linalg.apply_grouped(fn, stacks, group=group))]
  if explicit:
    leaf_specs = [_typed_sharding(x)[1] for x in xs]
  else:
    leaf_specs = [cfg.spec_of(p) for p in paths or [None] * len(xs)]
  lay = _Layout(mesh, explicit)

  if cfg.mode == 'gather':
    stacks = [v.to_matrices(lay.constrain(x, P())) for v, x in zip(views, xs)]
    ys = linalg.apply_grouped(fn, stacks, group=group)
    return [v.from_matrices(y) if spec is None
            else lay.constrain(v.from_matrices(y), spec)
            for v, y, spec in zip(views, ys, leaf_specs)]

  # 'stacked' and 'local': matrix views laid out from the leaves' layouts.
  stacks, layouts, cleans = [], [], []
  for x, view, spec in zip(xs, views, leaf_specs):
    if spec is None:
      stacks.append(view.to_matrices(x))
      layouts.append(None)
      cleans.append(None)
      continue
    entries, layout = _view_entries(view, spec)
    clean = _spec(entries)
    stacks.append(lay.apply(view.to_matrices, lay.constrain(x, clean),
                            _spec(((),) + layout)))
    layouts.append(layout)
    cleans.append(clean)
  keys = [(s.shape[1:], s.dtype, lay_) for s, lay_ in zip(stacks, layouts)]
  groups = (linalg._group_indices(keys).values() if group  # pylint: disable=protected-access
            else [[i] for i in range(len(stacks))])
  ys: list[Any] = [None] * len(stacks)
  for idx in groups:
    stack = jnp.concatenate([stacks[i] for i in idx], axis=0)
    layout = layouts[idx[0]]
    if cfg.mode == 'stacked':
      out = _stacked(fn, stack, lay, cfg, layout)
    else:
      out = lay.partitioned(fn, stack,
                            None if layout is None else _spec(((),) + layout))
    splits = np.cumsum([stacks[i].shape[0] for i in idx])[:-1].tolist()
    for i, part in zip(idx, jnp.split(out, splits, axis=0)):
      ys[i] = part
  results = []
  for y, view, spec, clean in zip(ys, views, leaf_specs, cleans):
    if spec is None:
      results.append(view.from_matrices(y))
    else:
      results.append(lay.constrain(lay.apply(view.from_matrices, y, clean),
                                   spec))
  return results


# ---------------------------------------------------------------------------
# Layouts of parameters and optimizer state.


def _mesh_sizes(mesh: MeshLike) -> dict[str, int]:
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


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
  sizes = _mesh_sizes(mesh)
  if axes is None:
    axes = tuple(mesh.axis_names)
  elif isinstance(axes, str):
    axes = (axes,)
  axes = tuple(axes)
  unknown = [a for a in axes if a not in sizes]
  if unknown:
    raise ValueError(f'axes={axes!r}: {unknown} are not axes of the mesh '
                     f'{tuple(mesh.axis_names)}.')
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
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, P))


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
      param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(p_leaves) != len(s_leaves):
    raise ValueError(
        f'param_shardings has {len(s_leaves)} leaves but params has '
        f'{len(p_leaves)}: give one sharding per parameter.')
  table = {}
  for (path, x), sh in zip(p_leaves, s_leaves):
    table[tuple(path)] = (tuple(np.shape(x)), sh)
  lengths = sorted({len(k) for k in table}, reverse=True)
  if replicated is None:
    meshes = [getattr(sh, 'mesh', None) for sh in s_leaves]
    meshes = [m for m in meshes if m is not None]
    if not meshes:
      raise ValueError('the parameters carry no NamedSharding: pass '
                       'param_shardings or replicated.')
    replicated = NamedSharding(meshes[0], P())

  def pick(path, leaf):
    path = tuple(path)
    for n in lengths:
      if n > len(path):
        continue
      hit = table.get(path[len(path) - n:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract)


# ---------------------------------------------------------------------------
# Reading compiled HLO.

_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2,
                'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
                'f64': 8, 'c64': 8, 'c128': 16}
_OP = re.compile(
    r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s+'
    r'(?P<op>all-gather|all-reduce|all-to-all|collective-permute|'
    r'reduce-scatter)(?P<start>-start)?\(', re.MULTILINE)
_ARRAY = re.compile(r'(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]')


def _hlo_text(compiled: Any) -> str:
  if isinstance(compiled, str):
    return compiled
  return compiled.as_text()


_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$')
_WHILE = re.compile(r'\bwhile\(.*?body=%?(?P<body>[\w.\-]+)')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(?P<n>\d+)"')
_CALLEE = re.compile(
    r'(?:calls|to_apply|condition|true_computation|false_computation)='
    r'%?(?P<name>[\w.\-]+)|branch_computations=\{(?P<names>[^}]*)\}')


def _computations(text: str) -> tuple[dict[str, list[str]], Optional[str]]:
  """HLO computations by name (their body lines) and the entry's name."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      match = _COMPUTATION.match(line)
      if match and '=' not in line.split('(')[0]:
        current = match['name']
        comps[current] = []
        if line.lstrip().startswith('ENTRY'):
          entry = current
    elif line.strip() == '}':
      current = None
    else:
      comps[current].append(line)
  return comps, entry


def _multipliers(text: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry: the
  product of the known trip counts of the while loops around it."""
  comps, entry = _computations(text)
  if entry is None:
    return {}
  mult: dict[str, int] = {}

  def visit(name: str, times: int) -> None:
    if name not in comps or mult.get(name, 0) >= times:
      return
    mult[name] = times
    for line in comps[name]:
      loop = _WHILE.search(line)
      if loop:
        trip = _TRIP.search(line)
        visit(loop['body'], times * (int(trip['n']) if trip else 1))
      for callee in _CALLEE.finditer(line):
        names = [callee['name']] if callee['name'] else [
            n.strip().lstrip('%') for n in callee['names'].split(',')]
        for n in names:
          visit(n, times)

  visit(entry, 1)
  return mult


def _collectives(compiled: Any, executed: bool = False):
  """``(op, bytes, times)`` of every collective op of the module."""
  text = _hlo_text(compiled)
  comps, _ = _computations(text) if executed else ({}, None)
  mult = _multipliers(text) if executed else {}
  owner = {}
  for name, lines in comps.items():
    for line in lines:
      owner[line] = name
  for match in _OP.finditer(text):
    arrays = [(a['dtype'], a['dims']) for a in _ARRAY.finditer(match['type'])]
    if match['start'] and len(arrays) > 1:
      arrays = arrays[len(arrays) // 2:]  # async: (operands, results)
    size = sum(
        _DTYPE_BYTES.get(dtype, 4)
        * math.prod(int(d) for d in dims.split(',') if d)
        for dtype, dims in arrays)
    times = 1
    if executed:
      line = text[text.rfind('\n', 0, match.start()) + 1:
                  text.find('\n', match.end()) % (len(text) + 1)]
      times = mult.get(owner.get(line, ''), 1)
    yield match['op'], size, times


def collective_counts(compiled: Any, executed: bool = False) -> dict[str, int]:
  """Number of each collective op in a compiled module.

  Args:
    compiled: ``jax.jit(f).lower(...).compile()`` or its ``as_text()``.
    executed: count each op as many times as it runs per call: ops in the
      body of a while loop (``lax.fori_loop``, ``lax.map``, ``lax.scan``)
      times the loop's known trip count (nested loops multiply). ``False``
      counts the ops written in the module once each.

  Returns:
    ``{op: count}`` for all-gather, all-reduce, all-to-all,
    collective-permute and reduce-scatter (async ``-start`` ops count once).

  Examples:
    >>> from optimflow import sharding
    >>> hlo = '''
    ... %body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
    ...   %ar = f32[4]{0} all-reduce(f32[4]{0} %x), to_apply=%add
    ... }
    ... ENTRY %main (a: f32[1,4]) -> f32[4] {
    ...   %ag = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %a), dimensions={0}
    ...   %w = (s32[], f32[4]) while(%t), condition=%c, body=%body, backend_config={"known_trip_count":{"n":"5"}}
    ... }
    ... '''
    >>> c = sharding.collective_counts(hlo)
    >>> c['all-gather'], c['all-reduce']
    (1, 1)
    >>> sharding.collective_counts(hlo, executed=True)['all-reduce']
    5
    >>> sharding.collective_bytes(hlo)['all-gather']
    128
  """
  counts = dict.fromkeys(COLLECTIVES, 0)
  for op, _, times in _collectives(compiled, executed):
    counts[op] += times
  return counts


def collective_bytes(compiled: Any, executed: bool = False) -> dict[str, int]:
  """Bytes of each kind of collective's results, per device.

  The size of what each op leaves on one device (an all-gather's full
  result, an all-to-all's local block): a proxy for the data a device
  receives. ``executed`` weights ops inside loops by their trip counts, as
  in :func:`collective_counts`.
  """
  total = dict.fromkeys(COLLECTIVES, 0)
  for op, size, times in _collectives(compiled, executed):
    total[op] += size * times
  return total
