"""Attention and logsumexp over blocks of queries and keys, in memory linear in the sequence length.

Queries are split into blocks of ``size`` rows (a ``lax.map``) and keys into blocks of ``size`` columns (a
``lax.scan``); the (H, N, M) score matrix is never formed, only one (H, size, size) block at a time. Along the keys
the logsumexp is accumulated online: with running maximum ``t``, sum ``l`` and weighted values ``u``,

``t' = max(t, max_m z_m)``, ``l' = l e^{t − t'} + Σ_m e^{z_m − t'}``, ``u' = u e^{t − t'} + Σ_m e^{z_m − t'} v_m``,

and finally ``L = t + log l``, ``o = u / l`` (``L = 0, o = 0`` for a row that sees no key). Blocks in which no pair
is visible (above the diagonal of a causal mask) are skipped. Sequence lengths that are not multiples of ``size``
are zero-padded and the padded keys masked.

``attention_forward``/``attention_tangent`` evaluate softmax attention of inner-product scores; ``tile_reduce``
reduces any pair values computed tile by tile by a function (the logits of a user's local energy, pairwise or
score-based), with its own blockwise derivative rule; ``softmax_field`` averages per-pair vectors under the softmax
of such logits (the tied field of a pairwise energy) in one sweep.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from energyformer.ops.matmul import matmul
from energyformer.ops.softmax import attention_tangent_terms, logits_dtype, scores


class Grid(NamedTuple):
  """Block layout of an (N, M) interaction: ``size`` rows and columns per block, N and M before padding."""

  size: int
  num_queries: int
  num_keys: int

  def count(self, length: int) -> int:
    return -(-length // self.size)

  def padded(self, length: int) -> int:
    """``length`` rounded up to a whole number of blocks."""
    return self.count(length) * self.size


def to_blocks(x, size: int):
  """(H, N, ...) → (⌈N/size⌉, H, size, ...), zero-padded along N (``None`` stays ``None``)."""
  if x is None:
    return None
  blocks = -(-x.shape[1] // size)
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, blocks * size - x.shape[1])
  x = jnp.pad(x, pad)
  return jnp.moveaxis(x.reshape(x.shape[0], blocks, size, *x.shape[2:]), 1, 0)


def from_blocks(x, length: int):
  """Inverse of ``to_blocks``: (B, H, size, ...) → (H, length, ...)."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])[:, :length]


def block_visibility(mask, grid: Grid) -> Callable[[jax.Array, jax.Array], jax.Array | None]:
  """``visible(i, j)``: the (size, size) boolean visibility of query block i and key block j, or ``None`` when
  every pair is visible (no mask, no padded key)."""
  size = grid.size
  pad_keys = grid.padded(grid.num_keys) - grid.num_keys
  if mask is not None:
    mask = jnp.pad(mask, ((0, grid.padded(grid.num_queries) - grid.num_queries), (0, pad_keys)))

  def visible(i, j):
    if mask is not None:
      return jax.lax.dynamic_slice(mask, (i * size, j * size), (size, size))
    if pad_keys:
      return jnp.broadcast_to(j * size + jnp.arange(size) < grid.num_keys, (size, size))
    return None

  return visible


def _unless_hidden(visible, update, carry):
  """``update(carry)``, skipped (``carry`` returned) when ``visible`` is all False."""
  if visible is None:
    return update(carry)
  return jax.lax.cond(jnp.any(visible), update, lambda c: c, carry)


def _online_init(rows_shape, dtype, weighted):
  """The online logsumexp's ``(t, l, u)`` before any key block: ``t = −∞``, ``l = 0``, ``u = weighted``."""
  return jnp.full(rows_shape, -jnp.inf, dtype), jnp.zeros(rows_shape, dtype), weighted


def _online_step(carry, logits, visible, weigh):
  """One key block of the online logsumexp (module docstring); masked logits are ``−∞``. ``weigh(e)`` is the
  block's share of ``u``, ``Σ_m e_m v_m`` for the block's exponentials ``e`` (H, size, size). The running maximum
  only shifts the exponentials, so it is held constant under differentiation (``L`` and ``o`` do not depend on
  it)."""
  top, total, weighted = carry
  logits = logits if visible is None else jnp.where(visible, logits, -jnp.inf)
  new_top = jax.lax.stop_gradient(jnp.maximum(top, jnp.max(logits, axis=-1)))
  shift = jnp.where(jnp.isfinite(new_top), new_top, 0.0)
  decay = jnp.exp(top - shift)
  exps = jnp.exp(logits - shift[..., None])
  weighted = weighted * decay[..., None] + weigh(exps)
  return new_top, total * decay + jnp.sum(exps, axis=-1), weighted


def _finish(top, total, weighted):
  """``(o, L) = (u / l, t + log l)``, 0 for rows with no visible key."""
  seen = total > 0
  safe_total = jnp.where(seen, total, 1.0)
  return weighted / safe_total[..., None], jnp.where(seen, top + jnp.log(safe_total), 0.0)


def attention_forward(q, k, v, mask, size: int):
  """``(o, L)`` of softmax attention (see ``ops.softmax``), block by block, accumulated in ``logits_dtype``.
  Meant to be differentiated through ``kernels.attention``'s rule, which pairs it with ``attention_tangent``."""
  heads, num_queries, _ = q.shape
  grid, dtype = Grid(size, num_queries, k.shape[1]), logits_dtype(q.dtype)
  visible = block_visibility(mask, grid)
  key_blocks = (jnp.arange(grid.count(grid.num_keys)), to_blocks(k, size), to_blocks(v, size))

  def query_block(args):
    i, q_i = args

    def key_block(carry, xs):
      j, k_j, v_j = xs
      vis = visible(i, j)
      update = lambda c: _online_step(c, scores(q_i, k_j), vis, lambda e: matmul(e, v_j))
      return _unless_hidden(vis, update, carry), None

    init = _online_init((heads, size), dtype, jnp.zeros((heads, size, v.shape[-1]), dtype))
    return _finish(*jax.lax.scan(key_block, init, key_blocks)[0])

  out, lse = jax.lax.map(query_block, (jnp.arange(grid.count(num_queries)), to_blocks(q, size)))
  return from_blocks(out, num_queries).astype(v.dtype), from_blocks(lse, num_queries)


def attention_tangent(q, k, v, mask, out, lse, q_dot, k_dot, v_dot, size: int):
  """``(ȯ, L̇)``, the tangent of attention, block by block (``softmax.attention_tangent_terms``; a ``None``
  tangent is zero).

  Each key block's body is rematerialised (``jax.checkpoint``), so reverse mode, which transposes this linear map,
  recomputes the block's weights instead of storing them: memory stays linear in the sequence length.
  """
  heads, num_queries, _ = q.shape
  grid, dtype = Grid(size, num_queries, k.shape[1]), logits_dtype(q.dtype)
  visible = block_visibility(mask, grid)
  key_blocks = (jnp.arange(grid.count(grid.num_keys)),) + tuple(to_blocks(a, size) for a in (k, v, k_dot, v_dot))

  def query_block(args):
    i, q_i, q_dot_i, out_i, lse_i = args

    @jax.checkpoint
    def key_block(carry, xs):
      j, k_j, v_j, k_dot_j, v_dot_j = xs
      vis = visible(i, j)

      def update(c):
        values, weights = attention_tangent_terms(q_i, k_j, v_j, vis, lse_i, q_dot_i, k_dot_j, v_dot_j)
        return c[0] + values, c[1] + weights

      return _unless_hidden(vis, update, carry), None

    init = (jnp.zeros((heads, size, v.shape[-1]), dtype), jnp.zeros((heads, size), dtype))
    values, weights = jax.lax.scan(key_block, init, key_blocks)[0]
    return values - weights[..., None] * out_i, weights

  rows = (jnp.arange(grid.count(num_queries)),) + tuple(to_blocks(a, size) for a in (q, q_dot, out, lse))
  out_dot, lse_dot = jax.lax.map(query_block, rows)
  return from_blocks(out_dot, num_queries).astype(out.dtype), from_blocks(lse_dot, num_queries).astype(lse.dtype)


def length(operands) -> int:
  """The sequence length (axis 1) shared by the (H, N, ...) arrays of a pytree."""
  return jax.tree.leaves(operands)[0].shape[1]


def _tiles(operands, size: int):
  """Each (H, N, ...) array of a pytree as (⌈N/size⌉, H, size, ...) blocks."""
  return jax.tree.map(lambda a: to_blocks(a, size), operands)


def tile_reduce(tile_fn, rows, cols, shared, mask, size: int, logsumexp: bool):
  """Reduces pair values ``z_hnm`` given tile by tile over the visible keys of each query:
  ``L_hn = log Σ_m exp z_hnm`` (``logsumexp``; 0 for a row with no visible key) or ``S_hn = Σ_m z_hnm``.

  ``tile_fn(rows_i, cols_j, shared) -> (H, size, size)`` computes the values of query block i and key block j from
  the blocks of ``rows`` (a pytree of per-query arrays (H, N, ...), e.g. the queries) and ``cols`` (per-key arrays
  (H, M, ...), e.g. the keys), zero-padded to whole blocks, and ``shared`` (any pytree, e.g. temperatures); it must
  not close over traced values. Only one tile of values (and of whatever ``tile_fn`` forms, such as per-pair
  vectors) exists at a time.

  Differentiated by its own rule (``_tile_reduce_jvp``): ``L̇_hn = Σ_m p_hnm ż_hnm`` with ``p = exp(z − L)``
  (``Ṡ_hn = Σ_m ż_hnm``), ``ż`` the tangent of ``tile_fn``, summed tile by tile. Reverse mode transposes that sum, so
  a gradient is one more pass over the tiles, and derivatives of gradients (training through a layer)
  differentiate plain scans. Each tile's work is rematerialised (``jax.checkpoint``) inside the branch that skips
  hidden tiles, so that neither the scans nor the branch keep a tile's intermediates: memory stays linear in the
  sequence length at every order.
  """
  return _tile_reduce(tile_fn, size, logsumexp, rows, cols, shared, mask)


def _probe(tile_fn, rows, cols, shared, size: int):
  """The shapes and dtypes ``tile_fn`` returns for one tile."""
  return jax.eval_shape(tile_fn, *(jax.tree.map(lambda a: a[0], _tiles(x, size)) for x in (rows, cols)), shared)


def _over_query_blocks(query_block, grid: Grid, rows, size: int):
  """``query_block((i, rows_i))`` for every query block i, reassembled to (H, N, ...)."""
  rows_blocks = (jnp.arange(grid.count(grid.num_queries)), _tiles(rows, size))
  return from_blocks(jax.lax.map(query_block, rows_blocks), grid.num_queries)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _tile_reduce(tile_fn, size, logsumexp, rows, cols, shared, mask):
  grid = Grid(size, length(rows), length(cols))
  visible = block_visibility(mask, grid)
  probe = _probe(tile_fn, rows, cols, shared, size)
  col_blocks = (jnp.arange(grid.count(grid.num_keys)), _tiles(cols, size))
  empty_values = jnp.zeros((probe.shape[0], size, 0), probe.dtype)

  def query_block(args):
    i, rows_i = args

    def key_block(carry, xs):
      j, cols_j = xs
      vis = visible(i, j)
      if logsumexp:
        update = lambda c: _online_step(c, tile_fn(rows_i, cols_j, shared), vis, lambda e: matmul(e, empty_values))
      else:
        update = lambda c: c + jnp.sum(_visible_only(tile_fn(rows_i, cols_j, shared), vis), axis=-1)
      return _unless_hidden(vis, update, carry), None

    if logsumexp:
      init = _online_init(probe.shape[:2], probe.dtype, empty_values)
      return _finish(*jax.lax.scan(key_block, init, col_blocks)[0])[1]
    return jax.lax.scan(key_block, jnp.zeros(probe.shape[:2], probe.dtype), col_blocks)[0]

  return _over_query_blocks(query_block, grid, rows, size)


def softmax_field(tile_fn, rows, cols, shared, mask, size: int):
  """``o_hn = Σ_m p_hnm g_hnm`` with ``p_hnm = softmax_m(z_hnm)`` over the visible keys of each query (0 for a row
  with no visible key), in one online-softmax sweep over key tiles (module docstring, with per-pair vectors
  ``g_hnm`` in place of per-key values).

  ``tile_fn(rows_i, cols_j, shared) -> (z, g)`` gives query block i's and key block j's logits (H, size, size) and
  per-pair vectors (H, size, size, Dv), with operands as in ``tile_reduce``. This is the field of a Helmholtz
  energy ``−T Σ log Σ_m exp(−E/T)`` with ``z = −E/T`` and ``g = ∇_q E``. It has no rule of its own: derivatives of
  every order differentiate the sweep, whose tile work (and the tile's branch) is rematerialised
  (``jax.checkpoint``), so a gradient is one more sweep and memory stays linear in the sequence length.
  """
  grid = Grid(size, length(rows), length(cols))
  visible = block_visibility(mask, grid)
  logits, vectors = _probe(tile_fn, rows, cols, shared, size)
  col_blocks = (jnp.arange(grid.count(grid.num_keys)), _tiles(cols, size))

  def query_block(args):
    i, rows_i = args

    @jax.checkpoint
    def key_block(carry, xs):
      j, cols_j = xs
      vis = visible(i, j)

      @jax.checkpoint
      def update(c):
        z, g = tile_fn(rows_i, cols_j, shared)
        return _online_step(c, z, vis, lambda e: jnp.einsum("hnm,hnmd->hnd", e, g))

      return _unless_hidden(vis, update, carry), None

    init = _online_init(logits.shape[:2], vectors.dtype,
                        jnp.zeros(logits.shape[:2] + vectors.shape[-1:], vectors.dtype))
    return _finish(*jax.lax.scan(key_block, init, col_blocks)[0])[0]

  return _over_query_blocks(query_block, grid, rows, size)


def _visible_only(values, visible):
  """``values`` on visible pairs, 0 elsewhere (``visible`` ``None``: all pairs)."""
  return values if visible is None else jnp.where(visible, values, 0.0)


def _moving(tangents):
  """``None`` for a pytree of symbolic-zero tangents, else the tangents with zeros made concrete."""
  leaves = jax.tree.leaves(tangents)
  if all(isinstance(t, jax.custom_derivatives.SymbolicZero) for t in leaves):
    return None
  return jax.tree.map(
      lambda t: jnp.zeros(t.shape, t.dtype) if isinstance(t, jax.custom_derivatives.SymbolicZero) else t, tangents)


def _tile_tangent(tile_fn, moving):
  """``(z, ż)`` of one tile: ``jax.jvp`` of ``tile_fn`` along the operands whose tangents are given (``moving``
  marks rows, cols, shared)."""

  def tangent(primals, tangents):
    def partial(*args):
      full, it = [], iter(args)
      for primal, moves in zip(primals, moving):
        full.append(next(it) if moves else primal)
      return tile_fn(*full)

    return jax.jvp(partial, tuple(p for p, m in zip(primals, moving) if m),
                   tuple(t for t, m in zip(tangents, moving) if m))

  return tangent


def _tile_reduce_jvp(tile_fn, size, logsumexp, primals, tangents):
  rows, cols, shared, mask = primals
  out = _tile_reduce(tile_fn, size, logsumexp, rows, cols, shared, mask)
  dots = tuple(_moving(t) for t in tangents[:3])
  moving = tuple(d is not None for d in dots)
  if not any(moving):
    return out, jnp.zeros_like(out)
  grid = Grid(size, length(rows), length(cols))
  visible = block_visibility(mask, grid)
  tangent = _tile_tangent(tile_fn, moving)
  rows_dot, cols_dot, shared_dot = dots
  col_blocks = (jnp.arange(grid.count(grid.num_keys)), _tiles(cols, size), _tiles(cols_dot, size))

  def query_block(args):
    i, rows_i, rows_dot_i, out_i = args

    @jax.checkpoint
    def key_block(carry, xs):
      j, cols_j, cols_dot_j = xs
      vis = visible(i, j)

      @jax.checkpoint
      def update(c):
        values, values_dot = tangent((rows_i, cols_j, shared), (rows_dot_i, cols_dot_j, shared_dot))
        if logsumexp:
          shifted = values - out_i[..., None]
          values_dot = jnp.exp(shifted if vis is None else jnp.where(vis, shifted, -jnp.inf)) * values_dot
        return c + jnp.sum(_visible_only(values_dot, vis), axis=-1)

      return _unless_hidden(vis, update, carry), None

    return jax.lax.scan(key_block, jnp.zeros_like(out_i), col_blocks)[0]

  rows_blocks = (jnp.arange(grid.count(grid.num_queries)), _tiles(rows, size), _tiles(rows_dot, size),
                 to_blocks(out, size))
  return out, from_blocks(jax.lax.map(query_block, rows_blocks), grid.num_queries)


_tile_reduce.defjvp(_tile_reduce_jvp, symbolic_zeros=True)
