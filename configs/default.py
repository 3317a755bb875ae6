"""The offline default: the seed ConvNet on scikit-learn's real handwritten digits.

  python -m vision_jax.main --config configs/default.py --workdir /tmp/vision_jax/default

Expect test accuracy of about 0.98 (>= 0.97) on the 360-image test split after 600 steps,
in about a minute on a 2-core CPU. The digits ship inside scikit-learn, so this runs with
no network: the first run builds them into a local tfds dataset.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'digits'        # A tfds name, 'digits', or 'folder:/path/to/root'.
  config.dataset.data_dir = ''          # '' = tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  config.dataset.download = False       # Never download unless asked to.
  config.dataset.train_split = 'train'
  config.dataset.eval_splits = ('test',)
  config.dataset.image_size = 0         # 0 = native size (8x8 for digits).
  config.dataset.preprocess = 'resize'  # Train-time recipe: 'resize' | 'cifar' | 'inception'.
  config.dataset.mean = ()              # Per-channel mean/std in [0, 1] units; () = 0.5 / 0.5.
  config.dataset.std = ()

  config.model = ml_collections.ConfigDict()
  config.model.name = 'convnet'         # See vision_jax.models.list_models().
  config.model.dtype = 'float32'        # Compute dtype; parameters stay float32.

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'adamw'
  config.optim.learning_rate = 1e-3
  config.optim.schedule = 'warmup_cosine'
  config.optim.warmup_steps = 50
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 0.0     # 0 = no clipping.

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128         # Global batch, split over all devices.
  config.train.steps = 600
  config.train.log_every = 50
  config.train.eval_every = 300

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 256

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 300
  config.checkpoint.keep = 3

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1                 # -1 = all devices.
  return config
