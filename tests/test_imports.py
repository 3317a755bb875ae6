"""The package's import structure: the core loads without TensorFlow, and no module of
vision_jax imports another that (directly or not) imports it back."""
import ast
import os
import pathlib
import subprocess
import sys

from conftest import REPO

CORE = ('vision_jax.models', 'vision_jax.steps', 'vision_jax.train_state', 'vision_jax.optim',
        'vision_jax.checkpoint', 'vision_jax.parallel', 'vision_jax.distributed',
        'vision_jax.finetune', 'vision_jax.inference', 'vision_jax.ops')


def test_the_core_imports_without_tensorflow():
  """What a GPU machine without TF, tfds, clu or grain runs (bench/accelerator.py)."""
  code = ('import sys\n' + ''.join(f'import {m}\n' for m in CORE) +
          "print(sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'clu', 'grain'}))")
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'


def _imports(path: pathlib.Path, module: str) -> set[str]:
  """vision_jax modules that `module` imports anywhere in its file (functions too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      base = node.module
      if node.level:  # Relative: resolve against the package.
        base = '.'.join(module.split('.')[:-node.level] + [node.module])
      found.add(base)
      found |= {f'{base}.{a.name}' for a in node.names}
  return {m for m in found if m.startswith('vision_jax')}


def test_no_import_cycles():
  root = pathlib.Path(REPO)
  modules = {}
  for path in (root / 'vision_jax').rglob('*.py'):
    name = '.'.join(path.relative_to(root).with_suffix('').parts)
    modules[name.removesuffix('.__init__')] = path
  graph = {m: {d for d in _imports(p, m) if d in modules and d != m}
           for m, p in modules.items()}
  # A package's __init__ importing its own submodules is how packages are built.
  graph = {m: {d for d in deps if not d.startswith(m + '.')} for m, deps in graph.items()}
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = 'open'
    for d in sorted(graph[m]):
      if state.get(d) == 'open':
        cycles.append(stack[stack.index(d):] + [d])
      elif d not in state:
        visit(d, stack + [d])
    state[m] = 'done'

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)
