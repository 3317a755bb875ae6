"""--mode=predict for a GAN workdir: a grid of samples and a latent interpolation, as PNGs.

  python -m vision_jax.main --mode=predict --workdir W [--output DIR]
      [--config.task.num_samples=64] [--config.task.sample_seed=0]

writes into DIR (default W/samples):

  samples.png        config.task.num_samples samples of the EMA generator (eval mode) in a
                     near-square grid; a conditional GAN: one row of num_samples per class
  interpolation.png  rows of 10 images along the great circle (slerp, White 2016) between
                     two latents: 8 rows, or one per class (the same two latents) if
                     conditional
  samples.json       what was written: paths, seed, step, the grid's layout

Latents come from config.task.sample_seed alone, so the same seed on the same checkpoint
gives the same PNGs. Cells smaller than 32 pixels are enlarged by an integer factor
(nearest neighbour) to be visible; the arrays are the generator's, quantised to uint8.
"""
from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vision_jax.errors import UserError

INTERPOLATION_STEPS = 10
_MIN_CELL = 32


def grid(images: np.ndarray, columns: int, pad: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 [rows * (H + pad) + pad, ..., C] image, row-major,
  on a white background."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    out[pad + r * (h + pad):pad + r * (h + pad) + h,
        pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return out


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
  """[steps, D] points from z0 to z1 along the great circle between them (linear when
  they are parallel)."""
  t = np.linspace(0.0, 1.0, steps)[:, None]
  cos = np.dot(z0, z1) / (np.linalg.norm(z0) * np.linalg.norm(z1))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if omega < 1e-6:
    return (1 - t) * z0 + t * z1
  return (np.sin((1 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)


def _save(image: np.ndarray, path: str, cell: int) -> None:
  scale = max(1, math.ceil(_MIN_CELL / cell))
  image = np.repeat(np.repeat(image, scale, 0), scale, 1)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def write(loaded, output: str | None) -> dict:
  """Writes the PNGs of `loaded` (an inference.Loaded GAN run); returns samples.json."""
  config = loaded.config
  t = config.task
  out_dir = os.path.abspath(output or os.path.join(loaded.workdir, 'samples'))
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'--output={out_dir} cannot be created ({e.strerror}): pass a '
                    'directory you can write to.') from e
  inputs = loaded.serving_inputs()
  latent_dim = inputs['latents'][0][0]
  classes = loaded.num_classes if 'labels' in inputs else 0
  generate = jax.jit(loaded.serve)
  run = lambda z, y: np.asarray(generate(loaded.serving_state, {
      'latents': jnp.asarray(z, jnp.float32),
      **({'labels': jnp.asarray(y, jnp.int32)} if classes else {})}))
  rng = np.random.default_rng(t.sample_seed)
  n = int(t.num_samples)
  if classes:
    z = rng.standard_normal((n, latent_dim))
    images = run(np.tile(z, (classes, 1)), np.repeat(np.arange(classes), n))
    columns = n
  else:
    images = run(rng.standard_normal((n, latent_dim)), None)
    columns = math.ceil(math.sqrt(n))
  cell = images.shape[1]
  samples = os.path.join(out_dir, 'samples.png')
  _save(grid(images, columns), samples, cell)
  rows = classes or 8
  ends = rng.standard_normal((1 if classes else rows, 2, latent_dim))
  path = np.concatenate([slerp(a, b, INTERPOLATION_STEPS) for a, b in ends])
  if classes:
    strip = run(np.tile(path, (classes, 1)),
                np.repeat(np.arange(classes), INTERPOLATION_STEPS))
  else:
    strip = run(path, None)
  interpolation = os.path.join(out_dir, 'interpolation.png')
  _save(grid(strip, INTERPOLATION_STEPS), interpolation, cell)
  report = {'samples': samples, 'interpolation': interpolation, 'step': loaded.step,
            'seed': int(t.sample_seed), 'num_samples': n,
            'rows': [loaded.class_names[c] for c in range(classes)] if classes else [],
            'image_shape': list(images.shape[1:])}
  with open(os.path.join(out_dir, 'samples.json'), 'w') as f:
    json.dump(report, f, indent=2)
  return report
