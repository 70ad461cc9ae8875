"""Masked image completion: patches → tokens → a token core (ET or a baseline) → patches.

An image (H, W, C) is cut into ``P = (H/p)(W/p)`` patches of ``p·p·C`` pixels (``patchify``). Each patch is
encoded linearly to a D-dimensional token; patches chosen for replacement become a learned MASK token; a learned
CLS token is prepended and learned positions (P + 1, D) are added. The core updates the tokens, and a linear
decoder maps each patch token back to pixels. The loss is the RMSE over the *scored* patches (``masked_rmse``).

Masking (``Masking``): per image, ``round(score_fraction · P)`` patches are scored, and
``round(replace_fraction · scored)`` of them are replaced by MASK; the others stay visible but are still scored.
The ET image recipe chooses 100 of 196 patches and replaces 90 (preset ``"paper"``); ``"mask25"`` and
``"mask75"`` score and replace 25 % and 75 % of the patches (this library's presets).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from energyformer.checks import check_positive_int, check_range


@dataclasses.dataclass(frozen=True)
class Masking:
  """Which patches are scored (``score_fraction`` of all) and replaced by MASK (``replace_fraction`` of those)."""

  score_fraction: float
  replace_fraction: float = 1.0

  def __post_init__(self):
    check_range("score_fraction", self.score_fraction, 0.0, 1.0, low_open=True,
                fix="Use a fraction of patches in (0, 1], e.g. 0.5.")
    check_range("replace_fraction", self.replace_fraction, 0.0, 1.0,
                fix="Use a fraction of the scored patches in [0, 1] (the ET recipe replaces 0.9).")

  def counts(self, num_patches: int) -> tuple[int, int]:
    """(scored, replaced) patch counts for ``num_patches`` patches; at least one patch is scored."""
    scored = min(max(round(self.score_fraction * num_patches), 1), num_patches)
    return scored, round(self.replace_fraction * scored)


MASKINGS = {
    "paper": Masking(100 / 196, 0.9),
    "mask25": Masking(0.25, 1.0),
    "mask75": Masking(0.75, 1.0),
}


def patch_masks(key, masking: Masking, batch: int, num_patches: int):
  """Random (replace, score) boolean masks of shape (batch, P): a random order per image, the first ``scored``
  patches scored and the first ``replaced`` of those replaced by MASK."""
  scored, replaced = masking.counts(num_patches)
  order = jax.vmap(lambda k: jax.random.permutation(k, num_patches))(jax.random.split(key, batch))
  rank = jnp.argsort(order, axis=-1)
  return rank < replaced, rank < scored


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """Image geometry and token width: images (H, W, C) = (*image_size, channels), square patches of side
  ``patch_size`` dividing H and W, tokens of width ``dim``."""

  image_size: tuple[int, int] = (8, 8)
  channels: int = 1
  patch_size: int = 2
  dim: int = 64

  def __post_init__(self):
    object.__setattr__(self, "image_size", tuple(self.image_size))
    for name in ("channels", "patch_size", "dim"):
      check_positive_int(name, getattr(self, name))
    if len(self.image_size) != 2 or any(s % self.patch_size for s in self.image_size):
      raise ValueError(f"image_size {self.image_size} must be (height, width) with both divisible by patch_size="
                       f"{self.patch_size}; resize the images or choose a patch size that divides them.")

  @property
  def grid(self) -> tuple[int, int]:
    return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1]

  @property
  def patch_dim(self) -> int:
    return self.patch_size * self.patch_size * self.channels


def check_images(images, config: ImageConfig) -> None:
  """Raises unless ``images`` has shape (B, H, W, C) matching ``config``."""
  expected = (*config.image_size, config.channels)
  if jnp.ndim(images) != 4 or tuple(jnp.shape(images)[1:]) != expected:
    raise ValueError(f"images must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), got "
                     f"{jnp.shape(images)}; resize them (energyformer.data.images) or build the model with "
                     f"ImageConfig(image_size=..., channels=...) to match.")


def patchify(images, patch_size: int):
  """(B, H, W, C) → (B, P, p·p·C), patches in row-major order, pixels within a patch row-major then channel."""
  b, h, w, c = images.shape
  grid = images.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size, c)
  return grid.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch_size) * (w // patch_size), -1)


def unpatchify(patches, config: ImageConfig):
  """The inverse of ``patchify``: (B, P, p·p·C) → (B, H, W, C)."""
  (gh, gw), p = config.grid, config.patch_size
  grid = patches.reshape(patches.shape[0], gh, gw, p, p, config.channels)
  return grid.transpose(0, 1, 3, 2, 4, 5).reshape(patches.shape[0], gh * p, gw * p, config.channels)


def masked_rmse(predicted, target, score_mask):
  """``√(Σ_{b,n scored} ‖ŷ_bn − y_bn‖² / (#scored · p·p·C))``: RMSE over every pixel of the scored patches."""
  squared = jnp.sum(jnp.square(predicted - target), axis=-1)
  count = jnp.maximum(jnp.sum(score_mask), 1) * target.shape[-1]
  return jnp.sqrt(jnp.sum(jnp.where(score_mask, squared, 0.0)) / count)


def _param(rngs, shape, stddev):
  return nnx.Param(stddev * jax.random.normal(rngs.params(), shape))


class ImageCompletion(nnx.Module):
  """Patch encoder, CLS/MASK tokens and positions around a token ``core`` with the signature
  ``core(tokens (B, N, D), *, key=None) -> normalised tokens``, then a linear patch decoder (module docstring).
  """

  def __init__(self, config: ImageConfig, core: Any, *, rngs: nnx.Rngs):
    self.config, self.core = config, core
    dim, patch_dim = config.dim, config.patch_dim
    self.encoder = nnx.Linear(patch_dim, dim, rngs=rngs)
    self.decoder = nnx.Linear(dim, patch_dim, rngs=rngs)
    self.cls_token = _param(rngs, (dim,), 0.02)
    self.mask_token = _param(rngs, (dim,), 0.02)
    self.positions = _param(rngs, (config.num_patches + 1, dim), 0.02)

  def tokens(self, patches, replace_mask):
    """``[CLS; enc(patch) or MASK] + positions``: (B, P + 1, D)."""
    encoded = jnp.where(replace_mask[..., None], self.mask_token[...], self.encoder(patches))
    cls = jnp.broadcast_to(self.cls_token[...], (patches.shape[0], 1, self.config.dim))
    return jnp.concatenate([cls, encoded], axis=1) + self.positions[...]

  def __call__(self, images, replace_mask, *, key=None):
    """Predicted patches (B, P, p·p·C) for images (B, H, W, C) whose ``replace_mask`` (B, P) patches are hidden."""
    check_images(images, self.config)
    out = self.core(self.tokens(patchify(images, self.config.patch_size), replace_mask), key=key)
    return self.decoder(out[:, 1:])

  def loss(self, images, replace_mask, score_mask, *, key=None):
    """``masked_rmse`` of the predicted patches against the image's own patches."""
    target = patchify(images, self.config.patch_size)
    return masked_rmse(self(images, replace_mask, key=key), target, score_mask)
