"""Closed-form references shared by the tests, written independently of the library."""
import jax
import jax.numpy as jnp


@jax.jit
def helmholtz_grad(params, z, c):
  """∂F(z; c)/∂z in closed form for F = −Σ_h T_h Σ_n log Σ_m exp(q_hn·k_hm/T_h): −Σ_hm p_hnm W^Q_h k_hm."""
  q = jnp.einsum("nd,dhk->hnk", z, params["query"])
  k = jnp.einsum("md,dhk->hmk", c, params["key"])
  p = jax.nn.softmax(jnp.einsum("hnk,hmk->hnm", q, k) / params["temperature"][:, None, None], axis=-1)
  return -jnp.einsum("hnm,hmk,dhk->nd", p, k, params["query"])
