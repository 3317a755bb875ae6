"""The valid range of every numeric key of `config.base_config()`, checked before anything
compiles.

One row per key: a rule and what the key is. A rule is a kind and an interval in the usual
notation, with the values outside it that still mean something:

  'int [1, inf)'            a whole number >= 1
  'float [0, 1)'            a finite number 0 <= x < 1 (ints are accepted too)
  'int [0, 1024] or -1'     0..1024, or -1 (its meaning is in the description)
  'int {0, 1, 3}'           one of these
  'each float (0, 1]'       a tuple whose every element is in (0, 1]

`check(config)` raises a ConfigError of one paragraph for the first key out of its range,
naming the key, the value, the range and what the key is. Keys that depend on each other
(e.g. warmup within the run, a batch that splits over the devices) are checked where both
are known; this table only says what a value can mean on its own.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import ml_collections

from vision_jax.errors import ConfigError

_SEED = 'int [0, 2147483647]'  # jax.random.key takes a signed 32-bit seed under jit.

RANGES: dict[str, tuple[str, str]] = {
    'seed': (_SEED, 'the seed of initialisation, data order and augmentation'),
    # config.dataset
    'dataset.image_size': ('int [1, 16384] or 0', 'the training image size in pixels '
                           '(0 = the dataset\'s own size)'),
    'dataset.channels': ('int {0, 1, 3}', 'the image channels (0 = as stored, 1 = grey, '
                         '3 = RGB)'),
    'dataset.crop_fraction': ('float (0, 1]', 'the centre crop\'s share of the shorter side'),
    'dataset.min_crop_area': ('float (0, 1]', 'the smallest inception crop, as a fraction of '
                              'the image'),
    'dataset.mean': ('each float [0, 1]', 'the per-channel mean in [0, 1] pixel units'),
    'dataset.std': ('each float (0, 1]', 'the per-channel standard deviation in [0, 1] pixel '
                    'units that images are divided by (0 would divide by zero)'),
    'dataset.mixup_alpha': ('float [0, 1000]', 'mixup\'s Beta(a, a) parameter (0 = off)'),
    'dataset.cutmix_alpha': ('float [0, 1000]', 'cutmix\'s Beta(a, a) parameter (0 = off)'),
    'dataset.cutmix_prob': ('float [0, 1]', 'the probability of cutmix when both mixup and '
                            'cutmix are on'),
    'dataset.cache_max_mb': ('int [0, inf)', 'the largest split, in MB, read once into '
                             'memory'),
    'dataset.folder_test_fraction': ('float (0, 1)', 'the share of each class of a folder '
                                     'dataset held out as \'test\''),
    'dataset.folder_split_seed': (_SEED, 'the seed of the folder dataset\'s test split'),
    'dataset.num_threads': ('int [0, 1024] or -1', 'reader threads (-1 = auto)'),
    'dataset.num_workers': ('int [0, 1024] or -1', 'decoding processes (-1 = auto, 0 = none)'),
    'dataset.eval_image_size': ('int [1, 16384] or 0', 'the evaluation image size in pixels '
                                '(0 = image_size)'),
    'dataset.color_jitter': ('float [0, 10]', 'the brightness, contrast and saturation '
                             'jitter strength (0 = off)'),
    'dataset.color_jitter_hue': ('float [0, 0.5]', 'the hue jitter strength (0 = off)'),
    'dataset.random_erasing': ('float [0, 1]', 'the probability of random erasing'),
    'dataset.random_erasing_count': ('int [1, 100]', 'the most boxes per erased image'),
    'dataset.repeated_aug': ('int [1, 64]', 'the copies of each example in the stream '
                             '(1 = off)'),
    # config.optim
    'optim.learning_rate': ('float [0, inf)', 'the peak learning rate'),
    'optim.warmup_steps': ('int [0, inf)', 'the steps of linear warmup'),
    'optim.warmup_epochs': ('float [0, inf)', 'the epochs of linear warmup'),
    'optim.min_lr_ratio': ('float [0, 1]', 'the fraction of learning_rate the decay ends at'),
    'optim.poly_power': ('float (0, 100]', 'the exponent of the warmup_poly decay'),
    'optim.rsqrt_timescale': ('int [1, inf)', 'the rsqrt decay\'s timescale in steps'),
    'optim.piecewise_boundaries': ('each int [0, inf)', 'the steps where the piecewise '
                                   'schedule changes'),
    'optim.piecewise_boundary_epochs': ('each float [0, inf)', 'the epochs where the '
                                        'piecewise schedule changes'),
    'optim.piecewise_scales': ('each float [0, inf)', 'the piecewise schedule\'s factors'),
    'optim.b1': ('float [0, 1)', 'the decay of the first-moment average (adamw, lamb)'),
    'optim.b2': ('float [0, 1)', 'the decay of the second-moment average (adamw, lamb)'),
    'optim.eps': ('float (0, 1]', 'the term added to the denominator (adamw, lamb)'),
    'optim.momentum': ('float [0, 1)', 'the momentum of sgd / lars'),
    'optim.trust_coefficient': ('float (0, 1]', 'lars\' trust coefficient'),
    'optim.adafactor_decay_rate': ('float (0, 1]', 'adafactor\'s second-moment decay '
                                   'exponent'),
    'optim.weight_decay': ('float [0, 10]', 'the weight decay'),
    'optim.grad_clip_norm': ('float [0, inf)', 'the global gradient norm clipped to '
                             '(0 = off)'),
    'optim.ema_decay': ('float [0, 1)', 'the decay of the weights\' moving average '
                        '(0 = off)'),
    'optim.label_smoothing': ('float [0, 1)', 'the label smoothing'),
    'optim.bce_target_threshold': ('float [0, 1)', 'the bce target threshold (0 = off)'),
    'optim.agc_clip': ('float [0, 100]', 'the adaptive gradient clipping ratio (0 = off)'),
    'optim.accum_steps': ('int [1, 4096]', 'the micro-batches accumulated per step'),
    # config.train, config.eval, config.checkpoint
    'train.batch_size': ('int [1, inf)', 'the global training batch'),
    'train.steps': ('int [1, inf)', 'the training steps'),
    'train.log_every': ('int [1, inf)', 'the steps between logged metrics'),
    'train.eval_every': ('int [0, inf)', 'the steps between evaluations (0 = only at the '
                         'end)'),
    'train.device_prefetch': ('int [0, 64] or -1', 'batches sent to the devices ahead '
                              '(-1 = auto)'),
    'eval.batch_size': ('int [1, inf)', 'the global evaluation batch'),
    'checkpoint.every_steps': ('int [1, inf)', 'the steps between checkpoints'),
    'checkpoint.keep': ('int [1, inf)', 'the latest checkpoints kept'),
    # config.mesh
    'mesh.data': ('int [1, inf) or -1', 'the data-parallel replicas (-1 = all remaining '
                  'devices)'),
    'mesh.fsdp': ('int [1, inf) or -1', 'the devices each large array is split over (1 = off, '
                  '-1 = all remaining devices)'),
    'mesh.fsdp_min_mib': ('float [0, inf)', 'the size in MiB below which arrays stay '
                          'replicated'),
    'mesh.slices': ('int [1, inf)', 'the TPU slices'),
    # config.task
    'task.ignore_label': ('int [0, 255]', 'the label-map value that is no class'),
    'task.num_classes': ('int [0, 65535]', 'the classes of a segmentation folder without '
                         'classes.txt (0 = from classes.txt)'),
    'task.scale_range': ('each float (0, 100]', 'the random scale (low, high) of the '
                         'segmentation training crop'),
    'task.max_boxes': ('int [1, 10000]', 'the ground-truth boxes a detection example holds '
                       '(padded with a mask)'),
    'task.max_detections': ('int [1, 10000]', 'the detections kept per image after NMS'),
    'task.score_thresh': ('float [0, 1) or -1', 'the lowest detection score kept (-1 = the '
                          'detector\'s own: FCOS 0.2, RetinaNet 0.05)'),
    'task.min_size': ('int [1, 16384] or 0', 'the shorter side detection images are resized '
                      'to (0 = fit in image_size)'),
    'task.max_size': ('int [1, 16384] or 0', 'the cap on the longer side of a resized '
                      'detection image (0 = image_size)'),
    'task.min_box_size': ('float [0, 10000]', 'the width and height under which a cropped '
                          'box is dropped (pixels)'),
    'task.crop_min_scale': ('float (0, 1]', 'the smallest SimCLR crop area'),
    'task.color_jitter_strength': ('float [0, 10]', 'SimCLR\'s colour distortion strength s'),
    'task.temperature': ('float (0, 100]', 'the NT-Xent temperature'),
    'task.projector_hidden_dim': ('int [1, 1048576]', 'the projector\'s hidden width'),
    'task.projector_output_dim': ('int [1, 1048576]', 'the projector\'s output width'),
    'task.projector_layers': ('int [1, 64]', 'the projector\'s layers'),
    'task.knn_k': ('int [1, inf)', 'the neighbours of the k-NN evaluation'),
    'task.knn_temperature': ('float (0, 100]', 'the k-NN vote temperature'),
    'task.predictor_hidden_dim': ('int [1, 1048576]', 'BYOL\'s predictor hidden width'),
    'task.target_decay': ('float [0, 1]', 'the decay of BYOL\'s target network at step 0'),
    'task.n_critic': ('int [1, 1000]', 'the GAN discriminator\'s updates per generator update'),
    'task.kid_subsets': ('int [1, 100000]', 'the subsets KID averages over'),
    'task.kid_subset_size': ('int [2, inf)', 'the samples of each KID subset'),
    'task.sample_seed': (_SEED, 'the seed of the GAN\'s evaluation and predict latents'),
    'task.num_samples': ('int [1, 4096]', 'the samples of the GAN\'s predict grid'),
}
# The GAN's per-network optimiser keys (config.task.<part>_optim) take config.optim's ranges.
for _part in ('generator', 'discriminator'):
  for _key in ('learning_rate', 'b1', 'b2', 'weight_decay', 'warmup_steps', 'ema_decay'):
    _rule_text, _meaning = RANGES[f'optim.{_key}']
    RANGES[f'task.{_part}_optim.{_key}'] = (_rule_text, f'{_meaning} of the GAN {_part}')

_RULE = re.compile(r'^(each )?(int|float) (?:\{([^}]*)\}|([\[(])([^,]+), ([^\])]+)([\])]))'
                   r'(?: or (.+))?$')


@dataclasses.dataclass(frozen=True)
class Rule:
  """One parsed rule: kind, interval (or a set of values) and extra allowed values."""
  each: bool
  kind: str                      # 'int' | 'float'
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False
  values: tuple = ()             # A set rule's values (then there is no interval).
  also: tuple = ()               # Values outside the interval that mean something.
  text: str = ''

  def allows(self, x: Any) -> bool:
    """Whether one number satisfies the rule (type included: no bool, no nan)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
      return False
    if self.kind == 'int' and not isinstance(x, int):
      return False
    if x in self.also or (self.values and x in self.values):
      return True
    if self.values or not math.isfinite(x):
      return False
    above = x > self.low if self.low_open else x >= self.low
    below = x < self.high if self.high_open else x <= self.high
    return above and below

  def describe(self) -> str:
    """The rule in words, e.g. 'a whole number in [1, inf), or -1'."""
    what = 'a whole number' if self.kind == 'int' else 'a finite number'
    if self.values:
      where = f'one of {", ".join(map(str, self.values))}'
    elif math.isinf(self.high):
      where = f'{what} {">" if self.low_open else ">="} {_show(self.low)}'
    else:
      where = (f'{what} in {"(" if self.low_open else "["}{_show(self.low)}, '
               f'{_show(self.high)}{")" if self.high_open else "]"}')
    if self.also:
      where += ', or ' + ' or '.join(map(str, self.also))
    return f'a tuple of which each element is {where}' if self.each else where


def _show(x: float) -> str:
  if math.isinf(x):
    return 'inf'
  return str(int(x)) if float(x).is_integer() else str(x)


def _number(text: str) -> float | int:
  text = text.strip()
  if text in ('inf', '-inf'):
    return float(text)
  return int(text) if re.fullmatch(r'-?\d+', text) else float(text)


def parse(text: str) -> Rule:
  """A rule string as in the module docstring; ValueError if it is not one."""
  m = _RULE.match(text)
  try:
    if not m:
      raise ValueError
    return _rule(text, *m.groups())
  except ValueError:
    raise ValueError(f'not a range rule: {text!r}') from None


def _rule(text, each, kind, values, lb, low, high, rb, also) -> Rule:
  common = dict(each=bool(each), kind=kind, text=text,
                also=tuple(_number(v) for v in also.split(' or ')) if also else ())
  if values is not None:
    return Rule(values=tuple(_number(v) for v in values.split(',')), **common)
  return Rule(low=_number(low), high=_number(high), low_open=lb == '(', high_open=rb == ')',
              **common)


RULES: dict[str, Rule] = {key: parse(rule) for key, (rule, _) in RANGES.items()}


def _lookup(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for key in dotted.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      return None, False
    node = node[key]
  return node, True


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first key of RANGES whose value is out of its range."""
  for dotted, rule in RULES.items():
    value, present = _lookup(config, dotted)
    if not present:
      continue
    if rule.each:
      ok = isinstance(value, (tuple, list)) and all(rule.allows(x) for x in value)
    else:
      ok = rule.allows(value)
    if not ok:
      meaning = RANGES[dotted][1]
      raise ConfigError(f'config.{dotted}={value!r} is out of range: it is {meaning}, '
                        f'{rule.describe()}. Set it within that range.')
