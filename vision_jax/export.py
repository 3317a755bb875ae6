"""--mode=export: a serving artefact of a trained workdir, and `load` to run it.

  python -m vision_jax.main --mode=export --workdir W

writes W/export/:

  model.stablehlo      jax.export of serve(weights, images) -> the task's served output
                       (one array, e.g. logits, or named arrays, e.g. boxes and scores;
                       other inputs than images where the task serves them: metadata.json's
                       inputs, output and output.meaning say which): the run's
                       normalisation + the model in eval mode, for uint8 NHWC images of any
                       batch size (a symbolic batch dimension), lowered for CPU, CUDA and TPU
  weights.npz          the arrays `weights` stands for (w0000, w0001, ...), in order
  metadata.json        input shape and dtype, normalisation, class names, step, files
  saved_model/<step>/  the same function as a TF SavedModel (jax2tf, weights as variables):
                       signature serving_default(images: uint8[None, H, W, C]) ->
                       {logits, probabilities} (or the named outputs as they are);
                       <step> is the version TF Serving serves

Weights travel next to the function rather than inside it as constants, so the StableHLO
stays small and a 100 MB ResNet does not become a 100 MB program. `load(dir)` needs only
jax, numpy and PIL: none of vision_jax's training code, flax or TensorFlow.

The function (and the SavedModel's signature) takes uint8 images already at the model's
input size: no resizing happens inside it, in JAX or in TF. Getting them there is the
client's part, on the host, and metadata.json's input.preprocessing states it exactly: the
run's eval transform (`eval_transform.EvalTransform.to_json()`: our fast `resize` /
`center_crop`, the dense tasks' `fit_and_pad` / `resize_and_pad`, or torchvision's /
timm's pipelines reproduced exactly with PIL), which `Served.prepare` runs, the same Python
code evaluation and --mode=predict ran, on one HWC uint8 image of any size. A TF Serving client applies it
before the request: `EvalTransform.from_json(metadata['input']['preprocessing'])(image)`.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np
from absl import logging

PLATFORMS = ('cpu', 'cuda', 'tpu')
FUNCTION_FILE, WEIGHTS_FILE, METADATA_FILE = 'model.stablehlo', 'weights.npz', 'metadata.json'


class Served:
  """An exported model: `served(uint8 images NHWC or HWC) -> float32 logits` (numpy)."""

  def __init__(self, export_dir: str):
    import jax  # pylint: disable=g-import-not-at-top
    if not os.path.exists(os.path.join(export_dir, METADATA_FILE)):
      raise FileNotFoundError(f'No exported model in {export_dir}: write one with '
                              'python -m vision_jax.main --mode=export --workdir <workdir>.')
    with open(os.path.join(export_dir, METADATA_FILE)) as f:
      self.metadata: dict[str, Any] = json.load(f)
    with open(os.path.join(export_dir, FUNCTION_FILE), 'rb') as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    with np.load(os.path.join(export_dir, WEIGHTS_FILE)) as npz:
      self._weights = [jax.device_put(npz[f'w{i:04d}'])
                       for i in range(self.metadata['num_weights'])]
    self._call = jax.jit(exported.call)
    # Image tasks take uint8 images of this shape; others their named inputs (metadata
    # 'inputs', e.g. latents and labels), given to __call__ in that order.
    self.input_shape = (tuple(self.metadata['input']['shape'][1:])
                        if 'input' in self.metadata else None)
    self.inputs = self.metadata.get('inputs', {})
    self.class_names: list[str] = self.metadata['class_names']

  def prepare(self, image: np.ndarray) -> np.ndarray:
    """One HWC uint8 image of any size -> the model's input: the run's eval transform
    (metadata['input']['preprocessing'], the very function evaluation ran)."""
    from vision_jax.data import eval_transform  # pylint: disable=g-import-not-at-top
    spec = self.metadata['input']['preprocessing']
    if 'name' in spec:
      transform = eval_transform.EvalTransform.from_json(spec)
    else:  # Exports written before the transform was one object.
      transform = eval_transform.EvalTransform(
          spec['recipe'], self.input_shape[0], crop_fraction=spec['crop_fraction'],
          channels=spec.get('convert_channels', 0), fill=tuple(spec.get('fill', ())))
    return transform(np.asarray(image, np.uint8))

  def __call__(self, images: np.ndarray, *more: np.ndarray) -> np.ndarray:
    if self.input_shape is None:
      return self._call_inputs(images, *more)
    images = np.asarray(images)
    single = images.ndim == 3
    images = images[None] if single else images
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.input_shape:
      shape = ', '.join(map(str, self.input_shape))
      raise ValueError(f'Expected uint8 images of shape (N, {shape}), got {images.dtype} '
                       f"{images.shape}: resize to the model's input size with its channel "
                       'count first.')
    import jax  # pylint: disable=g-import-not-at-top
    out = jax.tree.map(np.asarray, self._call(self._weights, images))  # Named outputs: a dict.
    return jax.tree.map(lambda x: x[0], out) if single else out

  def _call_inputs(self, *arrays: np.ndarray) -> np.ndarray:
    """A task whose function takes named inputs (metadata['inputs']), in that order."""
    if len(arrays) != len(self.inputs):
      raise ValueError(f'This export takes {len(self.inputs)} inputs '
                       f'({", ".join(self.inputs)}); got {len(arrays)}.')
    batch, checked = None, []
    for (name, spec), array in zip(self.inputs.items(), arrays):
      array = np.asarray(array)
      if array.dtype.kind != np.dtype(spec['dtype']).kind or (
          tuple(array.shape[1:]) != tuple(spec['shape'][1:])) or (
              batch is not None and len(array) != batch):
        raise ValueError(f'Expected {name} of dtype {spec["dtype"]} and shape (N, '
                         f'{", ".join(map(str, spec["shape"][1:]))}) with the same N as '
                         f'the other inputs, got {array.dtype} {array.shape}.')
      batch = len(array)
      checked.append(array.astype(spec['dtype']))
    import jax  # pylint: disable=g-import-not-at-top
    return jax.tree.map(np.asarray, self._call(self._weights, *checked))

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    logits = self(images)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def load(export_dir: str) -> Served:
  """The artefact in `export_dir` (a workdir's export/) as a callable; jax + numpy only."""
  return Served(export_dir)


def _key_data(tree):
  """Typed PRNG keys (e.g. dropout state) -> raw uint32 data, storable in npz and TF."""
  import jax  # pylint: disable=g-import-not-at-top
  is_key = lambda x: jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_key(x) else x, tree)


def _serve_fn(loaded):
  """serve(weights: list of arrays, *inputs) -> the served output, and those weights
  (numpy). The inputs are the task's serving inputs in order (uint8 images for an image
  task: serve(weights, images) -> logits)."""
  import jax  # pylint: disable=g-import-not-at-top
  state = loaded.serving_state  # Params (or their EMA) and statistics; no optimiser state.
  leaves, treedef = jax.tree.flatten(_key_data(state))
  templates = jax.tree.leaves(state)
  names = list(loaded.serving_inputs())

  def serve(weights: list, *inputs: jax.Array) -> jax.Array:
    restored = [jax.random.wrap_key_data(w, impl=jax.random.key_impl(t))
                if jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key) else w
                for w, t in zip(weights, templates)]
    return loaded.serve(jax.tree.unflatten(treedef, restored), dict(zip(names, inputs)))

  return serve, [np.asarray(x) for x in leaves]


def _write_saved_model(serve, weights: list[np.ndarray], inputs: dict, path: str) -> None:
  """serve as a TF SavedModel (serving_default: uint8 images -> logits, probabilities;
  other serving inputs (e.g. latents) -> {'outputs'})."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  module = tf.Module()
  module.weights = [tf.Variable(w, trainable=False, name=f'w{i:04d}')
                    for i, w in enumerate(weights)]
  polymorphic = [None] + [f'(b, {", ".join(map(str, shape))})' if shape else '(b,)'
                          for shape, _ in inputs.values()]
  tf_serve = jax2tf.convert(serve, polymorphic_shapes=polymorphic,
                            with_gradient=False, native_serialization_platforms=PLATFORMS)
  signature = [tf.TensorSpec((None,) + tuple(shape), tf.as_dtype(dtype), name=name)
               for name, (shape, dtype) in inputs.items()]

  @tf.function(input_signature=signature, autograph=False)
  def serving_default(*args):
    out = tf_serve(module.weights, *args)
    if isinstance(out, dict):  # Named outputs (e.g. boxes, scores): as they are.
      return dict(out)
    if list(inputs) != ['images']:
      return {'outputs': out}
    return {'logits': out, 'probabilities': tf.nn.softmax(out)}

  module.serving_default = serving_default
  tf.saved_model.save(module, path, signatures={'serving_default': serving_default})


def eval_preprocessing(dataset: dict, convert_channels: int = 0) -> dict:
  """What turns an image of any size into the model's input: the run's eval transform,
  from its dataset.json (what evaluation and --mode=predict apply), as `to_json` writes it.
  `convert_channels`: the run's config.dataset.channels, for a dataset.json written before
  it recorded the transform (0: images are used with the channels they have)."""
  from vision_jax.data import eval_transform  # pylint: disable=g-import-not-at-top
  spec = eval_transform.EvalTransform.from_dataset_json(dataset, convert_channels).to_json()
  spec['description'] += ' (Served.prepare does it)'
  return spec


def _output_spec(shape, task, *, images: bool) -> dict:
  """metadata.json's 'output': for one array {'logits': [None, ...], 'dtype'} (an image
  task) or {'shape': [None, ...], 'dtype'} (other inputs, e.g. latents), or
  {'outputs': {name: {'shape', 'dtype'}}} for named ones (e.g. boxes, scores, classes);
  with the task and its words for them."""
  described = {'task': task.name, 'meaning': task.served_outputs}
  if isinstance(shape, dict):
    return {'outputs': {k: {'shape': [None] + list(v.shape[1:]), 'dtype': str(v.dtype)}
                        for k, v in shape.items()}, **described}
  return {('logits' if images else 'shape'): [None] + list(shape.shape[1:]),
          'dtype': str(shape.dtype), **described}


def export(loaded, export_dir: str, *, saved_model: bool = True) -> dict:
  """Writes the artefact of `loaded` (an inference.Loaded) into export_dir; its metadata."""
  import jax  # pylint: disable=g-import-not-at-top
  serve, weights = _serve_fn(loaded)
  height, width, channels = loaded.image_shape
  inputs = loaded.serving_inputs()
  b = jax.export.symbolic_shape('b')[0]
  specs = ([jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights],
           *[jax.ShapeDtypeStruct((b, *shape), np.dtype(dtype))
             for shape, dtype in inputs.values()])
  exported = jax.export.export(jax.jit(serve), platforms=PLATFORMS)(*specs)
  one = [jax.ShapeDtypeStruct((1, *shape), np.dtype(dtype)) for shape, dtype in inputs.values()]
  os.makedirs(export_dir, exist_ok=True)
  with open(os.path.join(export_dir, FUNCTION_FILE), 'wb') as f:
    f.write(exported.serialize())
  np.savez(os.path.join(export_dir, WEIGHTS_FILE),
           **{f'w{i:04d}': w for i, w in enumerate(weights)})
  metadata = {
      'step': loaded.step,
      'model': loaded.config.model.name,
      'inputs': {name: {'shape': [None, *shape], 'dtype': dtype}
                 for name, (shape, dtype) in inputs.items()},
      'output': _output_spec(jax.eval_shape(serve, specs[0], *one), loaded.task,
                             images=list(inputs) == ['images']),
      'num_classes': loaded.num_classes,
      'class_names': loaded.class_names,
      'num_weights': len(weights),
      'files': {'function': FUNCTION_FILE, 'weights': WEIGHTS_FILE},
      'platforms': list(PLATFORMS),
      'jax_version': jax.__version__,
      'calling_convention_version': exported.calling_convention_version,
  }
  if list(inputs) == ['images']:  # An image task: how images reach the function.
    metadata['input'] = {
        'shape': [None, height, width, channels], 'dtype': 'uint8', 'layout': 'NHWC',
        'image_size': height, 'channels': channels,
        'preprocessing': eval_preprocessing(loaded.dataset, loaded.config.dataset.channels)}
    metadata['normalization'] = {'mean': list(loaded.mean), 'std': list(loaded.std),
                                 'formula': '(x / 255 - mean) / std, inside the function'}
  if saved_model:
    relative = os.path.join('saved_model', str(loaded.step))
    _write_saved_model(serve, weights, inputs, os.path.join(export_dir, relative))
    metadata['files']['saved_model'] = relative
  with open(os.path.join(export_dir, METADATA_FILE), 'w') as f:
    json.dump(metadata, f, indent=2)
  return metadata


def run(config, workdir: str, output: str | None = None, *, task=None) -> dict:
  """--mode=export: the latest (or config.eval.checkpoint) checkpoint into workdir/export
  (or `output`). One export per directory: a new one replaces the old atomically, so TF
  Serving never sees two versions (or half of one). `task`: the run's task."""
  import jax  # pylint: disable=g-import-not-at-top
  from vision_jax import inference  # pylint: disable=g-import-not-at-top
  loaded = inference.load(workdir, config, task=task)
  export_dir = os.path.abspath(output or os.path.join(workdir, 'export'))
  if jax.process_index() != 0:
    return {}
  from vision_jax import outputs  # pylint: disable=g-import-not-at-top
  from vision_jax import preemption  # pylint: disable=g-import-not-at-top
  parent, name = os.path.split(export_dir)
  for stale in outputs.remove_stale(parent, name):
    logging.info('Removed %s, left by an export that was killed.', os.path.join(parent, stale))
  staging = f'{export_dir}.tmp-{os.getpid()}'
  cleanup = lambda: shutil.rmtree(staging, ignore_errors=True)
  preemption.at_exit_now(cleanup)  # A SIGTERM mid-export leaves no half export behind.
  try:
    os.makedirs(parent, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    metadata = export(loaded, staging)
    if os.path.exists(export_dir):
      old = f'{export_dir}.old-{os.getpid()}'
      os.replace(export_dir, old)
      os.replace(staging, export_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(staging, export_dir)
  except Exception as e:  # pylint: disable=broad-except
    cleanup()
    kept = ' A previous export there is kept as it was.' if os.path.exists(export_dir) else ''
    if isinstance(e, OSError):
      raise outputs.OutputError(outputs.explain(e, f'exporting to {export_dir}') + kept) from e
    if type(e).__module__.startswith('tensorflow'):  # TF's own I/O errors (SavedModel).
      raise outputs.OutputError(
          f'Writing the SavedModel of the export into {staging} failed '
          f'({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}): is the disk full or '
          f'the directory unwritable? Nothing was exported.{kept} Fix it and rerun.') from e
    raise
  finally:
    preemption.forget(cleanup)
  return {'export_dir': export_dir, 'step': metadata['step'], 'files': metadata['files']}
