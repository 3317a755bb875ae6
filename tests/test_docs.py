"""The docs cannot drift from the code: the worked examples of docs/extending.md run as
written (in order, in one namespace); every documented command uses flags, config files
and config keys that exist; every relative link points at a file."""
import os
import re
import shlex

from conftest import REPO

_MARK = '<!-- run by tests/test_docs.py -->'


def _marked_blocks(path: str) -> list[str]:
  text = open(path).read()
  blocks = re.findall('^' + re.escape(_MARK) + r'\s*```python\n(.*?)```', text, re.S | re.M)
  marks = len(re.findall('^' + re.escape(_MARK), text, re.M))
  assert len(blocks) == marks, f'{path}: a marked example is not a python block'
  return blocks


def test_extending_examples_run(tmp_path, data_dir, monkeypatch):
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  # The example registers a model: keep it out of the registry the other tests see.
  monkeypatch.setattr(models, '_REGISTRY', dict(models._REGISTRY))  # pylint: disable=protected-access
  blocks = _marked_blocks(os.path.join(REPO, 'docs', 'extending.md'))
  assert len(blocks) >= 3
  namespace = {'data_dir': data_dir, 'tmp': str(tmp_path)}
  for i, block in enumerate(blocks):
    exec(compile(block, f'docs/extending.md example {i + 1}', 'exec'), namespace)  # pylint: disable=exec-used


def test_relative_links_point_at_files():
  pages = ['README.md', 'bench/README.md'] + [
      os.path.join('docs', f) for f in sorted(os.listdir(os.path.join(REPO, 'docs')))
      if f.endswith('.md')]
  broken = []
  for page in pages:
    text = open(os.path.join(REPO, page)).read()
    for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text):
      if '://' in target:
        continue
      if not os.path.exists(os.path.join(REPO, os.path.dirname(page), target)):
        broken.append(f'{page}: {target}')
  assert not broken, broken


_MAIN_FLAGS = {'config', 'workdir', 'mode', 'images', 'output', 'top_k',
               'coordinator_address', 'num_processes', 'process_id'}
_CONVERT_FLAGS = {'arch', 'weights', 'output', 'eval_transform', 'image_size',
                  'crop_fraction', 'class_names'}


def _documented_commands(module: str) -> list[tuple[str, list[str]]]:
  """(page, argv) of every `python -m vision_jax.<module>` command in README.md, docs/ and
  configs/' docstrings, shell continuations joined; `...` elisions end a command."""
  pages = ['README.md'] + [os.path.join('docs', f) for f in sorted(os.listdir(
      os.path.join(REPO, 'docs'))) if f.endswith('.md')] + [
          os.path.join('configs', f) for f in sorted(os.listdir(os.path.join(REPO, 'configs')))
          if f.endswith('.py')]
  found = []
  for page in pages:
    text = open(os.path.join(REPO, page)).read().replace('\\\n', ' ')
    text = re.sub(r'```python\n.*?```', '', text, flags=re.S)  # Run by the test above.
    for match in re.finditer(r'python -m vision_jax\.' + module + r'\b([^\n`|]*)', text):
      words = shlex.split(match.group(1).split('...')[0].split('#')[0], posix=True)
      if words:  # Not a bare mention in prose.
        found.append((page, words))
    if module == 'main':  # README's tables elide the command: `... --config X --config.k=v`.
      found += [(page, shlex.split(m)) for m in re.findall(r'`\.\.\. (--[^`]*)`', text)]
  return found


def _flag(word: str) -> tuple[str, str | None]:
  name, _, value = word[2:].partition('=')
  return name, value if '=' in word else None


def test_documented_main_commands_use_real_flags_configs_and_keys():
  """Every `python -m vision_jax.main` command in the docs names flags that exist, a config
  file that loads (with its variant) and config keys that exist, so that renaming any of
  them fails here."""
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vision_jax import config_files  # pylint: disable=g-import-not-at-top
  commands = _documented_commands('main')
  assert len(commands) >= 20
  problems = []
  for page, words in commands:
    config, keys = None, []
    for i, word in enumerate(words):
      if not word.startswith('--'):
        continue
      name, value = _flag(word)
      if name.startswith('config.'):
        keys.append(name[len('config.'):])
      elif name not in _MAIN_FLAGS:
        problems.append(f'{page}: unknown flag --{name}')
      elif name == 'config':
        value = value if value is not None else words[i + 1]
        if not os.path.isfile(os.path.join(REPO, value.split(':')[0])):
          problems.append(f'{page}: no config file {value}')
          continue
        config = config_files.load_config_file(os.path.join(REPO, value))
      elif name == 'mode' and value not in ('train', 'eval', 'predict', 'export'):
        problems.append(f'{page}: --mode={value}')
    config = config or config_lib.base_config()
    for dotted in keys:
      node = config
      for key in dotted.split('.'):
        if key not in node:
          problems.append(f'{page}: no config key {dotted}')
          break
        node = node[key]
  assert not problems, problems


def test_documented_convert_commands_use_real_sources_and_flags():
  from vision_jax import convert  # pylint: disable=g-import-not-at-top
  commands = _documented_commands('convert')
  assert commands
  for page, words in commands:
    flags = {_flag(w)[0] for w in words if w.startswith('--')}
    if words[0] == 'inception':  # The FID feature network's weights (inception_weights.py).
      assert flags <= {'weights', 'output'}, (page, flags)
      continue
    assert words[0] in convert.SOURCES, (page, words)
    assert flags <= _CONVERT_FLAGS, (page, flags - _CONVERT_FLAGS)
