"""What the trainer trains: the ``Task`` protocol, and the data iterators of a population.

A *member* is a dict of hyperparameters: the optimiser's (``energyformer.train.optim.HYPERPARAMETERS``), the seeds
(``SEEDS``) and the task's own (``Task.hyperparameters``: sizes, variants, solver step sizes, ...). A single run is
the member ``{}`` (every value the default); a sweep is a list of members.
"""
from __future__ import annotations

import json
from typing import Iterator, Protocol

import jax
import numpy as np
from flax import nnx

SEEDS = ("seed", "data_seed")


class Task(Protocol):
  """A model, its data, its loss and its evaluation: everything the trainer does not know.

  A task is a frozen (hashable) dataclass, so that compiled programs are cached per task.

  * ``hyperparameters``: the member keys the task reads besides the optimiser's and the seeds;
    ``structural``: those among them that change the model's graph (members differing in them train in separate
    programs).
  * ``create_model(member, rngs, batch_axes)``: the member's model, initialised from ``rngs``; ``batch_axes`` are the
    mesh axes the batch is split over (a model may pin its activations to them).
  * ``batches(member, batch_size, shard_index, shard_count)``: an endless iterator over this process's share
    (``batch_size // shard_count`` examples) of the member's training batches (dicts of NumPy arrays), with
    ``get_state()`` / ``set_state()`` that resume it exactly (a grain iterator). The member's ``data_seed`` sets
    the order.
  * ``loss(model, batch, key) -> scalar``: the training loss; ``key`` differs at every step (masks, noise).
  * ``evaluation_sets(shard_index, shard_count)``: name → this process's share of a fixed evaluation set (a dict
    of NumPy arrays with a leading example axis); the first is the validation set.
  * ``evaluate(model, batch) -> {metric: scalar}``: means over the examples of ``batch``.
  * ``identity()``: what a checkpoint must match to be resumed (a JSON-ready dict).
  """

  hyperparameters: tuple[str, ...]
  structural: tuple[str, ...]

  def create_model(self, member: dict, rngs: nnx.Rngs, batch_axes: tuple[str, ...]) -> nnx.Module:
    """The member's model, initialised from ``rngs`` (class docstring)."""

  def batches(self, member: dict, batch_size: int, shard_index: int, shard_count: int) -> Iterator[dict]:
    """This process's share of the member's training batches, endless and resumable (class docstring)."""

  def loss(self, model: nnx.Module, batch: dict, key: jax.Array) -> jax.Array:
    """The scalar training loss of ``model`` on ``batch``."""

  def evaluation_sets(self, shard_index: int, shard_count: int) -> dict[str, dict]:
    """Name → this process's share of a fixed evaluation set; the first is the validation set."""

  def evaluate(self, model: nnx.Module, batch: dict) -> dict[str, jax.Array]:
    """``{metric: scalar}``, means over the examples of ``batch``."""

  def identity(self) -> dict:
    """What a checkpoint must match to be resumed (a JSON-ready dict)."""


def data_seed(member: dict) -> int:
  """The seed of a member's data order: ``data_seed``, else ``seed``, else 0."""
  return int(member.get("data_seed", member.get("seed", 0)))


def _json_ready(value):
  return np.asarray(value).tolist()


class PopulationBatches:
  """The members' data iterators as one: ``take(steps)`` stacks the next ``steps`` batches of every member as
  arrays of shape (steps, members, ...).

  Its state (grain's checkpoint handler: ``get_state`` → bytes) holds the first ``saved`` iterators only, so that a
  population padded with copies of its last member for a mesh saves just its real members; ``set_state`` pads again
  with copies of the last saved state.
  """

  def __init__(self, iterators: list, saved: int):
    self.iterators, self.saved = iterators, saved

  def take(self, steps: int) -> dict:
    """The next ``steps`` batches of every member, stacked as (steps, members, ...)."""
    batches = [[next(iterator) for iterator in self.iterators] for _ in range(steps)]
    return {key: np.stack([np.stack([batch[key] for batch in step]) for step in batches]) for key in batches[0][0]}

  def get_state(self) -> bytes:
    """The saved members' iterator states as JSON bytes."""
    states = [iterator.get_state() for iterator in self.iterators[:self.saved]]
    return json.dumps(states, default=_json_ready).encode()

  def set_state(self, state: bytes) -> None:
    """Restores ``get_state``'s states, copying the last one into padding members."""
    states = json.loads(state)
    for iterator, member_state in zip(self.iterators, states + states[-1:] * (len(self.iterators) - len(states))):
      iterator.set_state(member_state)

  def start_prefetch(self) -> None:
    """Nothing to start: each member's iterator prefetches on its own (grain's checkpoint handler calls this)."""
