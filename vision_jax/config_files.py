"""Reading run configs: a config file (with a `:variant`), `--config.key=value` overrides
given without a config file, a workdir's saved config.json, and what changed between two.

Every path ends in `config.check_keys`, so a typo anywhere is refused with the keys that
exist; a file that cannot be read is a ConfigError naming it and the fix.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import os

import ml_collections

from vision_jax.config import base_config, check_keys, did_you_mean
from vision_jax.errors import ConfigError


def differences(old: dict, new: dict, prefix: str = '') -> list[str]:
  """'key: old -> new' for each value that differs between two configs read from JSON
  (a key only one of them has shows as <absent>), in key order."""
  absent = object()
  def show(value) -> str:
    return '<absent>' if value is absent else json.dumps(value)
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, absent), new.get(key, absent)
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: {show(a)} -> {show(b)}')
  return out


def explain_override_error(argv: list[str], error: Exception) -> str:
  """One paragraph for a failure while loading --config and its --config.x=y overrides."""
  path = None
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  overrides = [a[len('--config.'):].split('=', 1)[0] for a in argv
               if a.startswith('--config.')]
  if path is None:
    return f'--config could not be loaded ({error}). Pass --config=configs/<name>.py.'
  try:
    config = load_config_file(path)
  except ConfigError as e:
    return str(e)
  for dotted in overrides:
    node, walked = config, []
    for key in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        where = 'config.' + '.'.join(walked) if walked else 'config'
        return (f'Unknown config key --config.{dotted}: {where} has no key {key!r}.'
                f'{did_you_mean(key, known)} Known keys of {where}: {", ".join(known)}.')
      node, walked = node[key], walked + [key]
  return f'Could not apply the --config overrides: {type(error).__name__}: {error}.'


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, or `get_config(variant)` for 'file.py:variant'.

  Raises ConfigError naming the file and what is wrong with it.
  """
  file, _, variant = path.partition(':')
  if not os.path.isfile(file):
    raise ConfigError(f'--config={path}: {file} is not a file. Pass a config file, e.g. '
                      '--config=configs/default.py.')
  if file.endswith('.json'):
    raise ConfigError(
        f'--config={path} is a JSON file; --config takes a Python config file with a '
        'get_config() function (configs/*.py). A run\'s config.json is read from its '
        'workdir by --mode=eval|predict|export without --config; to train with the config '
        'of an earlier run, rerun it in its own --workdir, or pass the recipe it came from.')
  if not file.endswith('.py'):
    raise ConfigError(f'--config={path} is not a Python file (.py). Pass a config file with '
                      'a get_config() function, e.g. --config=configs/default.py.')
  try:
    spec = importlib.util.spec_from_file_location('vision_jax_config_file', file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # Whatever the file raises.
    raise ConfigError(f'--config={path} could not be loaded: {type(e).__name__}: {e}. Fix '
                      'the file, or pass another one, e.g. configs/default.py.') from e
  get_config = getattr(module, 'get_config', None)
  if not callable(get_config):
    raise ConfigError(f'--config={path} has no get_config() function. A config file defines '
                      'get_config() returning an ml_collections.ConfigDict, as '
                      'configs/default.py does.')
  takes_variant = bool(inspect.signature(get_config).parameters)
  if variant and not takes_variant:
    raise ConfigError(f'--config={path}: {file} has no variants (its get_config() takes no '
                      f'argument), so ":{variant}" cannot be applied. Drop ":{variant}".')
  try:
    config = get_config(variant) if variant else get_config()
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f'--config={path}: get_config({variant!r}) failed: '
                      f'{type(e).__name__}: {e}.' if variant else
                      f'--config={path}: get_config() failed: {type(e).__name__}: {e}.') from e
  check_returned(config, path)
  return config


def check_returned(config, path: str) -> None:
  """Raises ConfigError unless `config`, what the get_config() of `path` returned, is an
  ml_collections.ConfigDict."""
  if not isinstance(config, ml_collections.ConfigDict):
    got = 'None (no return statement?)' if config is None else f'a {type(config).__name__}'
    raise ConfigError(f'--config={path}: get_config() returned {got}, not an '
                      'ml_collections.ConfigDict. Start from vision_jax.config.base_config(), '
                      'change what you need and return it, as configs/default.py does.')


def _merged(base: ml_collections.ConfigDict, given: dict, where: str = '') -> None:
  """Writes `given` (nested dicts from JSON) over `base` in place; new keys are added
  (check_keys then refuses those it does not know)."""
  for key, value in given.items():
    if isinstance(value, dict) and isinstance(base.get(key), ml_collections.ConfigDict):
      _merged(base[key], value, f'{where}{key}.')
    else:
      with base.unlocked():
        base[key] = tuple(value) if isinstance(value, list) else value


def from_workdir_json(path: str) -> ml_collections.ConfigDict:
  """The config a run saved as config.json, over today's defaults (a file written before
  a key existed still loads). Raises ConfigError naming the file for invalid JSON or a
  key that does not exist."""
  try:
    with open(path) as f:
      given = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f'{path} is not valid JSON ({e.msg} at line {e.lineno}, column '
                      f'{e.colno}): was it edited by hand? Fix it, or pass the original '
                      'config file with --config=configs/<name>.py.') from e
  if not isinstance(given, dict):
    raise ConfigError(f'{path} holds a {type(given).__name__}, not a config. Pass '
                      '--config=configs/<name>.py.')
  config = base_config()
  try:
    _merged(config, given)
    check_keys(config)
  except ConfigError as e:
    raise ConfigError(f'{path}: {e}') from e
  except (TypeError, ValueError, KeyError) as e:
    raise ConfigError(f'{path} does not fit the config of this version ({type(e).__name__}:'
                      f' {e}). Pass --config=configs/<name>.py.') from e
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """`--config.key=value` arguments applied to a config that came from a workdir's
  config.json, and every `--config.model.<option>=value` (with --config, ml_collections
  applies the others itself). A value is read as a Python literal, else as a string, as
  ml_collections does. config.model takes options the file does not list: the chosen
  model's constructor says which exist (config.validate refuses the others)."""
  for arg in overrides:
    dotted, _, text = arg[len('--config.'):].partition('=')
    node, keys = config, dotted.split('.')
    if len(keys) == 2 and keys[0] == 'model' and keys[1] not in config.model:
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      with config.unlocked():
        config.model[keys[1]] = tuple(value) if isinstance(value, list) else value
      continue
    for i, key in enumerate(keys):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        where = 'config.' + '.'.join(keys[:i]) if i else 'config'
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ConfigError(f'Unknown config key --config.{dotted}: {where} has no key '
                          f'{key!r}.{did_you_mean(key, known)} Known keys of {where}: '
                          f'{", ".join(known)}.')
      if i < len(keys) - 1:
        node = node[key]
    existing = node[keys[-1]]
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    if isinstance(existing, str):
      value = text  # eval.checkpoint=300 is the string '300', as ml_collections reads it.
    elif isinstance(existing, bool) and text.lower() in ('true', 'false'):
      value = text.lower() == 'true'
    elif isinstance(existing, float) and isinstance(value, int):
      value = float(value)
    if isinstance(value, list):
      value = tuple(value)
    try:
      node[keys[-1]] = value
    except TypeError as e:
      raise ConfigError(f'--config.{dotted}={text}: {e}') from e


def absolute_paths(config: ml_collections.ConfigDict) -> list[str]:
  """Makes the data and checkpoint paths of `config` absolute (from the current directory),
  so that the config.json a run saves finds the same data and checkpoint from any
  directory a later --mode=eval|predict|export runs in. Returns 'key: old -> new' for
  each path changed (to log)."""
  changed = []
  def resolve(section: str, key: str, prefix: str = '') -> None:
    node = config.get(section)
    value = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(value, str) or not value.startswith(prefix):
      return
    path = value[len(prefix):]
    if path and not os.path.isabs(os.path.expanduser(path)) and '://' not in path:
      new = prefix + os.path.abspath(path)
      config[section][key] = new
      changed.append(f'config.{section}.{key}: {value} -> {new}')
  resolve('dataset', 'name', 'folder:')
  resolve('dataset', 'data_dir')
  resolve('init_from', 'checkpoint')
  return changed
