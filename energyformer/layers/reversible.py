"""Reversible depth: a heavy-ball stack rebuilds each step's input from its output in the backward pass.

A heavy-ball step ``m⁺ = β m + u(x)``, ``x⁺ = x + m⁺`` with the force ``u(x) = −η G(x)`` is invertible given its
output: ``x = x⁺ − m⁺``, ``m = (m⁺ − u(x)) / β`` (Momentum ResNets, Sander et al. 2021). ``reversible_unroll`` is
one ``jax.custom_vjp`` over the whole depth scan: the forward pass keeps no per-step activations, the backward pass
walks the steps in reverse, rebuilding ``(x_l, m_l)`` from ``(x_{l+1}, m_{l+1})`` and taking the step's VJP at the
rebuilt input (one force evaluation serves both the inversion and the VJP).

**Which layers invert.** A ``Layer`` whose solver is ``"momentum"`` (heavy ball, ``β > 0``). A ``Split`` of one
heavy-ball part and gradient-descent parts (the GPT block: momentum attention, then a GD MLP step) does *not* invert
as it stands: ``x⁺ = x − η G(x)`` has no closed-form inverse. Its reversible form, this project's design, folds every
gradient-descent part's step into the velocity, every field taken at the block's input:
``m⁺ = β m − η_a G_a(x) − Σ_k η_k G_k(x)``, ``x⁺ = x + m⁺`` — heavy ball on the sum of the energies, a parallel
block (attention and MLP read the same tokens) rather than the Lie–Trotter one. ``HeavyBall(layer).step`` is that
step, usable without reversal (the stored-activation reference). Nesterov
``m⁺ = β m − η G(x + β m)``, ``x⁺ = x + m⁺`` does not invert in closed form: ``x = x⁺ − m⁺`` is exact, but ``m``
then solves the fixed-point equation ``β m = m⁺ + η G(x + β m)``, which would need an iterative solve per step
(inexact, and not unique in general); it is refused, as are Newton, Euler, Langevin and every other solver.

**Precision.** Reversal divides by ``β`` every step, so a rounding error made at step ``l`` is amplified by about
``((1 + η‖∂G‖)/β)^k`` after ``k`` reversed steps; in float32 and ``β = 0.5`` a pure reversal of 48 steps amplifies
the unit roundoff ``6e-8`` by ``2⁴⁸``. Exact-arithmetic reversal (MacKay et al. 2018) stores the ``log₂(1/β)``
bits per element a contraction destroys at every step and needs fixed-point token states; instead this module
stores the exact carry ``(x, m)`` at the end of every ``segment`` steps (a few carries rather than one per step;
the last segment ends at the output, which is not stored twice) and reverses at most ``segment`` steps from an
exact carry, so the amplification is bounded by ``β^{-segment}`` whatever the depth. ``segment=None`` reverses the
whole depth from the output alone (right in float64 or for a shallow stack). The float32 bound this project
documents and tests (``FLOAT32_RELATIVE_BOUND``): for pre-normalised
blocks (LayerNorm Lagrangian, as in GPT) with ``β ≥ 0.5``, ``η ≤ 1`` and ``segment ≤ DEFAULT_SEGMENT`` (6), every
gradient (parameters, hyperparameters, input tokens) differs from the stored-activation gradient by at most 1e-3 of
that gradient's largest entry (measured: 5e-6 at segment 4, 5e-5 at 6, 1.4e-3 at 8 — each step reversed multiplies
the error by about 3; the default 6 keeps a 20× margin). The bound cannot be proved for every energy, so the backward
pass measures it: the gap between each exact carry and the carry rebuilt onto it (and between the input and the
rebuilt input) is the reversal error of that segment, and a ``ReversalDriftWarning`` reports any gap above the bound.

**Workspace.** Past the carries, the backward pass holds one step's VJP (attention weights, the MLP's hidden layer,
their cotangents). The force's VJP needs only the velocity cotangent (``m⁺ = βm + u`` passes it to ``u`` unchanged),
so it runs before the inversion and yields ``u`` as well; it is taken one part at a time (an optimisation barrier
between the attention and MLP terms) and one chunk of ``vjp_chunk`` sequences at a time (a ``lax.scan`` over the
batch summing the weight gradients), which divides that workspace by about the batch size at the cost of one more
weight-gradient buffer. Under a mesh (``pin_axes``) the whole local batch is taken at once, as a scan over a
split batch axis would gather it.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from energyformer.checks import check_positive_int, concrete
from energyformer.layers.split import Split
from energyformer.layers.stack import Rollout, check_hparam_shapes

DEFAULT_SEGMENT = 6
FLOAT32_RELATIVE_BOUND = 1e-3
HEAVY_BALL = "momentum"
FOLDABLE = "gd"


def _solver_name(layer) -> str:
  return layer.solver.name


def reversibility_error(layer) -> str | None:
  """Why ``layer`` has no exact reversible form (and the fix), or ``None`` when it has one."""
  if isinstance(layer, Split):
    names = [_solver_name(part) for part in layer.parts]
    if "nesterov" in names:
      return reversibility_error(layer.parts[names.index("nesterov")])
    if getattr(layer, "shared_state", False):
      return ("a reversible Split keeps the heavy-ball part's own velocity; build it with shared_state=False (a "
              "velocity shared through every sub-step has no closed-form inverse here), or reversible=False.")
    if layer.scheme != "lie_trotter":
      return (f"a reversible block folds its parts into one velocity update, which has no half steps; build the "
              f"Split with scheme='lie_trotter' (got {layer.scheme!r}).")
    if names.count(HEAVY_BALL) != 1 or any(name not in (HEAVY_BALL, FOLDABLE) for name in names):
      return (f"a reversible Split needs exactly one heavy-ball ('momentum') part, the others gradient descent "
              f"('gd') folded into its velocity; got solvers {names}. Use a momentum variant, or reversible=False.")
    return None
  name = _solver_name(layer)
  if name == HEAVY_BALL:
    return None
  if name == "nesterov":
    return ("Nesterov's step m⁺ = βm − ηG(x + βm) has no closed-form inverse (m solves a fixed-point equation); "
            "use the heavy-ball solver 'momentum' for a reversible stack, or reversible=False.")
  return (f"solver {name!r} is not invertible in closed form (a step x⁺ = x − ηG(x) cannot be undone without a "
          f"solve); a reversible stack needs the heavy-ball solver 'momentum'. Use it, or reversible=False.")


def check_reversible(layer, hparams=None) -> None:
  """Raises a ``ValueError`` naming the fix unless ``layer`` has a reversible form and (where concrete) ``β > 0``."""
  error = reversibility_error(layer)
  if error is not None:
    raise ValueError(error)
  if hparams is None:
    return
  beta = concrete(HeavyBall(layer).beta(hparams))
  if beta is not None and np.any(beta <= 0):
    raise ValueError(f"a reversible stack divides by the momentum beta, which is {beta!r}; use beta > 0 (>= 0.5 "
                     "keeps float32 reversal within its documented bound), or reversible=False.")


@dataclasses.dataclass(frozen=True)
class HeavyBall:
  """The heavy-ball form ``m⁺ = β m + u(x)``, ``x⁺ = x + m⁺`` of a reversible ``layer`` (module docstring).

  Params, hparams and solver state keep ``layer``'s structure (tuples for a ``Split``, whose velocity is the
  heavy-ball part's state); it serves as a layer for ``unroll`` (the stored-activation form of the same step).
  """

  layer: Any

  def __post_init__(self):
    check_reversible(self.layer)

  @property
  def _index(self) -> int | None:
    if not isinstance(self.layer, Split):
      return None
    return [_solver_name(part) for part in self.layer.parts].index(HEAVY_BALL)

  def _pairs(self, params, hparams):
    if isinstance(self.layer, Split):
      return list(zip(self.layer.parts, params, hparams))
    return [(self.layer, params, hparams)]

  def beta(self, hparams):
    """``β`` of the heavy-ball part."""
    return hparams["beta"] if self._index is None else hparams[self._index]["beta"]

  def force(self, params, hparams, x, mask=None):
    """``u(x) = −Σ_k η_k G_k(x)``: every part's step-size-scaled field at the same tokens ``x`` (N, D)."""
    return -sum(h["eta"] * part.gradient(p, x, mask) for part, p, h in self._pairs(params, hparams))

  def velocity(self, state):
    """The velocity ``m`` in ``layer``'s solver state."""
    return state if self._index is None else state[self._index]

  def with_velocity(self, state, velocity):
    """``state`` with its velocity replaced."""
    if self._index is None:
      return velocity
    return tuple(velocity if i == self._index else s for i, s in enumerate(state))

  def specs(self):
    """The wrapped layer's parameter specs."""
    return self.layer.specs()

  def default_hparams(self):
    """The wrapped layer's default solver hyperparameters."""
    return self.layer.default_hparams()

  def init_state(self, x):
    """The wrapped layer's solver state for tokens ``x`` (N, D) (the velocity starts at zero)."""
    return self.layer.init_state(x)

  def energy_value(self, params, x, mask=None):
    """The wrapped layer's energy (a scalar) at tokens ``x`` (N, D)."""
    return self.layer.energy_value(params, x, mask)

  def combine(self, hparams, x, velocity, force):
    """``(x + m⁺, m⁺)`` with ``m⁺ = β m + u``."""
    velocity = self.beta(hparams) * velocity + force
    return x + velocity, velocity

  def step(self, params, hparams, x, state, mask=None):
    """One heavy-ball step of the folded block: ``(x, state) → (x + m⁺, state with m⁺)``."""
    x, velocity = self.combine(hparams, x, self.velocity(state), self.force(params, hparams, x, mask))
    return x, self.with_velocity(state, velocity)


def _pinned(x, pin_axes):
  """``x`` constrained whole along tokens and features and (for a batch (B, N, D)) split over ``pin_axes`` along the
  batch; unconstrained for ``pin_axes=None``."""
  if pin_axes is None:
    return x
  spec = (tuple(pin_axes) or None,) if x.ndim == 3 else ()
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))


def _batched_force(form, batched: bool, mask_axis):
  """``form.force`` on one sequence, or vmapped over a batch (B, N, D) (the forward pass)."""
  if not batched:
    return form.force
  return lambda theta, h, x, mask: jax.vmap(lambda xi, mi: form.force(theta, h, xi, mi),
                                            in_axes=(0, mask_axis))(x, mask)


def _term(part, mask, batched: bool, mask_axis):
  """The force's term ``(θ_k, h_k, x) → −η_k G_k(x)`` of one part, on one sequence or vmapped over a batch (the
  weight gradients then reduced over the batch inside the VJP's transpose rather than kept per sequence)."""
  term = lambda t, hh, z, m: -hh["eta"] * part.gradient(t, z, m)
  if not batched:
    return lambda t, hh, z: term(t, hh, z, mask)
  return lambda t, hh, z: jax.vmap(term, in_axes=(None, None, 0, mask_axis))(t, hh, z, mask)


def _force_vjp(form, theta, h, x, mask, g, batched: bool = False, mask_axis=None):
  """``u(x)`` on tokens ``x`` (N, D) or a batch (B, N, D) and its VJP ``(∂u/∂θ)ᵀ g, (∂u/∂h)ᵀ g, (∂u/∂x)ᵀ g``,
  taken part by part: the force's term ``−η_k G_k(x)`` of each part in turn, an optimisation barrier between
  them, so that the step's backward workspace is the largest part's rather than the sum of all of them."""
  split = isinstance(form.layer, Split)
  parts = form.layer.parts if split else (form.layer,)
  pick = (lambda tree, k: tree[k]) if split else (lambda tree, k: tree)
  u, gx, gthetas, ghs = jnp.zeros_like(x), jnp.zeros_like(x), [], []
  for k, part in enumerate(parts):
    if k:  # the next part's VJP starts once the previous one is done
      x, g, u, gx = jax.lax.optimization_barrier((x, g, u, gx))
    u_k, vjp = jax.vjp(_term(part, mask, batched, mask_axis), pick(theta, k), pick(h, k), x)
    gtheta, gh, gx_k = vjp(g)
    u, gx = u + u_k, gx + gx_k
    gthetas.append(gtheta)
    ghs.append(gh)
  return u, (tuple(gthetas) if split else gthetas[0]), (tuple(ghs) if split else ghs[0]), gx


def _batched_force_vjp(form, batched: bool, mask_axis, chunk: int | None):
  """``_force_vjp`` over a batch (B, N, D): one chunk of ``chunk`` sequences after another (a ``lax.scan`` over the
  batch; the weight gradients summed in its carry), each chunk vmapped; ``chunk=None`` the whole batch at once."""
  if not batched:
    return lambda theta, h, x, mask, g: _force_vjp(form, theta, h, x, mask, g)

  def vmapped(theta, h, x, mask, g):
    return _force_vjp(form, theta, h, x, mask, g, batched=True, mask_axis=mask_axis)

  def chunked(theta, h, x, mask, g):
    size = x.shape[0]
    if chunk is None or chunk >= size or size % chunk:
      return vmapped(theta, h, x, mask, g)
    # one sequence per chunk scans the batch axis itself (no reshaped copies of the batch)
    one = chunk == 1
    split = (lambda leaf: leaf) if one else lambda leaf: leaf.reshape((size // chunk, chunk) + leaf.shape[1:])
    merge = (lambda leaf: leaf) if one else lambda leaf: leaf.reshape((size,) + leaf.shape[2:])
    vjp = (lambda t, hh, z, m, gz: _force_vjp(form, t, hh, z, m, gz)) if one else vmapped

    def body(sums, inputs):
      xc, mc, gc = inputs
      u, gtheta, gh, gx = vjp(theta, h, xc, mask if mask_axis is None else mc, gc)
      return jax.tree.map(jnp.add, sums, (gtheta, gh)), (u, gx)

    zeros = jax.tree.map(jnp.zeros_like, (theta, h))
    (gtheta, gh), (u, gx) = jax.lax.scan(body, zeros, (split(x), split(mask) if mask_axis == 0 else None, split(g)))
    return merge(u), gtheta, gh, merge(gx)

  return chunked


def _slice(tree, index, stacked: bool):
  return jax.tree.map(lambda leaf: leaf[index], tree) if stacked else tree


def _relative_gap(exact, rebuilt):
  """``max |rebuilt − exact| / max |exact|``."""
  return jnp.max(jnp.abs(rebuilt - exact)) / jnp.maximum(jnp.max(jnp.abs(exact)), jnp.finfo(exact.dtype).tiny)


def _report_drift(drift, segment: int) -> None:
  """Warns when the measured reversal error of a segment exceeds ``FLOAT32_RELATIVE_BOUND`` (a message without the
  figure, so that a training loop warns once)."""
  if not np.all(np.asarray(drift) <= FLOAT32_RELATIVE_BOUND):
    warnings.warn(f"reversible stack: a carry rebuilt over {segment} steps drifted from the exact one by more than "
                  f"{FLOAT32_RELATIVE_BOUND:g} of the tokens' scale; the gradients are inexact. Use a shorter segment, "
                  "a larger momentum beta, float64, or reversible=False.", ReversalDriftWarning, stacklevel=2)


class ReversalDriftWarning(UserWarning):
  """The backward pass of a reversible stack rebuilt a carry measurably off the exact one."""


def _depth_scan(form, force, force_vjp, num_steps, segment, stacked_params, stacked_hparams, pin_axes):
  """The reversible scan ``(params, hparams, x, m, mask) → (x_L, m_L)`` as a ``jax.custom_vjp``. It stores the
  exact carry at the end of every segment but the last, whose end is the output itself."""
  num_stored = -(-num_steps // segment) - 1

  def forward_steps(params, hparams, x, m, mask):
    def body(carry, index):
      x, m, ends = carry
      theta, h = _slice(params, index, stacked_params), _slice(hparams, index, stacked_hparams)
      x = _pinned(x, pin_axes)
      x, m = form.combine(h, x, m, force(theta, h, x, mask))
      if num_stored:  # the steps of the last segment write past the buffer, and are dropped
        ends = jax.tree.map(lambda buffer, value: buffer.at[index // segment].set(value, mode="drop"), ends, (x, m))
      return (x, m, ends), None

    ends = jax.tree.map(lambda v: jnp.zeros((num_stored,) + v.shape, v.dtype), (x, m))
    (x, m, ends), _ = jax.lax.scan(body, (x, m, ends), jnp.arange(num_steps))
    return x, m, ends

  @jax.custom_vjp
  def run(params, hparams, x, m, mask):
    x, m, _ = forward_steps(params, hparams, x, m, mask)
    return x, m

  def run_fwd(params, hparams, x, m, mask):
    x_input = x
    x, m, ends = forward_steps(params, hparams, x, m, mask)
    return (x, m), (params, hparams, ends, mask, x_input, x, m)

  def run_bwd(residuals, cotangents):
    params, hparams, ends, mask, x_input, x_last, m_last = residuals
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)

    def body(carry, index):
      x_next, m_next, gx, gm, gparams, ghparams, drift = carry
      theta, h = _slice(params, index, stacked_params), _slice(hparams, index, stacked_hparams)
      # An exact carry replaces the rebuilt one at the end of each stored segment: errors never cross a segment.
      # The gap between the two is the measured reversal error of the segment that follows.
      if num_stored:
        segment_end = ((index + 1) % segment == 0) & (index // segment < num_stored)
        exact = jax.tree.map(lambda end: end[jnp.minimum(index // segment, num_stored - 1)], ends)
        drift = jnp.maximum(drift, jnp.where(segment_end, _relative_gap(exact[0], x_next), 0.0))
        x_next, m_next = jax.tree.map(lambda end, rebuilt: jnp.where(segment_end, end, rebuilt), exact,
                                      (x_next, m_next))
      x = _pinned(x_next - m_next, pin_axes)
      # m⁺ reaches the output directly and through x⁺ = x + m⁺; m⁺ = βm + u passes it to u unchanged, so the
      # force's VJP needs no m and gives u for the inversion in the same pass.
      g_velocity = gm + gx
      u, gtheta, gh_force, gx_force = force_vjp(theta, h, x, mask, g_velocity)
      m = (m_next - u) / form.beta(h)
      _, combine_vjp = jax.vjp(lambda hh, mm: form.combine(hh, x, mm, u)[1], h, m)
      gh_combine, gm = combine_vjp(g_velocity)
      gh = jax.tree.map(jnp.add, gh_combine, gh_force)
      gx = gx + gx_force
      if stacked_params:
        step_params = gtheta
      else:
        gparams, step_params = jax.tree.map(jnp.add, gparams, gtheta), None
      if stacked_hparams:
        step_hparams = gh
      else:
        ghparams, step_hparams = jax.tree.map(jnp.add, ghparams, gh), None
      return (x, m, gx, gm, gparams, ghparams, drift), (step_params, step_hparams)

    gx, gm = cotangents
    shared_params = None if stacked_params else zeros(params)
    shared_hparams = None if stacked_hparams else zeros(hparams)
    carry = (x_last, m_last, gx, gm, shared_params, shared_hparams, jnp.zeros((), x_last.dtype))
    (x_first, _, gx, gm, gparams, ghparams, drift), (step_params, step_hparams) = jax.lax.scan(
        body, carry, jnp.arange(num_steps), reverse=True)
    jax.debug.callback(_report_drift, jnp.maximum(drift, _relative_gap(x_input, x_first)), segment)
    gparams = step_params if stacked_params else gparams
    ghparams = step_hparams if stacked_hparams else ghparams
    return gparams, ghparams, gx, gm, None

  run.defvjp(run_fwd, run_bwd)
  return run


def reversible_unroll(layer, params, hparams, x, mask=None, *, num_steps: int, stacked_params: bool = True,
                      stacked_hparams: bool = False, state=None, segment: int | None = DEFAULT_SEGMENT,
                      pin_axes: tuple[str, ...] | None = None, vjp_chunk: int | None = 1) -> Rollout:
  """``unroll`` of ``HeavyBall(layer)`` on tokens ``x`` (N, D) or a batch (B, N, D) (``mask`` (N, N) or (B, N, N),
  ``state`` batched like ``x``), whose backward pass rebuilds the activations.

  Arguments and result as ``layers.unroll`` (no energy records). Memory: the exact carry ``(x, m)`` at the end of
  each of ``⌈num_steps / segment⌉ − 1`` segments (the last one ends at the output), instead of one (or, without
  remat, every activation) per step; ``segment=None`` keeps only the output. Time: one extra force evaluation per
  step in the backward pass, against remat's re-run of the step. Precision: module docstring. ``pin_axes``: constrain
  the token states at every step to one layout on the current mesh (``unroll``'s ``pin_tokens``): whole along tokens
  and features, a batch split over those mesh axes. ``vjp_chunk``: sequences per VJP in the backward pass of a batch
  (module docstring; ``None``, a batch it does not divide, or ``pin_axes`` given: the whole batch at once).
  """
  check_positive_int("num_steps", num_steps)
  if vjp_chunk is not None:
    check_positive_int("vjp_chunk", vjp_chunk)
  if segment is not None:
    check_positive_int("segment", segment)
  segment = num_steps if segment is None else min(segment, num_steps)
  check_hparam_shapes(hparams, num_steps, stacked_hparams)
  form = HeavyBall(layer)
  batched = jnp.ndim(x) == 3
  if state is None:
    state = jax.vmap(layer.init_state)(x) if batched else layer.init_state(x)
  mask_axis = 0 if mask is not None and jnp.ndim(mask) == 3 else None
  chunk = None if pin_axes is not None else vjp_chunk
  run = _depth_scan(form, _batched_force(form, batched, mask_axis), _batched_force_vjp(form, batched, mask_axis, chunk),
                    num_steps, segment, stacked_params, stacked_hparams, pin_axes)
  x, velocity = run(params, hparams, x, form.velocity(state), mask)
  return Rollout(x, form.with_velocity(state, velocity), None, None)
