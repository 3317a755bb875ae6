"""Training recipes wired into runs: host augmentations in the preprocess recipe, repeated
augmentation, the eval image size, the BCE / softmax loss choice, AGC, and the config keys'
errors."""
import numpy as np
import optax
import pytest

import jax
import jax.numpy as jnp

from vision_jax import config as config_lib
from vision_jax import losses, optim
from vision_jax.config import base_config
from vision_jax.data import augment
from vision_jax.data import input_pipeline as ip
from vision_jax.data import preprocess
from vision_jax.data import stream
from vision_jax.errors import ConfigError


def _digits(**dataset):
  config = base_config()
  config.dataset.update(dataset)
  config.train.batch_size = 12
  return config


# ------------------------------------------------------------------ host augmentations


def test_augmentations_run_in_the_train_recipe_only_and_stay_a_function_of_step(data_dir):
  plain = ip.build(_digits())
  aug = ip.build(_digits(trivialaugment=True, random_erasing=0.5))
  a, b = plain.train[3], aug.train[3]
  np.testing.assert_array_equal(a['label'], b['label'])  # Same examples, same order ...
  assert not np.array_equal(a['image'], b['image'])      # ... augmented,
  np.testing.assert_array_equal(b['image'], aug.train[3]['image'])  # the same every time.
  assert b['image'].dtype == np.uint8 and b['image'].shape == a['image'].shape
  for x, y in zip(plain.evals['test'], aug.evals['test']):  # Evaluation untouched.
    np.testing.assert_array_equal(x['image'], y['image'])


def test_the_recipe_applies_the_augment_to_its_output_with_the_examples_generator():
  image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  fn = augment.make_augment(mean=(0.5,) * 3, std=(0.5,) * 3, randaugment='rand-m9-n3',
                            random_erasing=1.0)
  crop = preprocess.make_preprocess('resize', 16, train=True)
  recipe = preprocess.make_preprocess('resize', 16, train=True, augment=fn)
  assert recipe.random and not recipe.identity_for((16, 16, 3))
  assert preprocess.make_preprocess('resize', 16, train=False, augment=fn).augment is None
  got = recipe({'image': image, 'label': 1}, np.random.default_rng((7, 123)))['image']
  want = fn(crop({'image': image, 'label': 1}, None)['image'], np.random.default_rng((7, 123)))
  np.testing.assert_array_equal(got, want)


def test_an_augmented_batch_is_the_same_with_0_and_2_workers(data_dir):
  data = ip.build(_digits(randaugment='rand-m9-mstd0.5-inc1', random_erasing=0.25,
                          repeated_aug=3))
  inline = [data.train[k] for k in (5, 6)]
  with ip.iterate(data.train, 5, num_workers=2) as batches:
    read = [next(batches), next(batches)]
  for x, y in zip(inline, read):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


def test_host_augmentation_keeps_the_cifar_recipe_on_the_host(data_dir):
  config = _digits(preprocess='cifar', image_size=8)
  assert ip.build(config, augment_on_device=True).device_augment == 'cifar'
  config.dataset.randaugment = 'rand-m5'
  assert ip.build(config, augment_on_device=True).device_augment == ''


def test_eval_image_size_resizes_evaluation_only(data_dir):
  data = ip.build(_digits(image_size=8, eval_image_size=16))
  assert data.train[0]['image'].shape[1:3] == (8, 8)
  assert next(iter(data.evals['test']))['image'].shape[1:3] == (16, 16)
  assert data.describe()['image_size'] == 16 and data.describe()['train_image_size'] == 8


# ------------------------------------------------------------------ repeated augmentation


def test_repeated_order_puts_k_copies_in_a_row_and_each_example_k_times_per_k_epochs():
  n, k, batch = 10, 3, 6
  order = stream.EpochOrder(n, seed=4)
  repeated = stream.RepeatedOrder(order, k)
  first = repeated(np.arange(k * n))
  assert sorted(np.bincount(first, minlength=n)) == [k] * n  # Exactly k times each.
  np.testing.assert_array_equal(first.reshape(-1, k), np.repeat(order(np.arange(n)), k)
                                .reshape(-1, k))  # Copies adjacent, in the epoch's order.
  for step in range(k * n // batch):  # With k | batch: batch / k examples, k times each.
    rows = repeated(stream.positions(step, batch, stream.HostShard()))
    assert all(c == k for c in np.unique(rows, return_counts=True)[1])
  second = repeated(np.arange(k * n, 2 * k * n))  # The next k epochs: a fresh permutation.
  assert sorted(np.bincount(second, minlength=n)) == [k] * n
  assert not np.array_equal(first, second)


def test_repeated_copies_are_augmented_apart_and_hosts_split_the_same_batch(data_dir):
  config = _digits(trivialaugment=True, repeated_aug=3)
  whole = ip.build(config).train[2]
  labels, images = whole['label'].reshape(4, 3), whole['image'].reshape(4, 3, -1)
  assert np.all(labels == labels[:, :1])  # 4 examples x 3 copies (batch 12).
  assert any(not np.array_equal(g[0], g[1]) for g in images)  # Different draws.
  halves = [ip.build(config, ip.HostShard(i, 2)).train[2] for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), whole['image'])


# ------------------------------------------------------------------ losses


def test_bce_loss_against_a_hand_computed_value():
  logits = jnp.array([[0.0, 2.0, -1.0]])
  sig = lambda x: 1 / (1 + np.exp(-x))
  # Smoothing 0.3 over K=3: targets 0.1, 0.8, 0.1; thresholded at 0.2: 0, 1, 0.
  fn = losses.classification_loss('bce', label_smoothing=0.3, threshold=0.2)
  expected = -(np.log(1 - sig(0.0)) + np.log(sig(2.0)) + np.log(1 - sig(-1.0))) / 3
  np.testing.assert_allclose(fn(logits, jnp.array([1])), [expected], rtol=1e-6)
  soft = losses.classification_loss('bce', label_smoothing=0.3)  # No threshold: soft targets.
  t = np.array([0.1, 0.8, 0.1])
  x = np.array([0.0, 2.0, -1.0])
  want = -np.mean(t * np.log(sig(x)) + (1 - t) * np.log(1 - sig(x)))
  np.testing.assert_allclose(soft(logits, jnp.array([1])), [want], rtol=1e-6)
  xent = losses.classification_loss('softmax_xent', label_smoothing=0.3)
  np.testing.assert_allclose(xent(logits, jnp.array([1])),
                             optim.cross_entropy(logits, jnp.array([1]), 3, 0.3))


def test_the_train_step_minimises_the_configured_loss():
  from vision_jax import parallel, steps, tasks, train_state  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
           'label': rng.integers(0, 10, 8).astype(np.int32)}
  config = base_config()
  config.train.batch_size = 8
  config.model.width, config.model.hidden = 4, 16
  config.model.fast_cpu_ops = 'off'  # XLA's own ops: nothing to build.
  config.optim.loss, config.optim.bce_target_threshold = 'bce', 0.2
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  task = tasks.build(config)
  structure, state = train_state.create(
      task, mesh, num_classes=10, image_size=8, in_channels=1, steps_per_epoch=10)
  model = structure.model(state, 'model')
  from vision_jax.data.normalize import normalize  # pylint: disable=g-import-not-at-top
  logits = model(normalize(jnp.asarray(batch['image']), (0.5,), (0.5,)), train=True)
  want = losses.binary_cross_entropy(logits, batch['label'], 10, target_threshold=0.2).mean()
  step = steps.jit_train_step(task, structure, mean=(0.5,), std=(0.5,),
                              num_classes=10, mesh=mesh)
  _, metrics = step(state, batch)
  np.testing.assert_allclose(metrics['loss'], want, rtol=1e-5)


# ------------------------------------------------------------------ AGC


def test_agc_clips_each_unit_to_its_weight_norm_ratio():
  config = base_config()
  config.optim.update(name='sgd', momentum=0.0, weight_decay=0.0, schedule='constant',
                      warmup_steps=0, learning_rate=1.0, agc_clip=0.1)
  params = {'w': jnp.array([[3.0, 0.1], [4.0, 0.0]])}   # Column norms 5 and 0.1.
  grads = {'w': jnp.array([[30.0, 0.001], [40.0, 0.0]])}  # 50 (clipped to 0.5), 0.001.
  tx, _ = optim.make_optimizer(config, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(-updates['w'], [[0.3, 0.001], [0.4, 0.0]], rtol=1e-5)
  ref, _ = optax.adaptive_grad_clip(0.1).update(grads, None, params)
  np.testing.assert_allclose(-updates['w'], ref['w'], rtol=1e-6)
  config.optim.agc_clip = -1.0
  with pytest.raises(ValueError, match='config.optim.agc_clip must be >= 0'):
    optim.make_optimizer(config, params)


# ------------------------------------------------------------------ config errors


@pytest.mark.parametrize('key, value, message', [
    ('dataset.randaugment', 'rand-x9', 'config.dataset.randaugment'),
    ('dataset.random_erasing', 1.5, 'config.dataset.random_erasing=1.5'),
    ('dataset.random_erasing_mode', 'noise', 'random_erasing_mode'),
    ('dataset.repeated_aug', 0, 'config.dataset.repeated_aug=0'),
    ('dataset.eval_image_size', 16, 'config.dataset.eval_image_size=16'),  # ConvNet.
    ('optim.loss', 'hinge', "config.optim.loss='hinge'"),
    ('optim.bce_target_threshold', 0.2, "applies to config.optim.loss='bce' only"),
    ('model.drop_path_rate', 0.1, 'config.model.drop_path_rate is not an option'),
])
def test_bad_recipe_keys_name_the_key_and_the_fix(key, value, message):
  config = base_config()
  section, name = key.split('.')
  with config.unlocked():
    config[section][name] = value
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace('.', r'\.')):
    config_lib.validate(config, 1)


def test_a_drop_path_rate_of_one_is_refused_before_the_model_is_built():
  config = base_config()
  config.model.name = 'resnet50'
  with config.unlocked():
    config.model.drop_path_rate = 1.0
  with pytest.raises(ConfigError, match=r'config\.model\.drop_path_rate=1\.0: use'):
    config_lib.validate(config, 1)


def test_two_policies_at_once_are_refused():
  config = base_config()
  config.dataset.randaugment, config.dataset.trivialaugment = 'rand-m9', True
  with pytest.raises(ConfigError, match='alternatives'):
    config_lib.validate(config, 1)


def test_the_cli_refuses_a_malformed_randaugment_string_in_one_paragraph(data_dir, tmp_path):
  from conftest import run_cli  # pylint: disable=g-import-not-at-top
  proc = run_cli(['--config', 'configs/default.py', '--workdir', str(tmp_path / 'w'),
                  '--config.dataset.randaugment=rand-m9-q2'], data_dir)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "config.dataset.randaugment='rand-m9-q2'" in proc.stderr
  assert 'Traceback' not in proc.stderr
