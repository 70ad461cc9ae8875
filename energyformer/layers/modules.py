"""Flax NNX modules that own a layer's parameters and call the pure functions of ``derive`` and ``stack``.

Every parameter is an ``nnx.Param`` carrying logical axis names (``out_sharding`` metadata, e.g.
``("layers", "embed", "heads", "head_dim")``) for a rules table to map onto a mesh. Parameters an energy declares
untrained are ``Fixed`` variables; solver hyperparameters are ``Hyperparameter`` variables (or ``nnx.Param`` when
learned), so a training step can differentiate, freeze or vmap each group by type. A learned hyperparameter's
``nnx.Param`` holds the unconstrained raw value the optimiser updates; the layer uses ``HparamSpec.constrain`` of it
(``EnergyStack.solver_hparams``), which stays in the hyperparameter's interval.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.checks import check_mask, check_positive_int, check_tokens
from energyformer.energies import masks
from energyformer.energies.base import EnergySum
from energyformer.energies.params import ParamSpec, init_params
from energyformer.layers.equilibrium import Anchored, check_equilibrium, equilibrium
from energyformer.layers.reversible import DEFAULT_SEGMENT, HeavyBall, check_reversible, reversible_unroll
from energyformer.layers.split import Split
from energyformer.layers.stack import Rollout, check_hparam_shapes, check_unroll, unroll


class Fixed(nnx.Variable):
  """An energy parameter that is not trained (for example a fixed temperature)."""


class Hyperparameter(nnx.Variable):
  """A solver hyperparameter (η, β, dt, ...) held fixed by training; vmapped in hyperparameter studies."""


def _is_variable(node) -> bool:
  return isinstance(node, nnx.Variable)


def _wrap_params(values, specs, leading_axes: tuple):
  def wrap(value, spec: ParamSpec):
    kind = nnx.Param if spec.trainable else Fixed
    return kind(value, out_sharding=leading_axes + tuple(spec.axes), eager_sharding=False)

  return jax.tree.map(wrap, values, specs, is_leaf=lambda n: isinstance(n, ParamSpec))


def _wrap_hparams(values, learnable: bool, leading_axes: tuple):
  kind = nnx.Param if learnable else Hyperparameter
  return jax.tree.map(lambda v: kind(v, out_sharding=leading_axes + (None,) * (jnp.ndim(v) - len(leading_axes)),
                                     eager_sharding=False), values)


def unwrap(tree):
  """The raw arrays of a pytree of NNX variables."""
  return jax.tree.map(lambda v: v[...], tree, is_leaf=_is_variable)


def _parts(layer):
  return layer.parts if isinstance(layer, Split) else (layer,)


def model_dim(layer) -> int | None:
  """The token width an energy (or Lagrangian) of the layer declares, if any."""
  for part in _parts(layer):
    for obj in (part.lagrangian, *(part.energy.terms.values() if isinstance(part.energy, EnergySum) else (part.energy,))):
      if getattr(obj, "dim", None) is not None:
        return obj.dim
  return None


def _map_hparams(layer, hparams, method: str):
  """Each hyperparameter mapped by its ``HparamSpec``'s ``method`` (``"constrain"`` or ``"unconstrain"``)."""
  def mapped(part, values):
    return {name: getattr(part.solver.hyperparameters[name], method)(value) for name, value in values.items()}
  return tuple(map(mapped, layer.parts, hparams)) if isinstance(layer, Split) else mapped(layer, hparams)


def _check_hparam_tree(layer, hparams, depth: int, stacked: bool):
  pairs = zip(_parts(layer), hparams) if isinstance(layer, Split) else [(layer, hparams)]
  for part, h in pairs:
    part.solver.check_hparams(h)
  check_hparam_shapes(hparams, depth, stacked)


STACK_MODES = ("unrolled", "equilibrium")


def _check_mode(layer, mode: str, shared: bool, reversible: bool) -> None:
  if mode not in STACK_MODES:
    raise ValueError(f"unknown EnergyStack mode {mode!r}; choose one of {STACK_MODES}.")
  if mode == "equilibrium":
    if not shared:
      raise ValueError("mode='equilibrium' iterates one layer to its fixed point: build the stack with shared=True.")
    if reversible:
      raise ValueError("mode='equilibrium' already keeps no per-step activations; leave reversible=False.")
    check_equilibrium(layer)


def _mesh_batch_axes(batch_axes: tuple[str, ...]) -> tuple[str, ...]:
  """``batch_axes`` if the current mesh (``jax.set_mesh``) has them all, else ``()`` (nothing to pin)."""
  mesh = jax.sharding.get_abstract_mesh()
  if not batch_axes or mesh.empty or not set(batch_axes) <= set(mesh.axis_names):
    return ()
  return batch_axes


class EnergyStack(nnx.Module):
  """``depth`` solver steps of ``layer`` over the tokens, as one ``lax.scan``.

  ``EnergyStack(layer, depth, *, rngs, shared=False, hparams=None, learn_hparams=False, stacked_hparams=False,
  remat=True, scan_unroll=1, batch_axes=(), reversible=False, segment=4, mode="unrolled", tol=1e-5, anchor=0.0,
  dtype=float32)``, a Flax NNX module holding the layer's parameters
  (``nnx.Param``; ``Fixed`` for untrained ones) and the solver's hyperparameters (``Hyperparameter``; ``nnx.Param``
  with ``learn_hparams=True``). ``stack(x, mask)`` returns the tokens after ``depth`` steps: ``x`` (N, D) or
  (B, N, D), in ``dtype``; ``mask`` ``None``, boolean (N, N) shared by the batch or (B, N, N), True where a query
  may see a key. ``stack.rollout(x, mask, record_energy=True)`` also returns the energy before and after every
  step, shape (depth,) per sequence ((B, depth) for a batch).

  ``shared=False``: one parameter set per step (a stack of layers, parameters with a leading ``"layers"`` axis).
  ``shared=True``: one parameter set used at every step (recurrent depth, e.g. the Energy Transformer).
  ``stacked_hparams=True`` gives each step its own solver hyperparameters (e.g. per-layer step sizes).
  ``learn_hparams=True`` trains them: each is an ``nnx.Param`` holding the raw value its ``HparamSpec.unconstrain``
  gives, mapped back into its interval by ``constrain`` (``solver_hparams``) at every use.
  ``remat`` and ``scan_unroll`` are passed to ``unroll``. ``batch_axes``: the mesh axes a batch of sequences is
  split over in sharded training; under ``jax.set_mesh`` with those axes the token states keep that layout
  through the depth loop (``unroll``'s ``pin_tokens``).
  ``reversible=True`` rebuilds the activations in the backward pass instead of storing them (``reversible_unroll``:
  heavy-ball layers, a GPT-style ``Split`` in its folded velocity form; other solvers raise), keeping one exact carry
  per ``segment`` steps; ``remat`` then does not apply. A rollout recording energies runs the same steps unreversed.
  ``mode="equilibrium"`` (``shared=True``, a stateless solver): iterate the step, anchored to the input by
  ``anchor``, to relative tolerance ``tol`` within ``depth`` steps and differentiate the fixed point implicitly
  (``layers.equilibrium``); the rollout's ``residual``/``steps`` report convergence. Recording energies runs the
  ``depth`` anchored steps unrolled.
  """

  def __init__(self, layer, depth: int, *, rngs: nnx.Rngs, shared: bool = False, hparams=None,
               learn_hparams: bool = False, stacked_hparams: bool = False, remat: bool = True,
               scan_unroll: int | bool = 1, batch_axes: tuple[str, ...] = (), reversible: bool = False,
               segment: int | None = DEFAULT_SEGMENT, mode: str = "unrolled", tol: float = 1e-5,
               anchor: float = 0.0, dtype=jnp.float32):
    check_positive_int("depth", depth)
    _check_mode(layer, mode, shared, reversible)
    if reversible:
      check_reversible(layer)
    check_unroll(scan_unroll)
    self.layer, self.depth, self.shared, self.remat, self.scan_unroll = layer, depth, shared, remat, scan_unroll
    self.batch_axes = tuple(batch_axes)
    self.stacked_hparams = stacked_hparams
    specs = layer.specs()
    key = rngs.params()
    if shared:
      values = init_params(specs, key, dtype)
    else:
      values = jax.vmap(lambda k: init_params(specs, k, dtype))(jax.random.split(key, depth))
    self.params = nnx.data(_wrap_params(values, specs, () if shared else ("layers",)))
    if hparams is None:
      hparams = layer.default_hparams()
      if stacked_hparams:
        hparams = jax.tree.map(lambda v: jnp.broadcast_to(v, (depth,) + jnp.shape(v)), hparams)
    _check_hparam_tree(layer, hparams, depth, stacked_hparams)
    if reversible:
      check_reversible(layer, hparams)
    self.reversible, self.segment, self.mode, self.tol, self.anchor = reversible, segment, mode, tol, anchor
    self.learn_hparams = learn_hparams
    stored = _map_hparams(layer, hparams, "unconstrain") if learn_hparams else hparams
    self.hparams = nnx.data(_wrap_hparams(stored, learn_hparams, ("layers",) if stacked_hparams else ()))

  def solver_hparams(self):
    """The solver's hyperparameters as the steps use them: the ``Hyperparameter`` values, or, when learned, the
    trained raw ``nnx.Param`` values mapped into their intervals (``HparamSpec.constrain``)."""
    values = unwrap(self.hparams)
    return _map_hparams(self.layer, values, "constrain") if self.learn_hparams else values

  def rollout(self, x, mask=None, state=None, *, record_energy: bool = False, num_steps: int | None = None) -> Rollout:
    """Runs the depth scan on ``x`` of shape (N, D) or (B, N, D); ``mask`` is (N, N) or (B, N, N).

    ``num_steps`` (default ``depth``) runs a shared stack (recurrent depth) for another number of steps."""
    dim = model_dim(self.layer)
    if dim is not None:
      check_tokens(x, dim)
    batch_shape = tuple(jnp.shape(x)[:-2])
    check_mask(mask, x.shape[-2], x.shape[-2], batch_shape)
    masks.check_boolean(mask)
    if len(batch_shape) > 1:
      raise ValueError(f"x must have shape (N, D) or (B, N, D), got {jnp.shape(x)}; reshape the batch to one axis.")
    steps = self._num_steps(num_steps)
    common = dict(num_steps=steps, stacked_params=not self.shared, stacked_hparams=self.stacked_hparams)
    axes = _mesh_batch_axes(self.batch_axes)
    if self.reversible and not record_energy:  # the batch stays inside the reversible scan's VJP
      return reversible_unroll(self.layer, unwrap(self.params), self.solver_hparams(), x, mask, state=state,
                               segment=self.segment, pin_axes=axes if axes and batch_shape else None, **common)
    if self.mode == "equilibrium":
      run = functools.partial(self._equilibrium, max_steps=steps, record_energy=record_energy)
    else:
      layer = HeavyBall(self.layer) if self.reversible else self.layer
      run = functools.partial(unroll, layer, unwrap(self.params), self.solver_hparams(), **common,
                              record_energy=record_energy, remat=self.remat, scan_unroll=self.scan_unroll)
    if not batch_shape:
      return run(x, mask, state=state)
    mask_axis = 0 if mask is not None and jnp.ndim(mask) == 3 else None
    state_axis = None if state is None else 0
    if axes:
      run = functools.partial(run, pin_tokens=True)
    return jax.vmap(lambda xi, mi, si: run(xi, mi, state=si), in_axes=(0, mask_axis, state_axis),
                    spmd_axis_name=axes or None)(x, mask, state)

  def _num_steps(self, num_steps: int | None) -> int:
    if num_steps is None or num_steps == self.depth:
      return self.depth
    check_positive_int("num_steps", num_steps)
    if not self.shared or self.stacked_hparams:
      raise ValueError(f"this stack was built with one parameter or hyperparameter set per step for depth "
                       f"{self.depth}, so it runs exactly {self.depth} steps, not {num_steps}; build it with "
                       "shared=True and stacked_hparams=False to run a recurrent stack for any number of steps.")
    return num_steps

  def _equilibrium(self, x, mask=None, state=None, *, max_steps: int, record_energy: bool, pin_tokens: bool = False):
    """The fixed point of one sequence (or, recording energies, the ``max_steps`` anchored steps unrolled)."""
    del state, pin_tokens  # a stateless solver; no depth loop to pin
    params, hparams = unwrap(self.params), self.solver_hparams()
    if record_energy:
      return unroll(Anchored(self.layer, self.anchor, x), params, hparams, x, mask, num_steps=max_steps,
                    stacked_params=False, record_energy=True, remat=self.remat)
    return equilibrium(self.layer, params, hparams, x, mask, tol=self.tol, max_steps=max_steps, anchor=self.anchor)

  def __call__(self, x, mask=None, num_steps: int | None = None):
    """The tokens after ``depth`` steps (``num_steps``, for a shared stack, to run another number)."""
    return self.rollout(x, mask, num_steps=num_steps).x

  def energy(self, x, mask=None, step: int = 0):
    """The energy of step ``step``'s parameters at tokens ``x`` (summed over a batch)."""
    params = unwrap(self.params)
    if not self.shared:
      params = jax.tree.map(lambda p: p[step], params)
    value = functools.partial(self.layer.energy_value, params)
    if x.ndim == 2:
      return value(x, mask)
    mask_axis = 0 if mask is not None and jnp.ndim(mask) == 3 else None
    return jnp.sum(jax.vmap(value, in_axes=(0, mask_axis))(x, mask))


class EnergyLayer(EnergyStack):
  """A single layer: one solver step of ``layer`` (an ``EnergyStack`` of depth 1 with unstacked parameters)."""

  def __init__(self, layer, *, rngs: nnx.Rngs, hparams=None, learn_hparams: bool = False, remat: bool = False,
               dtype=jnp.float32):
    super().__init__(layer, 1, rngs=rngs, shared=True, hparams=hparams, learn_hparams=learn_hparams, remat=remat,
                     dtype=dtype)
