"""Matrix methods on a mesh: stacked, gathered or local Newton-Schulz."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Literal, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from optimflow import linalg
from optimflow._src import checks
from optimflow.linalg.grouped import group_indices

Mode = Literal['stacked', 'gather', 'local']
MODES = ('stacked', 'gather', 'local')
MeshLike = Union[jax.sharding.Mesh, jax.sharding.AbstractMesh]
COLLECTIVES = (
  'all-gather',
  'all-reduce',
  'all-to-all',
  'collective-permute',
  'reduce-scatter',
)


def mesh_sizes(mesh: MeshLike) -> dict[str, int]:
  """Axis name -> size of ``mesh``."""
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


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
    checks.check_choice('mode', self.mode, MODES)
    if self.axes is not None:
      object.__setattr__(self, 'axes', tuple(self.axes))

  def map_views(self, fn, xs, views, *, group=True, paths=None):
    """:func:`map_views` with this layout (what ``linalg.map_matrices`` calls)."""
    return map_views(fn, xs, views, group=group, sharding=self, paths=paths)

  def spec_of(self, path: str) -> Optional[P]:
    """The layout given in ``specs`` for the leaf at ``path``, if any."""
    if self.specs is None:
      return None
    table = {
      jax.tree_util.keystr(k): getattr(v, 'spec', v)
      for k, v in jax.tree_util.tree_flatten_with_path(
        self.specs, is_leaf=_is_spec
      )[0]
    }
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
  if (
    sharding is None
    or isinstance(sharding, MatrixSharding)
    or (type(sharding).__name__ == 'MatrixSharding')
  ):
    return sharding
  if isinstance(sharding, str) and sharding in MODES:
    return MatrixSharding(sharding)
  raise ValueError(
    f'sharding={sharding!r} is not supported: choose None, one of '
    f'{", ".join(repr(m) for m in MODES)} or a '
    'optimflow.sharding.MatrixSharding.'
  )


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


def _view_entries(
  view: linalg.MatrixView, spec: P
) -> tuple[list[_Entry], tuple[_Entry, _Entry]]:
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
    >>> from optimflow.sharding.matrix import _stack_axes
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
      return (
        x
        if jax.typeof(x).sharding.spec == spec
        else (jax.sharding.reshard(x, spec))
      )
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
      sizes = mesh_sizes(self.mesh)
      devices = math.prod(sizes[a] for a in _entry(spec[0]))
      split = P(spec[0], None, None, None)
      y = jax.vmap(fn)(
        jnp.reshape(
          x, (devices, x.shape[0] // devices) + x.shape[1:], out_sharding=split
        )
      )
      return jnp.reshape(y, x.shape, out_sharding=spec)
    return jax.shard_map(fn, mesh=self.mesh, in_specs=spec, out_specs=spec)(x)


def _stacked(
  fn,
  stack: jax.Array,
  lay: _Layout,
  cfg: MatrixSharding,
  entries: Optional[tuple[_Entry, _Entry]],
) -> jax.Array:
  """``fn`` on a ``(B, m, n)`` stack with its first axis sharded.

  ``entries`` is the stack's known ``(m, n)`` layout, or None (Auto axes
  without :attr:`MatrixSharding.specs`: the compiler reshards).
  """
  mesh = lay.mesh
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  allowed = tuple(mesh.axis_names) if cfg.axes is None else cfg.axes
  unknown = [a for a in allowed if a not in sizes]
  if unknown:
    raise ValueError(
      f'MatrixSharding axes={allowed!r}: {unknown} are not '
      f'axes of the mesh {tuple(mesh.axis_names)}.'
    )
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
    return [
      v.from_matrices(y)
      for v, y in zip(views, linalg.apply_grouped(fn, stacks, group=group))
    ]
  if explicit:
    leaf_specs = [_typed_sharding(x)[1] for x in xs]
  else:
    leaf_specs = [cfg.spec_of(p) for p in paths or [None] * len(xs)]
  lay = _Layout(mesh, explicit)

  if cfg.mode == 'gather':
    stacks = [v.to_matrices(lay.constrain(x, P())) for v, x in zip(views, xs)]
    ys = linalg.apply_grouped(fn, stacks, group=group)
    return [
      v.from_matrices(y)
      if spec is None
      else lay.constrain(v.from_matrices(y), spec)
      for v, y, spec in zip(views, ys, leaf_specs)
    ]

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
    stacks.append(
      lay.apply(
        view.to_matrices, lay.constrain(x, clean), _spec(((),) + layout)
      )
    )
    layouts.append(layout)
    cleans.append(clean)
  keys = [(s.shape[1:], s.dtype, lay_) for s, lay_ in zip(stacks, layouts)]
  groups = (
    group_indices(keys).values()
    if group  # pylint: disable=protected-access
    else [[i] for i in range(len(stacks))]
  )
  ys: list[Any] = [None] * len(stacks)
  for idx in groups:
    stack = jnp.concatenate([stacks[i] for i in idx], axis=0)
    layout = layouts[idx[0]]
    if cfg.mode == 'stacked':
      out = _stacked(fn, stack, lay, cfg, layout)
    else:
      out = lay.partitioned(
        fn, stack, None if layout is None else _spec(((),) + layout)
      )
    splits = np.cumsum([stacks[i].shape[0] for i in idx])[:-1].tolist()
    for i, part in zip(idx, jnp.split(out, splits, axis=0)):
      ys[i] = part
  results = []
  for y, view, spec, clean in zip(ys, views, leaf_specs, cleans):
    if spec is None:
      results.append(view.from_matrices(y))
    else:
      results.append(
        lay.constrain(lay.apply(view.from_matrices, y, clean), spec)
      )
  return results


# ---------------------------------------------------------------------------
# Layouts of parameters and optimizer state.
