"""optimflow: optimizers from recent research as optax transformations.

Every method is an ``optax.GradientTransformation`` (or
``GradientTransformationExtraArgs`` when it needs a callable such as
``grad_fn``): it chains with ``optax.chain``, jits, and drops into
``flax.nnx.Optimizer``.
"""

from optimflow import catalog
from optimflow.sign_momentum import KappaSpec
from optimflow.sign_momentum import ScaleByImplicitDecayState
from optimflow.sign_momentum import ScaleByLionKappaState
from optimflow.sign_momentum import kappa_gradient
from optimflow.sign_momentum import lion
from optimflow.sign_momentum import lion_kappa
from optimflow.sign_momentum import scale_by_implicit_decay
from optimflow.sign_momentum import scale_by_lion_kappa

__version__ = '0.1.0'

__all__ = (
    'KappaSpec',
    'ScaleByImplicitDecayState',
    'ScaleByLionKappaState',
    'catalog',
    'kappa_gradient',
    'lion',
    'lion_kappa',
    'scale_by_implicit_decay',
    'scale_by_lion_kappa',
)
