"""One prepared benchmark for a GPU machine: vision_jax against PyTorch on the same device.

  python bench/accelerator.py --json           # one GPU: under 8 minutes, no network
  python bench/accelerator.py --smoke --json   # the same code on the CPU, tiny sizes
  python bench/accelerator.py --remat_memory   # compiled step memory with / without remat

Figures (named model_task_bBATCH):
  resnet50_train_b128, _b256   ResNet-50 v1.5 at 224 px, bf16 compute over fp32 weights, the
                               ImageNet recipe's step (configs/imagenet2012_resnet50.py: SGD
                               Nesterov, weight decay, warm-up cosine), 1,000 classes
  cifar_resnet18_train_b512    CIFAR ResNet-18 at 32 px, its recipe
                               (configs/cifar10_resnet18.py) in bf16
  resnet50_eval_b256           ResNet-50's eval step (loss and top-5), bf16
Ours is the training loop's own jitted step (bench/accelerator_jax.py); PyTorch runs the
same model, batch and optimiser with channels_last and bf16 autocast, eager and, within the
time budget, torch.compile'd (bench/accelerator_torch.py). Both read synthetic uint8 images
already on the device. Reported: images/s (median of rounds), compile time, peak device
memory, FLOPs per step from XLA's cost analysis, model FLOP utilisation (MFU) against the
device's peak dense bf16 rate, and ours / PyTorch (the faster of eager and compiled).

Each contender runs in a child process, one after another: a figure's peak memory is its own
(JAX's allocator keeps its peak for the life of a process), JAX and PyTorch never share the
device memory, and a child past its time is killed without losing the rest. Children print
`RESULT {json}` lines; this process prints each as a JSON line, then one JSON line per figure,
a table, and with --json one JSON object of everything as the last line. Nothing imported
here or in the children needs TensorFlow, tfds, grain or clu.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

# Peak dense (no 2:4 sparsity) bf16 tensor-core rate in TFLOP/s by device kind, first
# match wins. NVIDIA's datasheets give BF16 "with sparsity"; dense is half: H100 / H200
# SXM 1,979 -> 989.5 (H100 and H200 Tensor Core GPU datasheets), H100 PCIe 1,513 -> 756,
# H100 NVL and H200 NVL 1,671 -> 835.5; A100 (SXM and PCIe) 312 dense (A100 datasheet).
PEAK_BF16_TFLOPS = (('H200 NVL', 835.5), ('H200', 989.5), ('H100 PCIe', 756.0),
                    ('H100 NVL', 835.5), ('H100', 989.5), ('A100', 312.0))

_IMAGENET = ('configs/imagenet2012_resnet50.py', 1000, 1_281_167)
_CIFAR = ('configs/cifar10_resnet18.py', 10, 50_000)
# Figures in the order torch.compile gets them while its budget lasts.
_COMPILE_PRIORITY = ('resnet50_train_b256', 'cifar_resnet18_train_b512',
                     'resnet50_eval_b256', 'resnet50_train_b128')


@dataclasses.dataclass(frozen=True)
class Figure:
  model: str
  task: str            # 'train' | 'eval'
  batch: int
  image_size: int
  recipe: str          # The config file whose optimiser, schedule and normalisation it uses.
  num_classes: int
  train_images: int    # For the recipe's epoch-based schedule.

  @property
  def name(self) -> str:
    return f'{self.model}_{self.task}_b{self.batch}'

  def spec(self) -> dict[str, Any]:
    """What a worker needs, the recipe's normalisation included."""
    from vision_jax import config_files  # pylint: disable=g-import-not-at-top
    dataset = config_files.load_config_file(os.path.join(REPO, self.recipe)).dataset
    return {**dataclasses.asdict(self), 'name': self.name, 'mean': tuple(dataset.mean),
            'std': tuple(dataset.std)}


def figures(smoke: bool) -> list[Figure]:
  """The GPU figures; with smoke, the same kinds at CPU sizes (ResNet-18 stands in for
  ResNet-50: the same code, a third of the layers to compile)."""
  if smoke:
    return [Figure('resnet18', 'train', 8, 32, *_IMAGENET),
            Figure('cifar_resnet18', 'train', 8, 16, *_CIFAR),
            Figure('resnet18', 'eval', 8, 32, *_IMAGENET)]
  return [Figure('resnet50', 'train', 128, 224, *_IMAGENET),
          Figure('resnet50', 'train', 256, 224, *_IMAGENET),
          Figure('cifar_resnet18', 'train', 512, 32, *_CIFAR),
          Figure('resnet50', 'eval', 256, 224, *_IMAGENET)]


def peak_tflops(device_kind: str) -> float | None:
  kind = device_kind.lower()
  return next((v for k, v in PEAK_BF16_TFLOPS if k.lower() in kind), None)


# ------------------------------------------------------------------------------- workers

def _worker(args: argparse.Namespace) -> None:
  """A child: measure the named figures with one contender, one RESULT line each."""
  by_name = {f.name: f for f in figures(args.smoke)}
  if args.smoke and args.worker == 'jax':
    # Initialising on XLA:CPU compiles several times faster with rbg keys than threefry.
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_default_prng_impl', 'unsafe_rbg')
  for name in args.figures.split(','):
    contender = 'ours' if args.worker == 'jax' else f'torch_{args.mode}'
    try:
      spec = by_name[name].spec()
      if args.worker == 'jax':
        import accelerator_jax  # pylint: disable=g-import-not-at-top
        result = accelerator_jax.measure(spec, steps=args.steps, rounds=args.rounds,
                                         warmup=args.warmup, remat=args.remat)
      else:
        import accelerator_torch  # pylint: disable=g-import-not-at-top
        result = accelerator_torch.measure(spec, mode=args.mode, steps=args.steps,
                                           rounds=args.rounds, warmup=args.warmup)
    except Exception as e:  # pylint: disable=broad-except  # Reported; the others go on.
      traceback.print_exc()
      result = {'contender': contender, 'error': f'{type(e).__name__}: {e}'[:800]}
    print('RESULT ' + json.dumps({'figure': name, **result}), flush=True)


def _child(args: argparse.Namespace, kind: str, names: list[str], timeout: float,
           mode: str = '', log: list | None = None
           ) -> tuple[list[dict[str, Any]], str | None]:
  """Runs a worker process; (its results, why it failed or None). Appends its wall time
  to `log`."""
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', kind, '--figures',
         ','.join(names), '--steps', str(args.steps), '--rounds', str(args.rounds),
         '--warmup', str(args.warmup), '--remat', args.remat] + (
             ['--mode', mode] if mode else []) + (['--smoke'] if args.smoke else [])
  if timeout < 30:
    return [], f'not run: {max(timeout, 0):.0f} s of the time budget left'
  error, start = None, time.monotonic()
  try:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    out = proc.stdout
    if proc.returncode:
      error = f'exit code {proc.returncode}'
  except subprocess.TimeoutExpired as e:  # Its output so far is kept.
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    error = f'killed after {timeout:.0f} s (time budget)'
  results = [json.loads(line[len('RESULT '):]) for line in out.splitlines()
             if line.startswith('RESULT ')]
  for r in results:
    print(json.dumps(r), flush=True)
  if log is not None:
    log.append({'worker': f'{kind} {mode}'.strip(), 'figures': names,
                'wall_s': time.monotonic() - start, **({'error': error} if error else {})})
  return results, error


# ------------------------------------------------------------------------------- report

def _versions() -> dict[str, str]:
  out = {}
  names = ['jax', 'jaxlib', 'flax', 'optax', 'torch', 'torchvision']
  names += sorted({d.metadata['Name'] for d in importlib.metadata.distributions()
                   if (d.metadata['Name'] or '').lower().replace('_', '-').startswith(
                       ('jax-cuda', 'jax-rocm'))})
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def merge(fig: Figure, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """One figure's row: ours, PyTorch eager and compiled, the ratio and MFU."""
  row: dict[str, Any] = {'figure': fig.name, 'model': fig.model, 'task': fig.task,
                         'batch': fig.batch, 'image_size': fig.image_size}
  errors = {c: r['error'] for c, r in results.items() if 'error' in r}
  ok = {c: r for c, r in results.items() if 'error' not in r}
  for contender, r in ok.items():
    row[f'{contender}_img_s'] = r['img_s']
    for key in ('peak_memory_bytes', 'peak_memory_source'):
      if key in r:
        row[f'{contender}_{key}'] = r[key]
    if contender == 'ours':
      row['ours_compile_s'] = r['compile_s']
      row['device_kind'] = r['device_kind']
      for key in ('xla_memory_bytes', 'flops_source'):
        if key in r:
          row[key] = r[key]
      if 'flops_per_step' in r:
        row['flops_per_image'] = r['flops_per_step'] / fig.batch
    elif contender == 'torch_compile':
      row['torch_compile_s'] = r['first_step_s']
    row.setdefault('torch_model', r.get('torch_model'))
  if row.get('torch_model') is None:
    row.pop('torch_model')
  torch_rows = [c for c in ('torch_compile', 'torch_eager') if c in ok]
  if torch_rows:
    best = max(torch_rows, key=lambda c: ok[c]['img_s'])
    row['torch_img_s'], row['torch_reference'] = ok[best]['img_s'], best
    if 'ours' in ok:
      row['ratio'] = ok['ours']['img_s'] / ok[best]['img_s']
  peak = peak_tflops(row.get('device_kind', ''))
  if peak and 'flops_per_image' in row:
    for who in ('ours', 'torch'):
      if f'{who}_img_s' in row:
        row[f'mfu_{who}'] = row['flops_per_image'] * row[f'{who}_img_s'] / (peak * 1e12)
  if errors:
    row['errors'] = errors
  return row


def _table(rows: list[dict[str, Any]]) -> str:
  def f(row, key, fmt, scale=1.0):
    return format(row[key] * scale, fmt) if key in row else '-'
  lines = ['| figure | ours img/s | PyTorch img/s (which) | ours/PyTorch | MFU ours / PyTorch '
           '| compile s ours / torch.compile | peak GiB ours / PyTorch |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    torch_mem = 'torch_compile' if r.get('torch_reference') == 'torch_compile' else \
        'torch_eager'
    lines.append(
        f"| {r['figure']} | {f(r, 'ours_img_s', ',.0f')} | {f(r, 'torch_img_s', ',.0f')} "
        f"({r.get('torch_reference', '-').replace('torch_', '')}) | {f(r, 'ratio', '.2f')} | "
        f"{f(r, 'mfu_ours', '.1%')} / {f(r, 'mfu_torch', '.1%')} | "
        f"{f(r, 'ours_compile_s', '.1f')} / {f(r, 'torch_compile_s', '.1f')} | "
        f"{f(r, 'ours_peak_memory_bytes', '.2f', 2**-30)} / "
        f"{f(r, f'{torch_mem}_peak_memory_bytes', '.2f', 2**-30)} |")
  return '\n'.join(lines)


# ------------------------------------------------------------------------------- runs

def benchmark(args: argparse.Namespace) -> dict[str, Any]:
  start = time.monotonic()
  left = lambda: args.budget_s - (time.monotonic() - start)
  figs = [f for f in figures(args.smoke) if not args.only or f.name in args.only.split(',')]
  meta = {'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec='seconds'), 'versions': _versions(),
          'python': platform.python_version(), 'host_cpus': os.cpu_count(),
          'smoke': args.smoke, 'remat': args.remat, 'budget_s': args.budget_s,
          'env': {k: v for k, v in os.environ.items() if k.startswith(('XLA_', 'JAX_'))},
          'notes': [], 'children': []}
  print(f"# vision_jax accelerator benchmark {meta['date_utc']}: {meta['versions']}",
        flush=True)
  results: dict[str, dict[str, dict[str, Any]]] = {f.name: {} for f in figs}

  def collect(found, error, names, contender):
    for r in found:
      results[r['figure']][r['contender']] = r
    for name in names:
      if error and contender not in results[name]:
        results[name][contender] = {'error': error}

  # Ours: one process per figure (exact peak memory each); the smoke test shares one.
  groups = [[f.name for f in figs]] if args.smoke else [[f.name] for f in figs]
  for names in groups:
    collect(*_child(args, 'jax', names, min(args.child_timeout_s, left() - 60),
                    log=meta['children']), names, 'ours')
  if importlib.util.find_spec('torch') is None:
    meta['notes'].append('torch is not installed: no PyTorch rows.')
  else:
    names = [f.name for f in figs]
    collect(*_child(args, 'torch', names, min(args.child_timeout_s, left() - 5), 'eager',
                    meta['children']), names, 'torch_eager')
    if args.smoke or args.no_torch_compile:
      meta['notes'].append('torch.compile not attempted (--smoke or --no_torch_compile).')
    elif left() < 60:
      meta['notes'].append(f'torch.compile not attempted: {left():.0f} s of the budget left.')
    else:
      names = sorted(names, key=lambda n: _COMPILE_PRIORITY.index(n)
                     if n in _COMPILE_PRIORITY else len(_COMPILE_PRIORITY))
      found, error = _child(args, 'torch', names, left() - 5, 'compile', meta['children'])
      collect(found, None, names, 'torch_compile')
      missing = [n for n in names if 'torch_compile' not in results[n]]
      if missing:
        meta['notes'].append(f'torch.compile did not finish for {", ".join(missing)} '
                             f'({error}): eager only there.')
  rows = [merge(f, results[f.name]) for f in figs]
  kinds = {r['device_kind'] for r in rows if 'device_kind' in r}
  meta['device_kind'] = ', '.join(sorted(kinds)) or 'unknown'
  peak = peak_tflops(meta['device_kind'])
  if peak:
    meta['peak_bf16_tflops'] = peak
  else:
    meta['notes'].append(f"MFU omitted: no peak bf16 rate known for {meta['device_kind']!r} "
                         '(PEAK_BF16_TFLOPS).')
  meta['elapsed_s'] = time.monotonic() - start
  for row in rows:
    print(json.dumps(row), flush=True)
  print(_table(rows))
  for note in meta['notes']:
    print(f'note: {note}')
  return {'meta': meta, 'figures': {r['figure']: r for r in rows}}


def remat_memory(args: argparse.Namespace) -> dict[str, Any]:
  """XLA's compiled memory of ResNet-50's bf16 train step with and without remat at two
  batch sizes, and the largest batch that fits 80 and 141 GB from the per-example slope
  (an estimate from this backend's compiler, not a GPU measurement unless run on one)."""
  import accelerator_jax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  model, size, batches = ('resnet18', 32, (4, 8)) if args.smoke else ('resnet50', 224, (32, 64))
  out: dict[str, Any] = {'backend': jax.default_backend(), 'device_kind':
                         jax.devices()[0].device_kind, 'model': model, 'image_size': size,
                         'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
                             timespec='seconds'), 'versions': _versions(), 'runs': []}
  base = None
  for remat in ('none', 'blocks', 'dots_with_no_batch_dims_saveable'):
    for batch in batches if remat != 'dots_with_no_batch_dims_saveable' else batches[-1:]:
      start = time.monotonic()
      run, base = accelerator_jax.compiled_memory(
          Figure(model, 'train', batch, size, *_IMAGENET).spec(), remat, base)
      run['compile_s'] = time.monotonic() - start
      out['runs'].append(run)
      print(json.dumps(run), flush=True)
  fits = {}
  for remat in ('none', 'blocks'):
    small, large = [r['xla_memory_bytes'] for r in out['runs'] if r['remat'] == remat]
    per_example = (large - small) / (batches[1] - batches[0])
    fixed = large - per_example * batches[1]
    fits[remat] = {'per_example_bytes': per_example, 'fixed_bytes': fixed}
    for gb in (80, 141):
      for fraction in (0.75, 0.95):  # JAX's default pool; XLA_PYTHON_CLIENT_MEM_FRACTION=.95
        fits[remat][f'max_batch_{gb}GB_at_{fraction}'] = math.floor(
            (gb * 1e9 * fraction - fixed) / per_example)
  out['fit_estimate'] = fits
  for remat, fit in fits.items():
    print(f"remat={remat}: {fit['per_example_bytes'] / 2**20:.1f} MiB per example + "
          f"{fit['fixed_bytes'] / 2**20:.0f} MiB; largest batch (estimate) 80 GB: "
          f"{fit['max_batch_80GB_at_0.75']} (75% pool) / {fit['max_batch_80GB_at_0.95']} "
          f"(95%), 141 GB: {fit['max_batch_141GB_at_0.75']} / "
          f"{fit['max_batch_141GB_at_0.95']}")
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--json', action='store_true', help='end with one JSON object')
  parser.add_argument('--smoke', action='store_true', help='CPU sizes: seconds, not minutes')
  parser.add_argument('--remat_memory', action='store_true',
                      help='compile only: memory with / without model.remat')
  parser.add_argument('--remat', default='none', help='config.model.remat for our steps')
  parser.add_argument('--only', default='', help='comma-separated figure names')
  parser.add_argument('--no_torch_compile', action='store_true')
  parser.add_argument('--budget_s', type=float, default=0,
                      help='wall-clock budget (default 450; 300 with --smoke)')
  parser.add_argument('--child_timeout_s', type=float, default=0,
                      help='limit per child process (default 180; 240 with --smoke)')
  parser.add_argument('--steps', type=int, default=0, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=0)
  parser.add_argument('--warmup', type=int, default=0)
  parser.add_argument('--worker', choices=('jax', 'torch'), help=argparse.SUPPRESS)
  parser.add_argument('--figures', default='', help=argparse.SUPPRESS)
  parser.add_argument('--mode', default='eager', choices=('eager', 'compile'),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  known = [f.name for f in figures(args.smoke)]
  unknown = [n for n in args.only.split(',') + args.figures.split(',') if n and n not in known]
  if unknown:
    parser.error(f'unknown figure(s) {unknown}; with{"" if args.smoke else "out"} --smoke '
                 f'they are {", ".join(known)}')
  for key, gpu, smoke in (('budget_s', 450, 300), ('child_timeout_s', 180, 240),
                          ('steps', 20, 2), ('rounds', 3, 1), ('warmup', 5, 1)):
    if not getattr(args, key):
      setattr(args, key, smoke if args.smoke else gpu)
  if importlib.util.find_spec('ml_collections') is None:
    sys.exit('ml_collections is missing (vision_jax reads its configs with it). Offline: '
             'pip install --no-index --find-links wheels ml_collections (bench/README.md, '
             '"Accelerator").')
  if args.worker:
    _worker(args)
    return
  result = remat_memory(args) if args.remat_memory else benchmark(args)
  if args.json:
    print(json.dumps(result))


if __name__ == '__main__':
  main()
