"""bench/accelerator.py --smoke: the GPU benchmark's code, run on the CPU at tiny sizes with
TensorFlow, tfds, grain and clu made unimportable (as on the GPU machine), so that the
script cannot rot between GPU runs."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

# sitecustomize for every process that inherits PYTHONPATH (the benchmark's children too):
# each import finder is wrapped to find nothing of these packages, so they look absent both
# to `import` (ModuleNotFoundError) and to `importlib.util.find_spec` (None), as on the GPU
# machine, where torch and others probe for them.
BLOCKER = textwrap.dedent('''
    import sys
    BLOCKED = ('tensorflow', 'tensorflow_datasets', 'grain', 'clu')
    class Hide:
      def __init__(self, finder):
        self.finder = finder
      def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in BLOCKED:
          return None
        return self.finder.find_spec(name, path, target)
      def __getattr__(self, attr):
        return getattr(self.finder, attr)
    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
''')
FIGURES = ('resnet18_train_b8', 'cifar_resnet18_train_b8', 'resnet18_eval_b8')
HAS_TORCH = importlib.util.find_spec('torch') is not None


@pytest.fixture(scope='module')
def no_tf_env(tmp_path_factory):
  site = tmp_path_factory.mktemp('no_tf')
  (site / 'sitecustomize.py').write_text(BLOCKER)
  path = os.pathsep.join(filter(None, [str(site), os.environ.get('PYTHONPATH')]))
  return dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS='cpu')


def test_the_blocker_hides_tensorflow(no_tf_env):
  probe = ('import importlib.util as u; print([u.find_spec(m) is None for m in '
           '("tensorflow", "tensorflow_datasets", "grain", "clu", "jax")])')
  installed = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                             timeout=60)
  assert installed.stdout.strip() == '[False, False, False, False, False]'  # Here they are.
  hidden = subprocess.run([sys.executable, '-c', probe], env=no_tf_env, capture_output=True,
                          text=True, timeout=60)
  assert hidden.stdout.strip() == '[True, True, True, True, False]', hidden.stderr
  proc = subprocess.run([sys.executable, '-c', 'import tensorflow_datasets'], env=no_tf_env,
                        capture_output=True, text=True, timeout=60)
  assert "ModuleNotFoundError: No module named 'tensorflow_datasets'" in proc.stderr


def _numbers(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _numbers(value)
  elif isinstance(tree, (list, tuple)):
    for value in tree:
      yield from _numbers(value)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def test_smoke_run_without_tensorflow(no_tf_env):
  proc = subprocess.run(
      [sys.executable, 'bench/accelerator.py', '--smoke', '--json', '--budget_s', '1200',
       '--child_timeout_s', '900'],
      cwd=REPO, env=no_tf_env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  report = json.loads(lines[-1])
  meta, figures = report['meta'], report['figures']
  assert set(figures) == set(FIGURES), proc.stderr[-3000:]
  for key in ('jax', 'jaxlib', 'flax') + (('torch',) if HAS_TORCH else ()):
    assert key in meta['versions']
  assert meta['device_kind'] == 'cpu' and meta['date_utc']
  assert any('MFU omitted' in n for n in meta['notes'])  # No peak rate for a CPU.
  for name, row in figures.items():
    assert 'errors' not in row, (name, row.get('errors'), proc.stderr[-3000:])
    expected = ['ours_img_s', 'ours_compile_s', 'ours_peak_memory_bytes', 'xla_memory_bytes',
                'flops_per_image']
    if HAS_TORCH:
      expected += ['torch_eager_img_s', 'torch_img_s', 'ratio']
    assert not set(expected) - set(row), (name, row)
    assert row['ours_peak_memory_source'] == 'xla_memory_analysis'  # CPU: no device stats.
  numbers = list(_numbers(report))
  assert numbers and all(math.isfinite(x) and x > 0 for x in numbers), report
  # Every measurement was also printed as its own JSON line on the way.
  measured = [json.loads(l) for l in lines if l.startswith('{"figure"') and
              '"contender"' in l]
  assert {(m['figure'], m['contender']) for m in measured} >= {(f, 'ours') for f in FIGURES}
