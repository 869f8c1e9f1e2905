"""Sharpness-aware training: SAM, ASAM, m-sharpness, SAF/MESA trajectory terms.

Modules: :mod:`~optimflow.sharpness.sam` (SAM, ASAM, m-sharpness) and
:mod:`~optimflow.sharpness.saf` (SAF/MESA loss terms, output bank, parameter
EMA); every name is re-exported here.

SAM (Foret et al., 2021) replaces the gradient at ``w`` by the gradient at the
worst point of a small ball around ``w``, found by one normalized ascent step:

.. math::

  e = \\rho \\frac{g}{\\|g\\|_2}, \\qquad
  \\text{ASAM:}\\; e = \\rho \\frac{T^2 g}{\\|T g\\|_2},\\; T = |w| + \\eta,
  \\qquad g_{\\text{SAM}} = \\nabla L(w + e).

Here that is one :class:`optax.GradientTransformationExtraArgs`,
:func:`scale_by_sam`: a single ``update`` call evaluates the caller's ``grad_fn`` at
``w + e`` and hands that gradient to whatever is chained after it, so the
perturbed parameters never leave the transformation (no second call, no
parameter cache, no BatchNorm statistics from the perturbed point):

>>> import optax, optimflow
>>> tx = optax.chain(optimflow.scale_by_sam(0.05), optax.sgd(0.1, momentum=0.9))

SAF and MESA (Du et al., 2022) get most of the flatness at the cost of one
pass: the loss gets a KL term towards the network's own outputs from ``E~``
epochs ago (SAF: :class:`OutputBank`, :func:`trajectory_kl`,
:func:`saf_schedule`) or towards an exponential moving average of the weights
(MESA: :func:`param_ema` plus the same :func:`trajectory_kl`). These are loss
terms with explicit state, not optimizers; all of them are jittable.

Cost per step, in forward+backward passes: SAM and ASAM 2, SAF 1, MESA 1 plus
one forward pass of the EMA model.
"""

from optimflow.sharpness.saf import OutputBank
from optimflow.sharpness.saf import ParamEMAState
from optimflow.sharpness.saf import param_ema
from optimflow.sharpness.saf import saf_schedule
from optimflow.sharpness.saf import sgd_with_param_ema
from optimflow.sharpness.saf import trajectory_kl
from optimflow.sharpness.sam import AdaptiveMask
from optimflow.sharpness.sam import GradFn
from optimflow.sharpness.sam import adaptive_leaves
from optimflow.sharpness.sam import asam
from optimflow.sharpness.sam import global_norm
from optimflow.sharpness.sam import sam
from optimflow.sharpness.sam import sam_gradient
from optimflow.sharpness.sam import sam_perturbation
from optimflow.sharpness.sam import scale_by_asam
from optimflow.sharpness.sam import scale_by_sam

__all__ = (
  'AdaptiveMask',
  'GradFn',
  'OutputBank',
  'ParamEMAState',
  'adaptive_leaves',
  'asam',
  'global_norm',
  'param_ema',
  'saf_schedule',
  'sam',
  'sam_gradient',
  'sam_perturbation',
  'scale_by_asam',
  'scale_by_sam',
  'sgd_with_param_ema',
  'trajectory_kl',
)
