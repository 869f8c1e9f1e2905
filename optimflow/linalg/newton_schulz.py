"""Newton-Schulz iterations: Muon's quintic, its Gram form, SWAN's whitening."""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from optimflow._src import checks
from optimflow._src.tree import safe_divide
from optimflow.linalg.grouped import matrixwise

NSMethod = Literal['auto', 'plain', 'gram']

#: Keller Jordan's quintic coefficients (a, b, c).
MUON_COEFFS = (3.4445, -4.7750, 2.0315)


def frobenius_normalize(x: jax.Array, eps: jax.typing.ArrayLike = 1e-7):
  """``x / (||x||_F + eps)`` over the last two axes; zero stays zero.

  Args:
    x: ``(..., m, n)`` array.
    eps: added to the norm.

  Returns:
    The normalised array.
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
  return safe_divide(x, norm + eps)


Steps = Union[int, jax.Array]


def _coeff_table(coeffs: Any, steps: Steps, dtype) -> tuple[jax.Array, Steps]:
  """The ``(k, 3)`` coefficient table and the step count.

  Step ``i`` uses row ``min(i, k - 1)`` (:func:`_row`). With a static
  ``steps`` the table has ``steps`` rows; with a traced one (a count from
  ``optax.inject_hyperparams`` under ``jit``) a constant ``(a, b, c)`` gives
  one row, and a ``(k, 3)`` table fixes the count to ``k``.
  """
  table = jnp.asarray(coeffs, dtype=dtype)
  static = isinstance(steps, int)
  if table.ndim == 1:
    if table.shape != (3,):
      raise ValueError(
        f'ns_coeffs must have shape (3,) or (steps, 3), got {table.shape}.'
      )
    if not static:
      return table[None], steps
    return jnp.broadcast_to(table, (steps, 3)), steps
  if table.ndim != 2 or table.shape[1] != 3:
    raise ValueError(
      f'ns_coeffs must have shape (3,) or (steps, 3), got {table.shape}.'
    )
  if not static:
    return table, table.shape[0]
  if table.shape != (steps, 3):
    raise ValueError(
      f'ns_coeffs has shape {table.shape}: a (steps, 3) table '
      f'needs {steps} rows for steps={steps}.'
    )
  return table, steps


def _row(table: jax.Array, i: Any) -> jax.Array:
  """Coefficients of step ``i``: row ``min(i, k - 1)`` of a ``(k, 3)`` table."""
  if table.shape[0] == 1:
    return table[0]
  return table[jnp.minimum(i, table.shape[0] - 1)]


def _check_steps(steps: Any, low: int = 1) -> Steps:
  """A Python int ``>= low``, or a traced integer scalar (a loop bound).

  A concrete integer array (``optax.inject_hyperparams`` outside ``jit``) is
  converted to an int; a traced one is used as the ``lax.fori_loop`` bound.
  """
  return checks.as_count('steps', steps, low)


def _mm(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def _gram(x: jax.Array) -> jax.Array:
  """``x x^T`` over the last two axes without materialising ``x^T``."""
  return jnp.einsum(
    '...ik,...jk->...ij', x, x, precision=jax.lax.Precision.HIGHEST
  )


def _wide(fn):
  """Runs ``fn`` on the ``m <= n`` orientation of ``(..., m, n)``."""

  @functools.wraps(fn)
  def wrapped(x, *args, **kwargs):
    if x.shape[-2] > x.shape[-1]:
      return jnp.swapaxes(fn(jnp.swapaxes(x, -1, -2), *args, **kwargs), -1, -2)
    return fn(x, *args, **kwargs)

  return wrapped


def _is_cubic(coeffs: Any) -> bool:
  """Whether a concrete coefficient table has ``c = 0`` in every row.

  Cubic steps skip the ``R^2`` product. A traced table counts as quintic.
  """
  try:
    return not np.any(np.asarray(coeffs, dtype=np.float64)[..., 2])
  except (
    TypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
  ):
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
    steps: number of iterations, an int ``>= 1`` or a traced integer
      scalar (the bound of a ``lax.fori_loop``).
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
  table, steps = _coeff_table(coeffs, steps, x.dtype)
  return _plain_iterate(x, table, steps, _is_cubic(coeffs))


def _plain_iterate(x, table, steps, cubic, gram=None):
  """:func:`newton_schulz`'s loop; ``gram`` is ``x x^T`` when known.

  ``steps`` may be traced (a ``lax.fori_loop`` bound); 0 steps return ``x``.
  """

  def step(c, x, a):
    if cubic:
      return c[0] * x + c[1] * _mm(a, x)
    return c[0] * x + _mm(c[1] * a + c[2] * _mm(a, a), x)

  start = 0
  if gram is not None:
    x, start = step(_row(table, 0), x, gram), 1
  return jax.lax.fori_loop(
    start, steps, lambda i, x: step(_row(table, i), x, _gram(x)), x
  )


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
    steps: number of iterations, an int ``>= 1`` or a traced integer
      scalar (the bound of a ``lax.fori_loop``).
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
  table, steps = _coeff_table(coeffs, steps, x.dtype)
  return _gram_iterate(x, table, steps, _is_cubic(coeffs))


def _gram_iterate(x, table, steps, cubic, gram=None):
  """:func:`gram_newton_schulz`'s loop; ``gram`` is ``x x^T`` when known.

  ``steps`` (``>= 1``) may be traced (a ``lax.fori_loop`` bound).
  """
  r = _gram(x) if gram is None else gram
  p = _poly(r, _row(table, 0), cubic)

  def body(i, carry):
    q, r, p = carry
    r = _mm(p, _mm(p, r))
    p = _poly(r, _row(table, i), cubic)
    return _mm(p, q), r, p

  q, _, _ = jax.lax.fori_loop(1, steps, body, (p, r, p))
  return _mm(q, x)


def gram_is_cheaper(m: int, n: int, steps: int) -> bool:
  """Whether :func:`gram_newton_schulz` needs fewer FLOPs than the plain one.

  Args:
    m: rows.
    n: columns.
    steps: iterations.

  Returns:
    True when ``max(m, n) > 1.5 min(m, n)`` and ``steps >= 2`` (a traced
    ``steps`` counts as ``>= 2``: the choice is static).
  """
  small, large = sorted((m, n))
  many = steps >= 2 if isinstance(steps, (int, np.integer)) else True
  return many and 2 * large > 3 * small


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
    steps: Newton-Schulz iterations (int ``>= 1``, may be traced).
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


# ---------------------------------------------------------------------------
# Whitening (SWAN): the coupled Newton-Schulz inverse square root.

WhitenNormalization = Literal['frobenius', 'gram']

#: The smallest normalised singular value the default whitening schedule is
#: designed to whiten (:func:`whitening_coeffs`).
WHITEN_FLOOR = 1e-2
#: Headroom above 1 for rounding in the normalisation: each scaled cubic is
#: designed on ``[l, WHITEN_CUSHION]``, so ``s`` a little above 1 stays positive.
WHITEN_CUSHION = 1.01
#: Rows of the scaled schedule used with a traced step count: row ``k`` of
#: :func:`whitening_coeffs` does not depend on ``steps``, and the rows are
#: constant (to float64 rounding) from about ``k = 12`` on, so step ``i``
#: uses row ``min(i, 31)``.
_SCHEDULE_ROWS = 32


def _whitening_table(steps: Steps, beta: Any, dtype) -> jax.Array:
  """:func:`whitening_coeffs` as a ``(k, 3)`` array for :func:`_row`.

  Accepts a traced ``steps`` or ``beta`` (``optax.inject_hyperparams`` under
  ``jit``): a constant ``beta`` gives one row ``(3 beta, -beta, 0)``, the
  scaled schedule its first :data:`_SCHEDULE_ROWS` rows.
  """
  if beta is not None:
    if isinstance(beta, jax.core.Tracer):
      beta = jnp.asarray(beta, dtype)
      return jnp.stack([3.0 * beta, -beta, jnp.zeros_like(beta)])[None]
    return jnp.asarray(whitening_coeffs(1, beta), dtype)
  if isinstance(steps, int):
    return jnp.asarray(whitening_coeffs(steps), dtype)
  return jnp.asarray(whitening_coeffs(_SCHEDULE_ROWS), dtype)


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
  if not isinstance(steps, int):
    raise ValueError(
      f'steps={steps!r} must be a concrete int: whitening_coeffs builds a '
      'NumPy table (whiten accepts a traced count; elsewhere pass '
      "static_args=('ns_steps',) to optax.inject_hyperparams)."
    )
  if beta is not None:
    try:
      beta = float(beta)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
      raise ValueError(
        f'beta={beta!r} must be a concrete number: it fixes the NumPy '
        'coefficient table (whiten accepts a traced beta; elsewhere, with '
        "optax.inject_hyperparams, pass static_args=('ns_beta',))."
      ) from e
    return np.tile(np.array([3.0 * beta, -beta, 0.0]), (steps, 1))
  if not 0 < floor < 1 or cushion < 1:
    raise ValueError(
      f'floor={floor!r}, cushion={cushion!r}: need 0 < floor < 1 <= cushion.'
    )
  low, rows = float(floor), []
  for _ in range(steps):
    alpha = math.sqrt(3.0 / (cushion * cushion + cushion * low + low * low))
    rows.append((1.5 * alpha, -0.5 * alpha**3, 0.0))
    low = min(
      0.5 * alpha * s * (3.0 - alpha * alpha * s * s) for s in (low, cushion)
    )
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
    steps: iterations, an int ``>= 1`` or a traced integer scalar.
    beta: constant step scale (``1/2`` converges, larger values overshoot;
      may be traced), or ``None`` for the scaled schedule.
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
    raise ValueError(
      f"normalization={normalization!r}: choose 'frobenius' or 'gram'."
    )
  if method not in ('auto', 'plain', 'gram'):
    raise ValueError(f"method={method!r}: choose 'auto', 'plain' or 'gram'.")
  a = None
  if normalization == 'frobenius':
    c2 = jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True)
  else:
    a = _gram(x)
    c2 = jnp.sqrt(jnp.sum(jnp.square(a), axis=(-2, -1), keepdims=True))
  inv = safe_divide(jnp.ones_like(c2), jnp.sqrt(c2) + eps)
  x = x * inv
  if a is not None:  # the iteration's first Gram, already formed
    a = a * (inv * inv)
  if method == 'auto':
    method = 'gram' if gram_is_cheaper(*x.shape[-2:], steps) else 'plain'
  iterate = _gram_iterate if method == 'gram' else _plain_iterate
  table = _whitening_table(steps, beta, x.dtype)
  return iterate(x, table, steps, True, a)
