"""Tree and numerics helpers shared by the families (one copy each)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

#: A mask: a tree of bools like the parameters, a prefix of it, or a callable
#: ``params -> tree of bools`` (as ``optax.masked`` takes).
MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]


def compute_dtype(x: jax.Array) -> jnp.dtype:
  """The dtype arithmetic on ``x`` runs in: at least float32."""
  return jnp.promote_types(x.dtype, jnp.float32)


def safe_divide(x: jax.Array, d: jax.Array) -> jax.Array:
  """``x / d``, but 0 where ``d == 0`` (no NaN from a zero denominator).

  Only a zero denominator is guarded: a NaN or infinite ``d`` (the norm of a
  non-finite gradient) still gives a non-finite result, so a bad gradient
  shows in the update instead of silently becoming 0.
  """
  zero = d == 0
  return jnp.where(zero, 0, x / jnp.where(zero, 1, d))


def key_name(key: Any) -> str:
  """The name of one key-path entry (dict key, attribute or index)."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_paths(tree: Any) -> list[str]:
  """``jax.tree_util.keystr`` of every leaf, in ``jax.tree.leaves`` order."""
  return [
    jax.tree_util.keystr(p)
    for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]
