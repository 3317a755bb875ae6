"""launch/sweep.py: one command per sweep point, each in its own workdir, flags that parse back."""
import importlib.util
import os
import subprocess

import pytest
from absl import flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location('sweep', os.path.join(REPO, 'launch', 'sweep.py'))
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

CONFIG = """
import ml_collections

def get_config():
  c = ml_collections.ConfigDict()
  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.piecewise_scales = ()
  c.sweep = {sweep}
  return c
"""
POINTS = ("({'optim.learning_rate': 0.01, 'optim.name': 'sgd'}, "
          "{'optim.learning_rate': 3e-4, 'optim.piecewise_scales': (0.1, 0.2)})")


def write_config(tmp_path, points: str = POINTS) -> str:
  path = tmp_path / 'config.py'
  path.write_text(CONFIG.format(sweep=points))
  return str(path)


def test_prints_one_command_per_point(tmp_path, capsys):
  config = write_config(tmp_path)
  assert sweep.main(['--config', config, '--workdir_root', '/w', '--config.train.steps=5']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines == [
      f'python -m vision_jax.main --config {config} --workdir '
      '/w/00_optim.learning_rate=0.01,optim.name=sgd --config.optim.learning_rate=0.01 '
      '--config.optim.name=sgd --config.train.steps=5',
      f'python -m vision_jax.main --config {config} --workdir '
      '/w/01_optim.learning_rate=0.0003,optim.piecewise_scales=_0.1,_0.2_ '
      "--config.optim.learning_rate=0.0003 '--config.optim.piecewise_scales=(0.1, 0.2)' "
      '--config.train.steps=5']


def test_override_flags_parse_back_to_the_point(tmp_path):
  config = write_config(tmp_path)
  for cmd, point in zip(sweep.commands(config, '/w'), eval(POINTS)):
    argv = ['prog', '--config', config, *[a for a in cmd if a.startswith('--config.')]]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
    fv(argv)
    for dotted, value in point.items():
      section, key = dotted.split('.')
      assert fv.config[section][key] == value


def test_run_executes_each_point_and_reports_failures(tmp_path, monkeypatch, capsys):
  calls = []

  def fake_run(cmd, env, check):
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 1 if len(calls) == 2 else 0)

  monkeypatch.setattr(sweep.subprocess, 'run', fake_run)
  assert sweep.main(['--config', write_config(tmp_path), '--workdir_root', '/w', '--run']) == 1
  assert [c[c.index('--workdir') + 1] for c in calls] == [
      '/w/00_optim.learning_rate=0.01,optim.name=sgd',
      '/w/01_optim.learning_rate=0.0003,optim.piecewise_scales=_0.1,_0.2_']
  assert '1 of 2 sweep points succeeded' in capsys.readouterr().out


@pytest.mark.parametrize('points, message', [
    ('()', 'declares no sweep'),
    ("({'optim.lr': 0.1},)", "overrides 'optim.lr'"),
    ("({},)", 'non-empty dict'),
])
def test_bad_sweeps_are_explained(tmp_path, points, message):
  with pytest.raises(SystemExit, match=message):
    sweep.commands(write_config(tmp_path, points), '/w')


def test_recipe_sweep_is_valid():
  cmds = sweep.commands(os.path.join(REPO, 'configs', 'cifar10_resnet18.py'), '/w')
  assert len(cmds) == 3 and len({c[c.index('--workdir') + 1] for c in cmds}) == 3
