"""Input-pipeline throughput on the host: ours against tf.data, on the same JPEGs and cores.

  python bench/input_pipeline.py                         # ImageNet case, 1 and 2 cores
  python bench/input_pipeline.py --cases imagenet decoders cifar digits --json
  python bench/input_pipeline.py --baseline /work/wt/base   # + an older checkout, same files
  python bench/input_pipeline.py --cases memory --duration 300   # resident memory over 5 min
  python bench/input_pipeline.py --cases randaugment --cores 1   # the policy's cost per image
  python bench/input_pipeline.py --cases eval_transform --cores 1   # exact vs fast eval

Cases:
  imagenet  1,024 JPEGs made once (into --cache_dir) from scikit-learn's two real photos:
            random crops rescaled to 500x375 (a fifth 375x500), quality 90, ~52 KB, ten
            class folders. Ours: the real training stream (`input_pipeline.train_dataset`,
            folder dataset, cache='none', `inception` recipe at 224 + flip) read by N
            worker processes, and the `center_crop` eval stream. Reference: tf.data as the
            flax ImageNet example writes it: `sample_distorted_bounding_box` (area
            0.08-1, aspect 3/4-4/3, 10 tries) + `decode_and_crop_jpeg` + resize + random
            flip, `map(num_parallel_calls=AUTOTUNE)`, batch, prefetch, a private
            threadpool of N threads. Same work as ours: bilinear resize (the example's
            bicubic costs more) and uint8 out (ours normalises on device). Each
            configuration runs in its own process pinned to N cores (sched_setaffinity,
            inherited by workers and threads), alternating ours / tf.data over --rounds.
  decoders  (bench/jpeg_decoders.py) per-image cost, one thread, of the decode + crop +
            resize alternatives behind decode.py / preprocess.py (PIL, simplejpeg, OpenCV).
  memory    resident memory (VmRSS, summed over the process and its workers) of our
            2-worker training stream, sampled through --duration seconds.
  randaugment  the imagenet case's train stream with and without RandAugment m9 +
            random erasing 0.25 (ours only, alternating): the policy's cost per image.
  eval_transform  the imagenet case's eval stream, our fast center_crop against the exact
            torchvision_v1 and timm (bicubic) transforms (eval_transform.py), alternating.
  cifar     10,000 in-memory 32x32 images: the host batch (a gather) and the pad-crop-flip
            on the CPU device (device_augment.py), batch 128.
  digits    the default dataset as the default run reads it.
With --json the last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', nargs='+', default=['imagenet'])
  parser.add_argument('--cores', nargs='+', type=int, default=[1, 2])
  parser.add_argument('--seconds', type=float, default=8.0, help='Timed seconds a round.')
  parser.add_argument('--rounds', type=int, default=3, help='Median over this many.')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--duration', type=float, default=60.0, help='memory: seconds.')
  parser.add_argument('--cache_dir', default=os.path.expanduser('~/.cache/vision_jax'))
  parser.add_argument('--baseline', default='', help='Another checkout to time as well.')
  parser.add_argument('--json', action='store_true')
  parser.add_argument('--one', nargs=2, metavar=('KIND', 'CORES'), help=argparse.SUPPRESS)
  return parser.parse_args()


def make_jpegs(root: str, count: int = 1024) -> list[str]:
  """The ImageNet-like folder (made once): crops of two real photos, 500x375, q90."""
  done = os.path.join(root, 'done')
  if not os.path.exists(done):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(0)
    for i in range(count):
      photo = photos[i % 2]
      width, height = photo.size
      portrait = rng.random() < 0.2
      aspect = 3 / 4 if portrait else 4 / 3
      ch = min(height, round(math.sqrt(width * height * rng.uniform(0.35, 1.0) / aspect)))
      cw = min(width, round(ch * aspect))
      left, top = rng.integers(0, width - cw + 1), rng.integers(0, height - ch + 1)
      image = photo.resize((375, 500) if portrait else (500, 375), Image.BICUBIC,
                           box=(left, top, left + cw, top + ch))
      if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
      os.makedirs(os.path.join(root, f'class{i % 10}'), exist_ok=True)
      image.save(os.path.join(root, f'class{i % 10}', f'{i}.jpg'), quality=90)
    open(done, 'w').close()
  return sorted(glob.glob(os.path.join(root, '*', '*.jpg')))


def _cpu_s() -> float:
  """CPU seconds used so far by this process and its workers (user + system)."""
  total = 0.0
  for pid in _tree(os.getpid()):
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except OSError:
      pass
  return total


def _rate(batches, seconds: float, warmup: int = 3) -> float:
  """Images/s of an iterator of batches, after `warmup` batches (worker start-up); the
  CPU it took (this process and its workers), in ms per image, goes to RATE_CPU."""
  for _ in range(warmup):
    next(batches)
  images, start, cpu = 0, time.perf_counter(), _cpu_s()
  while time.perf_counter() - start < seconds:
    images += len(next(batches)['label'])
  RATE_CPU.append((_cpu_s() - cpu) * 1e3 / images)
  return images / (time.perf_counter() - start)


RATE_CPU = []  # CPU ms per image of each _rate call: robust to other load on the cores.


def _rss_kb(pid: int) -> int:
  with open(f'/proc/{pid}/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith('VmRSS'))


def _tree(pid: int) -> list[int]:
  """pid and its descendants (workers), from /proc."""
  parents = {}
  for p in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{p}/stat') as f:
        parents[int(p)] = int(f.read().rsplit(')', 1)[1].split()[1])
    except OSError:
      pass
  out, frontier = [pid], [pid]
  while frontier:
    parent = frontier.pop()
    kids = [p for p, pp in parents.items() if pp == parent]
    out += kids
    frontier += kids
  return out


def _ours(root: str, recipe: str, workers: int, args, policy: bool = False) -> dict:
  sys.path.insert(0, args.repo)
  # pylint: disable=g-import-not-at-top
  from vision_jax.config import base_config
  from vision_jax.data import input_pipeline as ip, preprocess, sources
  config = base_config()
  config.dataset.update(name=f'folder:{root}', cache='none', folder_test_fraction=0.0)
  source, _ = sources.open_split(config.dataset, 'train')
  train = recipe == 'inception'
  augment = None
  if policy:  # RSB-style: RandAugment m9 + random erasing 0.25 after the crop.
    from vision_jax.data import augment as augment_lib
    augment = augment_lib.make_augment(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                       randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.25)
  if recipe in ('torchvision_v1', 'timm'):  # The exact eval transforms (eval_transform.py).
    from vision_jax.data.eval_transform import EvalTransform
    fn = EvalTransform(recipe, 224, crop_fraction=0.95, interpolation='bicubic' if recipe ==
                       'timm' else 'bilinear', channels=3).example_fn()
  else:
    fn = preprocess.make_preprocess(recipe, 224, train=train, channels=3, augment=augment)
  if train:
    dataset = ip.train_dataset(source, fn, global_batch=args.batch, seed=0)
  else:  # The eval stream, repeated: every image once per pass.
    dataset = ip.eval_dataset(source, fn, global_batch=args.batch)
    dataset = dataset.repeat(None) if hasattr(dataset, 'repeat') else dataset
  if not hasattr(ip, 'Batches'):  # An older checkout (--baseline): reader threads.
    return {'img_s': _rate(ip.iterate(dataset, 0, workers), args.seconds)}
  with ip.iterate(dataset, 0, num_threads=0, num_workers=workers) as batches:
    rate = _rate(batches, args.seconds)
    rss = sum(_rss_kb(p) for p in _tree(os.getpid())) / 1024
    samples = []
    end = time.time() + (args.duration if args.one[0] == 'memory' else 0)
    while time.time() < end:
      for _ in range(20):
        next(batches)
      samples.append(sum(_rss_kb(p) for p in _tree(os.getpid())) / 1024)
  return {'img_s': rate, 'rss_mb': rss, 'rss_samples_mb': samples}


def _tfdata(files: list[str], recipe: str, threads: int, args) -> dict:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def train(image_bytes):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    top, left, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    image = tf.io.decode_and_crop_jpeg(image_bytes, tf.stack([top, left, height, width]),
                                       channels=3)
    image = tf.image.resize(image, [224, 224], method='bilinear')
    return tf.image.random_flip_left_right(image)

  def center(image_bytes):
    shape = tf.io.extract_jpeg_shape(image_bytes)
    side = tf.cast(0.875 * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
    window = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])
    image = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
    return tf.image.resize(image, [224, 224], method='bilinear')

  crop = train if recipe == 'inception' else center

  def example(path):
    image = crop(tf.io.read_file(path))
    return {'image': tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8),
            'label': tf.constant(0)}

  ds = tf.data.Dataset.from_tensor_slices(files).repeat()
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(args.batch, drop_remainder=True).prefetch(4)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  return {'img_s': _rate(iter(ds.with_options(options).as_numpy_iterator()), args.seconds)}


def run_one(args) -> None:
  """--one KIND CORES: one configuration in this process, pinned; prints one JSON line."""
  kind, cores = args.one[0], int(args.one[1])
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
  files = make_jpegs(os.path.join(args.cache_dir, 'bench_jpegs'))
  root = os.path.join(args.cache_dir, 'bench_jpegs')
  recipe = {'exact_eval': 'torchvision_v1', 'timm_eval': 'timm'}.get(
      kind, 'center_crop' if kind.endswith('eval') else 'inception')
  if kind.startswith('tfdata'):
    out = _tfdata(files, recipe, cores, args)
  else:
    out = _ours(root, recipe, cores, args, policy=kind == 'ours_randaugment')
  out['cpu_ms'] = RATE_CPU[0]
  print(json.dumps(out), flush=True)


def _spawn(kind: str, cores: int, args, repo: str | None = None) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), '--one', kind, str(cores),
         '--seconds', str(args.seconds), '--batch', str(args.batch), '--cache_dir',
         args.cache_dir, '--duration', str(args.duration)]
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             BENCH_REPO=repo or REPO)
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
  if proc.returncode:
    raise RuntimeError(f'{kind} x{cores} failed:\n{proc.stderr[-3000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def case_imagenet(args, out: dict) -> None:
  make_jpegs(os.path.join(args.cache_dir, 'bench_jpegs'))
  for split, ours, ref in (('train', 'ours', 'tfdata'), ('eval', 'ours_eval', 'tfdata_eval')):
    for cores in args.cores:
      rates = {ours: [], ref: [], 'today': []}
      cpu = {ours: [], ref: [], 'today': []}
      for _ in range(args.rounds):  # Alternating: the shared machine's load drifts.
        runs = [(ours, None), (ref, None)]
        if args.baseline and split == 'train':
          runs.append(('today', args.baseline))
        for name, repo in runs:
          found = _spawn('ours' if name == 'today' else name, cores, args, repo)
          rates[name].append(found['img_s'])
          cpu[name].append(found['cpu_ms'])
      a, b = statistics.median(rates[ours]), statistics.median(rates[ref])
      ca, cb = statistics.median(cpu[ours]), statistics.median(cpu[ref])
      prefix = 'train' if split == 'train' else 'eval'
      out[f'{prefix}_img_s_{cores}'], out[f'tfdata_{prefix}_img_s_{cores}'] = a, b
      out[f'{prefix}_ratio_{cores}'] = a / b
      out[f'{prefix}_cpu_ms_{cores}'], out[f'tfdata_{prefix}_cpu_ms_{cores}'] = ca, cb
      note = ''
      if rates['today']:
        out[f'today_img_s_{cores}'] = statistics.median(rates['today'])
        out[f'today_cpu_ms_{cores}'] = statistics.median(cpu['today'])
        note = (f'  today ({cores} thread) {out[f"today_img_s_{cores}"]:4.0f} img/s '
                f'{out[f"today_cpu_ms_{cores}"]:.2f} ms')
      print(f'imagenet {split:5s} {cores} core(s): ours {a:5.0f} img/s {ca:.2f} CPU-ms/img'
            f'  tf.data {b:5.0f} img/s {cb:.2f} ms  ours/tf.data {a / b:.2f}{note}   '
            f'(rounds: ours {[round(r) for r in rates[ours]]}, tf.data '
            f'{[round(r) for r in rates[ref]]})', flush=True)
  if 1 in args.cores and 2 in args.cores:
    out['ratio_1'], out['ratio_2'] = out['train_ratio_1'], out['train_ratio_2']
    out['tfdata_img_s_1'], out['tfdata_img_s_2'] = (out['tfdata_train_img_s_1'],
                                                    out['tfdata_train_img_s_2'])
    out['workers_2_over_1'] = out['train_img_s_2'] / out['train_img_s_1']
    print(f'2 workers / 1 worker: {out["workers_2_over_1"]:.2f}')


def case_randaugment(args, out: dict) -> None:
  """The inception recipe with and without RandAugment m9 + random erasing 0.25, in
  worker processes on the same cores, alternating: what the policy costs per image."""
  make_jpegs(os.path.join(args.cache_dir, 'bench_jpegs'))
  for cores in args.cores:
    rates = {'ours': [], 'ours_randaugment': []}
    cpu = {'ours': [], 'ours_randaugment': []}
    for _ in range(args.rounds):
      for name in rates:
        found = _spawn(name, cores, args)
        rates[name].append(found['img_s'])
        cpu[name].append(found['cpu_ms'])
    plain, policy = statistics.median(rates['ours']), statistics.median(rates['ours_randaugment'])
    cp, ca = statistics.median(cpu['ours']), statistics.median(cpu['ours_randaugment'])
    out[f'randaugment_img_s_{cores}'], out[f'plain_img_s_{cores}'] = policy, plain
    out[f'randaugment_cpu_ms_{cores}'], out[f'plain_cpu_ms_{cores}'] = ca, cp
    print(f'randaugment {cores} worker(s): plain {plain:5.0f} img/s {cp:.2f} CPU-ms/img, '
          f'+ RandAugment m9 + erasing {policy:5.0f} img/s {ca:.2f} CPU-ms/img: '
          f'+{ca - cp:.2f} CPU-ms per image', flush=True)


def case_eval_transform(args, out: dict) -> None:
  """The eval stream of the imagenet case's JPEGs through our fast center_crop (DCT-scaled
  decode, one OpenCV resample), torchvision V1's exact pipeline and timm's (bicubic,
  crop_pct 0.95; full decode + PIL), alternating, in worker processes on the same cores."""
  make_jpegs(os.path.join(args.cache_dir, 'bench_jpegs'))
  kinds = {'ours_eval': 'center_crop (fast)', 'exact_eval': 'torchvision_v1 (exact)',
           'timm_eval': 'timm bicubic (exact)'}
  for cores in args.cores:
    rates, cpu = {k: [] for k in kinds}, {k: [] for k in kinds}
    for _ in range(args.rounds):
      for kind in kinds:
        found = _spawn(kind, cores, args)
        rates[kind].append(found['img_s'])
        cpu[kind].append(found['cpu_ms'])
    fast = statistics.median(rates['ours_eval'])
    for kind, label in kinds.items():
      rate, ms = statistics.median(rates[kind]), statistics.median(cpu[kind])
      out[f'{kind}_img_s_{cores}'], out[f'{kind}_cpu_ms_{cores}'] = rate, ms
      print(f'eval transform {cores} worker(s): {label:24s} {rate:5.0f} img/s {ms:.2f} '
            f'CPU-ms/img  / fast {rate / fast:.2f}  (rounds {[round(r) for r in rates[kind]]})',
            flush=True)


def case_memory(args, out: dict) -> None:
  found = _spawn('memory', 2, args)
  samples = found['rss_samples_mb'] or [found['rss_mb']]
  out.update(rss_mb_2=found['rss_mb'], rss_first_mb=samples[0], rss_last_mb=samples[-1],
             rss_max_mb=max(samples), rss_seconds=args.duration)
  print(f'memory, 2 workers: {found["rss_mb"]:.0f} MB resident after warm-up; over '
        f'{args.duration:.0f} s: first {samples[0]:.0f}, max {max(samples):.0f}, last '
        f'{samples[-1]:.0f} MB ({len(samples)} samples)')


def case_decoders(args, out: dict) -> None:
  import jpeg_decoders  # pylint: disable=g-import-not-at-top  # bench/jpeg_decoders.py
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:1]))
  files = make_jpegs(os.path.join(args.cache_dir, 'bench_jpegs'))[:400]
  jpeg_decoders.compare([open(f, 'rb').read() for f in files], out, REPO)


def case_cifar(args, out: dict) -> None:
  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  import jax
  import numpy as np
  from vision_jax.data import device_augment, input_pipeline as ip, preprocess, sources
  rng = np.random.default_rng(0)
  source = sources.ArraySource(rng.integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, 10, 10_000))
  dataset = ip.train_dataset(source, preprocess.make_preprocess('resize', 32, train=True),
                             global_batch=128, seed=0)
  with ip.iterate(dataset, 0, num_threads=0) as batches:
    host = _rate(batches, 2.0)
  augment = jax.jit(device_augment.make_device_augment('cifar', 0, 32))
  images = jax.device_put(dataset[0]['image'])
  augment(images, 0).block_until_ready()
  start, steps = time.perf_counter(), 0
  while time.perf_counter() - start < 2.0:
    augment(images, steps).block_until_ready()
    steps += 1
  on_device = steps * 128 / (time.perf_counter() - start)
  out.update(cifar_host_img_s=host, cifar_device_augment_img_s=on_device)
  print(f'cifar: host batch (gather) {host:,.0f} img/s; pad-crop-flip on the CPU device '
        f'{on_device:,.0f} img/s')


def case_digits(args, out: dict) -> None:
  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from vision_jax.config import base_config
  from vision_jax.data import input_pipeline as ip
  data = ip.build(base_config())
  with data.train_batches(0) as batches:
    rate = _rate(batches, 2.0)
  out['digits_img_s'] = rate
  print(f'digits (default run, in memory, gather): {rate:,.0f} img/s')


def main() -> None:
  args = _args()
  args.repo = os.environ.get('BENCH_REPO', REPO)
  if args.one:
    return run_one(args)
  flags = subprocess.run("grep -o 'avx512[a-z_]*' /proc/cpuinfo | sort -u | head -3",
                         shell=True, capture_output=True, text=True).stdout.split()
  out = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'cpus':
         len(os.sched_getaffinity(0)), 'cpu_flags': flags, 'load_start': os.getloadavg()}
  print(f'{out["date"]}, {out["cpus"]} CPUs {" ".join(flags) or "(no AVX-512)"}, load '
        f'{out["load_start"][0]:.2f} (shared machine: other sessions use these cores)')
  cases = {'imagenet': case_imagenet, 'memory': case_memory, 'decoders': case_decoders,
           'randaugment': case_randaugment, 'eval_transform': case_eval_transform,
           'cifar': case_cifar, 'digits': case_digits}
  for name in args.cases:
    cases[name](args, out)
  out['load_end'] = os.getloadavg()
  print(f'load at the end {out["load_end"][0]:.2f}')
  if args.json:
    print(json.dumps(out))


if __name__ == '__main__':
  main()
