"""The run config: every key with its default, and validation before anything compiles.

`base_config()` is the single list of keys a run understands. Recipes in `configs/` start
from it and change what they need, so a typo in a recipe or in a `--config.x=y` override is
caught here with the list of keys that do exist. `config.model` is the exception: its keys
besides `name` and `dtype` go to the model's constructor, which validates them. The valid
range of every numeric key is in `config_ranges.RANGES`, one row per key of base_config().
"""
from __future__ import annotations

import difflib
import inspect
import ml_collections

from vision_jax import config_ranges
from vision_jax.errors import ConfigError

# Sections whose keys are checked against base_config(); config.model is checked against
# the chosen model's constructor instead.
_CHECKED_SECTIONS = ('dataset', 'optim', 'train', 'eval', 'checkpoint', 'mesh', 'init_from',
                     'task')


# DCGAN's Adam (Radford et al. 2015): lr 2e-4, beta1 0.5, no decay, constant rate.
_GAN_ADAM = dict(name='adamw', learning_rate=2e-4, b1=0.5, b2=0.999, weight_decay=0.0,
                 schedule='constant', warmup_steps=0)


def base_config() -> ml_collections.ConfigDict:
  """Every key a run understands, with its default (the digits default run)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Modules imported before the task and model are built: a fork's own tasks and models
  # (tasks.register / models.register at import) become reachable from the CLI.
  c.imports = ()

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'digits'         # A tfds name, 'digits', or 'folder:/path/to/root'.
  c.dataset.data_dir = ''           # '' = tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.dataset.download = False        # Never download implicitly.
  c.dataset.train_split = 'train'   # tfds split syntax, e.g. 'train[:90%]'.
  c.dataset.eval_splits = ('test',)
  c.dataset.image_size = 0          # 0 = the dataset's native size.
  c.dataset.channels = 0            # 0 = as stored; 1 = grey (luma); 3 = RGB (grey repeated).
  c.dataset.classes = ()            # Class subset (indices or names); labels become 0..k-1.
  # Recipes (vision_jax/data/preprocess.py): 'resize' | 'cifar' | 'inception' | 'center_crop'.
  c.dataset.preprocess = 'resize'   # Train-time recipe.
  c.dataset.eval_preprocess = ''    # '' = the recipe's eval twin (inception -> center_crop);
  # or a reference pipeline, reproduced exactly: torchvision_v1 | torchvision_v2 | timm.
  c.dataset.crop_fraction = 0.875   # center_crop: shorter side to size / this (224 <- 256); timm's crop_pct.
  c.dataset.eval_interpolation = ''  # timm: the weights' filter ('' = bicubic); others bilinear.
  c.dataset.min_crop_area = 0.08    # inception: smallest crop, as a fraction of the image.
  c.dataset.mean = ()               # Per-channel mean/std in [0, 1] units; () = 0.5 / 0.5 ...
  c.dataset.std = ()
  c.dataset.normalization = ''      # ... or a preset: imagenet | cifar10 | cifar100 | mnist.
  c.dataset.mixup_alpha = 0.0       # > 0: mixup, Beta(a, a), on device in the train step.
  c.dataset.cutmix_alpha = 0.0      # > 0: cutmix; with both, cutmix with prob cutmix_prob.
  c.dataset.cutmix_prob = 0.5
  c.dataset.cache = 'auto'          # 'auto' (splits under cache_max_mb) | 'memory' | 'none'.
  c.dataset.cache_max_mb = 1024     # Decoded size of one split read once into host memory.
  c.dataset.folder_test_fraction = 0.2  # folder: without train/ test/ sub-folders, this ...
  c.dataset.folder_split_seed = 0   # ... fraction of each class is 'test', chosen with this seed.
  c.dataset.skip_corrupt = False    # folder: skip unreadable images (logged) instead of failing.
  c.dataset.num_threads = -1        # Reader threads if no workers; -1 = 0 if a gather, else 4.
  c.dataset.num_workers = -1        # Decoding processes; -1 = auto (input_pipeline.auto_workers).
  c.dataset.eval_image_size = 0     # 0 = image_size; else eval at this size (RSB A3: 224).
  # Host-side train augmentations after the recipe's crop / flip (data/augment.py), drawn
  # per example from (seed, position) in the input workers. All off by default.
  c.dataset.randaugment = ''        # timm string, e.g. 'rand-m9-mstd0.5-inc1'; '' = off.
  c.dataset.autoaugment = ''        # ImageNet policy: original | originalr | v0 | v0r | 3a.
  c.dataset.trivialaugment = False  # TrivialAugmentWide (one of these three policies at most).
  c.dataset.augment_interpolation = ''  # '' = the policy's own | random | nearest | bilinear...
  c.dataset.augment_fill = ''       # '' = the policy's own | mean | black.
  c.dataset.color_jitter = 0.0      # Brightness, contrast and saturation strength; 0 = off.
  c.dataset.color_jitter_hue = 0.0  # Hue shift strength in [0, 0.5]; 0 = off.
  c.dataset.random_erasing = 0.0    # Probability (timm --reprob); 0 = off.
  c.dataset.random_erasing_mode = 'pixel'  # pixel | rand | const (timm --remode).
  c.dataset.random_erasing_count = 1  # Up to this many boxes (timm --recount).
  c.dataset.repeated_aug = 1        # k: each example k times in a row (stream.py).

  c.model = ml_collections.ConfigDict()
  c.model.name = 'convnet'          # vision_jax.models.list_models()
  c.model.dtype = 'float32'         # Compute dtype; parameters stay float32.
  c.model.fast_cpu_ops = 'auto'     # CPU fast conv/pool gradients: 'auto' (on on CPU) | bool.

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'
  c.optim.learning_rate = 1e-3
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_steps = 50
  c.optim.warmup_epochs = 0.0       # Alternative to warmup_steps (set one of them).
  c.optim.min_lr_ratio = 0.0        # Cosine/linear decay ends at learning_rate * this.
  c.optim.scale_lr_by_batch = False  # learning_rate * batch_size / 256.
  c.optim.poly_power = 2.0          # 'warmup_poly' exponent.
  c.optim.rsqrt_timescale = 10_000  # 'rsqrt' decay timescale, steps.
  c.optim.piecewise_boundaries = ()  # 'piecewise': absolute steps ...
  c.optim.piecewise_boundary_epochs = ()  # ... or epochs,
  c.optim.piecewise_scales = ()     # and the factor applied from each boundary on.
  c.optim.b1 = 0.9                  # adamw / lamb.
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.momentum = 0.9            # sgd / lars.
  c.optim.nesterov = False
  c.optim.trust_coefficient = 0.001  # lars.
  c.optim.adafactor_decay_rate = 0.8
  c.optim.weight_decay = 1e-4
  c.optim.wd_rules = ()             # ((regex, multiplier), ...); first match wins.
  c.optim.lr_rules = ()             # ((regex, multiplier), ...).
  c.optim.freeze = ()               # (regex, ...): never updated, no optimiser state.
  c.optim.grad_clip_norm = 0.0      # 0 = off.
  c.optim.ema_decay = 0.0           # > 0: evaluate an EMA of the weights and BN statistics.
  c.optim.label_smoothing = 0.0
  c.optim.loss = 'softmax_xent'     # 'softmax_xent' | 'bce' (losses.classification_loss).
  c.optim.bce_target_threshold = 0.0  # bce: targets > this become 1, else 0; 0 = off.
  c.optim.agc_clip = 0.0            # Adaptive gradient clipping (NFNets) ratio; 0 = off.
  c.optim.accum_steps = 1           # Gradient accumulation over this many micro-batches.

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128          # Global batch over all devices and hosts.
  c.train.steps = 600
  c.train.log_every = 50
  c.train.eval_every = 300          # 0 = only at the end.
  c.train.device_prefetch = -1      # Batches sent to the devices ahead; -1: 0 on CPU, else 2.

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.checkpoint = ''            # eval/predict/export: '' = latest, a step, or its folder.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 300
  c.checkpoint.keep = 3              # Latest checkpoints kept ...
  c.checkpoint.keep_best = ''        # ... plus the best by this eval metric ('test/accuracy').
  c.checkpoint.keep_best_mode = 'max'
  c.checkpoint.on_corrupt = 'error'  # Newest checkpoint unreadable: 'error' | 'previous'.

  c.init_from = ml_collections.ConfigDict()
  c.init_from.checkpoint = ''        # A workdir or checkpoints/<step> dir to start from.
  c.init_from.skip = ('head/.*',)    # Regexes of variables re-initialised, not loaded.
  c.init_from.zero_init_skipped = True  # Re-initialise skipped variables to zeros.
  c.init_from.use_ema = False        # Start from the checkpoint's EMA weights (if it has).
  c.init_from.parts = ()             # ((our part, its part), ...); () = same names.

  # The device mesh, axes ('data', 'fsdp'); the batch is split over both (every device
  # computes on its share of the global batch). data x fsdp must equal the device count.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                  # Replicas of the state; -1 = all remaining devices.
  c.mesh.fsdp = 1                   # Devices each large state array is split over; 1 = off.
  c.mesh.fsdp_min_mib = 4.0         # Arrays smaller than this stay replicated under FSDP.
  c.mesh.slices = 1                 # Multi-slice TPU: the data axis over this many slices.
  c.task = ml_collections.ConfigDict()  # What is trained: vision_jax/tasks.
  c.task.name = 'classification'    # 'classification' | 'segmentation' | 'detection' | 'simclr' | 'byol' | 'gan'.
  c.task.ignore_label = 255         # segmentation: label-map value that is no class.
  c.task.num_classes = 0            # segmentation folder without classes.txt: its classes.
  c.task.scale_range = (0.5, 2.0)   # segmentation, detection: random scale of the training crop.
  c.task.flip = True                # segmentation, detection: random horizontal flip.
  c.task.pets_border = 'ignore'     # oxford_iiit_pet trimap border: 'ignore' | 'class'.
  c.task.views = 'simclr'           # simclr, byol: two-view recipe (data/two_views.py): simclr | byol.
  c.task.crop_min_scale = 0.08      # simclr: smallest random-resized-crop area.
  c.task.color_jitter_strength = 1.0  # simclr: SimCLR's s (0.5 on CIFAR).
  c.task.blur = 'auto'              # simclr: 'auto' (from 64 px) | 'on' | 'off'.
  c.task.temperature = 0.1          # simclr: NT-Xent temperature.
  c.task.projector_hidden_dim = 2048
  c.task.projector_output_dim = 128
  c.task.projector_layers = 2
  c.task.knn_k = 200                # simclr eval: neighbours voting ...
  c.task.knn_temperature = 0.1      # ... with weight exp(cosine / this).
  c.task.predictor_hidden_dim = 4096  # byol: the online predictor MLP's hidden width.
  c.task.target_decay = 0.996       # byol: target EMA decay at step 0, cosine to 1 at the end.
  c.task.gan_loss = 'nonsaturating'  # gan: 'nonsaturating' (DCGAN) | 'hinge' (SN-GAN).
  c.task.n_critic = 1               # gan: discriminator updates per generator update.
  # gan: the keys of config.optim that differ for each network (any config.optim key may be
  # added in a config file); the defaults are DCGAN's Adam, and an EMA of the generator.
  c.task.generator_optim = ml_collections.ConfigDict(dict(_GAN_ADAM, ema_decay=0.999))
  c.task.discriminator_optim = ml_collections.ConfigDict(dict(_GAN_ADAM, ema_decay=0.0))
  c.task.fid_inception = ''         # gan: converted InceptionV3 weights dir -> fid, kid.
  c.task.fid_classifier = ''        # gan: a classifier's workdir -> fid_<its dataset>, kid_...
  c.task.kid_subsets = 100          # gan: KID's subsets (torch-fidelity: 100) ...
  c.task.kid_subset_size = 1000     # ... of this many samples (fewer if the split is smaller).
  c.task.sample_seed = 0            # gan: the latents of evaluation and predict.
  c.task.num_samples = 64           # gan predict: samples in the grid (per class if conditional).
  c.task.max_boxes = 100             # detection: ground-truth boxes per image (padded, masked).
  c.task.max_detections = 100        # detection: boxes per image after NMS (COCO reads 100).
  c.task.score_thresh = -1.0         # detection: minimum score; -1 = the detector's own.
  c.task.min_size = 0                # detection: shorter side resized to this (0: fit image_size) ...
  c.task.max_size = 0                # ... longer side at most this (0: image_size); padded to image_size.
  c.task.min_box_size = 2.0          # detection: boxes narrower / shorter than this after a crop (px) are dropped.
  c.task.class_index = 'label'       # detection: 'label' (0..K-1) | 'category_id' (index = the dataset's category id: COCO's 91, as torchvision's weights).
  return c


def did_you_mean(name: str, options) -> str:
  """The sentence 'Did you mean X?' for the option closest to a misspelt `name`, or ''."""
  match = difflib.get_close_matches(name, list(options), n=1)
  return f' Did you mean {match[0]!r}?' if match else ''


def import_extensions(config: ml_collections.ConfigDict) -> None:
  """Imports the modules of `config.imports` (each registers its tasks or models)."""
  import importlib  # pylint: disable=g-import-not-at-top
  for name in config.imports:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ConfigError(f'config.imports names {name!r}, which cannot be imported ({e}). Name '
                        'a module on the Python path (e.g. run from the directory that holds '
                        'it, or pip install -e your fork).') from e


def check_keys(config: ml_collections.ConfigDict) -> None:
  """Every key of `config` must exist in base_config() (model kwargs excepted)."""
  base = base_config()
  for key in config.keys():
    if key not in base and key != 'sweep':
      raise ConfigError(f'Unknown config key {key!r}.{did_you_mean(key, base.keys())} Known '
                        f'top-level keys: {", ".join(sorted(base.keys()))}.')
  for section in _CHECKED_SECTIONS:
    if section not in config or section not in base:
      continue
    for key in config[section].keys():
      if key not in base[section]:
        raise ConfigError(
            f'Unknown config key {section}.{key}.{did_you_mean(key, base[section].keys())} '
            f'Known keys of config.{section}: {", ".join(sorted(base[section].keys()))}.')


def check_complete(config: ml_collections.ConfigDict) -> None:
  """Every key of base_config() must be in `config` (of config.model, only `name`): a
  config file starts from base_config() and changes what it needs."""
  base, missing = base_config(), []
  for key, value in base.items():
    if key not in config:
      missing.append(key)
    elif isinstance(value, ml_collections.ConfigDict):
      wanted = ['name'] if key == 'model' else list(value.keys())
      have = config[key] if isinstance(config[key], ml_collections.ConfigDict) else {}
      missing += [f'{key}.{k}' for k in wanted if k not in have]
  if missing:
    raise ConfigError(
        f'The config lacks {len(missing)} keys of base_config() ({", ".join(missing[:5])}'
        f'{", ..." if len(missing) > 5 else ""}): a config file starts from '
        'vision_jax.config.base_config() and changes what it needs, as configs/default.py '
        'does.')


EVAL_METRICS = ('accuracy', 'top5', 'loss')  # What classification writes per split.


def eval_metric_names(config: ml_collections.ConfigDict, task) -> list[str]:
  """'split/metric' for every scalar an evaluation of this config's task produces."""
  metrics = task.eval_metrics
  return [f'{split}/{m}' for split in config.dataset.eval_splits for m in metrics]


def _choice(config, dotted: str, allowed: tuple) -> None:
  section, key = dotted.split('.')
  if config[section][key] not in allowed:
    raise ConfigError(f'config.{dotted}={config[section][key]!r}; use one of '
                      f'{", ".join(map(repr, allowed))}.')


def validate(config: ml_collections.ConfigDict, num_devices: int, task=None):
  """Raises ConfigError naming the key, the bad value and what is allowed; returns the
  run's task: `task` if given, else built here (tasks.build) once the keys it reads are
  known to be complete and in range, after the modules of config.imports registered theirs."""
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  from vision_jax import tasks  # pylint: disable=g-import-not-at-top
  check_keys(config)
  check_complete(config)
  config_ranges.check(config)  # Every numeric key within its range, before anything else.
  import_extensions(config)
  _choice(config, 'task.name', tasks.names())
  task = task or tasks.build(config)
  _choice(config, 'checkpoint.keep_best_mode', ('max', 'min'))
  _choice(config, 'checkpoint.on_corrupt', ('error', 'previous'))
  best = config.checkpoint.keep_best
  if best and best not in eval_metric_names(config, task):
    raise ConfigError(f'config.checkpoint.keep_best={best!r} is not a metric evaluation '
                      f'produces, so no checkpoint would ever be kept as best. Use one of: '
                      f'{", ".join(eval_metric_names(config, task))} (split/metric), or \'\'.')
  if not models.known(config.model.name):
    raise ConfigError(f'Unknown model config.model.name={config.model.name!r}.'
                      f'{did_you_mean(config.model.name, models.list_models())} Known models: '
                      f'{", ".join(models.list_models())}.')
  task.validate()
  accepted = inspect.signature(models.model_class(config.model.name).__init__).parameters
  options = [p for p in accepted if p not in ('self', 'num_classes', 'rngs', 'kernels')]
  for key in (k for k in config.model if k not in ('name', 'fast_cpu_ops')):
    if key not in options:
      raise ConfigError(f'config.model.{key} is not an option of model '
                        f'{config.model.name!r}.{did_you_mean(key, options)} Its options: '
                        f'{", ".join(options)}.')
  # pylint: disable=g-import-not-at-top
  import jax
  from vision_jax import ops
  from vision_jax import parallel
  from vision_jax.models import layers
  try:
    ops.wants_fast_path(config.model.fast_cpu_ops, jax.default_backend())
    layers.as_dtype(config.model.dtype)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  data, fsdp = parallel.mesh_shape(config.mesh, num_devices)  # Raises if it does not fit.
  mesh = f'config.mesh.data={data} x config.mesh.fsdp={fsdp}'
  for dotted in ('train.batch_size', 'eval.batch_size'):
    section, key = dotted.split('.')
    if config[section][key] % num_devices:
      raise ConfigError(
          f'config.{dotted}={config[section][key]} is not divisible by the {num_devices} '
          f'devices. Use a multiple of {num_devices}, e.g. '
          f'{max(1, round(config[section][key] / num_devices)) * num_devices} (every device '
          f'takes an equal share of the batch; {mesh}), or a device count that divides it.')
  _check_recipe(config, accepted)
  from vision_jax import optim  # pylint: disable=g-import-not-at-top
  if config.optim.name not in optim.OPTIMIZERS:
    raise ConfigError(f'config.optim.name={config.optim.name!r} is not an optimiser here; use '
                      f'one of {", ".join(map(repr, optim.OPTIMIZERS))}.')
  accum = config.optim.accum_steps
  if isinstance(accum, int) and accum > 1 and config.train.batch_size % (num_devices * accum):
    raise ConfigError(
        f'config.train.batch_size={config.train.batch_size} / config.optim.accum_steps='
        f'{accum} does not split evenly over the {num_devices} devices: each micro-batch '
        f'must. Use a batch size that is a multiple of {num_devices * accum} '
        f'({num_devices} devices x {accum} micro-batches), or fewer accum_steps.')
  return task


def _check_recipe(config: ml_collections.ConfigDict, model_options) -> None:
  """The training-recipe keys: augmentations, the eval size, the loss, stochastic depth
  (config.optim.agc_clip is checked with the other optimiser keys, in optim.py)."""
  from vision_jax import losses  # pylint: disable=g-import-not-at-top
  from vision_jax.data import augment  # pylint: disable=g-import-not-at-top
  from vision_jax.data import eval_transform  # pylint: disable=g-import-not-at-top
  ds, o = config.dataset, config.optim
  eval_transform.check_config(ds)
  try:
    augment.from_config(ds, (0.5,) * 3, (0.5,) * 3)  # Every augmentation key.
    losses.classification_loss(o.loss, label_smoothing=o.label_smoothing,
                               threshold=o.bce_target_threshold)
  except ValueError as e:  # AugmentError, or a loss option named in the message.
    raise ConfigError(str(e)) from e
  size, rate = ds.eval_image_size, config.model.get('drop_path_rate', 0.0)
  if not isinstance(size, int) or isinstance(size, bool) or size < 0:
    raise ConfigError(f'config.dataset.eval_image_size={size!r}: use a size in pixels, or 0 '
                      'for config.dataset.image_size.')
  if size and size != ds.image_size and 'image_size' in model_options:
    raise ConfigError(
        f'config.dataset.eval_image_size={size} differs from image_size={ds.image_size}, '
        f'but model {config.model.name!r} has dense layers sized for one input size. Set '
        'eval_image_size=0, or use a model that pools globally (e.g. a ResNet).')
  if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
    raise ConfigError(f'config.model.drop_path_rate={rate!r}: use the last residual block\'s '
                      'probability of skipping its branch, in [0, 1) (RSB A1/A2: 0.05), or 0 '
                      'for off.')
