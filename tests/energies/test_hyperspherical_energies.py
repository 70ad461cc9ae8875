"""Hyperspherical energies: jax.grad against the closed forms (float64), the symmetric attention included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from energyformer.energies import (SphereAttention, SphereFeedForward, init_params, masks, sphere_energy,
                                   symmetric_attention)

N, D, H, P, M = 5, 8, 2, 4, 6


def _softmax(s):
  e = np.exp(s - s.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _sphere_and_jacobian(u):
  """``ĥ = u/r``, ``r = √(mean u² + ε)``, and ``J = ∂ĥ/∂u = (I − ĥĥᵀ/p)/r`` per row of u (…, p)."""
  r = np.sqrt(np.mean(u * u, -1, keepdims=True) + 1e-6)
  h = u / r
  eye = np.eye(u.shape[-1])
  return h, (eye - h[..., :, None] * h[..., None, :] / u.shape[-1]) / r[..., None]


def _symmetric(z, beta, mask):
  """``Σ_j (A_ij + A_ji) z_j`` per head with ``A`` the masked row softmax of ``β z zᵀ`` (numpy)."""
  scores = beta * np.einsum("hnk,hmk->hnm", z, z)
  weights = _softmax(np.where(mask, scores, -np.inf))
  return np.einsum("hnm,hmk->hnk", weights + np.swapaxes(weights, -1, -2), z)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradient_is_symmetric_attention(causal):
  """∂E/∂z = (row + column softmax) attention of tied z; ∇_x E = Σ_h W_h J_h (that); the points have norm √p;
  ``symmetric_field`` is the same attention through Wᵀ without the sphere's Jacobian."""
  with jax.enable_x64(True):
    energy = SphereAttention(D, H, P)
    params = init_params(energy.specs(), jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (N, D), jnp.float64)
    mask = masks.causal(N) if causal else None
    np_mask = np.tril(np.ones((N, N), bool)) if causal else np.ones((N, N), bool)
    w = np.asarray(params["w"])
    points, jacobian = _sphere_and_jacobian(np.einsum("nd,dhk->hnk", np.asarray(x), w))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(energy.points(params, x)), axis=-1), np.sqrt(P), rtol=1e-5)
    attended = _symmetric(points, P ** -0.5, np_mask)
    z = energy.points(params, x)
    by_grad = jax.grad(lambda q: sphere_energy(q, q, P ** -0.5, mask))(z)
    np.testing.assert_allclose(np.asarray(by_grad), attended, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(symmetric_attention(z, P ** -0.5, mask)), attended, rtol=1e-10, atol=1e-10)
    exact = np.einsum("dhk,hnkj,hnj->nd", w, jacobian, attended)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda y: energy(params, y, y, mask))(x)), exact, rtol=1e-9,
                               atol=1e-10)
    np.testing.assert_allclose(np.asarray(energy.symmetric_field(params, x, mask)),
                               np.einsum("dhk,hnk->nd", w, attended), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normalise", [False, True])
def test_feedforward_gradient(normalise):
  """E = −½ Σ ReLU(ĥ)²: ∇_x E = D J (−ReLU(ĥ)) (J = I without normalisation); ``field`` = −ReLU(ĥ) Dᵀ."""
  with jax.enable_x64(True):
    energy = SphereFeedForward(D, M, normalise=normalise)
    params = init_params(energy.specs(), jax.random.key(2), jnp.float64)
    x = jax.random.normal(jax.random.key(3), (N, D), jnp.float64)
    d = np.asarray(params["d"])
    u = np.asarray(x) @ d
    h, jacobian = _sphere_and_jacobian(u) if normalise else (u, np.broadcast_to(np.eye(M), (N, M, M)))
    np.testing.assert_allclose(float(energy(params, x)), -0.5 * np.sum(np.maximum(h, 0) ** 2), rtol=1e-12)
    exact = np.einsum("dm,nmj,nj->nd", d, jacobian, -np.maximum(h, 0))
    np.testing.assert_allclose(np.asarray(jax.grad(lambda y: energy(params, y))(x)), exact, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.asarray(energy.field(params, x)), -np.maximum(h, 0) @ d.T, rtol=1e-10, atol=1e-12)
