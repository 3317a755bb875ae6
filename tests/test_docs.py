"""The worked examples of docs/extending.md run as written, in order, in one namespace; and
every relative link in README.md and docs/ points at a file that exists."""
import os
import re

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
