"""``ops.matmul`` against ``jnp.matmul``: values, derivatives of every order, and the programs it compiles to.

Values and derivatives are compared in float64 (rtol 1e-12) against ``jnp.matmul`` and, independently, against
central finite differences (``jax.test_util.check_grads``, orders 1 and 2, forward and reverse mode).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from energyformer.ops.matmul import SMALL_MATRIX, matmul

SHAPES = {  # (a, b): leading axes batched, and broadcast; matrices above SMALL_MATRIX take plain jnp.matmul
    "batched": ((2, 3, 4, 5), (2, 3, 5, 6)),
    "broadcast": ((3, 1, 4, 5), (2, 5, 6)),
    "large": ((SMALL_MATRIX + 1, 2), (2, 3)),
}


def _operands(shape_name, dtype=np.float64):
  a_shape, b_shape = SHAPES[shape_name]
  rng = np.random.default_rng(0)
  return rng.normal(size=a_shape).astype(dtype), rng.normal(size=b_shape).astype(dtype)


@pytest.mark.parametrize("shape_name", ["batched", "broadcast", pytest.param("large", marks=pytest.mark.slow)])
def test_values_and_derivatives_equal_jnp_matmul(shape_name):
  with jax.enable_x64(True):
    a, b = _operands(shape_name)
    np.testing.assert_allclose(matmul(a, b), np.matmul(a, b), rtol=1e-12)
    weights = np.random.default_rng(1).normal(size=np.matmul(a, b).shape)
    loss = lambda product: lambda a, b: jnp.sum(jnp.sin(product(a, b)) * weights)
    for order in (jax.grad, jax.hessian):
      got, want = order(loss(matmul), argnums=(0, 1))(a, b), order(loss(jnp.matmul), argnums=(0, 1))(a, b)
      jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12), got, want)
    tangents = _operands(shape_name)
    got, want = (jax.jvp(loss(f), (a, b), tangents) for f in (matmul, jnp.matmul))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_derivatives_match_finite_differences():
  with jax.enable_x64(True):
    a, b = _operands("broadcast")
    check_grads(lambda a, b: jnp.tanh(matmul(a, b)), (a, b), order=2, modes=("fwd", "rev"), eps=1e-4)


def test_one_operand_differentiated_alone():
  with jax.enable_x64(True):
    a, b = _operands("batched")
    for argnum in (0, 1):
      got = jax.grad(lambda *ab: jnp.sum(matmul(*ab) ** 2), argnums=argnum)(a, b)
      want = jax.grad(lambda *ab: jnp.sum(jnp.matmul(*ab) ** 2), argnums=argnum)(a, b)
      np.testing.assert_allclose(got, want, rtol=1e-12)


def test_accumulates_in_the_requested_dtype():
  a, b = (x.astype(jnp.bfloat16) for x in _operands("batched", np.float32))
  out = matmul(a, b, jnp.float32)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, np.matmul(np.float32(a), np.float32(b)), rtol=1e-6, atol=1e-6)
  assert matmul(a, b).dtype == jnp.bfloat16


def test_vectors_are_refused_with_the_fix():
  with pytest.raises(ValueError, match="length-1 axis"):
    matmul(np.ones(3), np.ones((3, 2)))
