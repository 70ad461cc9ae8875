"""Solver steps against closed-form formulas, explicit Hessians, per-token loops and sequential runs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from energyformer import energies, solvers
from energyformer.layers import EnergyStack, Hyperparameter, Layer
from references import helmholtz_grad

D, H, DH, N = 16, 4, 4, 6
TOL = dict(rtol=1e-5, atol=1e-5)


def _tokens(seed, shape=(N, D)):
  return jax.random.normal(jax.random.key(seed), shape)


def _init(energy, seed, dtype=jnp.float32):
  """The energy's parameters drawn from its specs (in one compiled call)."""
  return jax.jit(lambda key: energies.init_params(energy.specs(), key, dtype))(jax.random.key(seed))


@functools.lru_cache(maxsize=None)
def _interaction_params(seed, dtype=jnp.float32):
  return _init(energies.Interaction(D, H, DH), seed, dtype)


def _quadratic():
  """F(z) = ½ Σ_n z_n A z_nᵀ with A symmetric, declared as a parameter; closed-form gradient z A."""
  spec = energies.ParamSpec((D, D), ("embed", "embed"), energies.constant(0.0))
  return energies.energy(lambda p, x, c, mask: 0.5 * jnp.sum((x @ p["A"]) * x), A=spec)


@functools.lru_cache(maxsize=None)
def _quadratic_matrix(seed):
  b = jax.random.normal(jax.random.key(seed), (D, D)) * D ** -0.5
  return jnp.eye(D) + 0.3 * (b + b.T)


def _energy_case(kind):
  """(energy, its params, closed-form tied gradient g(x) = ∂F(z; x)/∂z at z = x)."""
  if kind == "quadratic":
    a = _quadratic_matrix(3)
    return _quadratic(), {"A": a}, lambda x: x @ a
  params = _interaction_params(4)
  return energies.Interaction(D, H, DH), params, lambda x: helmholtz_grad(params, x, x)


FIRST_ORDER = {
    "gd": dict(eta=0.3),
    "momentum": dict(eta=0.3, beta=0.7),
    "nesterov": dict(eta=0.3, beta=0.7),
    "euler": dict(dt=0.2, tau=1.7),
}


def _first_order_reference(name, hp, g, x, m):
  """The update rules written out: GD, heavy ball, Nesterov look-ahead, explicit Euler."""
  if name == "gd":
    return x - hp["eta"] * g(x), None
  if name == "momentum":
    m_new = hp["beta"] * m - hp["eta"] * g(x)
    return x + m_new, m_new
  if name == "nesterov":
    m_new = hp["beta"] * m - hp["eta"] * g(x + hp["beta"] * m)
    return x + m_new, m_new
  return x - (hp["dt"] / hp["tau"]) * g(x), None


@pytest.mark.parametrize("kind", ["quadratic", "interaction"])
@pytest.mark.parametrize("name", sorted(FIRST_ORDER))
def test_first_order_step_matches_formula(name, kind):
  """Layer step of gd/momentum/nesterov/euler equals its update formula with a closed-form gradient."""
  energy, params, g = _energy_case(kind)
  layer = Layer(energy, name)
  hp = layer.default_hparams(**FIRST_ORDER[name])
  x = _tokens(0)
  m = 0.5 * _tokens(1) if name in ("momentum", "nesterov") else None
  state = m if m is not None else layer.init_state(x)
  x_new, state_new = jax.jit(layer.step)({"energy": params}, hp, x, state)
  x_ref, m_ref = _first_order_reference(name, {k: float(v) for k, v in hp.items()}, g, x, m)
  np.testing.assert_allclose(x_new, x_ref, **TOL)
  if m_ref is not None:
    np.testing.assert_allclose(state_new, m_ref, **TOL)


def test_momentum_init_is_zero_buffer():
  """Momentum and Nesterov start from m⁰ = 0, so their first step from init equals a GD step (formula x − ηg)."""
  energy, params, g = _energy_case("interaction")
  x = _tokens(2)
  for name in ("momentum", "nesterov"):
    layer = Layer(energy, name)
    hp = layer.default_hparams(eta=0.3, beta=0.7)
    x_new, m = jax.jit(layer.step)({"energy": params}, hp, x, layer.init_state(x))
    np.testing.assert_allclose(x_new, x - 0.3 * g(x), **TOL)
    np.testing.assert_allclose(m, -0.3 * g(x), **TOL)


# ----------------------------------------------------------------------------------------------------- Newton


def _elastic_case(temperature=1.5, seed=7, dtype=jnp.float64):
  """Single-head elastic Helmholtz energy with W_Q = I: F(z) = −T Σ_n log Σ_m exp(−½‖z_n − h_m W‖²/T)."""
  energy = energies.Interaction(D, 1, D, local=energies.elastic, aggregate=energies.Helmholtz(temperature))
  kw, kx = jax.random.split(jax.random.key(seed))
  w = jax.random.normal(kw, (D, D), dtype) * D ** -0.5
  params = {"query": jnp.eye(D, dtype=dtype)[:, None, :], "key": w[:, None, :],
            "temperature": jnp.full((1,), temperature, dtype)}
  h = jax.random.normal(kx, (N, D), dtype)
  return energy, params, w, h


def _elastic_newton_reference(z, values, temperature, eta):
  """z − η (I + Σ_p/T)(z − μ) per token, with μ = Σ p_m m_m and Σ_p the p-weighted covariance of m_m."""
  rows = []
  for n in range(z.shape[0]):
    e = 0.5 * np.sum((z[n] - values) ** 2, axis=-1)
    logits = -e / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    mu = p @ values
    centred = values - mu
    sigma = (centred * p[:, None]).T @ centred
    rows.append(z[n] - eta * (np.eye(D) + sigma / temperature) @ (z[n] - mu))
  return np.stack(rows)


def test_newton_elastic_matches_explicit_hessian_formula():
  """Neumann-1 Newton on the query-side elastic Helmholtz energy equals z − η(I + Σ_p/T)(z − μ)."""
  with jax.enable_x64(True):
    temperature, eta = 1.5, 0.4
    energy, params, w, h = _elastic_case(temperature)
    solver = solvers.newton(num_terms=1)
    hp = solver.hparams(eta=eta)
    grad_fn = lambda z: jax.grad(lambda q: energy(params, q, h))(z)  # context h held constant
    z = h + 0.3 * jax.random.normal(jax.random.key(8), h.shape, h.dtype)
    z_new, _ = jax.jit(lambda z: solver.step(grad_fn, z, solver.init(z), hp))(z)
    ref = _elastic_newton_reference(np.asarray(z), np.asarray(h @ w), temperature, float(hp["eta"]))
    np.testing.assert_allclose(z_new, ref, rtol=1e-9, atol=1e-9)


def test_newton_tied_layer_matches_query_side_formula():
  """A tied-mode Newton layer on the elastic energy equals the query-side formula z − η(I + Σ_p/T)(z − μ)."""
  with jax.enable_x64(True):
    temperature, eta = 1.5, 0.4
    energy, params, w, h = _elastic_case(temperature)
    layer = Layer(energy, solvers.newton(num_terms=1), mode="tied")
    z_new, _ = jax.jit(layer.step)({"energy": params}, layer.default_hparams(eta=eta), h, ())
    ref = _elastic_newton_reference(np.asarray(h), np.asarray(h @ w), temperature, eta)
    np.testing.assert_allclose(z_new, ref, rtol=1e-6, atol=1e-6)


def _generic_energy():
  return energies.EnergySum({"attention": energies.Interaction(D, H, DH),
                             "memory": energies.HopfieldReLU2(D, 2 * D)})


@pytest.fixture(scope="module")
def dense_case():
  """A generic energy (Interaction + HopfieldReLU2, full derivation) in float64 with its gradient and dense Hessian."""
  with jax.enable_x64(True):
    energy = _generic_energy()
    params = _init(energy, 11, jnp.float64)
    x = 0.7 * jax.random.normal(jax.random.key(12), (N, D), jnp.float64)
    total = lambda z: energy(params, z, z)
    g = np.asarray(jax.jit(jax.grad(total))(x)).reshape(-1)
    hess = np.asarray(jax.jit(jax.hessian(total))(x)).reshape(N * D, N * D)
    return energy, params, x, g, hess


def _neumann_reference(g, hess, num_terms, alpha):
  """α Σ_{j≤K} (I − αH)^j g by repeated dense matrix products."""
  term = direction = alpha * g
  for _ in range(num_terms):
    term = term - alpha * hess @ term
    direction = direction + term
  return direction


SCALES = [1.0] + ([0.6] if "curvature_scale" in solvers.newton().defaults else [])


@pytest.mark.parametrize("num_terms", [1, 2])
def test_newton_direction_matches_dense_hessian(dense_case, num_terms):
  """Neumann-K step x − ηα Σ_{j≤K} (I − αH)^j g (α = 1, and α < 1 where supported), H = jax.hessian flattened."""
  energy, params, x, g, hess = dense_case
  with jax.enable_x64(True):
    layer = Layer(energy, solvers.newton(num_terms=num_terms), mode="full")
    for alpha in SCALES:
      hp = layer.default_hparams(eta=0.3, **({"curvature_scale": alpha} if alpha != 1.0 else {}))
      eta, alpha = float(hp["eta"]), float(hp.get("curvature_scale", 1.0))
      direction = _neumann_reference(g, hess, num_terms, alpha)
      x_new, _ = jax.jit(layer.step)({"energy": params}, hp, x, ())
      np.testing.assert_allclose(np.asarray(x_new).reshape(-1), np.asarray(x).reshape(-1) - eta * direction,
                                 rtol=1e-9, atol=1e-9)
    d = jax.jit(lambda z: solvers.neumann_direction(lambda y: layer.gradient({"energy": params}, y), z,
                                                    num_terms))(x)
    np.testing.assert_allclose(np.asarray(d).reshape(-1), _neumann_reference(g, hess, num_terms, 1.0),
                               rtol=1e-9, atol=1e-9)


def test_newton_hessian_vector_product_matches_dense_hessian(dense_case):
  """hessian_vector_product(∇F, x, v) equals the flattened jax.hessian times v."""
  energy, params, x, _, hess = dense_case
  with jax.enable_x64(True):
    total = lambda z: energy(params, z, z)
    v = jax.random.normal(jax.random.key(15), (N, D), jnp.float64)
    hv = jax.jit(lambda z, w: solvers.hessian_vector_product(jax.grad(total), z, w))(x, v)
    np.testing.assert_allclose(np.asarray(hv).reshape(-1), hess @ np.asarray(v).reshape(-1), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------- light Newton


def test_light_newton_first_step_is_scaled_gd():
  """The first light-Newton step (κ = 1) equals a GD step with η(1 + curvature_bias)."""
  energy, params, g = _energy_case("interaction")
  layer = Layer(energy, "light_newton")
  gd = Layer(energy, "gd")
  x = _tokens(20)
  step, gd_step = jax.jit(layer.step), jax.jit(gd.step)
  for bias in (0.0, 0.35, -0.2):
    x_new, _ = step({"energy": params}, layer.default_hparams(eta=0.3, curvature_bias=bias), x, layer.init_state(x))
    x_gd, _ = gd_step({"energy": params}, gd.default_hparams(eta=0.3 * (1.0 + bias)), x, ())
    np.testing.assert_allclose(x_new, x_gd, **TOL)
    np.testing.assert_allclose(x_new, x - 0.3 * (1.0 + bias) * g(x), **TOL)


def test_light_newton_second_step_uses_per_token_secant():
  """Step 2 by a per-token loop: κ_n = ⟨Δx_n, Δg_n⟩/(‖Δx_n‖² + ε), x⁺ = x − η(clip(2 − κ_n, 0, 2) + b) g."""
  energy, params, g = _energy_case("interaction")
  eps, eta, bias = 1e-6, 0.8, 0.1
  solver = solvers.light_newton(eps=eps)
  layer = Layer(energy, solver)
  hp = layer.default_hparams(eta=eta, curvature_bias=bias)
  x0 = _tokens(21)
  step = jax.jit(layer.step)
  x1, state = step({"energy": params}, hp, x0, layer.init_state(x0))
  x2, _ = step({"energy": params}, hp, x1, state)
  g0, g1 = np.asarray(g(x0), np.float64), np.asarray(g(x1), np.float64)
  x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
  ref = np.empty_like(x1)
  for n in range(N):
    dx, dg = x1[n] - x0[n], g1[n] - g0[n]
    kappa = float(dx @ dg) / (float(dx @ dx) + eps)
    factor = min(max(2.0 - kappa, 0.0), 2.0) + bias
    ref[n] = x1[n] - eta * factor * g1[n]
  np.testing.assert_allclose(x2, ref, **TOL)


@pytest.mark.parametrize("a", [0.7, 1.6, 2.5])
def test_light_newton_curvature_on_isotropic_quadratic(a):
  """On F = ½a‖x‖² the secant curvature after one step is κ = a: step 2 is x − η(clip(2 − a, 0, 2) + b) a x."""
  with jax.enable_x64(True):
    solver = solvers.light_newton(eps=1e-12)
    eta, bias = 0.3, 0.05
    hp = solver.hparams(eta=eta, curvature_bias=bias)
    grad_fn = lambda x: a * x
    x0 = jax.random.normal(jax.random.key(22), (N, D), jnp.float64)
    x1, state = solver.step(grad_fn, x0, solver.init(x0), hp)
    x2, _ = solver.step(grad_fn, x1, state, hp)
    factor = min(max(2.0 - a, 0.0), 2.0) + bias
    np.testing.assert_allclose(x2, x1 - eta * factor * a * x1, rtol=1e-6, atol=1e-9)
    if a < 2.0:
      recovered_factor = np.asarray((x1 - x2) / (eta * a * x1))
      np.testing.assert_allclose(2.0 + bias - recovered_factor, a, rtol=1e-5)


# -------------------------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("beta", [1.0, 1.5, -0.1])
@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_invalid_beta_raises(name, beta):
  """β outside [0, 1) raises a ValueError naming beta."""
  with pytest.raises(ValueError, match="beta"):
    solvers.get(name).hparams(beta=beta)


@pytest.mark.parametrize("eta", [0.0, -0.5])
@pytest.mark.parametrize("name", ["gd", "momentum", "nesterov", "newton", "light_newton"])
def test_nonpositive_eta_raises(name, eta):
  """η ≤ 0 raises a ValueError naming eta."""
  with pytest.raises(ValueError, match="eta"):
    solvers.get(name).hparams(eta=eta)


@pytest.mark.parametrize("field", ["dt", "tau"])
def test_nonpositive_euler_hparams_raise(field):
  """dt ≤ 0 or τ ≤ 0 raises a ValueError naming it."""
  with pytest.raises(ValueError, match=field):
    solvers.euler().hparams(**{field: 0.0})


def test_valid_boundary_hparams_accepted():
  """β = 0 (closed end of [0, 1)) and a small positive η are accepted and returned as float32 arrays."""
  hp = solvers.momentum().hparams(beta=0.0, eta=1e-4)
  assert hp["beta"].dtype == jnp.float32 and float(hp["beta"]) == 0.0
  np.testing.assert_allclose(float(hp["eta"]), 1e-4, rtol=1e-6)


def test_unknown_hparam_raises():
  """An unknown hyperparameter name raises a ValueError naming it."""
  with pytest.raises(ValueError, match="momentum_decay"):
    solvers.get("gd").hparams(momentum_decay=0.9)


def test_missing_hparam_raises():
  """Solver.check_hparams rejects a dict lacking one of the solver's hyperparameters."""
  with pytest.raises(ValueError, match="beta"):
    solvers.momentum().check_hparams({"eta": jnp.float32(0.1)})


def test_unknown_solver_raises_with_choices():
  """solvers.get('adamw') raises a ValueError listing the registered solvers."""
  with pytest.raises(ValueError, match="adamw") as info:
    solvers.get("adamw")
  for name in solvers.names():
    assert name in str(info.value)


def test_layer_with_unknown_solver_raises():
  """Layer(energy, solver='foo') raises a ValueError."""
  with pytest.raises(ValueError, match="foo"):
    Layer(energies.Interaction(D, H, DH), solver="foo")


def test_stack_rejects_invalid_hparams():
  """EnergyStack with an out-of-range hyperparameter dict raises a ValueError naming it."""
  layer = Layer(_quadratic(), "momentum")
  with pytest.raises(ValueError, match="beta"):
    EnergyStack(layer, 2, rngs=nnx.Rngs(0), hparams={"eta": jnp.float32(0.1), "beta": jnp.float32(1.0)})


HPARAM_BATCHES = {
    "gd": {"eta": (0.1, 0.4, 0.9)},
    "momentum": {"eta": (0.1, 0.4, 0.9), "beta": (0.9, 0.0, 0.5)},
    "nesterov": {"eta": (0.1, 0.4, 0.9), "beta": (0.9, 0.0, 0.5)},
    "euler": {"dt": (0.05, 0.2, 0.5), "tau": (3.0, 0.5, 1.0)},
    "newton": {"eta": (0.1, 0.3, 0.5), "curvature_scale": (0.5, 0.8, 1.0)},
    "light_newton": {"eta": (0.1, 0.4, 0.9), "curvature_bias": (0.4, -0.3, 0.0)},
}


@pytest.mark.parametrize("name", sorted(HPARAM_BATCHES))
def test_hparams_vmap_matches_sequential(name):
  """jax.vmap of a 3-layer stack rollout over a batch of hparams dicts equals the Python loop over the batch."""
  with jax.enable_x64(True):
    layer = Layer(energies.Interaction(D, H, DH), name)
    batch = {k: v for k, v in HPARAM_BATCHES[name].items() if k in layer.solver.defaults}
    assert set(batch) == set(layer.solver.defaults)  # every hyperparameter of the solver is batched
    x = 0.5 * jax.random.normal(jax.random.key(30), (N, D), jnp.float64)
    hparams = [layer.default_hparams(**{k: v[i] for k, v in batch.items()}) for i in range(3)]
    stacks = [EnergyStack(layer, 3, rngs=nnx.Rngs(0), hparams=h, dtype=jnp.float64) for h in hparams]
    graphdef, _, rest = nnx.split(stacks[0], Hyperparameter, ...)
    hparam_states = [nnx.split(s, Hyperparameter, ...)[1] for s in stacks]
    run = jax.jit(lambda hp: nnx.merge(graphdef, hp, rest).rollout(x).x)
    sequential = np.stack([run(hp) for hp in hparam_states])
    vmapped = jax.jit(jax.vmap(run))(jax.tree.map(lambda *v: jnp.stack(v), *hparam_states))
    np.testing.assert_allclose(vmapped, sequential, rtol=1e-6, atol=1e-6)
    for i in range(1, 3):  # the hyperparameters matter
      assert np.max(np.abs(sequential[0] - sequential[i])) > 1e-3


# -------------------------------------------------------------------------------------------- energy descent


def _batched_seeds(make_stack, seeds):
  """Stacks the NNX states of one stack per seed (parameters differ per seed) for a single vmapped rollout."""
  stacks = [make_stack(s) for s in seeds]
  graphdef, _ = nnx.split(stacks[0])
  return graphdef, jax.tree.map(lambda *v: jnp.stack(v), *[nnx.state(s) for s in stacks])


def _energy_trace(layer, eta_or_dt):
  """Energies before/after each step of 10-step recurrent rollouts from 20 seeds (parameters and tokens)."""
  name = "dt" if "dt" in layer.solver.defaults else "eta"
  hp = layer.default_hparams(**{name: eta_or_dt})
  seeds = range(20)
  graphdef, states = _batched_seeds(
      lambda s: EnergyStack(layer, 10, rngs=nnx.Rngs(s), shared=True, hparams=hp, dtype=jnp.float64), seeds)
  xs = jax.random.normal(jax.random.key(40), (len(seeds), N, D), jnp.float64)
  run = jax.jit(jax.vmap(lambda state, x: nnx.merge(graphdef, state).rollout(x, record_energy=True)))
  out = run(states, xs)
  before, after = np.asarray(out.energy_before), np.asarray(out.energy_after)
  assert before.shape == after.shape == (len(seeds), 10)
  np.testing.assert_allclose(before[:, 1:], after[:, :-1], rtol=1e-10, atol=1e-10)
  return before, after


def _assert_monotone_descent(before, after):
  np.testing.assert_array_less(after, before + 1e-6)
  assert np.all(before[:, 0] - after[:, -1] > 1e-4)  # the rollout moved downhill, not stood still


@pytest.mark.parametrize("local", ["inner_product", "elastic"])
def test_gd_never_increases_helmholtz_energy(local):
  """GD (small η) on the full-gradient Helmholtz interaction: F(x_{l+1}) ≤ F(x_l), 20 seeds × 10 recurrent steps."""
  with jax.enable_x64(True):
    layer = Layer(energies.Interaction(D, H, DH, local=getattr(energies, local)), "gd", mode="full")
    _assert_monotone_descent(*_energy_trace(layer, 0.05))


def test_energy_descent_check_detects_overshoot():
  """Control for the descent checks: the same bounded (elastic) energy with a large η = 1 does rise somewhere."""
  with jax.enable_x64(True):
    layer = Layer(energies.Interaction(D, H, DH, local=energies.elastic), "gd", mode="full")
    before, after = _energy_trace(layer, 1.0)
    assert np.any(after > before + 1e-6)


def test_gd_never_increases_summed_energy():
  """GD (small η) on Interaction + HopfieldReLU2 (full gradient): the recorded energy never increases, 20 seeds."""
  with jax.enable_x64(True):
    _assert_monotone_descent(*_energy_trace(Layer(_generic_energy(), "gd", mode="full"), 0.05))


def test_euler_with_layernorm_lagrangian_never_increases_energy():
  """ET dynamics (Euler on ∂E/∂g, g = LayerNorm(x) from its Lagrangian, small dt): E(g(x)) never increases."""
  with jax.enable_x64(True):
    layer = Layer(_generic_energy(), "euler", mode="full", lagrangian=energies.LayerNormLagrangian(D))
    _assert_monotone_descent(*_energy_trace(layer, 0.1))
