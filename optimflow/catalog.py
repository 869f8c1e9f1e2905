"""The catalog: one entry per public method.

The conformance suite, the CLI, the benchmarks and the README's method table
all read this list, so a new method is tested, benchmarked and documented by
adding one entry here.

Examples:
  >>> import optimflow
  >>> entry = optimflow.catalog.get('lion')
  >>> entry.family, entry.kind
  ('sign_momentum', 'transformation')
  >>> tx = entry.build(learning_rate=1e-4)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Mapping
import warnings

import optax

from optimflow import orthogonal
from optimflow import radial
from optimflow import sharpness
from optimflow import sign_momentum
from optimflow import whitening

Kind = Literal['transformation', 'extra_args']


@dataclasses.dataclass(frozen=True)
class Method:
  """A public method and what tests, CLI and benchmarks need to know of it.

  Attributes:
    name: public name, ``optimflow.<name>``.
    factory: the alias returning the transformation.
    family: the module / family it belongs to.
    paper: paper title, first author(s) and year.
    url: link to the paper (arXiv).
    summary: one line for tables.
    defaults: keyword arguments for training a small network (CLI, examples).
    test_kwargs: keyword arguments for the conformance problems (parabola,
      Rosenbrock: 2-D, float32, 10k steps).
    kind: ``'transformation'``, ``'extra_args'`` (needs keyword arguments such
      as ``grad_fn`` at update).
    needs: names of the extra keyword arguments ``update`` requires.
    static_args: arguments ``optax.inject_hyperparams`` must treat as static.
    variants: extra keyword-argument sets the conformance suite also covers.
    optax_equivalent: name of the nearest optax optimizer (benchmarks).
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  family: str
  paper: str
  url: str
  summary: str
  defaults: Mapping[str, Any]
  test_kwargs: Mapping[str, Any]
  kind: Kind = 'transformation'
  needs: tuple[str, ...] = ()
  static_args: tuple[str, ...] = ()
  variants: tuple[Mapping[str, Any], ...] = ()
  optax_equivalent: str | None = None

  def build(self, **overrides: Any) -> optax.GradientTransformation:
    """The transformation with ``defaults`` updated by ``overrides``."""
    return self.factory(**{**self.defaults, **overrides})


_LION_PAPER = (
  'Symbolic Discovery of Optimization Algorithms (Chen et al., 2023)',
  'https://arxiv.org/abs/2302.06675',
)
_LION_KAPPA_PAPER = (
  'Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts '
  '(Chen, Liu, Liang, Liu, 2023)',
  'https://arxiv.org/abs/2310.05898',
)

_ADAMP_PAPER = (
  'AdamP: Slowing Down the Slowdown for Momentum Optimizers on '
  'Scale-invariant Weights (Heo et al., 2021)',
  'https://arxiv.org/abs/2006.08217',
)

_SAM_PAPER = (
  'Sharpness-Aware Minimization for Efficiently Improving Generalization '
  '(Foret, Kleiner, Mobahi, Neyshabur, 2021)',
  'https://arxiv.org/abs/2010.01412',
)
_ASAM_PAPER = (
  'ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning '
  'of Deep Neural Networks (Kwon, Kim, Park, Choi, 2021)',
  'https://arxiv.org/abs/2102.11600',
)
_SAF_PAPER = (
  'Sharpness-Aware Training for Free (Du, Zhou, Feng, Tan, Zhou, 2022)',
  'https://arxiv.org/abs/2205.14083',
)

# Muon itself is a blog post (kellerjordan.github.io/posts/muon, 2024); the
# catalog links the first paper that studies it at scale.
_MUON_PAPER = (
  'Muon (Jordan et al., 2024); Muon is Scalable for LLM Training '
  '(Liu et al., 2025)',
  'https://arxiv.org/abs/2502.16982',
)
_AUON_PAPER = (
  'AuON: A Linear-time Alternative to Semi-Orthogonal Momentum Updates '
  '(Maity, 2025)',
  'https://arxiv.org/abs/2509.24320',
)
_SWAN_PAPER = (
  'SWAN: SGD with Normalization and Whitening Enables Stateless LLM '
  'Training (Ma, Gong, Scetbon, Meeds, 2024)',
  'https://arxiv.org/abs/2412.13148',
)

METHODS: tuple[Method, ...] = (
  Method(
    name='lion',
    factory=sign_momentum.lion,
    family='sign_momentum',
    paper=_LION_PAPER[0],
    url=_LION_PAPER[1],
    summary='sign of interpolated momentum; half of AdamW state',
    defaults=dict(learning_rate=3e-4, weight_decay=1e-2),
    test_kwargs=dict(learning_rate=1e-2, weight_decay=1e-4),
    optax_equivalent='lion',
  ),
  Method(
    name='lion_kappa',
    factory=sign_momentum.lion_kappa,
    family='sign_momentum',
    paper=_LION_KAPPA_PAPER[0],
    url=_LION_KAPPA_PAPER[1],
    summary='Lion with any convex kappa: decay becomes a kappa* constraint',
    defaults=dict(learning_rate=1e-3, kappa=('huber', 0.01), weight_decay=1e-2),
    test_kwargs=dict(
      learning_rate=1e-2, kappa=('huber', 1e-3), weight_decay=1e-4
    ),
    static_args=('kappa',),
    variants=(
      dict(kappa='sign', implicit_decay=True),
      dict(kappa='l2'),
      dict(kappa=('lp', 3.0)),
      dict(kappa='quadratic'),
      dict(kappa=('dead_zone', 1e-3)),
      dict(kappa=('relativistic', 0.1)),
    ),
    optax_equivalent='lion',
  ),
  Method(
    name='adamp',
    factory=radial.adamp,
    family='radial',
    paper=_ADAMP_PAPER[0],
    url=_ADAMP_PAPER[1],
    summary='Adam minus the radial part of the update on scale-invariant '
    'weights',
    defaults=dict(learning_rate=1e-3, weight_decay=1e-2),
    test_kwargs=dict(learning_rate=1e-2),
    static_args=('nesterov', 'channel_axis'),
    variants=(
      dict(nesterov=True, weight_decay=1e-4),
      dict(channel_axis=0, delta=0.5, wd_ratio=0.5),
    ),
    optax_equivalent='adamw',
  ),
  Method(
    name='sgdp',
    factory=radial.sgdp,
    family='radial',
    paper=_ADAMP_PAPER[0],
    url=_ADAMP_PAPER[1],
    summary='momentum SGD minus the radial part of the update on '
    'scale-invariant weights',
    defaults=dict(
      learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-5
    ),
    test_kwargs=dict(learning_rate=1e-3, momentum=0.9),
    static_args=('nesterov', 'channel_axis'),
    variants=(
      dict(nesterov=True, weight_decay=1e-4),
      dict(momentum=0.5, dampening=0.5, channel_axis=0),
    ),
    optax_equivalent='sgd',
  ),
  # Sharpness-aware methods: ``sam`` / ``asam`` are SGD with momentum fed the
  # gradient of ``scale_by_sam`` / ``scale_by_asam`` (which alone emit a
  # gradient, not a step); ``sgd_with_param_ema`` puts the ``param_ema``
  # chain tail behind SGD.
  Method(
    name='sam',
    factory=sharpness.sam,
    family='sharpness',
    paper=_SAM_PAPER[0],
    url=_SAM_PAPER[1],
    summary='SGD+momentum on the gradient at the worst point of a rho-ball, '
    'in one update call (2 passes)',
    defaults=dict(learning_rate=0.05, rho=0.05, momentum=0.9),
    # SAM's fixed point on Rosenbrock moves towards lower curvature by
    # O(rho) (0.13 at rho=1e-2): the flat-minimum bias, not a bug.
    test_kwargs=dict(learning_rate=1e-3, rho=1e-3, momentum=0.9),
    kind='extra_args',
    needs=('grad_fn',),
    variants=(dict(nesterov=True, weight_decay=1e-4),),
  ),
  Method(
    name='asam',
    factory=sharpness.asam,
    family='sharpness',
    paper=_ASAM_PAPER[0],
    url=_ASAM_PAPER[1],
    summary='SAM in the scale-invariant neighbourhood T = |w| + eta '
    '(SGD+momentum)',
    defaults=dict(learning_rate=0.05, rho=0.5, momentum=0.9),
    test_kwargs=dict(learning_rate=1e-3, rho=1e-3, momentum=0.9),
    kind='extra_args',
    needs=('grad_fn',),
  ),
  Method(
    name='sgd_with_param_ema',
    factory=sharpness.sgd_with_param_ema,
    family='sharpness',
    paper=_SAF_PAPER[0],
    url=_SAF_PAPER[1],
    summary='SGD+momentum keeping an EMA of the parameters in its state '
    '(the MESA teacher)',
    defaults=dict(learning_rate=0.05, momentum=0.9, decay=0.99),
    test_kwargs=dict(learning_rate=1e-3, momentum=0.9, decay=0.99),
  ),
  Method(
    name='muon',
    factory=orthogonal.muon,
    family='orthogonal',
    paper=_MUON_PAPER[0],
    url=_MUON_PAPER[1],
    summary='Newton-Schulz-orthogonalised momentum for hidden matrices, '
    'AdamW for the rest; batched float32 iteration, Gram-space for '
    'rectangular matrices',
    defaults=dict(learning_rate=0.02, adam_learning_rate=3e-3),
    test_kwargs=dict(learning_rate=1e-2),
    static_args=('ns_steps', 'matrix_filter', 'dimension_numbers'),
    variants=(
      dict(shape_scale='moonlight', nesterov=False, weight_decay=1e-4),
      dict(reference=True),
    ),
    optax_equivalent='contrib.muon',
  ),
  Method(
    name='auon',
    factory=orthogonal.auon,
    family='orthogonal',
    paper=_AUON_PAPER[0],
    url=_AUON_PAPER[1],
    summary='linear-time alternative to Muon: Frobenius-normalised '
    'momentum over its cosh RMS',
    defaults=dict(learning_rate=0.05, adam_learning_rate=3e-3),
    test_kwargs=dict(learning_rate=1e-2),
    static_args=('ns_steps', 'matrix_filter', 'dimension_numbers'),
    variants=(dict(gamma=1.5, normalize=False, shape_scale=None),),
    optax_equivalent='contrib.muon',
  ),
  Method(
    name='hybrid_auon',
    factory=orthogonal.hybrid_auon,
    family='orthogonal',
    paper=_AUON_PAPER[0],
    url=_AUON_PAPER[1],
    summary='AuON after one Newton-Schulz step',
    defaults=dict(learning_rate=0.05, adam_learning_rate=3e-3),
    test_kwargs=dict(learning_rate=1e-2),
    static_args=('ns_steps', 'matrix_filter', 'dimension_numbers'),
    optax_equivalent='contrib.muon',
  ),
  Method(
    name='swan',
    factory=whitening.swan,
    family='whitening',
    paper=_SWAN_PAPER[0],
    url=_SWAN_PAPER[1],
    summary='stateless on hidden matrices: GradNorm then Newton-Schulz '
    'whitening (G G^T)^(-1/2) G; AdamW for the rest',
    defaults=dict(learning_rate=1e-3, adam_learning_rate=1e-3),
    # center=False: GradNorm's centring removes each output unit's mean
    # gradient, so a centred update never moves a column mean of 'w' and
    # the matrix parabola (no normalisation layer after it) cannot be
    # solved; tests/test_whitening.py runs the other conformance checks
    # with the paper's centred GradNorm.
    test_kwargs=dict(learning_rate=3e-3, center=False),
    static_args=(
      'ns_steps',
      'ns_beta',
      'output_scale',
      'center',
      'normalization',
      'matrix_filter',
      'dimension_numbers',
    ),
    variants=(
      dict(
        output_scale='match_gradnorm', normalization='gram', weight_decay=1e-4
      ),
      dict(output_scale=None, ns_steps=6, ns_beta=0.8),
    ),
    optax_equivalent='adamw',
  ),
)

_BY_NAME = {m.name: m for m in METHODS}
#: Old entry names kept for one release (``get`` warns and returns the entry).
RENAMED = {'param_ema': 'sgd_with_param_ema'}


def names() -> list[str]:
  """Names of all catalog entries, in catalog order."""
  return [m.name for m in METHODS]


def get(name: str) -> Method:
  """The entry called ``name``; ``KeyError`` lists the valid names.

  A name in :data:`RENAMED` returns its new entry with a
  ``DeprecationWarning``.
  """
  if name in RENAMED:
    warnings.warn(
      f'catalog name {name!r} is deprecated: use {RENAMED[name]!r}.',
      DeprecationWarning,
      stacklevel=2,
    )
    name = RENAMED[name]
  try:
    return _BY_NAME[name]
  except KeyError:
    raise KeyError(
      f'unknown method {name!r}; catalog methods: {", ".join(names())}'
    ) from None
