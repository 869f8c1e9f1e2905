"""Orthogonal updates: Muon, AuON and Hybrid-AuON.

All three keep one momentum buffer per matrix and turn the (Nesterov)
momentum ``G`` of each hidden matrix into an update of controlled size:

* Muon (Jordan et al., 2024) replaces ``G`` by the approximate polar factor
  ``U V^T`` from five quintic Newton-Schulz steps;
* AuON (Maity, 2025) only normalises: ``X = G / ||G||_F`` divided by the
  "cosh RMS" ``r = sqrt(mean(cosh(gamma X)^2))``, in linear time;
* Hybrid-AuON applies one Newton-Schulz step to ``X`` before the same division.

They act on the matrix view of each leaf (:mod:`optimflow.linalg`: Flax
layout, ``MuonDimensionNumbers``-style axes, same-shape matrices stacked
together, float32 arithmetic whatever the parameter dtype). The aliases
:func:`muon`, :func:`auon` and :func:`hybrid_auon` send hidden matrices to
the orthogonal branch and everything else (biases, norm gains, scalars and
any leaf whose path names an embedding or an output head) to AdamW with its
own learning rate, through ``optax.partition``, as the papers do.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow import linalg
from optimflow._src import checks
from optimflow._src.tree import MaskOrFn
from optimflow._src.tree import key_name
from optimflow.sharding import matrix as sharding_lib

KeyPath = tuple[Any, ...]
MatrixFilter = Callable[[KeyPath, Any], bool]

SHAPE_SCALES = ('keller', 'moonlight', None)

#: Path keys (split on non-alphanumerics, lower case) that mark a leaf as an
#: embedding or an output head: such leaves go to the AdamW branch.
DEFAULT_EXCLUDED_NAMES = (
  'embed',
  'embedding',
  'embeddings',
  'wte',
  'wpe',
  'head',
  'unembed',
  'unembedding',
  'logits',
  'classifier',
  'readout',
)


class OrthogonalMomentumState(NamedTuple):
  """State of :func:`scale_by_muon` and :func:`scale_by_auon`: the momentum."""

  mu: optax.Updates


ScaleByMuonState = OrthogonalMomentumState
ScaleByAuonState = OrthogonalMomentumState


# ---------------------------------------------------------------------------
# Validation and shared pieces.


def _check_coeffs(ns_coeffs: Any, ns_steps: Any) -> None:
  if not isinstance(ns_steps, int):
    return  # traced (inject_hyperparams under jit): checked when first built
  try:
    shape = np.shape(np.asarray(ns_coeffs, dtype=np.float64))
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return  # traced (inject_hyperparams): checked when first built
  if shape not in ((3,), (ns_steps, 3)):
    raise ValueError(
      f'ns_coeffs of shape {shape} is invalid: ns_coeffs must be (a, b, c) '
      f'or a ({ns_steps}, 3) table, one row per Newton-Schulz step.'
    )


def _check_common(beta, eps, shape_scale) -> None:
  checks.check_beta('beta', beta, allow_one=False)
  checks.check_non_negative('eps', eps)
  checks.check_choice('shape_scale', shape_scale, SHAPE_SCALES)


def shape_factor(view: linalg.MatrixView, shape_scale: Optional[str]) -> float:
  """The width factor of a matrix view (Flax layout: fan-in = reduction axes).

  Args:
    view: the leaf's :class:`~optimflow.linalg.MatrixView`.
    shape_scale: ``'keller'`` gives ``sqrt(max(1, fan_out / fan_in))``,
      ``'moonlight'`` gives ``0.2 sqrt(max(fan_in, fan_out))`` (update RMS
      about 0.2, matching AdamW's), ``None`` gives 1.

  Returns:
    A Python float.

  Examples:
    >>> from optimflow import linalg, orthogonal
    >>> v = linalg.matrix_view((128, 512))
    >>> orthogonal.shape_factor(v, 'keller'), orthogonal.shape_factor(v, None)
    (2.0, 1.0)
  """
  if shape_scale == 'keller':
    if view.fan_in == 0:  # an empty matrix: nothing to scale
      return 1.0
    return math.sqrt(max(1.0, view.fan_out / view.fan_in))
  if shape_scale == 'moonlight':
    return 0.2 * math.sqrt(max(view.fan_in, view.fan_out))
  return 1.0


def _momentum(updates, mu, beta, nesterov):
  """Keller Jordan's momentum: ``m = beta m + (1 - beta) g``, no bias fix."""
  mu = optax.tree.update_moment(updates, mu, beta, 1)
  if nesterov:
    direction = jax.tree.map(
      lambda g, m: (1 - beta) * g + beta * m, updates, mu
    )
  else:
    direction = mu
  return direction, mu


def _momentum_transform(
  matrix_fn: Callable[[Any], Any],
  beta: Any,
  nesterov: bool,
  mu_dtype: Optional[jax.typing.DTypeLike],
) -> optax.GradientTransformation:
  """Momentum, then ``matrix_fn`` on the direction, in the gradient's dtype."""
  mu_dtype = checks.check_dtype('mu_dtype', mu_dtype)

  def init_fn(params):
    return OrthogonalMomentumState(
      mu=optax.tree.zeros_like(params, dtype=mu_dtype)
    )

  def update_fn(updates, state, params=None):
    del params
    direction, mu = _momentum(updates, state.mu, beta, nesterov)
    new = matrix_fn(direction)
    new = jax.tree.map(lambda u, g: u.astype(g.dtype), new, updates)
    return new, OrthogonalMomentumState(mu=optax.tree.cast_like(mu, state.mu))

  return optax.GradientTransformation(init_fn, update_fn)


def _scaled(shape_scale):
  def finalize(view, y):
    factor = shape_factor(view, shape_scale)
    return y if factor == 1.0 else y * factor

  return finalize


# ---------------------------------------------------------------------------
# Muon.


def scale_by_muon(
  beta: float = 0.95,
  nesterov: bool = True,
  ns_steps: int = 5,
  ns_coeffs: Any = linalg.MUON_COEFFS,
  eps: float = 1e-7,
  shape_scale: Optional[str] = 'keller',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  reference: bool = False,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformation:
  """Muon's direction: orthogonalised Nesterov momentum, width-scaled.

  .. math::

    m_t = \\beta m_{t-1} + (1 - \\beta) g_t, \\qquad
    G_t = (1 - \\beta) g_t + \\beta m_t \\ (\\text{Nesterov; else } m_t),

    u_t = s \\cdot \\mathrm{NS}_k\\big(G_t / (\\|G_t\\|_F + \\epsilon)\\big),

  where ``NS_k`` is ``k`` quintic Newton-Schulz steps
  (:func:`optimflow.linalg.orthogonalize`) on the matrix view of each leaf and
  ``s`` the width factor (:func:`shape_factor`). ``beta=0`` gives the bare
  orthogonalised gradient. No bias correction (as in Keller Jordan's code;
  the Frobenius normalisation removes the scale anyway).

  Every leaf this transformation sees is a matrix (use :func:`muon` to route
  the others to AdamW); leaves whose entry in ``dimension_numbers`` is
  ``None`` receive the momentum direction unchanged. The iteration runs in
  float32 (or wider) whatever the parameter dtype; same-shape matrices are
  stacked and share one compiled iteration
  (:func:`optimflow.linalg.apply_grouped`), and rectangular ones with
  ``max/min > 1.5`` run the cheaper Gram-space iteration
  (:func:`optimflow.linalg.gram_newton_schulz`).

  Args:
    beta: momentum decay, in [0, 1).
    nesterov: use the Nesterov direction (static).
    ns_steps: Newton-Schulz steps, an int ``>= 1``; it survives
      ``optax.inject_hyperparams`` (a traced count is a loop bound).
    ns_coeffs: ``(a, b, c)`` or a ``(ns_steps, 3)`` table.
    eps: added to the Frobenius norm before the iteration.
    shape_scale: ``'keller'`` (``sqrt(max(1, fan_out/fan_in))``),
      ``'moonlight'`` (``0.2 sqrt(max(fan_in, fan_out))``) or ``None``.
    dimension_numbers: ``None`` (Flax layout: reduce over all axes but the
      last), one ``optax.contrib.MuonDimensionNumbers`` for all leaves, a tree
      or prefix of them, or a callable on the updates returning one (see
      :func:`optimflow.linalg.resolve_dimension_numbers`). Axes that are
      neither reduction nor output are batch axes (scanned layers).
    mu_dtype: dtype of the momentum; ``None`` keeps the parameters' dtype.
    reference: orthogonalise each matrix on its own with the plain iteration
      (no grouping, no Gram variant): Keller Jordan's algorithm in float32,
      for parity tests. Slower; same maths up to rounding.
    sharding: how the matrix work is distributed over a device mesh:
      ``None`` (gather each sharded matrix), ``'stacked'`` (same-shape
      matrices stacked and the stack sharded over the mesh: every device
      runs the iteration on whole matrices of its own, with one reshard in
      and one out), ``'gather'``, ``'local'`` or an
      :class:`optimflow.sharding.MatrixSharding` (static).

  Returns:
    A :class:`optax.GradientTransformation` with state
    :class:`OrthogonalMomentumState`.

  Raises:
    ValueError: a hyperparameter is out of range; at update time, a leaf with
      fewer than 2 dimensions (the message names its path).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_muon(beta=0.0, shape_scale=None)
    >>> g = {'w': jax.random.normal(jax.random.key(0), (64, 16))}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> s = jnp.linalg.svd(u['w'], compute_uv=False)
    >>> bool(s.min() > 0.6 and s.max() < 1.25)  # close to U V^T
    True

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  _check_common(beta, eps, shape_scale)
  ns_steps = checks.as_count('ns_steps', ns_steps, 1)
  _check_coeffs(ns_coeffs, ns_steps)
  sharding = sharding_lib.as_matrix_sharding(sharding)
  method = 'plain' if reference else 'auto'

  def orthogonalize(x):
    return linalg.orthogonalize(x, ns_steps, ns_coeffs, eps=eps, method=method)

  def matrix_fn(direction):
    return linalg.map_matrices(
      orthogonalize,
      direction,
      dimension_numbers,
      group=not reference,
      finalize=_scaled(shape_scale),
      sharding=sharding,
    )

  return _momentum_transform(matrix_fn, beta, nesterov, mu_dtype)


# ---------------------------------------------------------------------------
# AuON.


def cosh_rms(x: jax.Array, gamma: jax.typing.ArrayLike = 1.0) -> jax.Array:
  """AuON's normaliser ``sqrt(mean(cosh(gamma x)^2))`` over the last two axes.

  Computed as ``sqrt(1 + mean(sinh(gamma x)^2))`` (the same number, without
  the rounding of ``cosh^2`` near 1), so ``r >= 1``. For ``||x||_F = 1`` and
  ``N = m n`` entries, ``sinh(t)/t`` increasing gives the bound

  .. math::

    1 \\le r \\le \\sqrt{1 + \\sinh(\\gamma)^2 / N}.

  Args:
    x: ``(..., m, n)`` matrices.
    gamma: scale inside the cosh.

  Returns:
    ``r`` with shape ``(..., 1, 1)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow import orthogonal
    >>> r = orthogonal.cosh_rms(jnp.full((4, 4), 0.25))  # ||x||_F = 1
    >>> round(float(r.squeeze()), 4)  # sqrt(1 + sinh(0.25)^2) = cosh(0.25)
    1.0314
  """
  s = jnp.sinh(gamma * x)
  return jnp.sqrt(1.0 + jnp.mean(s * s, axis=(-2, -1), keepdims=True))


@linalg.matrixwise
def _auon_matrices(x, *, gamma, normalize, ns_steps, ns_coeffs, eps):
  norm = jnp.sqrt(jnp.sum(x * x, axis=(-2, -1), keepdims=True))
  y = linalg.frobenius_normalize(x, eps)
  if not isinstance(ns_steps, int) or ns_steps:  # traced: a loop bound
    y = linalg.newton_schulz(y, ns_steps, ns_coeffs)
  y = y / cosh_rms(y, gamma)
  return y if normalize else y * norm


def scale_by_auon(
  beta: float = 0.95,
  nesterov: bool = True,
  gamma: float = 1.0,
  normalize: bool = True,
  ns_steps: int = 0,
  ns_coeffs: Any = linalg.MUON_COEFFS,
  eps: float = 1e-7,
  shape_scale: Optional[str] = 'keller',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformation:
  """AuON's direction: normalised momentum divided by its cosh RMS.

  With ``G`` the (Nesterov) momentum of :func:`scale_by_muon` and ``N`` the
  number of entries of each matrix view:

  .. math::

    X = G / (\\|G\\|_F + \\epsilon), \\quad
    (\\text{Hybrid: } X \\leftarrow \\mathrm{NS}_k(X)), \\quad
    r = \\sqrt{\\tfrac{1}{N}\\textstyle\\sum \\cosh(\\gamma X)^2}, \\quad
    u = s \\cdot X / r.

  This is the paper's version (§3.1; Hybrid §3.2 with ``ns_steps=1``) and
  costs linear time without Newton-Schulz. Since ``||X||_F = 1``,
  ``1 <= r <= sqrt(1 + sinh(gamma)^2/N)`` (:func:`cosh_rms`): for a 512x512
  matrix ``r - 1 ~ 2e-6``, so AuON is in effect Frobenius-normalised Nesterov
  SGD, ``||u||_F ~ s``.

  The authors' current code differs; these settings reproduce it:
  ``gamma=1.5`` (cosh of ``1.5 X``), ``normalize=False`` (the update is
  ``||G||_F X / r``, i.e. ``G / r`` without Newton-Schulz), ``shape_scale=None``,
  the decay ``weight_decay`` of the alias applied as in AdamW, and
  ``ns_steps=5`` for their HybridAuON. (For the hybrid, ``normalize=False``
  rescales the Newton-Schulz output by ``||G||_F``; not checked against their
  code.)

  Args:
    beta: momentum decay, in [0, 1).
    nesterov: use the Nesterov direction (static).
    gamma: scale inside the cosh, ``>= 0``.
    normalize: return ``X / r`` (paper) rather than ``||G||_F X / r``.
    ns_steps: Newton-Schulz steps before the division (int ``>= 0``, may be
      traced; 0 for AuON, 1 for Hybrid-AuON).
    ns_coeffs: ``(a, b, c)`` or a ``(ns_steps, 3)`` table.
    eps: added to the Frobenius norm.
    shape_scale: width factor, as in :func:`scale_by_muon`.
    dimension_numbers: matrix views, as in :func:`scale_by_muon`.
    mu_dtype: dtype of the momentum.
    sharding: as in :func:`scale_by_muon`; without Newton-Schulz the work
      is elementwise plus two reductions per matrix, so ``'local'`` (no
      resharding) moves the least data.

  Returns:
    A :class:`optax.GradientTransformation` with state
    :class:`OrthogonalMomentumState`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_auon(beta=0.0, shape_scale=None)
    >>> g = {'w': jax.random.normal(jax.random.key(0), (32, 32))}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> round(float(jnp.linalg.norm(u['w'])), 4)  # ||X / r||_F = 1/r, r ~ 1
    0.9995

  References:
    Maity, `AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates <https://arxiv.org/abs/2509.24320>`_, 2025.
  """
  _check_common(beta, eps, shape_scale)
  checks.check_non_negative('gamma', gamma)
  ns_steps = checks.as_count('ns_steps', ns_steps, 0)
  if not isinstance(ns_steps, int) or ns_steps:
    _check_coeffs(ns_coeffs, ns_steps)
  sharding = sharding_lib.as_matrix_sharding(sharding)

  def fn(x):
    return _auon_matrices(
      x,
      gamma=gamma,
      normalize=normalize,
      ns_steps=ns_steps,
      ns_coeffs=ns_coeffs,
      eps=eps,
    )

  def matrix_fn(direction):
    # Without Newton-Schulz the work is elementwise: stacking would only copy.
    return linalg.map_matrices(
      fn,
      direction,
      dimension_numbers,
      group=not isinstance(ns_steps, int)
      or ns_steps > 0
      or sharding is not None,
      finalize=_scaled(shape_scale),
      sharding=sharding,
    )

  return _momentum_transform(matrix_fn, beta, nesterov, mu_dtype)


# ---------------------------------------------------------------------------
# Routing: hidden matrices vs the AdamW branch.


def default_matrix_filter(
  exclude: Sequence[str] = DEFAULT_EXCLUDED_NAMES,
) -> MatrixFilter:
  """The default routing rule: hidden matrices go to the orthogonal branch.

  A leaf is a hidden matrix when it has at least 2 dimensions and no key of
  its path names an embedding or an output head: each key is lower-cased and
  split on non-alphanumeric characters, and the leaf is excluded when a piece
  (or the whole key) is in ``exclude``. ``'lm_head'``, ``'token_embedding'``
  and ``'wte'`` are excluded; ``'multihead'`` and ``'heads'`` are not.

  Args:
    exclude: names that send a leaf to the AdamW branch.

  Returns:
    ``filter(path, leaf) -> bool``, ``path`` as given by
    ``jax.tree_util.tree_flatten_with_path``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optimflow import orthogonal
    >>> params = {'lm_head': {'kernel': jnp.ones((4, 8))},
    ...           'mlp': {'kernel': jnp.ones((4, 4)), 'bias': jnp.ones(4)}}
    >>> flt = orthogonal.default_matrix_filter()
    >>> jax.tree_util.tree_map_with_path(flt, params)
    {'lm_head': {'kernel': False}, 'mlp': {'bias': False, 'kernel': True}}
  """
  excluded = frozenset(e.lower() for e in exclude)

  def matrix_filter(path: KeyPath, leaf: Any) -> bool:
    if len(getattr(leaf, 'shape', ())) < 2:
      return False
    for key in path:
      name = key_name(key).lower()
      if name in excluded or excluded.intersection(
        re.split(r'[^a-z0-9]+', name)
      ):
        return False
    return True

  return matrix_filter


def matrix_labels(
  matrix_filter: Optional[MatrixFilter] = None,
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
) -> Callable[[Any], Any]:
  """``params -> labels``: ``'matrix'`` or ``'other'`` for each leaf.

  A leaf is ``'matrix'`` when ``matrix_filter(path, leaf)`` holds (default
  :func:`default_matrix_filter`) and, if ``dimension_numbers`` is a tree or
  callable, its entry is not ``None``.

  Args:
    matrix_filter: ``filter(path, leaf) -> bool``.
    dimension_numbers: as in :func:`scale_by_muon`.

  Returns:
    A function for ``optax.partition``'s ``param_labels``.

  Raises:
    ValueError: (when called) a leaf sent to the matrix branch has fewer than
      2 dimensions; the message names its path.
  """
  flt = default_matrix_filter() if matrix_filter is None else matrix_filter

  def labels(params):
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    dims = linalg.resolve_dimension_numbers(dimension_numbers, params)
    out = []
    for (path, leaf), d in zip(path_leaves, dims):
      is_matrix = bool(flt(path, leaf))
      if dimension_numbers is not None and d is None:
        is_matrix = False
      if is_matrix and len(getattr(leaf, 'shape', ())) < 2:
        raise ValueError(
          f'the matrix filter sends the leaf at '
          f'{jax.tree_util.keystr(path)} (shape '
          f'{tuple(getattr(leaf, "shape", ()))}) to the matrix branch, but '
          'it has fewer than 2 dimensions.'
        )
      out.append('matrix' if is_matrix else 'other')
    return jax.tree.unflatten(treedef, out)

  return labels


def _partition(
  matrix_tx: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  weight_decay_mask: MaskOrFn,
  adam_learning_rate: Optional[optax.ScalarOrSchedule],
  adam_b1: float,
  adam_b2: float,
  adam_eps: float,
  adam_weight_decay: optax.ScalarOrSchedule,
  mu_dtype: Optional[jax.typing.DTypeLike],
  matrix_filter: Optional[MatrixFilter],
  dimension_numbers: linalg.DimensionNumbersOrFn,
) -> optax.GradientTransformationExtraArgs:
  """``partition``: the matrix branch with decay and lr, AdamW for the rest."""
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_non_negative('weight_decay', weight_decay)
  if adam_learning_rate is None:
    adam_learning_rate = learning_rate
  checks.check_non_negative('adam_learning_rate', adam_learning_rate)
  checks.check_beta('adam_b1', adam_b1, allow_one=False)
  checks.check_beta('adam_b2', adam_b2, allow_one=False)
  checks.check_non_negative('adam_eps', adam_eps)
  checks.check_non_negative('adam_weight_decay', adam_weight_decay)
  mu_dtype = checks.check_dtype('mu_dtype', mu_dtype)
  return optax.partition(
    {
      'matrix': optax.chain(
        matrix_tx,
        optax.add_decayed_weights(weight_decay, weight_decay_mask),
        optax.scale_by_learning_rate(learning_rate),
      ),
      'other': optax.adamw(
        adam_learning_rate,
        b1=adam_b1,
        b2=adam_b2,
        eps=adam_eps,
        weight_decay=adam_weight_decay,
        mu_dtype=mu_dtype,
      ),
    },
    matrix_labels(matrix_filter, dimension_numbers),
  )


_ALIAS_ARGS_DOC = """weight_decay: decoupled decay of the matrix branch, ``p <- p - lr (u +
      wd p)`` (Keller Jordan's ``p *= 1 - lr wd``), float or schedule.
    weight_decay_mask: which matrix leaves are decayed.
    adam_learning_rate: learning rate of the AdamW branch; ``None`` uses
      ``learning_rate`` (as ``optax.contrib.muon`` does), which is usually far
      too large: Keller Jordan's reference uses 3e-4 with Muon at 0.02.
    adam_b1: AdamW's first-moment decay, in [0, 1).
    adam_b2: AdamW's second-moment decay, in [0, 1).
    adam_eps: AdamW's epsilon.
    adam_weight_decay: AdamW's decoupled decay.
    matrix_filter: ``filter(path, leaf) -> bool`` choosing the matrix branch;
      default :func:`default_matrix_filter` (``ndim >= 2``, path names no
      embedding or head). Static: pass it in ``static_args`` of
      ``optax.inject_hyperparams``."""


def _with_alias_args(fn):
  """Fills ``{alias_args}`` in ``fn``'s docstring with the shared Args."""
  fn.__doc__ = fn.__doc__.replace('{alias_args}', _ALIAS_ARGS_DOC)
  return fn


@_with_alias_args
def muon(
  learning_rate: optax.ScalarOrSchedule,
  beta: float = 0.95,
  nesterov: bool = True,
  ns_steps: int = 5,
  ns_coeffs: Any = linalg.MUON_COEFFS,
  eps: float = 1e-7,
  shape_scale: Optional[str] = 'keller',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: MaskOrFn = None,
  adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.95,
  adam_eps: float = 1e-8,
  adam_weight_decay: optax.ScalarOrSchedule = 0.0,
  matrix_filter: Optional[MatrixFilter] = None,
  reference: bool = False,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformationExtraArgs:
  """Muon for hidden matrices, AdamW for everything else.

  Hidden matrices follow :func:`scale_by_muon`, then decoupled decay and the
  learning rate: ``p <- p - lr (s NS5(G / ||G||_F) + wd p)``. Biases, norm
  gains, scalars, embeddings and output heads (see
  :func:`default_matrix_filter`) get ``optax.adamw`` with its own learning
  rate. Unlike ``optax.contrib.muon``, embeddings and heads are not sent to
  Muon, the AdamW branch is plain AdamW with ``b2=0.95``, there is no bias
  correction on the momentum, same-shape matrices are stacked, and the
  iteration is float32 even for bf16 parameters.

  With ``reference=True`` and ``shape_scale='keller'`` the matrix branch is
  Keller Jordan's ``Muon`` (``KellerJordan/Muon``, ``muon.py``) in float32:
  ``buf.lerp_(g, 1 - beta)``, Nesterov ``g.lerp(buf, beta)``, five quintic
  steps on ``X / (||X||_F + 1e-7)`` on the smaller side, scale
  ``sqrt(max(1, fan_out / fan_in))``, decay ``p *= 1 - lr wd``. His
  ``MuonWithAuxAdam`` settings for the other leaves are
  ``adam_learning_rate=3e-4, adam_b1=0.9, adam_b2=0.95, adam_eps=1e-10,
  adam_weight_decay=0.01`` (his AdamW is bias-corrected, as optax's).

  Args:
    learning_rate: learning rate of the matrix branch, float or schedule
      (Keller Jordan: 0.02; Moonlight scaling: AdamW's).
    beta: momentum decay, in [0, 1).
    nesterov: Nesterov direction.
    ns_steps: Newton-Schulz steps (int ``>= 1``, may be traced).
    ns_coeffs: ``(a, b, c)`` or a ``(ns_steps, 3)`` table.
    eps: added to the Frobenius norm.
    shape_scale: ``'keller'``, ``'moonlight'`` or ``None``.
    dimension_numbers: matrix views (see :func:`scale_by_muon`); a ``None``
      entry in a tree sends that leaf to AdamW.
    mu_dtype: dtype of both branches' first moments.
    {alias_args}
    reference: Keller Jordan's algorithm in float32 (see above).
    sharding: distribution of the matrix work over a device mesh (see
      :func:`scale_by_muon`; static).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (``optax.partition``).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optimflow
    >>> params = {'embed': jnp.ones((10, 4)), 'w': jnp.ones((4, 4)),
    ...           'b': jnp.zeros(4)}
    >>> tx = optimflow.muon(0.02, adam_learning_rate=3e-4)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> u, state = tx.update(grads, state, params)
    >>> optimflow.orthogonal.matrix_labels()(params)
    {'b': 'other', 'embed': 'other', 'w': 'matrix'}

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  return _partition(
    scale_by_muon(
      beta=beta,
      nesterov=nesterov,
      ns_steps=ns_steps,
      ns_coeffs=ns_coeffs,
      eps=eps,
      shape_scale=shape_scale,
      dimension_numbers=dimension_numbers,
      mu_dtype=mu_dtype,
      reference=reference,
      sharding=sharding,
    ),
    learning_rate,
    weight_decay,
    weight_decay_mask,
    adam_learning_rate,
    adam_b1,
    adam_b2,
    adam_eps,
    adam_weight_decay,
    mu_dtype,
    matrix_filter,
    dimension_numbers,
  )


@_with_alias_args
def auon(
  learning_rate: optax.ScalarOrSchedule,
  beta: float = 0.95,
  nesterov: bool = True,
  gamma: float = 1.0,
  normalize: bool = True,
  ns_steps: int = 0,
  ns_coeffs: Any = linalg.MUON_COEFFS,
  eps: float = 1e-7,
  shape_scale: Optional[str] = 'keller',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: MaskOrFn = None,
  adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.95,
  adam_eps: float = 1e-8,
  adam_weight_decay: optax.ScalarOrSchedule = 0.0,
  matrix_filter: Optional[MatrixFilter] = None,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformationExtraArgs:
  """AuON for hidden matrices, AdamW for everything else.

  Hidden matrices follow :func:`scale_by_auon` (paper version by default),
  then decoupled decay and the learning rate; the routing is :func:`muon`'s.
  The paper's LM run uses ``learning_rate=0.055`` with AdamW at ``3e-3``.
  For the authors' code set ``gamma=1.5, normalize=False, shape_scale=None``
  (their trainer: lr 0.08, decay 0.01; Adam lr 0.008, betas (0.8, 0.95),
  eps 1e-10).

  Args:
    learning_rate: learning rate of the matrix branch, float or schedule.
    beta: momentum decay, in [0, 1).
    nesterov: Nesterov direction.
    gamma: scale inside the cosh.
    normalize: paper output ``X / r`` (else ``||G||_F X / r``).
    ns_steps: Newton-Schulz steps before the division (0: AuON).
    ns_coeffs: ``(a, b, c)`` or a ``(ns_steps, 3)`` table.
    eps: added to the Frobenius norm.
    shape_scale: ``'keller'``, ``'moonlight'`` or ``None``.
    dimension_numbers: matrix views (see :func:`scale_by_muon`).
    mu_dtype: dtype of both branches' first moments.
    {alias_args}
    sharding: distribution of the matrix work over a device mesh (see
      :func:`scale_by_auon`; static).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (``optax.partition``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> params = {'w': jnp.ones((4, 4)), 'b': jnp.zeros(4)}
    >>> tx = optimflow.auon(0.05, adam_learning_rate=3e-3)
    >>> u, _ = tx.update({'w': jnp.eye(4), 'b': jnp.ones(4)}, tx.init(params),
    ...                  params)
    >>> round(float(jnp.linalg.norm(u['w'])), 4)  # lr / cosh_rms(eye(4) / 2)
    0.0484

  References:
    Maity, `AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates <https://arxiv.org/abs/2509.24320>`_, 2025.
  """
  return _partition(
    scale_by_auon(
      beta=beta,
      nesterov=nesterov,
      gamma=gamma,
      normalize=normalize,
      ns_steps=ns_steps,
      ns_coeffs=ns_coeffs,
      eps=eps,
      shape_scale=shape_scale,
      dimension_numbers=dimension_numbers,
      mu_dtype=mu_dtype,
      sharding=sharding,
    ),
    learning_rate,
    weight_decay,
    weight_decay_mask,
    adam_learning_rate,
    adam_b1,
    adam_b2,
    adam_eps,
    adam_weight_decay,
    mu_dtype,
    matrix_filter,
    dimension_numbers,
  )


@_with_alias_args
def hybrid_auon(
  learning_rate: optax.ScalarOrSchedule,
  beta: float = 0.95,
  nesterov: bool = True,
  gamma: float = 1.0,
  normalize: bool = True,
  ns_steps: int = 1,
  ns_coeffs: Any = linalg.MUON_COEFFS,
  eps: float = 1e-7,
  shape_scale: Optional[str] = 'keller',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: MaskOrFn = None,
  adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.95,
  adam_eps: float = 1e-8,
  adam_weight_decay: optax.ScalarOrSchedule = 0.0,
  matrix_filter: Optional[MatrixFilter] = None,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformationExtraArgs:
  """Hybrid-AuON: one Newton-Schulz step, then AuON's cosh-RMS division.

  :func:`auon` with ``ns_steps=1`` (paper §3.2): ``X = NS_1(G/||G||_F)``,
  ``u = s X / r``. The authors' ``HybridAuON`` class defaults to
  ``ns_steps=5``.

  Args:
    learning_rate: learning rate of the matrix branch, float or schedule.
    beta: momentum decay, in [0, 1).
    nesterov: Nesterov direction.
    gamma: scale inside the cosh.
    normalize: paper output ``X / r`` (else ``||G||_F X / r``).
    ns_steps: Newton-Schulz steps (int ``>= 1``, may be traced).
    ns_coeffs: ``(a, b, c)`` or a ``(ns_steps, 3)`` table.
    eps: added to the Frobenius norm.
    shape_scale: ``'keller'``, ``'moonlight'`` or ``None``.
    dimension_numbers: matrix views (see :func:`scale_by_muon`).
    mu_dtype: dtype of both branches' first moments.
    {alias_args}
    sharding: distribution of the matrix work over a device mesh (see
      :func:`scale_by_auon`; static).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (``optax.partition``).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> params = {'w': jnp.ones((4, 8)), 'b': jnp.zeros(8)}
    >>> tx = optimflow.hybrid_auon(0.05, adam_learning_rate=3e-3)
    >>> u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params),
    ...                  params)
    >>> u['w'].shape
    (4, 8)

  References:
    Maity, `AuON: A Linear-time Alternative to Semi-Orthogonal Momentum
    Updates <https://arxiv.org/abs/2509.24320>`_, 2025.
  """
  ns_steps = checks.as_count('ns_steps', ns_steps, 1)
  return auon(
    learning_rate,
    beta=beta,
    nesterov=nesterov,
    gamma=gamma,
    normalize=normalize,
    ns_steps=ns_steps,
    ns_coeffs=ns_coeffs,
    eps=eps,
    shape_scale=shape_scale,
    dimension_numbers=dimension_numbers,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    adam_learning_rate=adam_learning_rate,
    adam_b1=adam_b1,
    adam_b2=adam_b2,
    adam_eps=adam_eps,
    adam_weight_decay=adam_weight_decay,
    matrix_filter=matrix_filter,
    sharding=sharding,
  )
