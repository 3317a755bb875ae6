"""Every numeric key of base_config() has a valid range (config_ranges.RANGES), and a value
outside it is refused by the CLI in one paragraph before anything compiles."""
import math

import pytest

from cli_in_process import one_paragraph, run_main
from vision_jax import config as config_lib
from vision_jax import config_ranges


def _numeric_keys(node, prefix=''):
  for key, value in node.items():
    if hasattr(value, 'items'):
      yield from _numeric_keys(value, f'{prefix}{key}.')
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield prefix + key
    elif (isinstance(value, tuple) and value
          and all(isinstance(x, (int, float)) for x in value)):
      yield prefix + key


def test_every_numeric_key_of_base_config_has_a_range():
  numeric = set(_numeric_keys(config_lib.base_config()))
  assert numeric <= set(config_ranges.RULES), sorted(numeric - set(config_ranges.RULES))
  base = config_lib.base_config()
  config_ranges.check(base)  # The defaults are within their ranges.
  for dotted in numeric:  # A rule of the default's type (an int key takes no 0.5).
    section, _, key = dotted.rpartition('.')
    default = (base[section] if section else base)[key]
    first = default[0] if isinstance(default, tuple) else default
    assert config_ranges.RULES[dotted].kind == type(first).__name__, dotted


def _inside(rule: config_ranges.Rule):
  """A value the rule allows (to pad a tuple around a bad element)."""
  if rule.values:
    return rule.values[0]
  if not rule.low_open:
    return rule.low
  return rule.low + 1 if math.isinf(rule.high) else (rule.low + rule.high) / 2


def _outside(rule: config_ranges.Rule) -> list:
  """Values of the rule's kind that it refuses: just below, just above, nan."""
  one = 1 if rule.kind == 'int' else 0.5
  bad = []
  if rule.values:
    gaps = [v for v in range(min(rule.values), max(rule.values)) if v not in rule.values]
    bad = [min(rule.values) - 1, max(rule.values) + 1] + gaps[:1]
  else:
    if math.isfinite(rule.low):
      below = rule.low if rule.low_open else rule.low - one
      while below in rule.also:
        below -= one
      bad.append(below)
    if math.isfinite(rule.high):
      bad.append(rule.high if rule.high_open else rule.high + one)
  if rule.kind == 'float':
    bad = [float(x) for x in bad] + [math.nan]
  assert bad and not any(rule.allows(x) for x in bad), rule
  return bad


def _cases():
  for dotted, rule in config_ranges.RULES.items():
    for value in _outside(rule):
      yield dotted, ((_inside(rule), value) if rule.each else value)


def _literal(value) -> str:
  if isinstance(value, tuple):
    return '(' + ','.join(map(_literal, value)) + ',)'
  return 'nan' if isinstance(value, float) and math.isnan(value) else repr(value)


def test_each_key_out_of_range_is_one_paragraph_from_the_cli(tmp_path, data_dir):
  cases = list(_cases())
  assert len(cases) > 2 * len(config_ranges.RULES)
  for i, (dotted, value) in enumerate(cases):
    workdir = tmp_path / str(i)
    code, err = run_main(['--config', 'configs/default.py', '--workdir', str(workdir),
                          f'--config.{dotted}={_literal(value)}'])
    message = one_paragraph(code, err, f'config.{dotted}=', 'is out of range',
                            config_ranges.RANGES[dotted][1])
    assert config_ranges.RULES[dotted].describe() in message
    assert not list(workdir.iterdir())  # Refused before anything was written.


@pytest.mark.parametrize('args, needles', [
    # The examples of issue 36: accepted and trained, or a traceback deep inside.
    (['--config.optim.min_lr_ratio=1.5'], ['min_lr_ratio=1.5', '[0, 1]']),
    (['--config.train.eval_every=-1'], ['eval_every=-1', '>= 0']),
    (['--config.train.device_prefetch=-3'], ['device_prefetch=-3', 'or -1']),
    (['--config.optim.momentum=-0.9'], ['momentum=-0.9', '[0, 1)']),
    (['--config.dataset.mixup_alpha=-1.0'], ['mixup_alpha=-1.0']),
    (['--config.dataset.cutmix_prob=1.5'], ['cutmix_prob=1.5', '[0, 1]']),
    (['--config.seed=-1'], ['seed=-1', '[0, 2147483647]']),
    (['--config.seed=1099511627776'], ['seed=1099511627776']),
    (['--config.dataset.std=(0.0,)'], ['dataset.std=(0.0,)', 'divide by zero']),
    (['--config.dataset.randaugment=rand-m15'], ['m15', 'mmax10', 'clipped']),
])
def test_values_that_cannot_be_meant(tmp_path, data_dir, args, needles):
  code, err = run_main(['--config', 'configs/default.py', '--workdir', str(tmp_path / 'w'),
                        *args])
  one_paragraph(code, err, *needles)


def test_a_simclr_batch_of_one_has_no_negatives(tmp_path, data_dir):
  code, err = run_main(['--config', 'configs/digits_simclr.py', '--workdir',
                        str(tmp_path / 'w'), '--config.train.batch_size=1'])
  one_paragraph(code, err, 'batch_size=1', 'no negatives')


@pytest.mark.parametrize('text', ['float [0, 1', 'integer [0, 1]', 'int {}', 'int (0 1)'])
def test_a_malformed_rule_is_refused(text):
  with pytest.raises(ValueError, match='not a range rule'):
    config_ranges.parse(text)


def test_rules_read_as_written():
  rule = config_ranges.parse('int [0, 1024] or -1')
  assert [rule.allows(x) for x in (-1, 0, 1024, 1025, -2, 1.0, True)] == [
      True, True, True, False, False, False, False]
  rule = config_ranges.parse('float (0, 1]')
  assert [rule.allows(x) for x in (0, 1e-9, 1, 1.01, math.nan, math.inf)] == [
      False, True, True, False, False, False]
  assert rule.describe() == 'a finite number in (0, 1]'
  assert config_ranges.parse('int [1, inf)').describe() == 'a whole number >= 1'
  assert config_ranges.parse('int {0, 1, 3}').allows(3)
