"""The gan task on the core (vision_jax/tasks/gan.py): its step against a plain reference
(n_critic discriminator updates on the batch's chunks, then the generator judged by the
updated discriminator), FID of the EMA generator's samples equal to a recomputation and
independent of the eval batch, every GAN recipe for 2 steps, 8 devices equal to 1, SIGKILL
and resume bit-identical, predict and export from the CLI, and the bad inputs refused in
one paragraph. Networks are tiny (base_features 4-8) so the whole file stays fast."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from cli_in_process import one_paragraph, run_main
from conftest import REPO, run_cli
from vision_jax import checkpoint
from vision_jax import config as config_lib
from vision_jax import config_files
from vision_jax import evaluate
from vision_jax import export
from vision_jax import feature_distances as fd
from vision_jax import gan_features
from vision_jax import inference
from vision_jax import parallel
from vision_jax import steps
from vision_jax import tasks
from vision_jax import train
from vision_jax import train_state
from vision_jax.data import input_pipeline
from vision_jax.data import sources
from vision_jax.tasks import gan as gan_task

TINY = ['--config.model.base_features=8', '--config.model.latent_dim=8',
        '--config.train.batch_size=16', '--config.train.log_every=5',
        '--config.eval.batch_size=120']


def _config(name='digits_dcgan.py', **overrides):
  config = config_files.load_config_file(os.path.join(REPO, 'configs', name))
  config.model.update(base_features=8, latent_dim=8)
  config.train.update(batch_size=16, steps=2, log_every=1, eval_every=0)
  config.eval.batch_size = 120
  config.checkpoint.every_steps = 2
  config.task.fid_classifier = config.task.fid_inception = ''
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value
  return config


@pytest.fixture(scope='module')
def classifier(data_dir, tmp_path_factory):
  """A small digits classifier's workdir: the fid_digits feature network."""
  config = config_lib.base_config()
  config.model.update(width=8, hidden=32)
  config.train.update(steps=30, log_every=10, eval_every=0)
  config.optim.warmup_steps = 5
  config.checkpoint.every_steps = 30
  workdir = str(tmp_path_factory.mktemp('classifier'))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def gan_run(classifier, tmp_path_factory):
  """A digits_dcgan run of 4 steps with fid_digits on `classifier`: (config, workdir)."""
  config = _config(**{'train.steps': 4, 'task.fid_classifier': classifier})
  workdir = str(tmp_path_factory.mktemp('gan'))
  config_lib.validate(config, 1)
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_step_equals_a_plain_reference_with_two_critic_updates():
  config = _config(**{'task.n_critic': 2, 'train.batch_size': 8})
  config.model.update(base_features=4, latent_dim=4, batch_norm=False)
  task = tasks.build(config)
  config_lib.validate(config, 1, task=task)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  structure, state = train_state.create(task, mesh, num_classes=10, image_size=8,
                                        in_channels=1, steps_per_epoch=10)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 8, 8, 1), np.uint8),
           'label': rng.integers(0, 10, (8,)).astype(np.int32)}
  start = jax.tree.map(jnp.array, state.parts)  # Copies (the reference mutates BatchNorm).
  new, metrics = jax.jit(steps.make_train_step(task, structure, mean=(0.5,), std=(0.5,)))(
      state, batch)

  # The reference: optax.adam, jax.grad, the documented latent keys; chunk i of the batch.
  gdef, ddef = structure.graphdefs['generator'], structure.graphdefs['discriminator']
  gp, gr = start['generator'].params, start['generator'].rest
  dp, dr = start['discriminator'].params, start['discriminator'].rest
  tx = optax.adam(2e-4, b1=0.5, b2=0.999)
  d_opt, real = tx.init(dp), batch['image'] / 127.5 - 1.0
  key = jax.random.fold_in(jax.random.key(0), 0)
  latent = lambda i: jax.random.normal(jax.random.split(jax.random.fold_in(key, i))[0], (4, 4))
  for i in range(2):
    fake = nnx.merge(gdef, gp, gr)(latent(i), True)

    def d_loss(params, i=i, fake=fake):
      d = nnx.merge(ddef, params, dr)
      return (jnp.mean(jax.nn.softplus(-d(real[4 * i:4 * i + 4], True)))
              + jnp.mean(jax.nn.softplus(d(fake, True))))

    updates, d_opt = tx.update(jax.grad(d_loss)(dp), d_opt, dp)
    dp = optax.apply_updates(dp, updates)

  def g_loss(params):
    logits = nnx.merge(ddef, dp, dr)(nnx.merge(gdef, params, gr)(latent(2), True), True)
    return jnp.mean(jax.nn.softplus(-logits))

  updates, _ = tx.update(jax.grad(g_loss)(gp), tx.init(gp), gp)
  gp = optax.apply_updates(gp, updates)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  jax.tree.map(close, new.parts['discriminator'].params, dp)
  jax.tree.map(close, new.parts['generator'].params, gp)
  # The generator's EMA (decay min(0.999, 1/10) at step 0); the discriminator has none.
  jax.tree.map(lambda e, p, p0: close(e, 0.1 * p0 + 0.9 * p), new.parts['generator'].ema[
      'params'], gp, start['generator'].params)
  assert new.parts['discriminator'].ema is None
  adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  counts = {name: int(next(s.count for s in jax.tree.leaves(new.parts[name].opt_state,
                                                             is_leaf=adam) if adam(s)))
            for name in ('generator', 'discriminator')}
  assert counts == {'generator': 1, 'discriminator': 2}
  # The generator's loss: its parameters before the step, judged by the updated D.
  assert float(metrics['loss']) == pytest.approx(float(g_loss(start['generator'].params)),
                                                 rel=1e-5)
  assert np.isfinite(float(metrics['d_loss'])) and float(metrics['d_grad_norm']) > 0


def test_fid_equals_a_recomputation_and_does_not_depend_on_the_eval_batch(
    gan_run, classifier, tmp_path):
  config, workdir = gan_run
  with open(os.path.join(workdir, 'results.json')) as f:
    result = json.load(f)['eval']['test']
  assert result['num_samples'] == 360 and result['kid_digits_subsets'] == 1
  assert set(tasks.build(config).eval_metrics) == {'fid_digits', 'kid_digits'}
  # Recomputed outside the loop: the EMA generator's sample i from (sample_seed, i).
  loaded = inference.load(workdir, config)
  g = loaded.model('generator')
  task = loaded.task
  fake = gan_task.to_uint8(g(task.eval_latents(g, jnp.arange(360)), False))
  data = task.build_data(input_pipeline.HostShard())
  with data.eval_batches('test') as batches:
    real = np.concatenate([b['image'][b['mask'] > 0] for b in batches])
  features = gan_features.load_classifier(classifier)
  want = fd.frechet_distance(*fd.feature_statistics(features(jnp.asarray(real))),
                             *fd.feature_statistics(features(fake)))
  assert result['fid_digits'] == pytest.approx(want, rel=1e-4)
  # Another eval batch size: the same samples, the same FID.
  other = ml_collections.ConfigDict(config.to_dict())
  other.eval.batch_size = 48
  again = evaluate.run(other, workdir, output=str(tmp_path))['eval']['test']
  assert again['fid_digits'] == pytest.approx(result['fid_digits'], rel=1e-6)


@pytest.mark.parametrize('name', ['cifar10_dcgan.py', 'cifar10_sngan.py'])
def test_cifar_configs_run_two_steps_on_mock_data(name, tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_check_online', lambda name, data_dir: None)
  config = _config(name, **{'dataset.download': True, 'eval.batch_size': 10,
                            'dataset.image_size': 8,  # Resized: a fast compile.
                            'train.batch_size': 8})
  assert config.task.gan_loss == ('hinge' if 'sngan' in name else 'nonsaturating')
  if 'sngan' in name:  # The recipe's 5 critic updates, unrolled, compile 5 D steps: 2 here.
    assert config.task.n_critic == 5
    config.task.n_critic = 2
  config_lib.validate(config, 1)
  with tfds.testing.mock_data(num_examples=10):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results['eval']['test']['num_samples'] == 10
  _, state = checkpoint.read_state(str(tmp_path))
  assert set(state['parts']) == {'generator', 'discriminator'}


_DEVICES_SCRIPT = r'''
import json, sys
import jax, numpy as np
from vision_jax import config as config_lib, parallel, steps, tasks, train_state
config = config_lib.base_config()
config.task.name, config.task.n_critic = 'gan', 2
config.model.name = 'dcgan'
config.model.update(base_features=8, latent_dim=8, conditional=True)
rng = np.random.default_rng(0)
batch = {'image': rng.integers(0, 256, (16, 8, 8, 1), np.uint8),
         'label': rng.integers(0, 10, (16,)).astype(np.int32)}
out = {}
for n in (1, 8):
  config.mesh.data = n
  mesh = parallel.make_mesh(config, jax.devices()[:n])
  task = tasks.build(config)
  structure, state = train_state.create(task, mesh, num_classes=10, image_size=8,
                                        in_channels=1, steps_per_epoch=10)
  step = steps.jit_train_step(task, structure, mean=(0.5,), std=(0.5,), num_classes=10,
                              mesh=mesh)
  for _ in range(2):
    state, metrics = step(state, parallel.to_global(batch, mesh))
  out[n] = {'loss': float(metrics['loss']), 'd_loss': float(metrics['d_loss']),
            'params': [np.asarray(x).ravel()[:32].tolist()
                       for x in jax.tree.leaves({k: p.params for k, p in state.parts.items()})]}
print(json.dumps(out))
'''


def test_conditional_gan_on_8_devices_equals_1():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in ('loss', 'd_loss'):
    assert out['8'][key] == pytest.approx(out['1'][key], rel=1e-5)
  for x, y in zip(out['8']['params'], out['1']['params']):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_sigkill_then_resume_is_bit_identical(tmp_path, data_dir, classifier):
  args = ['--config', 'configs/digits_dcgan.py', *TINY, '--config.train.steps=10',
          '--config.train.eval_every=0', '--config.checkpoint.every_steps=5',
          '--config.task.n_critic=2', f'--config.task.fid_classifier={classifier}']
  straight = tmp_path / 'straight'
  proc = run_cli(args + ['--workdir', str(straight)], data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  killed = tmp_path / 'killed'
  env = dict(os.environ, TFDS_DATA_DIR=data_dir, JAX_PLATFORMS='cpu')
  with open(tmp_path / 'log', 'w') as log:
    victim = subprocess.Popen([sys.executable, '-m', 'vision_jax.main', *args, '--workdir',
                               str(killed)], cwd=REPO, env=env, stdout=log, stderr=log)
    try:
      deadline = time.time() + 240
      while not (killed / 'checkpoints' / '5').is_dir():
        assert victim.poll() is None, (tmp_path / 'log').read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    finally:
      victim.send_signal(signal.SIGKILL)
      victim.wait()
  resumed = run_cli(args + ['--workdir', str(killed)], data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from checkpoint at step' in resumed.stderr
  (step_a, a), (step_b, b) = checkpoint.read_state(str(straight)), checkpoint.read_state(
      str(killed))
  assert step_a == step_b == 10 and set(a['parts']) == {'generator', 'discriminator'}
  leaves_a = jax.tree_util.tree_flatten_with_path(a)[0]
  leaves_b = jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  results = json.loads((straight / 'results.json').read_text())
  assert 'fid_digits' in results['eval']['test']
  assert results == json.loads((killed / 'results.json').read_text())


def test_predict_writes_reproducible_pngs_and_export_serves_latents(gan_run, tmp_path):
  _, workdir = gan_run
  outs = []
  for name in ('a', 'b'):
    code, err = run_main(['--mode=predict', f'--workdir={workdir}',
                          f'--output={tmp_path / name}', '--config.task.num_samples=12'])
    assert code == 0, err[-3000:]
    outs.append({f: (tmp_path / name / f).read_bytes()
                 for f in ('samples.png', 'interpolation.png')})
  assert outs[0] == outs[1]  # Seeded: the same PNGs.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(tmp_path / 'a' / 'samples.png') as image:
    assert image.size == ((4 * 9 + 1) * 4, (3 * 9 + 1) * 4)  # 12 in 4 x 3, 1 px apart, x4.
  code, err = run_main(['--mode=predict', f'--workdir={workdir}', '--images', 'x.png'])
  one_paragraph(code, err, 'GAN', 'Drop --images')

  code, err = run_main(['--mode=export', f'--workdir={workdir}',
                        f'--output={tmp_path / "export"}'])
  assert code == 0, err[-3000:]
  served = export.load(str(tmp_path / 'export'))
  assert list(served.inputs) == ['latents'] and served.input_shape is None
  z = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
  images = served(z)
  assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
  loaded = inference.load(workdir, inference.read_config(workdir))
  want = gan_task.to_uint8(loaded.model('generator')(jnp.asarray(z), False))
  assert np.abs(images.astype(int) - np.asarray(want).astype(int)).max() <= 1
  with pytest.raises(ValueError, match='latents'):
    served(z[:, :4])


def test_bad_inputs_are_one_paragraph(tmp_path, gan_run, data_dir):
  del data_dir
  base = ['--config', 'configs/digits_dcgan.py', *TINY, '--config.train.steps=2']
  code, err = run_main([*base, '--config.model.name=convnet', f'--workdir={tmp_path / "a"}'])
  one_paragraph(code, err, "'convnet' is a classification model", "task.name='gan'",
                'dcgan', 'sngan')
  code, err = run_main([*base, '--config.task.n_critic=3', f'--workdir={tmp_path / "b"}'])
  one_paragraph(code, err, 'n_critic=3', 'multiple of 3')
  # Inception weights of the wrong shape.
  weights = tmp_path / 'inception'
  weights.mkdir()
  np.savez(weights / 'inception_pool3.npz', **{'Conv2d_1a_3x3/conv/kernel': np.zeros(
      (3, 3, 3, 16), np.float32)})
  (weights / 'conversion.json').write_text('{}')
  code, err = run_main([*base, f'--config.task.fid_inception={weights}',
                        '--config.task.fid_classifier=', f'--workdir={tmp_path / "c"}'])
  one_paragraph(code, err, 'does not fit FIDInceptionV3', 'Convert the weights file again')
  # A feature workdir that is not a classifier: the GAN run itself; and no workdir at all.
  _, gan_workdir = gan_run
  code, err = run_main([*base, f'--config.task.fid_classifier={gan_workdir}',
                        f'--workdir={tmp_path / "d"}'])
  one_paragraph(code, err, 'is a gan run', 'not a classifier', 'configs/default.py')
  code, err = run_main([*base, f'--config.task.fid_classifier={tmp_path / "none"}',
                        f'--workdir={tmp_path / "e"}'])
  one_paragraph(code, err, 'fid_classifier', 'config.json is missing')
  config = _config()
  config.task.generator_optim.lr = 1e-3
  with pytest.raises(config_lib.ConfigError, match='generator_optim sets lr'):
    config_lib.validate(config, 1)
