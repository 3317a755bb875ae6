"""Every recipe in configs/ (and each of its variants) loads, names only keys that exist,
passes validation and builds its model, and its docstring opens with the command that runs
it. (Running a few steps is tested per recipe family on mock data: test_tasks.py,
test_recipe_configs.py, test_datasets.py; a step of every ResNet-50 recipe would take
minutes on 2 cores.)"""
import ast
import os

import jax
import pytest
from flax import nnx

from conftest import REPO
from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import tasks
from vision_jax import train_state

_VARIANTS = {'digits_finetune_5to9.py': ('', ':scratch'),
             'cifar10_simclr_resnet18.py': ('', ':probe'),
             'cifar10_byol_resnet18.py': ('', ':probe'),
             'digits_byol.py': ('', ':probe'),
             'imagenet2012_resnet50_rsb.py': (':a1', ':a2', ':a3')}
_CASES = [name + variant
          for name in sorted(f for f in os.listdir(os.path.join(REPO, 'configs'))
                             if f.endswith('.py'))
          for variant in _VARIANTS.get(name, ('',))]


@pytest.mark.parametrize('case', _CASES)
def test_recipe_validates_and_builds(case):
  config = config_files.load_config_file(os.path.join(REPO, 'configs', case))
  task = tasks.build(config)
  config_lib.validate(config, num_devices=1, task=task)
  size = config.dataset.image_size or 32
  models = nnx.eval_shape(lambda: train_state.build_models(
      task, num_classes=10, image_size=size, in_channels=3, kernels=None,
      platform='cpu'))
  for model in models.values():
    assert jax.tree.leaves(nnx.state(model, nnx.Param))  # It has parameters.


@pytest.mark.parametrize('name', sorted({c.split(':')[0] for c in _CASES}))
def test_docstring_opens_with_the_command(name):
  doc = ast.get_docstring(ast.parse(open(os.path.join(REPO, 'configs', name)).read()))
  assert doc and f'python -m vision_jax.main --config configs/{name}' in doc, name
