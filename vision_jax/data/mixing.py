"""Mixup and CutMix on device, inside the jitted train step.

They run on the normalised float batch (the host only ever sees uint8 images), so a mixed
pixel is exact, and they need the whole batch: each example is mixed with its partner in
the reversed global batch, which is the same whatever the number of hosts or devices.
One mixing ratio per step, drawn from a key folded from (seed, step): the same step always
mixes the same way, and resuming at step k mixes exactly as the uninterrupted run did.

  mixup  (Zhang et al. 2018): lam ~ Beta(a, a); x = lam x + (1 - lam) x'.
  cutmix (Yun et al. 2019): lam ~ Beta(a, a); a box of area (1 - lam) of the image (clipped
         at the border) is pasted from x'; lam is recomputed from the clipped box.
Labels become lam * y + (1 - lam) * y' (rows sum to 1), for a soft-label cross-entropy.
With both enabled, each step uses cutmix with probability `cutmix_prob`, else mixup.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

MixFn = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
_TAG = 0x6D6978  # 'mix': keeps these keys apart from other uses of the seed.


def step_key(seed: int, step: jax.Array) -> jax.Array:
  """The mixing key of one step: a pure function of (seed, step)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _TAG), step)


def _beta(key: jax.Array, alpha: float) -> jax.Array:
  return jax.random.beta(key, alpha, alpha) if alpha > 0 else jnp.float32(1.0)


def cutmix_mask(key: jax.Array, lam: jax.Array, height: int, width: int) -> jax.Array:
  """[H, W] bool, True inside a box of about (1 - lam) of the image, centred at random."""
  cut = jnp.sqrt(1.0 - lam)
  box_h, box_w = jnp.floor(height * cut), jnp.floor(width * cut)
  ky, kx = jax.random.split(key)
  cy = jax.random.randint(ky, (), 0, height).astype(jnp.float32)
  cx = jax.random.randint(kx, (), 0, width).astype(jnp.float32)
  y0, y1 = jnp.clip(cy - box_h // 2, 0, height), jnp.clip(cy + box_h - box_h // 2, 0, height)
  x0, x1 = jnp.clip(cx - box_w // 2, 0, width), jnp.clip(cx + box_w - box_w // 2, 0, width)
  ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def mix(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int, *,
        mixup_alpha: float, cutmix_alpha: float, cutmix_prob: float = 0.5
        ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(mixed images [B,H,W,C], soft labels [B,K], lam): x mixed with its partner x[::-1].

  `labels` are integer classes [B] or already soft [B, K].
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError('mix() needs mixup_alpha > 0 or cutmix_alpha > 0.')
  targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
  targets = targets.astype(jnp.float32)
  k_choice, k_mixup, k_cutmix, k_box = jax.random.split(key, 4)
  other_images, other_targets = images[::-1], targets[::-1]

  lam_mixup = _beta(k_mixup, mixup_alpha)
  mixed_mixup = lam_mixup * images + (1.0 - lam_mixup) * other_images
  if cutmix_alpha <= 0:
    images, lam = mixed_mixup, lam_mixup
  else:
    height, width = images.shape[1:3]
    mask = cutmix_mask(k_box, _beta(k_cutmix, cutmix_alpha), height, width)
    mixed_cutmix = jnp.where(mask[None, :, :, None], other_images, images)
    lam_cutmix = 1.0 - jnp.mean(mask.astype(jnp.float32))  # The box as it was clipped.
    if mixup_alpha <= 0:
      images, lam = mixed_cutmix, lam_cutmix
    else:
      use_cutmix = jax.random.bernoulli(k_choice, cutmix_prob)
      images = jnp.where(use_cutmix, mixed_cutmix, mixed_mixup)
      lam = jnp.where(use_cutmix, lam_cutmix, lam_mixup)
  lam = lam.astype(jnp.float32)
  return images.astype(other_images.dtype), lam * targets + (1.0 - lam) * other_targets, lam


def make_mix(*, num_classes: int, seed: int, mixup_alpha: float = 0.0,
             cutmix_alpha: float = 0.0, cutmix_prob: float = 0.5) -> MixFn | None:
  """mix_fn(images, labels, step) -> (images, soft labels) for the train step; None if off."""
  if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= cutmix_prob <= 1:
    raise ValueError(f'Need mixup_alpha >= 0 ({mixup_alpha}), cutmix_alpha >= 0 '
                     f'({cutmix_alpha}) and 0 <= cutmix_prob <= 1 ({cutmix_prob}).')
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return None

  def mix_fn(images: jax.Array, labels: jax.Array, step: jax.Array):
    images, targets, _ = mix(step_key(seed, step), images, labels, num_classes,
                             mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                             cutmix_prob=cutmix_prob)
    return images, targets

  return mix_fn


def from_config(ds_cfg, num_classes: int, seed: int) -> MixFn | None:
  """make_mix from config.dataset.{mixup_alpha, cutmix_alpha, cutmix_prob}."""
  return make_mix(num_classes=num_classes, seed=seed, mixup_alpha=ds_cfg.mixup_alpha,
                  cutmix_alpha=ds_cfg.cutmix_alpha, cutmix_prob=ds_cfg.cutmix_prob)
