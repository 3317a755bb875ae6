"""BYOL's target network: the cosine decay schedule and the moving-average update."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_jax.target_network import target_decay, update_target


def test_decay_follows_byols_cosine_from_base_to_final():
  total, base = 1000, 0.99
  decay = jax.jit(target_decay, static_argnums=(1, 2))
  for step in (0, 1, 250, 500, 999, 1000, 1500):
    k = min(step, total)
    want = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
    assert float(decay(step, total, base)) == pytest.approx(want, abs=1e-7)
  assert float(decay(0, total, base)) == pytest.approx(base)
  assert float(decay(500, total, base)) == pytest.approx((1 + base) / 2)
  assert float(target_decay(1000, total, 0.9, 0.95)) == pytest.approx(0.95)
  with pytest.raises(ValueError, match='total_steps'):
    target_decay(0, 0)


def test_update_is_the_moving_average_of_float_leaves():
  rng = np.random.default_rng(0)
  target = {'conv': {'kernel': rng.normal(size=(3, 3)).astype(np.float32)},
            'bn': {'mean': rng.normal(size=4).astype(np.float32),
                   'half': jnp.asarray(rng.normal(size=4), jnp.bfloat16)},
            'count': np.int32(3)}
  online = jax.tree.map(lambda x: x + 1 if np.issubdtype(np.asarray(x).dtype, np.integer)
                        else jnp.asarray(x) * 0 + 2, target)
  out = jax.jit(update_target)(target, online, 0.75)
  np.testing.assert_allclose(out['conv']['kernel'], 0.75 * target['conv']['kernel'] + 0.5,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out['bn']['mean'], 0.75 * target['bn']['mean'] + 0.5,
                             rtol=1e-6, atol=1e-7)
  assert out['bn']['half'].dtype == jnp.bfloat16
  want = 0.75 * np.asarray(target['bn']['half'], np.float32) + 0.5
  np.testing.assert_allclose(np.asarray(out['bn']['half'], np.float32), want, rtol=1e-2)
  assert int(out['count']) == 4  # Not averaged: the online value.
  same = update_target(target, online, 1.0)
  np.testing.assert_array_equal(same['conv']['kernel'], target['conv']['kernel'])
  np.testing.assert_array_equal(update_target(target, online, 0.0)['bn']['mean'],
                                online['bn']['mean'])


def test_a_scheduled_run_ends_near_the_online_weights():
  total = 200
  online = {'w': jnp.ones(3)}
  target = {'w': jnp.zeros(3)}

  @jax.jit
  def step(target, k):
    return update_target(target, online, target_decay(k, total, 0.9))

  for k in range(total):
    target = step(target, k)
  # prod of the decays: the share of the initial (zero) target that is left.
  left = np.prod([1 - (1 - 0.9) * (math.cos(math.pi * k / total) + 1) / 2
                  for k in range(total)])
  np.testing.assert_allclose(target['w'], 1 - left, rtol=1e-4)
  assert 0 < left < 1e-3
