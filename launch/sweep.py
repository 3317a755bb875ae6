"""Prints, or runs one after another, a training command per point of a config's sweep.

  python launch/sweep.py --config configs/cifar10_resnet18.py --workdir_root /tmp/sweeps [--run]

A config declares `config.sweep`: a tuple of override dicts such as
({'optim.learning_rate': 0.05}, {'optim.learning_rate': 0.1}). Each point becomes

  python -m vision_jax.main --config CONFIG --workdir ROOT/00_optim.learning_rate=0.05 \
      --config.optim.learning_rate=0.05

Each workdir is named after its point's overrides, so rerunning the sweep resumes every point
from its own checkpoints. Arguments this script does not know (e.g. --config.train.steps=100)
are passed on to every command. Without --run the commands are only printed, to paste into a
scheduler; with --run they run here in sequence, and the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str):
  """get_config() of a config file, importable from anywhere (recipes import vision_jax)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  if spec is None or not os.path.isfile(path):
    raise SystemExit(f'--config {path}: no such config file.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def flag_value(value: Any) -> str:
  """A value as ml_collections' config_flags parses it back: strings raw, the rest as repr."""
  return value if isinstance(value, str) else repr(value)


def point_name(index: int, overrides: dict[str, Any]) -> str:
  """'03_optim.learning_rate=0.05,optim.name=sgd': readable, unique, safe as a folder name."""
  text = ','.join(f'{k}={flag_value(v)}' for k, v in overrides.items())
  return f'{index:02d}_' + re.sub(r'[^A-Za-z0-9._=,+-]', '_', text)


def _check_point(config, index: int, overrides) -> None:
  if not isinstance(overrides, dict) or not overrides:
    raise SystemExit(f'config.sweep[{index}] must be a non-empty dict of overrides, got '
                     f'{overrides!r}.')
  for dotted in overrides:
    node = config
    for key in dotted.split('.'):
      if not hasattr(node, 'keys') or key not in node:
        raise SystemExit(f'config.sweep[{index}] overrides {dotted!r}, which is not a key of '
                         f'the config ({key!r} is unknown).')
      node = node[key]


def commands(config_path: str, workdir_root: str, extra: Sequence[str] = (),
             python: str = 'python') -> list[list[str]]:
  """One argv per sweep point of the config at `config_path`."""
  config = load_config(config_path)
  sweep = config.get('sweep', ())
  if not sweep:
    raise SystemExit(f'{config_path} declares no sweep: set config.sweep to a tuple of '
                     "override dicts, e.g. ({'optim.learning_rate': 0.1}, ...).")
  out = []
  for i, overrides in enumerate(sweep):
    _check_point(config, i, overrides)
    workdir = os.path.join(workdir_root, point_name(i, overrides))
    out.append([python, '-m', 'vision_jax.main', '--config', config_path, '--workdir', workdir,
                *[f'--config.{k}={flag_value(v)}' for k, v in overrides.items()], *extra])
  return out


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True, help='A config file declaring config.sweep.')
  parser.add_argument('--workdir_root', required=True, help='Each point gets a folder here.')
  parser.add_argument('--run', action='store_true', help='Run the points here, in sequence.')
  args, extra = parser.parse_known_args(argv)
  cmds = commands(args.config, args.workdir_root, extra)
  if not args.run:
    for cmd in cmds:
      print(shlex.join(cmd))
    return 0
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
  failed = []
  for i, cmd in enumerate(cmds):
    cmd = [sys.executable, *cmd[1:]]
    print(f'[{i + 1}/{len(cmds)}] {shlex.join(cmd)}', flush=True)
    if subprocess.run(cmd, env=env, check=False).returncode:
      failed.append(cmd[cmd.index('--workdir') + 1])
  print(f'{len(cmds) - len(failed)} of {len(cmds)} sweep points succeeded.'
        + (f' Failed: {", ".join(failed)}' if failed else ''), flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
