"""The training loop in-process: what it does around the steps, not what the steps learn."""
import json
import os

import pytest

from vision_jax import train
from vision_jax.config import base_config


def _config(data_dir: str, **train_overrides):
  config = base_config()
  config.dataset.data_dir = data_dir
  config.train.update(dict(steps=12, log_every=4, eval_every=6) | train_overrides)
  config.checkpoint.every_steps = 6
  config.optim.warmup_steps = 2
  return config


def test_log_lines_and_timing(tmp_path, data_dir):
  results = train.train_and_evaluate(_config(data_dir), str(tmp_path))
  assert results['step'] == 12
  # Log lines at the multiples of log_every, and at checkpoints (6: every step before a
  # save is checked finite and logged).
  lines = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').open()]
  assert [line['step'] for line in lines] == [4, 6, 8, 12]
  assert all(0 < line['train/loss'] < 10 for line in lines)
  timing = json.loads((tmp_path / 'timing.json').read_text())
  assert timing['steps'] == 12 and timing['loop_s'] >= timing['step_s'] > 0


def test_a_non_finite_step_stops_the_run_naming_it(tmp_path, data_dir):
  config = _config(data_dir)
  config.optim.update(schedule='piecewise', warmup_steps=0, piecewise_boundaries=(3,),
                      piecewise_scales=(1e30,))  # Diverges after step 3.
  with pytest.raises(train.NonFiniteError, match=r'at step [4-9]'):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints' / '6').exists()  # Nothing non-finite was saved.


def test_keep_best_ranks_checkpoints_by_the_evaluation_of_their_step(tmp_path, data_dir):
  config = _config(data_dir, eval_every=3)
  config.checkpoint.update(every_steps=3, keep=1, keep_best='test/loss', keep_best_mode='max')
  train.train_and_evaluate(config, str(tmp_path))
  evals = [json.loads(line) for line in (tmp_path / 'eval_metrics.jsonl').open()]
  assert [e['step'] for e in evals] == [3, 6, 9, 12]
  worst = max(evals, key=lambda e: e['eval/test/loss'])['step']  # 'Best' by max loss.
  kept = sorted(int(d) for d in os.listdir(tmp_path / 'checkpoints') if d.isdigit())
  assert kept == sorted({worst, 12})  # The latest, plus the one its own evaluation ranked.
