"""Whitening: SWAN (GradNorm, then GradWhitening), stateless on hidden matrices.

SWAN (Ma, Gong, Scetbon, Meeds, 2024) preprocesses the raw gradient ``G`` of
each hidden matrix with two stateless operators and applies plain SGD:

* **GradNorm** standardises each output unit's gradient across its inputs:
  in torch layout ``(out, in)`` each row, in Flax layout ``(in, out)`` each
  column over axis 0 (conv kernels ``(..., in, out)``: over all axes but the
  last). Every row of the result has mean 0 and standard deviation 1.
* **GradWhitening** replaces ``G~`` by ``(G~ G~^T)^{-1/2} G~``, the polar
  factor ``U V^T`` (Muon's object, without momentum), computed by the coupled
  Newton-Schulz inverse square root on the smaller Gram side, with per-step
  scaled cubics by default (:func:`optimflow.linalg.whiten`), in float32
  whatever the parameter dtype.

No moment is stored: on hidden matrices the optimizer state is empty (the
paper's "≈50% lower end-to-end memory than Adam"). :func:`swan` sends hidden
matrices to SWAN and everything else (embeddings, output head, norm gains,
biases, scalars) to AdamW through ``optax.partition``, with the routing of
:func:`optimflow.muon` (:func:`optimflow.orthogonal.matrix_labels`).

Choices the spec marks unverified (iteration count, ``beta``, output scale)
are arguments; the defaults and their reasons are in
:func:`scale_by_grad_whitening`.

A pitfall: centring makes ``G~`` orthogonal to the all-ones vector of the
fan-in, so the fan-in Gram matrix is singular for every layer with
``fan_in <= fan_out`` (every square attention projection, every expanding MLP
kernel). Newton-Schulz multiplies that null direction by the product of the
steps' linear coefficients (about 210 for the default seven scaled steps, 58
for Higham's ten); it stays harmless because the iteration runs in float32 and
the null direction is annihilated by the final product.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from optimflow import linalg
from optimflow import orthogonal
from optimflow._src import checks
from optimflow._src.tree import MaskOrFn
from optimflow._src.tree import safe_divide
from optimflow.sharding import matrix as sharding_lib

OUTPUT_SCALES = ('unit_rms', 'match_gradnorm', None)
NORMALIZATIONS = ('frobenius', 'gram')

Axis = Optional[Union[int, Sequence[int]]]


def gradnorm(
  x: jax.Array,
  axis: Union[int, Sequence[int]] = -2,
  eps: jax.typing.ArrayLike = 1e-8,
  center: bool = True,
) -> jax.Array:
  """SWAN's GradNorm: standardise ``x`` over ``axis``.

  .. math::

    \\tilde G = (G - \\bar g) / (s + \\epsilon), \\quad
    \\bar g = \\mathrm{mean}_{axis}\\, G, \\quad
    s = \\sqrt{\\mathrm{mean}_{axis} (G - \\bar g)^2}

  (population standard deviation), computed in at least float32 and
  returned in ``x``'s dtype. The mean is subtracted twice (the second pass
  removes the rounding error of the first), and a slice whose ``s`` is at the
  rounding level of its magnitude, ``s <= eps_32 max|G|`` (``eps_32`` the
  machine epsilon of the compute dtype), counts as constant and becomes 0:
  rounding noise is not amplified into a unit-size direction. A zero slice
  gives 0; NaN or inf in a slice gives NaN there.

  Args:
    x: the gradient.
    axis: axes to standardise over (the fan-in); ``-2`` for a
      ``(..., fan_in, fan_out)`` stack.
    eps: added to ``s`` (an absolute floor; the relative one above is
      always applied).
    center: subtract the mean (the paper); ``False`` only divides by the
      root mean square.

  Returns:
    ``G~``, same shape and dtype as ``x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow import whitening
    >>> g = jnp.array([[1.0, 2.0], [3.0, 2.0]])  # Flax (in, out)
    >>> whitening.gradnorm(g, axis=0)
    Array([[-1.,  0.],
           [ 1.,  0.]], dtype=float32)
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  y = x.astype(dtype)
  scale = jnp.max(jnp.abs(y), axis=axis, keepdims=True, initial=0.0)
  if center:
    y = y - jnp.mean(y, axis=axis, keepdims=True)
    y = y - jnp.mean(y, axis=axis, keepdims=True)
  s = jnp.sqrt(jnp.mean(jnp.square(y), axis=axis, keepdims=True))
  # NaN <= floor is False and an infinite scale is excluded, so a slice
  # holding NaN or inf stays non-finite.
  constant = (s <= jnp.finfo(dtype).eps * scale) & jnp.isfinite(scale)
  return jnp.where(constant, 0, y / (s + eps)).astype(x.dtype)


def _check_eps(eps: Any) -> None:
  checks.check_positive('eps', eps)


def _check_whitening(ns_steps, ns_beta, output_scale, normalization) -> None:
  checks.as_count('ns_steps', ns_steps, 1)
  if ns_beta is not None:  # None: the scaled schedule
    checks.check_interval('ns_beta', ns_beta, 0.0, 1.0, low_open=True)
  checks.check_choice('output_scale', output_scale, OUTPUT_SCALES)
  checks.check_choice('normalization', normalization, NORMALIZATIONS)


def _rms_matched(delta: jax.Array, target_sq: jax.Array) -> jax.Array:
  """``delta`` rescaled to Frobenius norm ``sqrt(target_sq)``; 0 stays 0."""
  norm = jnp.sqrt(jnp.sum(jnp.square(delta), axis=(-2, -1), keepdims=True))
  return safe_divide(delta * jnp.sqrt(target_sq), norm)


@linalg.matrixwise
def _whiten_matrices(x, *, ns_steps, ns_beta, output_scale, eps, normalization):
  """GradWhitening of a ``(B, m, n)`` float32 stack, then the output scale.

  On CPU the stack runs one matrix at a time (:func:`linalg.matrixwise`).
  """
  delta = linalg.whiten(
    x, ns_steps, ns_beta, eps=eps, normalization=normalization
  )
  if output_scale == 'unit_rms':
    return _rms_matched(
      delta, jnp.asarray(x.shape[-2] * x.shape[-1], delta.dtype)
    )
  if output_scale == 'match_gradnorm':
    return _rms_matched(
      delta, jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)
    )
  return delta


def scale_by_grad_norm(
  axis: Axis = None,
  eps: float = 1e-8,
  center: bool = True,
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
) -> optax.GradientTransformation:
  """SWAN's GradNorm on every leaf: each output unit standardised over its inputs.

  .. math::

    \\tilde G = (G - \\bar g) / (s + \\epsilon)

  with mean and (population) standard deviation taken over the fan-in axes
  (:func:`gradnorm`): Flax Dense kernels ``(in, out)`` over axis 0, conv
  kernels ``(..., in, out)`` over all axes but the last. Stateless.

  Args:
    axis: the axes to standardise over, for every leaf (e.g. ``1`` for a
      torch-layout ``(out, in)`` tree); ``None`` takes each leaf's reduction
      (fan-in) axes from ``dimension_numbers``.
    eps: added to the standard deviation, ``> 0``.
    center: subtract the mean (the paper). ``False`` only rescales each unit
      to unit root mean square: use it where the mean carries signal (no
      normalisation layer downstream), since a centred update can never move
      the per-unit mean of a weight.
    dimension_numbers: used when ``axis`` is None: ``None`` (Flax layout), one
      ``optax.contrib.MuonDimensionNumbers``, a tree or prefix of them (a
      ``None`` entry leaves that leaf unchanged), or a callable on the updates
      (:func:`optimflow.linalg.resolve_dimension_numbers`).

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: ``eps <= 0``; at update time, a leaf with fewer than 2
      dimensions (the message names its path).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_grad_norm()
    >>> g = {'w': jax.random.normal(jax.random.key(0), (16, 4))}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> bool(jnp.allclose(u['w'].mean(0), 0, atol=1e-6))
    True
    >>> bool(jnp.allclose(u['w'].std(0), 1, atol=1e-5))
    True

  References:
    Ma, Gong, Scetbon, Meeds, `SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.
  """
  _check_eps(eps)

  def update_matrices(updates):
    if axis is None:
      return linalg.map_matrices(
        lambda x: gradnorm(x, -2, eps, center),
        updates,
        dimension_numbers,
        orient='keep',
        group=False,
      )
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    out = []
    for path, g in path_leaves:
      if jnp.ndim(g) < 2:
        raise ValueError(
          f'the leaf at {jax.tree_util.keystr(path)} has shape '
          f'{jnp.shape(g)}: GradNorm needs at least 2 dimensions. Send it '
          'to another branch (optax.partition or optax.masked).'
        )
      axes = linalg.canonical_axes(axis, jnp.ndim(g))
      out.append(gradnorm(g, axes, eps, center))
    return jax.tree.unflatten(treedef, out)

  return optax.stateless(lambda updates, params=None: update_matrices(updates))


def scale_by_grad_whitening(
  ns_steps: int = 7,
  ns_beta: Optional[float] = None,
  output_scale: Optional[str] = 'unit_rms',
  eps: float = 1e-8,
  normalization: str = 'frobenius',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformation:
  """SWAN's GradWhitening ``(G G^T)^{-1/2} G`` on every matrix view.

  .. math::

    G_0 = G / (\\|G\\|_F + \\epsilon), \\quad
    Z_k = \\mathrm{CNS}_k(G_0 G_0^\\top) \\approx (G_0 G_0^\\top)^{-1/2},
    \\quad \\Delta = Z_k G_0 \\approx U V^\\top,

    u = \\Delta \\cdot \\sqrt{m n} / \\|\\Delta\\|_F \\ (\\text{unit RMS}),

  where ``CNS_k`` is ``k`` steps of the coupled Newton-Schulz inverse square
  root from ``Y_0 = G_0 G_0^T, Z_0 = I`` on the smaller Gram side (Algorithm
  2: ``T = 3I - ZY, Y <- beta Y T, Z <- beta T Z``). Each singular value ``s``
  of ``G_0`` follows the cubic ``s <- a_k s + b_k s^3`` (``a = 3 beta, b =
  -beta`` in Algorithm 2), so the iteration is Muon's Newton-Schulz with a
  cubic coefficient table and runs through the same code
  (:func:`optimflow.linalg.whiten`: :func:`~optimflow.linalg.gram_newton_schulz`
  on the Gram side, or :func:`~optimflow.linalg.newton_schulz` on ``G_0`` for
  near-square matrices, which is cheaper). Same-shape matrices are stacked;
  the work is in float32 whatever the parameter dtype, and the update comes
  back in the gradient's dtype.

  Defaults (the paper's Algorithms 1-2 were not checked against the PDF;
  third-party ports differ):

  * ``ns_steps=7, ns_beta=None``: the *scaled* Newton-Schulz schedule of
    Chen and Chow (:func:`optimflow.linalg.whitening_coeffs`): each step's
    cubic is the one of the family ``alpha s (3 - alpha^2 s^2) / 2`` that
    maps the interval the singular values are known to lie in onto the
    highest possible floor. Designed for ``s`` in ``[0.01, 1]`` after the
    Frobenius scaling, seven steps map that whole interval into
    ``[0.9988, 1]``. The constant ``beta = 1/2`` (Higham's scheme, what
    ``ns_steps=10, ns_beta=0.5`` runs) maps ``s = 0.01`` to 0.53 after ten
    steps (a Gaussian ``512 x 2048`` gradient's smallest singular value, 0.022
    after the scaling, to 0.89): the scaled seven steps whiten every
    ``s >= 1e-4`` at least as well as Higham's ten (up to ``7e-4`` where both
    are near 1) with 0.7x the products, which keeps SWAN's step at or under
    Muon's. ``beta = 0.8`` (one port) overshoots the fixed point and
    oscillates (``s`` in about ``[0.56, 1.6]``).
  * ``output_scale='unit_rms'``: ``Delta`` rescaled to entries of RMS 1, the
    size of an Adam or sign step, so Adam's learning rate transfers (one
    port's ``sqrt(mn) Delta / ||Delta||_F``). ``'match_gradnorm'`` rescales
    to the input's Frobenius norm (after GradNorm that is ``sqrt(mn)`` too,
    up to ``eps``); ``None`` returns ``Delta`` (RMS ``1/sqrt(max(m, n))``).
  * ``normalization='frobenius'``: SWAN's scaling of ``G`` before the
    iteration. ``'gram'`` divides by ``||G G^T||_F^{1/2}`` instead, a tighter
    bound on the spectral norm, so small singular values start larger (with
    Higham's steps, ``512 x 2048``: ``s_min > 0.96`` at ``k = 7``).

  Args:
    ns_steps: Newton-Schulz steps, an int ``>= 1`` (may be traced).
    ns_beta: ``None`` (the scaled schedule) or a constant step scale
      ``beta`` in ``(0, 1]`` (Algorithm 2; may be traced).
    output_scale: ``'unit_rms'``, ``'match_gradnorm'`` or ``None`` (static).
    eps: added to the normalising norm, ``> 0``.
    normalization: ``'frobenius'`` or ``'gram'`` (static).
    dimension_numbers: which axes are fan-in and fan-out, as in
      :func:`optimflow.scale_by_muon`; ``None`` is Flax's layout, a ``None``
      entry in a tree leaves that leaf unchanged.
    sharding: distribution of the whitening over a device mesh, as in
      :func:`optimflow.scale_by_muon` (``'stacked'``: same-shape matrices
      stacked and sharded, whole matrices per device; static).

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: a hyperparameter is out of range; at update time, a leaf with
      fewer than 2 dimensions (the message names its path).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_grad_whitening(output_scale=None)
    >>> g = {'w': jax.random.normal(jax.random.key(0), (64, 16))}
    >>> u, _ = tx.update(g, tx.init(g))
    >>> s = jnp.linalg.svd(u['w'], compute_uv=False)
    >>> bool(s.min() > 0.99 and s.max() < 1.01)  # U V^T
    True

  References:
    Ma, Gong, Scetbon, Meeds, `SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.

    Higham, `Stable iterations for the matrix square root
    <https://doi.org/10.1023/A:1019150005407>`_, 1997.

    Chen and Chow, `A stable scaling of Newton-Schulz for improving the sign
    function computation of a Hermitian matrix
    <https://www.osti.gov/biblio/1226765>`_, 2014.
  """
  _check_whitening(ns_steps, ns_beta, output_scale, normalization)
  _check_eps(eps)
  sharding = sharding_lib.as_matrix_sharding(sharding)

  def fn(x):
    return _whiten_matrices(
      x,
      ns_steps=ns_steps,
      ns_beta=ns_beta,
      output_scale=output_scale,
      eps=eps,
      normalization=normalization,
    )

  return optax.stateless(
    lambda updates, params=None: linalg.map_matrices(
      fn, updates, dimension_numbers, sharding=sharding
    )
  )


def scale_by_swan(
  ns_steps: int = 7,
  ns_beta: Optional[float] = None,
  output_scale: Optional[str] = 'unit_rms',
  eps: float = 1e-8,
  center: bool = True,
  normalization: str = 'frobenius',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformation:
  """SWAN's direction: GradNorm, then GradWhitening; no state.

  .. math::

    \\tilde G = \\mathrm{GradNorm}(G), \\qquad
    u = \\rho\\big((\\tilde G \\tilde G^\\top)^{-1/2} \\tilde G\\big),

  :func:`scale_by_grad_norm` over the fan-in axes followed by
  :func:`scale_by_grad_whitening` (``rho`` the output scale), fused into one
  pass over each leaf's float32 matrix view, with same-shape matrices
  batched. Every leaf this transformation sees is a matrix: use :func:`swan`
  to send the others to AdamW.

  Args:
    ns_steps: Newton-Schulz steps, an int ``>= 1`` (may be traced).
    ns_beta: ``None`` (the scaled schedule) or a constant step scale
      ``beta`` in ``(0, 1]`` (Algorithm 2; may be traced).
    output_scale: ``'unit_rms'``, ``'match_gradnorm'`` or ``None``.
    eps: added to GradNorm's standard deviation and to the normalising norm
      of the whitening, ``> 0``.
    center: GradNorm subtracts the per-unit mean (see
      :func:`scale_by_grad_norm`).
    normalization: ``'frobenius'`` or ``'gram'``.
    dimension_numbers: matrix views, as in :func:`scale_by_grad_whitening`.
    sharding: distribution over a device mesh, as in
      :func:`scale_by_grad_whitening`.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  Raises:
    ValueError: a hyperparameter is out of range; at update time, a leaf with
      fewer than 2 dimensions (the message names its path).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_swan()
    >>> g = {'w': jax.random.normal(jax.random.key(0), (16, 64))}
    >>> u, state = tx.update(g, tx.init(g))
    >>> state
    EmptyState()
    >>> round(float(jnp.sqrt(jnp.mean(u['w'] ** 2))), 4)  # unit RMS
    1.0

  References:
    Ma, Gong, Scetbon, Meeds, `SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.
  """
  _check_whitening(ns_steps, ns_beta, output_scale, normalization)
  _check_eps(eps)
  sharding = sharding_lib.as_matrix_sharding(sharding)

  @linalg.matrixwise
  def fn(x):  # x: (B, fan_in, fan_out); on CPU one matrix at a time
    return _whiten_matrices(
      gradnorm(x, -2, eps, center),
      ns_steps=ns_steps,
      ns_beta=ns_beta,
      output_scale=output_scale,
      eps=eps,
      normalization=normalization,
    )

  return optax.stateless(
    lambda updates, params=None: linalg.map_matrices(
      fn, updates, dimension_numbers, orient='keep', sharding=sharding
    )
  )


def swan(
  learning_rate: optax.ScalarOrSchedule,
  ns_steps: int = 7,
  ns_beta: Optional[float] = None,
  output_scale: Optional[str] = 'unit_rms',
  eps: float = 1e-8,
  center: bool = True,
  normalization: str = 'frobenius',
  dimension_numbers: linalg.DimensionNumbersOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: MaskOrFn = None,
  adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
  adam_b1: float = 0.9,
  adam_b2: float = 0.999,
  adam_eps: float = 1e-8,
  adam_weight_decay: optax.ScalarOrSchedule = 0.0,
  matrix_filter: Optional[orthogonal.MatrixFilter] = None,
  sharding: sharding_lib.ShardingArg = None,
) -> optax.GradientTransformationExtraArgs:
  """SWAN for hidden matrices, AdamW for everything else.

  Hidden matrices get :func:`scale_by_swan`, decoupled decay and the
  learning rate, ``p <- p - lr (u + wd p)``, and keep **no state**.
  Embeddings, the output head, norm gains, biases and scalars (see
  :func:`optimflow.orthogonal.default_matrix_filter`) get ``optax.adamw``
  with its own learning rate, as the paper does (GaLore's convention). The
  routing is :func:`optimflow.muon`'s (``optax.partition``). With the default
  unit-RMS output a SWAN step has the per-entry size of an Adam step, so
  ``adam_learning_rate=None`` (the same learning rate for both branches) is a
  sensible start.

  Args:
    learning_rate: learning rate of the SWAN branch, float or schedule.
    ns_steps: Newton-Schulz steps (int ``>= 1``, may be traced).
    ns_beta: ``None`` (the scaled schedule) or a constant step scale in
      ``(0, 1]`` (may be traced); see :func:`scale_by_grad_whitening`.
    output_scale: ``'unit_rms'``, ``'match_gradnorm'`` or ``None`` (static).
    eps: GradNorm's and the whitening's epsilon, ``> 0``.
    center: GradNorm subtracts the per-unit mean (static).
    normalization: ``'frobenius'`` or ``'gram'`` (static).
    dimension_numbers: matrix views (see :func:`scale_by_grad_whitening`); a
      ``None`` entry in a tree sends that leaf to AdamW.
    mu_dtype: dtype of AdamW's first moment.
    weight_decay: decoupled decay of the SWAN branch, float or schedule.
    weight_decay_mask: which SWAN leaves are decayed.
    adam_learning_rate: learning rate of the AdamW branch; ``None`` uses
      ``learning_rate``.
    adam_b1: AdamW's first-moment decay, in [0, 1).
    adam_b2: AdamW's second-moment decay, in [0, 1).
    adam_eps: AdamW's epsilon.
    adam_weight_decay: AdamW's decoupled decay.
    matrix_filter: ``filter(path, leaf) -> bool`` choosing the SWAN branch;
      default :func:`optimflow.orthogonal.default_matrix_filter`
      (``ndim >= 2``, path names no embedding or head). Static.
    sharding: distribution of the SWAN branch over a device mesh (see
      :func:`scale_by_grad_whitening`; static).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` (``optax.partition``).

  Raises:
    ValueError: a hyperparameter is out of range; at ``init``/``update``, the
      matrix filter sends a leaf with fewer than 2 dimensions to SWAN.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import optimflow
    >>> params = {'embed': jnp.ones((10, 4)), 'w': jnp.ones((4, 8)),
    ...           'b': jnp.zeros(8)}
    >>> tx = optimflow.swan(1e-3)
    >>> state = tx.init(params)
    >>> grads = jax.tree.map(jnp.ones_like, params)
    >>> u, state = tx.update(grads, state, params)
    >>> jax.tree.map(jnp.shape, state.inner_states['matrix'].inner_state)
    (EmptyState(), EmptyState(), EmptyState())

  References:
    Ma, Gong, Scetbon, Meeds, `SWAN: SGD with Normalization and Whitening
    Enables Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.
  """
  return orthogonal._partition(
    scale_by_swan(
      ns_steps=ns_steps,
      ns_beta=ns_beta,
      output_scale=output_scale,
      eps=eps,
      center=center,
      normalization=normalization,
      dimension_numbers=dimension_numbers,
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


__all__ = (
  'gradnorm',
  'scale_by_grad_norm',
  'scale_by_grad_whitening',
  'scale_by_swan',
  'swan',
)
