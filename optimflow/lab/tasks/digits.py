"""The digits task: scikit-learn's 8x8 handwritten digits, an MLP and a CNN.

The data ships with scikit-learn (1797 images, no download). Pixels are scaled
to [0, 1] and split into train and test sets stratified by class, fixed by a
seed. The models are Flax NNX modules; the CNN uses bias-free convolutions
followed by BatchNorm, so its conv kernels are scale-invariant (the setting of
AdamP/SGDP).

Examples:
  >>> from flax import nnx
  >>> from optimflow.lab.tasks import digits
  >>> data = digits.load_digits(seed=0)
  >>> data.x_train.shape, data.x_test.shape
  ((1347, 8, 8, 1), (450, 8, 8, 1))
  >>> model = digits.MLP(rngs=nnx.Rngs(0))
  >>> model(data.x_test[:5]).shape
  (5, 10)
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow._src import checks


class DigitsData(NamedTuple):
  """Train and test arrays of the digits task.

  Attributes:
    x_train: images ``(n_train, 8, 8, 1)``, float32 in [0, 1].
    y_train: labels ``(n_train,)``, int32 in 0..9.
    x_test: images ``(n_test, 8, 8, 1)``.
    y_test: labels ``(n_test,)``.
    ids_train: example ids ``0..n_train-1`` (int32), for per-example banks.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  ids_train: np.ndarray


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
  """scikit-learn's digits, scaled to [0, 1], with a stratified split.

  Args:
    seed: seed of the train/test split (same seed, same split).
    test_fraction: fraction of examples held out, in (0, 1).

  Returns:
    A :class:`DigitsData`.

  Examples:
    >>> from optimflow.lab.tasks import load_digits
    >>> data = load_digits(seed=1, test_fraction=0.5)
    >>> len(data.y_train), len(data.y_test), float(data.x_train.max())
    (898, 899, 1.0)
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  checks.check_interval(
    'test_fraction', test_fraction, 0.0, 1.0, low_open=True, high_open=True
  )
  raw = datasets.load_digits()
  x = (raw.images / 16.0).astype(np.float32)[..., None]
  y = raw.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
    x, y, test_size=test_fraction, random_state=seed, stratify=y
  )
  ids = np.arange(len(y_train), dtype=np.int32)
  return DigitsData(x_train, y_train, x_test, y_test, ids)


class MLP(nnx.Module):
  """Flatten, then Dense-ReLU blocks, then a Dense head returning logits.

  Args:
    hidden: widths of the hidden layers.
    num_classes: number of logits.
    in_features: input size after flattening (64 for digits).
    rngs: NNX random streams for initialisation.
  """

  def __init__(
    self,
    hidden: Sequence[int] = (128, 128),
    num_classes: int = 10,
    *,
    in_features: int = 64,
    rngs: nnx.Rngs,
  ):
    sizes = (in_features, *hidden)
    self.layers = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])]
    )
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers:
      x = jax.nn.relu(layer(x))
    return self.head(x)


class CNN(nnx.Module):
  """Blocks of conv(3x3, no bias) -> BatchNorm -> ReLU -> 2x2 max-pool.

  Without a bias and followed by BatchNorm, each conv kernel is
  scale-invariant: the output does not change when the kernel is multiplied
  by a positive number. After the blocks, a global average pool and a Dense
  head. BatchNorm uses batch statistics after ``model.train()`` and running
  averages after ``model.eval()``.

  Args:
    channels: output channels of each conv block.
    num_classes: number of logits.
    in_channels: channels of the input images.
    rngs: NNX random streams for initialisation.
  """

  def __init__(
    self,
    channels: Sequence[int] = (16, 32),
    num_classes: int = 10,
    *,
    in_channels: int = 1,
    rngs: nnx.Rngs,
  ):
    sizes = (in_channels, *channels)
    self.convs = nnx.List(
      [
        nnx.Conv(a, b, (3, 3), use_bias=False, rngs=rngs)
        for a, b in zip(sizes[:-1], sizes[1:])
      ]
    )
    self.norms = nnx.List([nnx.BatchNorm(b, rngs=rngs) for b in sizes[1:]])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.relu(norm(conv(x)))
      x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    return self.head(x.mean(axis=(1, 2)))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels (any leading axes).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow.lab.tasks import cross_entropy
    >>> float(cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3])))  # log 4
    1.386...
  """
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels
  ).mean()


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of positions whose arg-max logit equals the label.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow.lab.tasks import accuracy
    >>> float(accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0])))
    0.5
  """
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of ``model(x)`` against labels ``y``."""
  return cross_entropy(model(x), y)
