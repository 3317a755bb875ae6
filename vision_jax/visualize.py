"""Pictures of a run: training curves, confusion matrices, saliency maps, first-layer filters.

  python -m vision_jax.visualize --workdir W [--images a.png DIR ...] [--output_dir D]

writes curves.png and confusion_<split>.png (from the run's logs), filters.png (from its
latest checkpoint) and, given images, saliency.png into W (or D). Training calls
`write_run_pictures` at its end, so curves.png is always there. Plotting reads only the
files a run writes, which keeps it testable without a model: `curve_series` is exactly
what `curves_figure` draws, one point per logged step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

import matplotlib
matplotlib.use('Agg')  # Files only, never a display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

Series = dict[str, tuple[list[int], list[float]]]
_MAX_SALIENCY = 16  # Rows of saliency.png; more images would make it unreadable.


def read_jsonl(path: str) -> list[dict]:
  """Lines of a metrics log, one per step (after a resume the last line of a step wins)."""
  if not os.path.exists(path):
    return []
  by_step = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        by_step[int(row['step'])] = row
  return [by_step[s] for s in sorted(by_step)]


def curve_series(workdir: str) -> Series:
  """{metric: (steps, values)} from metrics.jsonl (train/*) and eval_metrics.jsonl (eval/*)."""
  series: Series = {}
  for name in ('metrics.jsonl', 'eval_metrics.jsonl'):
    for row in read_jsonl(os.path.join(workdir, name)):
      for key, value in row.items():
        if key != 'step' and isinstance(value, (int, float)):
          steps, values = series.setdefault(key, ([], []))
          steps.append(int(row['step']))
          values.append(float(value))
  return series


def curves_figure(series: Series) -> plt.Figure:
  """Loss, accuracy and learning rate against step: train and every eval split."""
  panels = [('loss', 'loss'), ('accuracy', 'accuracy'), ('learning_rate', 'learning rate')]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, (metric, title) in zip(axes, panels):
    for key in sorted(series):
      name = key.split('/')[-1]  # The accuracy panel also shows knn_accuracy, mean_iou.
      if name == metric or (metric == 'accuracy' and name.endswith(('_accuracy', '_iou'))):
        steps, values = series[key]
        style = '-' if key.startswith('train/') else 'o--'
        ax.plot(steps, values, style, label=key.rsplit('/', 1)[0], markersize=4)
    ax.set_title(title)
    ax.set_xlabel('step')
    if metric == 'loss':
      ax.set_yscale('log')
    if ax.lines:
      ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def _save(fig: plt.Figure, path: str) -> str:
  fig.savefig(path + '.tmp.png', dpi=110)
  plt.close(fig)
  os.replace(path + '.tmp.png', path)  # Never a half-written picture.
  return path


def write_curves(workdir: str, out_dir: str | None = None) -> str | None:
  """curves.png of the run in `workdir`; None when nothing has been logged yet."""
  series = curve_series(workdir)
  if not series:
    return None
  return _save(curves_figure(series), os.path.join(out_dir or workdir, 'curves.png'))


def write_confusion(counts: np.ndarray, class_names: Sequence[str], path: str,
                    title: str = '') -> str:
  """Confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
  counts = np.asarray(counts)
  n = counts.shape[0]
  side = min(12.0, 2.5 + 0.45 * n)
  fig, ax = plt.subplots(figsize=(side, side))
  ax.imshow(counts / np.maximum(counts.sum(1, keepdims=True), 1), cmap='Blues', vmin=0, vmax=1)
  if n <= 30:
    ticks = range(n)
    ax.set_xticks(ticks, [str(c) for c in class_names[:n]], rotation=90 if n > 10 else 0)
    ax.set_yticks(ticks, [str(c) for c in class_names[:n]])
    for (i, j), c in np.ndenumerate(counts):
      if c:
        ax.text(j, i, str(c), ha='center', va='center', fontsize=8,
                color='white' if i == j else 'black')
  accuracy = np.trace(counts) / max(counts.sum(), 1)
  prefix = f'{title}: ' if title else ''
  ax.set_title(f'{prefix}accuracy {accuracy:.3f} ({np.trace(counts)}/{counts.sum()})')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  fig.tight_layout()
  return _save(fig, path)


def write_run_pictures(workdir: str, out_dir: str | None = None) -> list[str]:
  """curves.png and confusion_<split>.png from what a run wrote (end of every training)."""
  out_dir = out_dir or workdir
  written = [p for p in [write_curves(workdir, out_dir)] if p]
  names = []
  if os.path.exists(os.path.join(workdir, 'dataset.json')):
    with open(os.path.join(workdir, 'dataset.json')) as f:
      names = json.load(f).get('class_names', [])
  for name in sorted(os.listdir(workdir)):
    if name.startswith('confusion_') and name.endswith('.json'):
      with open(os.path.join(workdir, name)) as f:
        counts = np.asarray(json.load(f))
      labels = names if len(names) == len(counts) else [str(i) for i in range(len(counts))]
      split = name[len('confusion_'):-len('.json')]
      written.append(write_confusion(counts, labels, os.path.join(
          out_dir, f'confusion_{split}.png'), title=split))
  return written


def saliency_maps(apply: Callable, state, images: np.ndarray, targets: np.ndarray,
                  ig_steps: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """Vanilla gradients and integrated gradients of the target logits w.r.t. the pixels.

  `apply(state, float NHWC images in 0..255) -> logits`. Integrated gradients integrate from a
  black image (Sundararajan et al. 2017, midpoint rule over `ig_steps`), so their sum over
  pixels approximates logit(image) - logit(black). Both are summed over channels: (N, H, W).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vision_jax import ops  # pylint: disable=g-import-not-at-top

  def target_logit(state, x, t):
    return jnp.sum(jnp.take_along_axis(apply(state, x), t[:, None], axis=1))

  grad = jax.jit(jax.grad(target_logit, argnums=1), compiler_options=ops.compiler_options())
  x = jnp.asarray(images, jnp.float32)
  t = jnp.asarray(targets, jnp.int32)
  vanilla = np.asarray(grad(state, x, t))
  total = jnp.zeros_like(x)
  for k in range(ig_steps):
    total += grad(state, x * ((k + 0.5) / ig_steps), t)
  integrated = np.asarray(x * total / ig_steps)
  return vanilla.sum(-1), integrated.sum(-1)


def write_saliency(images: np.ndarray, vanilla: np.ndarray, integrated: np.ndarray,
                   titles: Sequence[str], path: str) -> str:
  """One column per image; rows: the image, |vanilla gradient|, integrated gradients
  (red: evidence for the predicted class, blue: against)."""
  n = len(images)
  fig, axes = plt.subplots(3, n, figsize=(1.9 * n + 0.9, 6.2), squeeze=False)
  for i in range(n):
    image = images[i]
    axes[0, i].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
    axes[0, i].set_title(titles[i], fontsize=8)
    axes[1, i].imshow(np.abs(vanilla[i]), cmap='hot')
    bound = np.abs(integrated[i]).max() or 1.0
    axes[2, i].imshow(integrated[i], cmap='bwr', vmin=-bound, vmax=bound)
  for row, label in enumerate(('image', '|gradient|', 'integrated\ngradients')):
    axes[row, 0].set_ylabel(label, fontsize=9)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  return _save(fig, path)


def first_conv_kernel(model, in_channels: int) -> tuple[str, np.ndarray]:
  """(path, HWIO kernel) of the first layer: the shallowest 4-D kernel reading the image."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  found = [(len(path), '/'.join(map(str, path)), np.asarray(value[...]))
           for path, value in nnx.iter_graph(model)
           if isinstance(value, nnx.Param) and path and path[-1] == 'kernel'
           and value.ndim == 4 and value.shape[2] == in_channels]
  if not found:
    raise ValueError('The model has no convolution reading the input image.')
  _, path, kernel = min(found, key=lambda f: f[:2])
  return path, kernel


def write_filters(kernel: np.ndarray, path: str, title: str = '') -> str:
  """A grid of first-layer filters; RGB filters in colour, others in a diverging map."""
  kh, kw, cin, cout = kernel.shape
  cols = int(np.ceil(np.sqrt(cout)))
  rows = int(np.ceil(cout / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.7, rows * 0.7 + 0.4), squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.set_axis_off()
    if i >= cout:
      continue
    w = kernel[..., i]
    if cin == 3:
      ax.imshow((w - w.min()) / max(np.ptp(w), 1e-12))
    else:
      bound = np.abs(w).max() or 1.0
      ax.imshow(w.mean(-1), cmap='bwr', vmin=-bound, vmax=bound)
  fig.suptitle(f'{title} {cout} filters {kh}x{kw}x{cin}'.strip(), fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def write_model_pictures(loaded, images: Sequence[str], out_dir: str) -> tuple[list[str],
                                                                              list[str]]:
  """filters.png and, for `images` (files or folders), saliency.png of a loaded run.

  Returns (written paths, 'path: error' for each image that could not be read).
  """
  from vision_jax import predict  # pylint: disable=g-import-not-at-top
  layer, kernel = first_conv_kernel(loaded.model(), loaded.image_shape[2])
  written = [write_filters(kernel, os.path.join(out_dir, 'filters.png'), title=layer)]
  items = predict.read_images(images, loaded)
  errors = [f'{item.path}: {item.error}' for item in items if item.error]
  good = [item for item in items if item.error is None][:_MAX_SALIENCY]
  if good:
    pixels = np.stack([item.image for item in good])
    probs = predict.softmax(loaded.logits(pixels))
    top = probs.argmax(-1)
    vanilla, integrated = saliency_maps(loaded.apply, loaded.serving_state, pixels, top)
    titles = [f'{os.path.basename(g.path)}\n{loaded.class_names[c]} ({probs[i, c]:.2f})'
              for i, (g, c) in enumerate(zip(good, top))]
    written.append(write_saliency(pixels, vanilla, integrated, titles,
                                  os.path.join(out_dir, 'saliency.png')))
  return written, errors


def main(argv: Sequence[str] | None = None) -> int:
  """The command line: pictures of a trained workdir; exit code 2 on any bad input."""
  parser = argparse.ArgumentParser(prog='python -m vision_jax.visualize',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--images', nargs='*', default=[], help='files or folders: saliency')
  parser.add_argument('--output_dir', default=None, help='default: the workdir')
  parser.add_argument('--checkpoint', default='', help="a step or its folder; '' = latest")
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  from vision_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(args.workdir)
  out = os.path.abspath(args.output_dir or workdir)
  os.makedirs(out, exist_ok=True)
  try:
    written = write_run_pictures(workdir, out)
    loaded = inference.load(workdir, inference.read_config(workdir), args.checkpoint)
    more, errors = write_model_pictures(loaded, args.images, out)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for error in errors:
    print(f'error: {error}', file=sys.stderr)
  for path in written + more:
    print(path)
  return 2 if errors else 0


if __name__ == '__main__':
  sys.exit(main())
