"""The char-LM task: next-character prediction with a small GPT-style model.

Corpus: the reference text of Python's own documentation, which ships with
every CPython as the standard-library module ``pydoc_data.topics`` (the text
``help('topics')`` prints; about 465k characters, English prose with code
samples, under the PSF licence), read at run time, so nothing is downloaded
or vendored. Topics are concatenated in sorted-key order. ``source='zen'``
gives the 19 aphorisms of ``import this`` (857 characters, for doctests and
quick checks). The exact text can differ slightly between Python versions.

Text is mapped to a fixed 96-symbol vocabulary (newline and printable ASCII):
typographic quotes and dashes become their ASCII forms, other characters are
dropped. The split is fixed: the first ``1 - valid_fraction`` of the stream
trains, the rest validates (contiguous, so no window straddles both). Training
windows are cut at a fixed stride for :func:`optimflow.lab.tasks.fit` (which
shuffles them per epoch with its seed); :func:`batch_sampler` draws windows at
random offsets instead, for custom loops.

The model, :class:`CharTransformer`, is a pre-LayerNorm decoder: token and
learned position embeddings, blocks of causal multi-head attention (``query``,
``key``, ``value``, ``out`` kernels, no biases) and a GELU MLP (``up``,
``down``), a final LayerNorm and an untied ``head`` (or tied to the
embedding). Parameter names follow the benchmark's transformer tree, so
:func:`optimflow.orthogonal.default_matrix_filter` sends the attention and MLP
kernels to the matrix branch and embeddings, head, norms and biases to AdamW.

Examples:
  >>> from flax import nnx
  >>> from optimflow.lab.tasks import charlm
  >>> data = charlm.load_charlm(context=32, source='zen')
  >>> data.x_train.shape[1:], data.vocab_size
  ((32,), 96)
  >>> charlm.decode(data.x_train[0])[:20]
  'The Zen of Python, b'
  >>> model = charlm.CharTransformer(context=32, d_model=16, num_layers=1,
  ...                                num_heads=2, rngs=nnx.Rngs(0))
  >>> model(data.x_train[:3]).shape
  (3, 32, 96)
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from optimflow._src import checks
from optimflow.lab.tasks import digits

#: Newline followed by the 95 printable ASCII characters.
VOCAB = '\n' + ''.join(chr(i) for i in range(32, 127))
_INDEX = {c: i for i, c in enumerate(VOCAB)}
_REPLACE = {
  '\u2018': "'",
  '\u2019': "'",
  '\u201c': '"',
  '\u201d': '"',
  '\u2013': '-',
  '\u2014': '--',
  '\u2026': '...',
  '\u00a0': ' ',
  '\t': '    ',
}
SOURCES = ('python-docs', 'zen')


def normalize_text(text: str) -> str:
  """Maps ``text`` onto :data:`VOCAB` (ASCII quotes/dashes, others dropped).

  Examples:
    >>> from optimflow.lab.tasks import charlm
    >>> charlm.normalize_text('\u201cna\u00efve\u201d \u2013 ok')
    '"nave" - ok'
  """
  text = ''.join(_REPLACE.get(c, c) for c in text)
  return ''.join(c for c in text if c in _INDEX)


def corpus(source: str = 'python-docs') -> str:
  """The normalised corpus text.

  Args:
    source: ``'python-docs'`` (``pydoc_data.topics``, ~465k characters) or
      ``'zen'`` (``import this``, 857 characters).

  Returns:
    The text, restricted to :data:`VOCAB`.
  """
  checks.check_choice('source', source, SOURCES)
  if source == 'zen':
    import codecs  # pylint: disable=g-import-not-at-top
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # importing it prints
      import this  # pylint: disable=g-import-not-at-top
    raw = codecs.decode(this.s, 'rot13')
  else:
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top

    raw = ''.join(topics.topics[k] for k in sorted(topics.topics))
  return normalize_text(raw)


def encode(text: str) -> np.ndarray:
  """Character ids (int32) of ``text``; characters outside the vocabulary
  are dropped.

  Examples:
    >>> from optimflow.lab.tasks import charlm
    >>> charlm.encode('Hi!\\n').tolist()
    [41, 74, 2, 0]
  """
  return np.fromiter((_INDEX[c] for c in normalize_text(text)), np.int32)


def decode(ids) -> str:
  """The text of character ids (any integer array)."""
  return ''.join(VOCAB[int(i)] for i in np.ravel(np.asarray(ids)))


def windows(
  ids: np.ndarray, context: int, stride: Optional[int] = None
) -> tuple[np.ndarray, np.ndarray]:
  """Inputs and next-character targets cut from a stream at a fixed stride.

  Args:
    ids: the character stream.
    context: window length.
    stride: offset between window starts (default ``context``).

  Returns:
    ``(x, y)``, each ``(n, context)`` int32, with ``y[:, t] = x[:, t + 1]``
    continued one character past the window.

  Examples:
    >>> import numpy as np
    >>> from optimflow.lab.tasks import charlm
    >>> x, y = charlm.windows(np.arange(10), 4, stride=3)
    >>> x.tolist(), y[0].tolist()
    ([[0, 1, 2, 3], [3, 4, 5, 6]], [1, 2, 3, 4])
  """
  stride = context if stride is None else stride
  checks.check_int_at_least('context', context, 1)
  checks.check_int_at_least('stride', stride, 1)
  starts = np.arange(0, len(ids) - context, stride)
  idx = starts[:, None] + np.arange(context)[None, :]
  ids = np.asarray(ids, np.int32)
  return ids[idx], ids[idx + 1]


class CharLMData(NamedTuple):
  """Train and validation data of the char-LM task.

  ``x_train, y_train, x_test, y_test`` are the windows read by
  :func:`optimflow.lab.tasks.fit` (the "test" set is the validation split).

  Attributes:
    x_train: train inputs ``(n_train, context)``, int32.
    y_train: train targets, the inputs shifted by one character.
    x_test: validation inputs ``(n_valid, context)``.
    y_test: validation targets.
    train_ids: the train character stream.
    valid_ids: the validation character stream.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  train_ids: np.ndarray
  valid_ids: np.ndarray

  @property
  def vocab_size(self) -> int:
    return len(VOCAB)

  @property
  def context(self) -> int:
    return int(self.x_train.shape[1])


def load_charlm(
  context: int = 64,
  valid_fraction: float = 0.1,
  stride: Optional[int] = None,
  max_chars: Optional[int] = None,
  source: str = 'python-docs',
) -> CharLMData:
  """The corpus, split and cut into windows.

  Args:
    context: characters per window (the model's context length).
    valid_fraction: the trailing fraction of the stream held out, in (0, 1).
    stride: offset between train windows (default ``context``:
      non-overlapping); validation windows never overlap.
    max_chars: use only the first ``max_chars`` characters (smoke runs).
    source: see :func:`corpus`.

  Returns:
    A :class:`CharLMData`; the same arguments give the same arrays.

  Examples:
    >>> from optimflow.lab.tasks import charlm
    >>> data = charlm.load_charlm(context=64, max_chars=20_000)
    >>> data.x_train.shape, data.x_test.shape
    ((281, 64), (31, 64))
  """
  checks.check_interval(
    'valid_fraction', valid_fraction, 0.0, 1.0, low_open=True, high_open=True
  )
  ids = encode(corpus(source))
  if max_chars is not None:
    checks.check_int_at_least('max_chars', max_chars, 2)
    ids = ids[:max_chars]
  cut = int(round(len(ids) * (1.0 - valid_fraction)))
  train_ids, valid_ids = ids[:cut], ids[cut:]
  if min(len(train_ids), len(valid_ids)) <= context:
    raise ValueError(
      f'context={context} is too long for this corpus: the train and '
      f'validation streams have {len(train_ids)} and {len(valid_ids)} '
      'characters; each needs more than context.'
    )
  x_train, y_train = windows(train_ids, context, stride)
  x_test, y_test = windows(valid_ids, context)
  return CharLMData(x_train, y_train, x_test, y_test, train_ids, valid_ids)


def batch_sampler(
  ids: np.ndarray, batch_size: int, context: int, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Endless ``(x, y)`` batches of windows at uniform random offsets.

  Args:
    ids: a character stream (e.g. ``data.train_ids``).
    batch_size: windows per batch.
    context: window length.
    seed: seed of the numpy generator (same seed, same batches).

  Yields:
    ``(x, y)``, each ``(batch_size, context)`` int32.

  Examples:
    >>> import numpy as np
    >>> from optimflow.lab.tasks import charlm
    >>> x, y = next(charlm.batch_sampler(np.arange(100), 2, 5, seed=0))
    >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
    ((2, 5), True)
  """
  checks.check_int_at_least('batch_size', batch_size, 1)
  checks.check_int_at_least('context', context, 1)
  if len(ids) <= context:
    raise ValueError(
      f'the stream has {len(ids)} characters: fewer than '
      f'context + 1 = {context + 1}.'
    )
  rng = np.random.default_rng(seed)
  ids = np.asarray(ids, np.int32)
  offsets = np.arange(context)[None, :]
  while True:
    starts = rng.integers(0, len(ids) - context, size=batch_size)[:, None]
    yield ids[starts + offsets], ids[starts + offsets + 1]


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with ``(d, d)`` kernels, no biases."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(
        f'd_model={d_model} is not divisible by num_heads={num_heads}.'
      )
    self.num_heads = num_heads
    dense = lambda: nnx.Linear(d_model, d_model, use_bias=False, rngs=rngs)
    self.query, self.key, self.value, self.out = (
      dense(),
      dense(),
      dense(),
      dense(),
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
    y = jax.nn.dot_product_attention(
      heads(self.query(x)),
      heads(self.key(x)),
      heads(self.value(x)),
      is_causal=True,
    )
    return self.out(y.reshape(b, t, d))


class MLP(nnx.Module):
  """``down(gelu(up(x)))``."""

  def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
    self.up = nnx.Linear(d_model, d_ff, rngs=rngs)
    self.down = nnx.Linear(d_ff, d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: ``x + attn(ln1 x)``, ``x + mlp(ln2 x)``."""

  def __init__(
    self, d_model: int, num_heads: int, d_ff: int, *, rngs: nnx.Rngs
  ):
    self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.mlp = MLP(d_model, d_ff, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln1(x))
    return x + self.mlp(self.ln2(x))


class CharTransformer(nnx.Module):
  """A small GPT: embeddings, pre-LN blocks, final LayerNorm, head.

  Args:
    vocab_size: number of symbols (96 for :data:`VOCAB`).
    context: maximum sequence length (size of the position embedding).
    d_model: width.
    num_layers: number of blocks.
    num_heads: attention heads (divides ``d_model``).
    d_ff: MLP width (default ``4 d_model``).
    tie_embeddings: logits from the token embedding (``embed.attend``)
      instead of a separate ``head``.
    rngs: NNX random streams.
  """

  def __init__(
    self,
    vocab_size: int = len(VOCAB),
    context: int = 64,
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: Optional[int] = None,
    tie_embeddings: bool = False,
    *,
    rngs: nnx.Rngs,
  ):
    d_ff = 4 * d_model if d_ff is None else d_ff
    init = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(vocab_size, d_model, embedding_init=init, rngs=rngs)
    self.pos_embedding = nnx.Param(init(rngs.params(), (context, d_model)))
    self.blocks = nnx.List(
      [Block(d_model, num_heads, d_ff, rngs=rngs) for _ in range(num_layers)]
    )
    self.ln_f = nnx.LayerNorm(d_model, rngs=rngs)
    self.head = (
      None if tie_embeddings else nnx.Linear(d_model, vocab_size, rngs=rngs)
    )

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Logits ``(batch, t, vocab)`` for ids ``(batch, t)``, ``t <= context``."""
    t = ids.shape[-1]
    x = self.embed(ids) + self.pos_embedding[:t]
    for block in self.blocks:
      x = block(x)
    x = self.ln_f(x)
    return self.embed.attend(x) if self.head is None else self.head(x)


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean next-character cross-entropy (nats) over all positions."""
  return digits.cross_entropy(model(x), y)


def bits_per_char(loss: float) -> float:
  """Converts a cross-entropy in nats to bits per character.

  Examples:
    >>> from optimflow.lab.tasks import charlm
    >>> charlm.bits_per_char(0.6931471805599453)
    1.0
  """
  return float(loss) / math.log(2.0)


def generate(
  model: CharTransformer,
  prompt: str,
  length: int = 200,
  *,
  temperature: float = 1.0,
  seed: int = 0,
) -> str:
  """Samples ``length`` characters after ``prompt`` (``temperature=0``:
  greedy). The window slides over the last ``context`` characters.

  Args:
    model: a trained model.
    prompt: the start of the text (at least one character of
      :data:`VOCAB`).
    length: characters to sample.
    temperature: softmax temperature, ``>= 0``.
    seed: sampling seed.

  Returns:
    ``prompt`` followed by the sample.
  """
  checks.check_non_negative('temperature', temperature)
  ids = [int(i) for i in encode(prompt)]
  if not ids:
    raise ValueError('prompt has no character of the vocabulary.')
  context = model.pos_embedding.shape[0]
  key = jax.random.key(seed)

  @nnx.jit
  def next_logits(model, window, last):
    # Right-padded to a fixed length (one compilation): causal attention
    # keeps position ``last`` blind to the padding after it.
    return model(window[None])[0, last]

  for _ in range(length):
    window = ids[-context:]
    padded = jnp.asarray(window + [0] * (context - len(window)), jnp.int32)
    logits = next_logits(model, padded, len(window) - 1)
    if temperature == 0:
      nxt = int(jnp.argmax(logits))
    else:
      key, sub = jax.random.split(key)
      nxt = int(jax.random.categorical(sub, logits / temperature))
    ids.append(nxt)
  return decode(ids)
