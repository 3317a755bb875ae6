"""SSL models: the backbone keeps the classifier's parameter paths, shapes and initial values,
its features are what the classifier's head sees, the projector and predictor are the MLPs
asked for, and init_from an SSL checkpoint loads the backbone into the classifier and leaves
the projector unused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision_jax import checkpoint
from vision_jax import config as config_lib
from vision_jax import finetune
from vision_jax import models
from vision_jax import parallel
from vision_jax import train_state
from vision_jax import tasks
from vision_jax.models import resnet
from vision_jax.models import ssl

SSL_ONLY = ('projector', 'predictor')


class TinyResNet(resnet.ResNet):
  """The real ResNet class with BatchNorm, one basic block per stage (the second with a
  projection shortcut): cifar_resnet18's code at a fraction of its compile time."""
  STAGES, BLOCK, STEM = (1, 1), 'basic', 'cifar'


def _shapes(module_fn) -> dict[str, tuple]:
  params = nnx.state(nnx.eval_shape(module_fn), nnx.Param)
  return {k: tuple(v.shape) for k, v in finetune.flat(nnx.to_pure_dict(params)).items()}


@pytest.mark.parametrize('name', ['convnet', 'alexnet', 'cifar_resnet18', 'resnet50',
                                  'wide_resnet28_10', 'bit_r50x1'])
def test_backbone_paths_and_shapes_equal_the_classifiers(name):
  kwargs = {'image_size': 32, 'in_channels': 3}
  classifier = _shapes(lambda: models.create_model(name, 10, **kwargs))
  model = _shapes(lambda: ssl.create_ssl_model(name, rngs=nnx.Rngs(0),
                                               predictor_hidden_dim=64, **kwargs))
  backbone = {k: v for k, v in model.items() if k.split('/')[0] not in SSL_ONLY}
  assert backbone == {k: v for k, v in classifier.items() if not k.startswith('head/')}
  assert {'head/kernel', 'head/bias'} <= set(classifier)  # What the fine-tune skips.
  assert not any(k.startswith('head/') for k in model)
  assert any(k.startswith('projector/') for k in model)
  assert any(k.startswith('predictor/') for k in model)


def _pair(name: str, **kwargs):
  """(classifier, SSL model) of one backbone class and seed, on 8x8 grey images."""
  if name == 'tiny_resnet':
    cls, kw = TinyResNet, {'in_channels': 1, 'width': 4}
  else:
    cls, kw = models.model_class(name), {'in_channels': 1, 'image_size': 8}
  classifier = cls(10, rngs=nnx.Rngs(3), **kw)
  model = ssl.ssl_class(cls)(rngs=nnx.Rngs(3), projector_hidden_dim=16,
                             projector_output_dim=8, **kw, **kwargs)
  return classifier, model


@pytest.fixture(scope='module')
def tiny():
  """A TinyResNet classifier and its SSL model (SimCLR v2's 3-layer projector, BYOL's
  predictor), built once: eager initialisation compiles every layer shape."""
  return _pair('tiny_resnet', projector_layers=3, projector_last_bn=True,
               predictor_hidden_dim=12)


@pytest.mark.parametrize('name', ['convnet', 'tiny_resnet'])
def test_same_seed_same_backbone_and_features_are_what_the_head_sees(name, tiny):
  classifier, model = tiny if name == 'tiny_resnet' else _pair(name)
  c_state = finetune.flat(nnx.to_pure_dict(nnx.state(classifier)))
  m_state = finetune.flat(nnx.to_pure_dict(nnx.state(model)))
  for path, value in m_state.items():
    if path.split('/')[0] not in SSL_ONLY and '/rngs/' not in f'/{path}/':
      np.testing.assert_array_equal(value, c_state[path], err_msg=path)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)

  @jax.jit
  def forward(model, classifier, x):
    pooled = ssl.pooled_features(classifier, x)
    # The classifier's head is back in place after pooled_features.
    return model.features(x, False), pooled, classifier(x), classifier.head(pooled)

  features, pooled, logits, head_of_pooled = forward(model, classifier, x)
  np.testing.assert_allclose(features, pooled, rtol=1e-6, atol=1e-6)
  assert features.shape == (4, model.feature_dim) and features.dtype == jnp.float32
  # Pooled features are the head's input.
  np.testing.assert_allclose(logits, head_of_pooled, rtol=1e-5, atol=1e-5)
  assert isinstance(classifier.head, nnx.Linear)
  if name == 'convnet':
    assert model.feature_dim == 1024  # fc1's activations.


def test_projector_and_predictor_layers(tiny):
  _, model = tiny
  assert model.feature_dim == 8  # TinyResNet: 2 x width 4.
  params = {k: tuple(v.shape) for k, v in
            finetune.flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
  ssl_params = {k: v for k, v in params.items() if k.split('/')[0] in SSL_ONLY}
  assert ssl_params == {
      'projector/linears/0/kernel': (8, 16), 'projector/norms/0/scale': (16,),
      'projector/norms/0/bias': (16,),
      'projector/linears/1/kernel': (16, 16), 'projector/norms/1/scale': (16,),
      'projector/norms/1/bias': (16,),
      'projector/linears/2/kernel': (16, 8), 'projector/norms/2/scale': (8,),
      'projector/norms/2/bias': (8,),
      'predictor/linears/0/kernel': (8, 12), 'predictor/norms/0/scale': (12,),
      'predictor/norms/0/bias': (12,),
      'predictor/linears/1/kernel': (12, 8), 'predictor/linears/1/bias': (8,)}
  x = jnp.ones((4, 8, 8, 1)) * jnp.arange(4.0)[:, None, None, None]
  model = nnx.clone(model)  # The fixture stays as initialised.
  z, p = nnx.jit(lambda m, x: (m(x, train=True), m.predict(m(x, train=True), train=True)))(
      model, x)
  assert z.shape == p.shape == (4, 8) and z.dtype == p.dtype == jnp.float32
  # Training mode moved the projector's BatchNorm statistics off their initial zeros.
  assert float(jnp.abs(model.projector.norms[0].mean[...]).max()) > 0
  simclr = nnx.eval_shape(lambda: ssl.ssl_class(TinyResNet)(rngs=nnx.Rngs(0), width=4))
  with pytest.raises(ValueError, match='predictor_hidden_dim'):
    simclr.predict(z)


def test_init_from_an_ssl_checkpoint_loads_the_backbone_and_skips_the_projector(
    tmp_path, monkeypatch, tiny):
  # pylint: disable-next=protected-access
  monkeypatch.setitem(models._REGISTRY, 'tiny_resnet', TinyResNet)
  _, params, rest = train_state.split(tiny[1])
  saver = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
  saver.save(7, {'step': np.int32(7), 'parts': {'model': {'params': params, 'rest': rest}}},
             {'next_step': 7})
  saver.close()

  config = config_lib.base_config()
  config.model.name, config.model.width = 'tiny_resnet', 4
  config.init_from.checkpoint = str(tmp_path)
  mesh = parallel.make_mesh(config, jax.devices()[:1])
  structure, state = train_state.create(tasks.build(config), mesh, num_classes=10,
                                        image_size=8, in_channels=1, steps_per_epoch=10)
  state, report = finetune.init_from_checkpoint(config, state, structure)
  source = finetune.flat(params) | finetune.flat(rest)
  backbone = sorted(k for k in source if k.split('/')[0] not in SSL_ONLY)
  assert report['checkpoint_step'] == 7
  assert sorted(report['loaded']) == backbone
  assert sorted(report['reinitialized']) == ['head/bias', 'head/kernel']
  assert report['unused_from_checkpoint'] == sorted(
      k for k in source if k.split('/')[0] in SSL_ONLY)
  loaded = finetune.flat(state.parts['model'].params) | finetune.flat(state.parts['model'].rest)
  for path in backbone:
    np.testing.assert_array_equal(loaded[path], source[path], err_msg=path)
