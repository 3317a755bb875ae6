"""vision_jax.optim: schedules, parameter rules, freezing, EMA, accumulation, each optimiser."""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vision_jax import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The config.optim keys optim.py reads beyond those of configs/default.py, with their defaults
# (added here only while the default config lacks them).
OPTIM_KEYS = dict(
    scale_lr_by_batch=False, warmup_epochs=0.0, min_lr_ratio=0.0, poly_power=2.0,
    rsqrt_timescale=10_000, piecewise_boundaries=(), piecewise_boundary_epochs=(),
    piecewise_scales=(), momentum=0.9, nesterov=False, b1=0.9, b2=0.999, eps=1e-8,
    trust_coefficient=0.001, adafactor_decay_rate=0.8, wd_rules=(), lr_rules=(), freeze=(),
    ema_decay=0.0, label_smoothing=0.0, accum_steps=1)


def load_config(path: str = 'configs/default.py'):
  spec = importlib.util.spec_from_file_location('config_under_test', os.path.join(REPO, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def with_optim_keys(config):
  for key, value in OPTIM_KEYS.items():
    if key not in config.optim:
      config.optim[key] = value
  return config


def make_config(steps: int = 100, batch_size: int = 256, **optim_overrides):
  config = with_optim_keys(load_config())
  config.train.steps, config.train.batch_size = steps, batch_size
  config.optim.update(dict(warmup_steps=0, weight_decay=0.0, schedule='constant'))
  config.optim.update(optim_overrides)
  return config


class Tiny(nnx.Module):
  """conv + BatchNorm + Linear: the three kinds of parameter the rules must tell apart."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(4, rngs=rngs)
    self.head = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    return self.head(x.mean(axis=(1, 2)))


def tiny_state():
  graphdef, params, rest = nnx.split(Tiny(nnx.Rngs(0)), nnx.Param, ...)
  return graphdef, params, rest


def flat(tree) -> dict:
  return {optim.param_path(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def one_update(config, params, grads, **kwargs):
  tx, _ = optim.make_optimizer(config, params, **kwargs)
  updates, _ = tx.update(grads, tx.init(params), params)
  return flat(updates)


# ------------------------------------------------------------------------------ paths & rules

def test_param_path_reads_like_the_module_tree():
  _, params, _ = tiny_state()
  assert sorted(flat(params)) == ['bn1/bias', 'bn1/scale', 'conv1/bias', 'conv1/kernel',
                                  'head/bias', 'head/kernel']
  assert optim.param_path(('layer1', 0, 'bn1', 'scale')) == 'layer1/0/bn1/scale'


@pytest.mark.parametrize('rules, decayed', [
    ((), {'conv1/kernel', 'head/kernel'}),                     # default: no 1-D params
    ((('head/.*', 0.0),), {'conv1/kernel'}),                   # first matching rule wins
    ((('.*', 1.0),), {'conv1/kernel', 'conv1/bias', 'bn1/scale', 'bn1/bias', 'head/kernel',
                      'head/bias'}),
])
def test_weight_decay_mask_hits_exactly_the_intended_params(rules, decayed):
  _, params, _ = tiny_state()
  params = jax.tree.map(lambda x: x + 1.0, params)  # No zero biases: every decay shows.
  config = make_config(name='sgd', momentum=0.0, learning_rate=1.0, weight_decay=0.1,
                       wd_rules=rules)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = one_update(config, params, zeros)
  p = flat(params)
  assert {k for k, u in updates.items() if np.any(u != 0)} == decayed
  for k in decayed:  # Decoupled: update = -lr * wd * param.
    np.testing.assert_allclose(updates[k], -0.1 * p[k], rtol=1e-6)


def test_abstract_params_give_the_same_mask():
  """train_state builds the optimiser from nnx.eval_shape params (ShapeDtypeStructs)."""
  _, abstract, _ = nnx.split(nnx.eval_shape(lambda: Tiny(nnx.Rngs(0))), nnx.Param, ...)
  _, params, _ = tiny_state()
  config = make_config(name='adamw', weight_decay=0.1, learning_rate=1.0)
  tx, _ = optim.make_optimizer(config, abstract)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates = flat(tx.update(zeros, tx.init(params), params)[0])
  assert {k for k, u in updates.items() if np.any(u != 0)} == {'conv1/kernel', 'head/kernel'}


def test_lr_multipliers_scale_updates():
  _, params, _ = tiny_state()
  grads = jax.tree.map(jnp.ones_like, params)
  base = one_update(make_config(name='sgd', momentum=0.0, learning_rate=0.1), params, grads)
  ruled = one_update(make_config(name='sgd', momentum=0.0, learning_rate=0.1,
                                 lr_rules=(('head/.*', 0.5), ('.*', 2.0))), params, grads)
  for k in base:
    np.testing.assert_allclose(ruled[k], base[k] * (0.5 if k.startswith('head') else 2.0))


def test_rule_errors_name_the_key():
  _, params, _ = tiny_state()
  with pytest.raises(ValueError, match=r'wd_rules.*\'encoder/.*\' matches no parameter'):
    optim.make_optimizer(make_config(wd_rules=(('encoder/.*', 0.0),)), params)
  with pytest.raises(ValueError, match='lr_rules: bad regex'):
    optim.make_optimizer(make_config(lr_rules=(('head/(', 0.1),)), params)
  with pytest.raises(ValueError, match='freezes every parameter'):
    optim.make_optimizer(make_config(freeze=('.*',)), params)
  with pytest.raises(ValueError, match='accum_steps=3 must be a positive integer that divides'):
    optim.make_optimizer(make_config(accum_steps=3), params)
  with pytest.raises(ValueError, match='label_smoothing must be in'):
    optim.make_optimizer(make_config(label_smoothing=1.0), params)


def test_unknown_names_list_the_allowed_ones():
  _, params, _ = tiny_state()
  with pytest.raises(ValueError, match="Unknown config.optim.name 'adam'.*sgd, adamw, "
                                       'adafactor, lamb, lars'):
    optim.make_optimizer(make_config(name='adam'), params)
  with pytest.raises(ValueError, match="Unknown config.optim.schedule 'cosine'.*warmup_cosine"):
    optim.make_optimizer(make_config(schedule='cosine'), params)


# ------------------------------------------------------------------------------ freezing & EMA

def test_frozen_params_are_bit_identical_and_have_no_state():
  graphdef, params, rest = tiny_state()
  config = make_config(name='adamw', learning_rate=0.05, weight_decay=0.1,
                       freeze=('conv1/.*',))
  tx, _ = optim.make_optimizer(config, params)
  x = jax.random.normal(jax.random.key(1), (8, 6, 6, 1))
  y = jnp.arange(8) % 3

  @jax.jit
  def step(params, rest, opt_state):
    def loss_fn(model):
      return optim.cross_entropy(model(x, train=True), y, 3).mean()
    model = nnx.merge(graphdef, params, rest)
    grads = nnx.grad(loss_fn)(model)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state

  opt_state, new = tx.init(params), params
  for _ in range(3):
    new, rest, opt_state = step(new, rest, opt_state)
  before, after = flat(params), flat(new)
  for k in before:
    if k.startswith('conv1/'):
      assert after[k].tobytes() == before[k].tobytes(), k
    else:
      assert np.any(after[k] != before[k]), k
  state_paths = [optim.param_path(k) for k, _ in
                 jax.tree_util.tree_flatten_with_path(opt_state)[0]]
  assert not [p for p in state_paths if '/conv1/' in f'/{p}']
  assert [p for p in state_paths if p.endswith('head/kernel')]  # mu and nu.


def test_bad_learning_rates_are_refused():
  _, params, _ = tiny_state()
  for bad in (-1.0, float('nan'), float('inf')):
    with pytest.raises(ValueError, match='learning_rate must be a finite number >= 0'):
      optim.make_optimizer(make_config(learning_rate=bad), params)


# ------------------------------------------------------------------------------ schedules

def lr_at(steps_and_values, **overrides):
  _, schedule = optim.make_optimizer(make_config(**overrides), {'w': jnp.zeros(2)},
                                     steps_per_epoch=overrides.pop('spe', None))
  for step, value in steps_and_values:
    np.testing.assert_allclose(float(schedule(step)), value, rtol=1e-5, atol=1e-7,
                               err_msg=f'step {step}')


def test_schedule_values():
  lr_at([(0, 1.0), (50, 1.0)], schedule='constant', learning_rate=1.0)
  lr_at([(0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0)],
        schedule='warmup_cosine', learning_rate=1.0, warmup_steps=10)
  lr_at([(10, 1.0), (55, 0.55), (100, 0.1)],
        schedule='warmup_cosine', learning_rate=1.0, warmup_steps=10, min_lr_ratio=0.1)
  lr_at([(5, 0.5), (55, 0.5), (100, 0.0)],
        schedule='warmup_linear', learning_rate=1.0, warmup_steps=10)
  lr_at([(55, 0.25)], schedule='warmup_poly', learning_rate=1.0, warmup_steps=10)
  lr_at([(10, 1.0), (20, 2 ** -0.5), (40, 0.5)],
        schedule='rsqrt', learning_rate=1.0, warmup_steps=10, rsqrt_timescale=10)
  lr_at([(29, 1.0), (30, 0.1), (59, 0.1), (60, 0.01)], schedule='piecewise',
        learning_rate=1.0, piecewise_boundaries=(30, 60), piecewise_scales=(0.1, 0.1))


def test_schedule_in_epochs_and_batch_scaling():
  lr_at([(5, 0.25), (10, 0.5)], schedule='constant', learning_rate=0.5, warmup_epochs=2.0,
        spe=5)
  lr_at([(29, 1.0), (30, 0.2)], schedule='piecewise', learning_rate=1.0,
        piecewise_boundary_epochs=(3,), piecewise_scales=(0.2,), spe=10)
  lr_at([(0, 0.2)], learning_rate=0.1, scale_lr_by_batch=True, batch_size=512)
  with pytest.raises(ValueError, match='needs steps_per_epoch'):
    lr_at([], warmup_epochs=1.0)
  with pytest.raises(ValueError, match='not both'):
    lr_at([], warmup_epochs=1.0, warmup_steps=3, spe=5)
  with pytest.raises(ValueError, match='within config.train.steps'):
    lr_at([], warmup_steps=500)
  with pytest.raises(ValueError, match='as many as'):
    lr_at([], schedule='piecewise', piecewise_boundaries=(3,), piecewise_scales=(0.1, 0.1))


# ------------------------------------------------------------------------------ optimisers

@pytest.mark.parametrize('name, overrides', [
    ('sgd', dict(learning_rate=0.1, nesterov=True)),
    ('adamw', dict(learning_rate=0.1)),
    ('adafactor', dict(learning_rate=0.1)),
    ('lamb', dict(learning_rate=0.1)),
    ('lars', dict(learning_rate=0.1, trust_coefficient=1.0)),
])
def test_each_optimiser_reduces_a_quadratic(name, overrides):
  target = {'w': jnp.arange(12.0).reshape(4, 3) / 6 - 1, 'b': jnp.array([1.0, -1.0, 0.5])}
  params = jax.tree.map(jnp.zeros_like, target) | {'w': jnp.full((4, 3), 0.3)}
  loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
  tx, _ = optim.make_optimizer(make_config(name=name, weight_decay=1e-4, grad_clip_norm=10.0,
                                           **overrides), params)

  @jax.jit
  def run(params):
    def body(carry, _):
      params, state = carry
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(body, (params, tx.init(params)), None, length=60)[0][0]

  assert float(loss(run(params))) < 0.1 * float(loss(params))


# ------------------------------------------------------------------------------ loss & accumulation

def test_cross_entropy_with_label_smoothing():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2])
  logp = jax.nn.log_softmax(logits)
  targets = 0.9 * jax.nn.one_hot(labels, 3) + 0.1 / 3
  expected = -(targets * logp).sum(-1)
  np.testing.assert_allclose(optim.cross_entropy(logits, labels, 3, 0.1), expected, rtol=1e-6)
  soft = jax.nn.one_hot(labels, 3)  # Mixup-style targets go through unchanged.
  np.testing.assert_allclose(optim.cross_entropy(logits, soft, 3, 0.1), expected, rtol=1e-6)


def test_accumulation_equals_one_big_batch():
  graphdef, params = nnx.split(nnx.Linear(5, 3, rngs=nnx.Rngs(0)), nnx.Param)
  batch = {'x': jax.random.normal(jax.random.key(2), (12, 5)), 'y': jnp.arange(12) % 3}

  def loss_and_grad(micro, count):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(micro['x'])
      return optim.cross_entropy(logits, micro['y'], 3).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    return (loss, grads), count + 1

  (loss1, grads1), _ = optim.accumulate_gradients(loss_and_grad, batch, 1, 0)
  (loss4, grads4), count = jax.jit(
      lambda b: optim.accumulate_gradients(loss_and_grad, b, 4, 0))(batch)
  assert int(count) == 4
  np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads4), jax.tree.leaves(grads1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match='accum_steps=5'):
    optim.accumulate_gradients(loss_and_grad, batch, 5, 0)


# ------------------------------------------------------------------------------ recipes

RECIPES = ['configs/cifar10_resnet18.py', 'configs/cifar100_wrn28_10.py',
           'configs/imagenet2012_resnet50.py', 'configs/imagenet2012_resnet50_lars.py',
           'configs/digits_adafactor.py']


def _keys(config, prefix=''):
  out = set()
  for k, v in config.items():
    out |= _keys(v, f'{prefix}{k}.') if hasattr(v, 'items') and k != 'model' else {prefix + k}
  return out


@pytest.mark.parametrize('path', RECIPES)
def test_recipe_builds_its_optimizer(path):
  config = with_optim_keys(load_config(path))
  with open(os.path.join(REPO, path)) as f:
    assert 'python -m vision_jax.main --config ' + path in f.read()
  known = _keys(make_config()) | {'sweep'}
  assert _keys(config) <= known, _keys(config) - known
  params = {'conv1': {'kernel': jnp.zeros((3, 3, 3, 8)), 'bias': jnp.zeros(8)},
            'bn1': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)},
            'head': {'kernel': jnp.zeros((8, 10)), 'bias': jnp.zeros(10)}}
  _, schedule = optim.make_optimizer(config, params, steps_per_epoch=100)
  assert float(schedule(config.train.steps // 2)) > 0


def test_train_step_with_accumulation_equals_one_batch():
  """The real train step, accum_steps=4 vs 1 on the same batch (ConvNet: no BatchNorm, so
  equal up to float32 rounding). Before the fix it did not even trace: NNX refused to build
  the model inside the accumulation scan from the outer trace's parameters."""
  from vision_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vision_jax import parallel, steps, tasks, train_state  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8),
           'label': rng.integers(0, 10, 16).astype(np.int32)}
  params = {}
  for accum in (1, 4):
    config = config_lib.base_config()
    config.train.batch_size, config.optim.accum_steps = 16, accum
    config.optim.name, config.optim.schedule = 'sgd', 'constant'
    config.model.width, config.model.hidden = 4, 16
    mesh = parallel.make_mesh(config, jax.devices()[:1])
    task = tasks.build(config)
    structure, state = train_state.create(
        task, mesh, num_classes=10, image_size=8, in_channels=1, steps_per_epoch=10)
    step = jax.jit(steps.make_train_step(task, structure, mean=(0.5,), std=(0.5,),
                                         accum_steps=accum))
    state, metrics = step(state, batch)
    assert np.isfinite(metrics['loss'])
    params[accum] = jax.tree.leaves(state.parts['model'].params)
  for a, b in zip(params[1], params[4]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
