"""SimCLR's NT-Xent and BYOL's loss against hand-written loop references, gradients, and the
same NT-Xent (value and gradient) on 1 and 8 simulated devices for one global batch."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from vision_jax import losses
from vision_jax.losses import cosine_regression, l2_normalize

# Jitted: one compilation per shape instead of one per primitive in eager mode.
nt_xent = jax.jit(losses.nt_xent)
byol_loss = jax.jit(losses.byol_loss)


def _unit(v):
  norm = math.sqrt(sum(x * x for x in v))
  return [x / norm for x in v]


def _nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
  """NT-Xent written out: every one of the 2N views is an anchor once."""
  views = [_unit(v) for v in z1.tolist()] + [_unit(v) for v in z2.tolist()]
  n = len(z1)
  total = 0.0
  for a in range(2 * n):
    positive = a + n if a < n else a - n
    sim = lambda b: sum(x * y for x, y in zip(views[a], views[b])) / temperature
    denominator = sum(math.exp(sim(b)) for b in range(2 * n) if b != a)
    total += -math.log(math.exp(sim(positive)) / denominator)
  return total / (2 * n)


@pytest.mark.parametrize('temperature', [0.1, 0.5, 1.0])
def test_nt_xent_equals_the_loop_reference(temperature):
  rng = np.random.default_rng(0)
  z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  z2[0] = 3 * z1[0]  # A perfect positive pair (scale does not matter after normalising).
  got = nt_xent(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), temperature)
  assert float(got) == pytest.approx(_nt_xent_reference(z1, z2, temperature), rel=1e-5)


def test_nt_xent_rewards_aligned_pairs_and_its_gradient_is_finite():
  rng = np.random.default_rng(1)
  z1 = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  aligned, random = nt_xent(z1, z1 + 0.01 * noise), nt_xent(z1, noise)
  assert float(aligned) < float(random)
  # The lower bound: a positive at similarity 1, every negative at -1 would give
  # log(1 + (2N - 2) exp(-2 / T)); any batch is at or above it.
  assert float(aligned) >= math.log(1 + 14 * math.exp(-2 / 0.1)) - 1e-6
  grads = jax.jit(jax.grad(lambda a, b: nt_xent(a, b, 0.2), argnums=(0, 1)))(z1, noise)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  # Symmetric in the two views.
  assert float(nt_xent(z1, noise)) == pytest.approx(float(nt_xent(noise, z1)), rel=1e-6)
  with pytest.raises(ValueError, match='same shape'):
    losses.nt_xent(z1, z1[:4])


def _byol_reference(p1, p2, z1, z2) -> float:
  cos = lambda a, b: sum(x * y for x, y in zip(_unit(a), _unit(b)))
  rows = [(2 - 2 * cos(p1[i], z2[i])) + (2 - 2 * cos(p2[i], z1[i])) for i in range(len(p1))]
  return sum(rows) / len(rows)


def test_byol_loss_equals_the_loop_reference_and_stops_target_gradients():
  rng = np.random.default_rng(2)
  p1, p2, z1, z2 = (rng.normal(size=(5, 7)) for _ in range(4))
  args = [jnp.asarray(a, jnp.float32) for a in (p1, p2, z1, z2)]
  assert float(byol_loss(*args)) == pytest.approx(
      _byol_reference(p1.tolist(), p2.tolist(), z1.tolist(), z2.tolist()), rel=1e-5)
  grads = jax.jit(jax.grad(losses.byol_loss, argnums=(0, 1, 2, 3)))(*args)
  assert float(jnp.abs(grads[0]).max()) > 0 and float(jnp.abs(grads[1]).max()) > 0
  assert float(jnp.abs(grads[2]).max()) == 0 and float(jnp.abs(grads[3]).max()) == 0
  regression = jax.jit(cosine_regression)
  np.testing.assert_allclose(regression(args[0], 2.5 * args[0]), 0.0, atol=1e-6)
  np.testing.assert_allclose(regression(args[0], -args[0]), 4.0, rtol=1e-6)


def test_l2_normalize_leaves_zero_rows_finite():
  x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
  np.testing.assert_allclose(jax.jit(l2_normalize)(x), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


# Loss and gradients of NT-Xent for one global batch of 32 pairs, on a mesh of the first
# N simulated devices with the embeddings sharded over the batch (parallel.batch_sharding),
# as JSON. The loss sees the global batch; nothing in it gathers by hand.
_DEVICES_SCRIPT = r'''
import json, jax, numpy as np
from vision_jax import config as config_lib, parallel
from vision_jax.losses import nt_xent
rng = np.random.default_rng(0)
z1, z2 = (rng.normal(size=(32, 16)).astype(np.float32) for _ in range(2))
out = {}
for n in (1, 8):
  config = config_lib.base_config()
  config.mesh.data = n
  mesh = parallel.make_mesh(config, jax.devices()[:n])
  sharding = parallel.batch_sharding(mesh)
  a, b = jax.device_put(z1, sharding), jax.device_put(z2, sharding)
  assert len(a.sharding.device_set) == n
  fn = jax.jit(jax.value_and_grad(lambda a, b: nt_xent(a, b, 0.2), argnums=(0, 1)),
               in_shardings=(sharding, sharding),
               out_shardings=(parallel.replicated(mesh), (sharding, sharding)))
  loss, (ga, gb) = fn(a, b)
  out[n] = {'loss': float(loss), 'grad1': np.asarray(ga).tolist(),
            'grad2': np.asarray(gb).tolist()}
print(json.dumps(out))
'''


def test_nt_xent_is_the_same_on_1_and_8_devices_for_one_global_batch():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  one, eight = out['1'], out['8']
  # A loss over per-device batches of 4 pairs would differ (fewer negatives): the global
  # one is what both meshes compute.
  assert eight['loss'] == pytest.approx(one['loss'], rel=1e-6)
  np.testing.assert_allclose(eight['grad1'], one['grad1'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(eight['grad2'], one['grad2'], rtol=1e-5, atol=1e-7)
  rng = np.random.default_rng(0)
  z1, z2 = (rng.normal(size=(32, 16)) for _ in range(2))
  assert one['loss'] == pytest.approx(_nt_xent_reference(z1, z2, 0.2), rel=1e-5)
  per_device = np.mean([_nt_xent_reference(z1[i:i + 4], z2[i:i + 4], 0.2)
                        for i in range(0, 32, 4)])
  assert abs(per_device - one['loss']) > 0.1
