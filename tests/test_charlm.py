"""The char-LM task: corpus, split, windows, sampler, model, training."""

from __future__ import annotations

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optimflow
from optimflow import orthogonal
from optimflow.lab import tasks
from optimflow.lab.tasks import charlm


@pytest.fixture(scope='module')
def data():
  return charlm.load_charlm(context=32, max_chars=30_000)


def test_corpus_ships_with_python_and_fits_the_vocabulary():
  text = charlm.corpus()
  assert len(text) > 300_000
  assert set(text) <= set(charlm.VOCAB) and len(charlm.VOCAB) == 96
  assert 'assert' in text and 'lambda' in text
  zen = charlm.corpus('zen')
  assert zen.startswith('The Zen of Python') and 'Readability counts.' in zen
  with pytest.raises(ValueError, match='source'):
    charlm.corpus('wikipedia')


def test_encode_decode_round_trip():
  text = 'def f(x):\n    return x ** 2  # "ok"'
  assert charlm.decode(charlm.encode(text)) == text
  assert (
    charlm.decode(charlm.encode('\u201cq\u201d \u2014 \u00e9')) == '"q" -- '
  )


def test_split_is_fixed_and_windows_are_shifted_targets(data):
  again = charlm.load_charlm(context=32, max_chars=30_000)
  for a, b in zip(data, again):
    np.testing.assert_array_equal(a, b)
  assert len(data.train_ids) == 27_000 and len(data.valid_ids) == 3_000
  np.testing.assert_array_equal(
    np.concatenate([data.train_ids, data.valid_ids]),
    charlm.encode(charlm.corpus())[:30_000],
  )
  chex.assert_shape(data.x_train, (len(data.train_ids) // 32, 32))
  np.testing.assert_array_equal(data.y_train[:, :-1], data.x_train[:, 1:])
  # Validation windows come from the held-out tail only.
  np.testing.assert_array_equal(data.x_test[0], data.valid_ids[:32])
  np.testing.assert_array_equal(data.x_train[1], data.train_ids[32:64])
  assert data.x_train.dtype == np.int32 and data.context == 32


def test_bad_arguments():
  with pytest.raises(ValueError, match='valid_fraction'):
    charlm.load_charlm(valid_fraction=1.0)
  with pytest.raises(ValueError, match='too long'):
    charlm.load_charlm(context=500, max_chars=2_000)
  with pytest.raises(ValueError, match='context'):
    charlm.windows(np.arange(10), 0)
  with pytest.raises(ValueError, match='num_heads'):
    charlm.CharTransformer(d_model=10, num_heads=4, rngs=nnx.Rngs(0))


def test_batch_sampler_is_seeded_and_covers_random_offsets(data):
  a = charlm.batch_sampler(data.train_ids, 8, 16, seed=3)
  b = charlm.batch_sampler(data.train_ids, 8, 16, seed=3)
  x1, y1 = next(a)
  x2, y2 = next(b)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1[:, :-1], x1[:, 1:])
  starts = set()
  for _ in range(50):
    x, _ = next(a)
    chex.assert_shape(x, (8, 16))
    starts.update(x[:, 0].tolist())
  assert len(starts) > 20


def test_model_is_causal_and_names_route_to_the_right_branch():
  model = charlm.CharTransformer(
    context=16, d_model=16, num_layers=2, num_heads=2, rngs=nnx.Rngs(0)
  )
  ids = jnp.asarray(charlm.encode('abcdefghijklmnop'))[None]
  changed = ids.at[0, 10].set(5)
  forward = nnx.jit(lambda m, x: m(x))
  out1, out2 = forward(model, ids), forward(model, changed)
  chex.assert_shape(out1, (1, 16, 96))
  chex.assert_trees_all_close(out1[0, :10], out2[0, :10], atol=1e-6)
  assert not np.allclose(out1[0, 10:], out2[0, 10:])
  labels = orthogonal.matrix_labels()(nnx.state(model, nnx.Param))
  flat = {
    jax.tree_util.keystr(p): v
    for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]
  }
  matrices = sorted(k for k, v in flat.items() if v == 'matrix')
  assert len(matrices) == 2 * 6  # query, key, value, out, up, down per block
  assert all('kernel' in k and ('attn' in k or 'mlp' in k) for k in matrices)
  for name in (
    "['embed']['embedding']",
    "['pos_embedding']",
    "['head']['kernel']",
  ):
    assert flat[name + '.value'] == 'other'


def test_tied_embeddings_have_no_head():
  model = charlm.CharTransformer(
    context=8,
    d_model=8,
    num_layers=1,
    num_heads=1,
    tie_embeddings=True,
    rngs=nnx.Rngs(0),
  )
  assert model.head is None
  logits = nnx.jit(lambda m, x: m(x))(model, jnp.zeros((2, 8), jnp.int32))
  chex.assert_shape(logits, (2, 8, 96))


def test_fit_learns_the_corpus_with_muon(data):
  model = charlm.CharTransformer(
    context=32, d_model=32, num_layers=1, num_heads=2, rngs=nnx.Rngs(0)
  )
  hist = tasks.fit(
    model,
    optimflow.muon(0.02, adam_learning_rate=1e-2),
    data,
    steps=60,
    batch_size=16,
    loss=charlm.loss_fn,
    progress=False,
  )
  # From log(96) = 4.56 nats (uniform) to well below the unigram entropy.
  assert hist.train_loss[0] > 4.0
  assert hist.final['test_loss'] < 3.2
  text = charlm.generate(model, 'The ', 20, temperature=0.0)
  assert text.startswith('The ') and len(text) == 24
  assert charlm.bits_per_char(np.log(2.0)) == pytest.approx(1.0)
