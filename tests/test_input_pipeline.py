"""The input stream: a pure function of (seed, step), split over hosts, eval counted once."""
import numpy as np
import pytest

from vision_jax.config import base_config
from vision_jax.data import input_pipeline as ip
from vision_jax.data import preprocess, sources


@pytest.fixture(scope='module')
def train_source(data_dir):
  config = base_config()
  config.dataset.data_dir = data_dir
  return sources.open_split(config.dataset, 'train')[0]


def _cifar_fn():
  return preprocess.make_preprocess('cifar', 8, train=True)


@pytest.mark.parametrize('threads', [0, 2])
def test_resume_at_step_k_gives_the_same_batches(train_source, threads):
  ds = ip.train_dataset(train_source, _cifar_fn(), global_batch=64, seed=3)
  full = ip.iterate(ds, 0, num_threads=threads)
  uninterrupted = [next(full) for _ in range(30)]  # 30 * 64 > 1437: crosses an epoch.
  resumed = ip.iterate(ds, 22, num_threads=threads)
  for k in range(22, 30):
    batch = next(resumed)
    np.testing.assert_array_equal(batch['image'], uninterrupted[k]['image'])
    np.testing.assert_array_equal(batch['label'], uninterrupted[k]['label'])


def test_every_epoch_is_a_permutation_and_epochs_differ(train_source):
  ident = lambda ex, rng: {'label': np.asarray(ex['label']), 'image': ex['image']}
  n = len(train_source)
  ds = ip.train_dataset(train_source, ident, global_batch=n, seed=0)
  epoch0, epoch1 = ds[0]['image'], ds[1]['image']
  # Same multiset of images in each epoch, in a different order.
  key = lambda imgs: sorted(map(bytes, imgs))
  assert key(epoch0) == key(epoch1)
  assert not np.array_equal(epoch0, epoch1)


def test_hosts_read_disjoint_blocks_of_the_same_global_batch(train_source):
  one = ip.train_dataset(train_source, _cifar_fn(), global_batch=32, seed=1)
  parts = [ip.train_dataset(train_source, _cifar_fn(), global_batch=32, seed=1,
                            shard=ip.HostShard(i, 2)) for i in range(2)]
  for step in (0, 5, 50):
    joined = np.concatenate([p[step]['image'] for p in parts])
    np.testing.assert_array_equal(joined, one[step]['image'])  # Same examples, same order,
    # same augmentation: the crops and flips depend on the global position only.


class _Indices:
  """A source whose example i is the number i: shows exactly who read what."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {'image': np.asarray(i), 'label': np.asarray(0)}


def test_two_hosts_read_disjoint_parts_that_cover_the_split():
  ident = lambda ex, rng: ex
  n, batch, hosts = 300, 20, 2  # One epoch = 15 steps.
  seen = [np.concatenate([ip.train_dataset(_Indices(n), ident, global_batch=batch, seed=5,
                                           shard=ip.HostShard(h, hosts))[k]['image']
                          for k in range(n // batch)]) for h in range(hosts)]
  assert not set(seen[0]) & set(seen[1])  # Disjoint ...
  assert sorted(np.concatenate(seen)) == list(range(n))  # ... and together the split.
  assert len(seen[0]) == len(seen[1]) == n // hosts  # Each reads only its half.


def test_cached_split_gives_the_same_batches_as_reading_through_tfds(data_dir):
  config = base_config()
  config.dataset.data_dir, config.dataset.cache = data_dir, 'none'
  direct = sources.open_split(config.dataset, 'train')[0]
  config.dataset.cache = 'auto'  # The default: the digits fit, so they are read once.
  cached = sources.open_split(config.dataset, 'train')[0]
  assert isinstance(cached, sources.ArraySource) and len(cached) == len(direct)
  a = ip.train_dataset(direct, _cifar_fn(), global_batch=32, seed=2)[50]
  b = ip.train_dataset(cached, _cifar_fn(), global_batch=32, seed=2)[50]
  np.testing.assert_array_equal(a['image'], b['image'])
  np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.parametrize('hosts', [1, 3])
def test_eval_counts_every_example_once(data_dir, hosts):
  config = base_config()
  config.dataset.data_dir = data_dir
  source = sources.open_split(config.dataset, 'test')[0]  # 360 examples.
  fn = preprocess.make_preprocess('resize', 8, train=False)
  seen = []
  for host in range(hosts):
    ds = ip.eval_dataset(source, fn, global_batch=48 * hosts,
                         shard=ip.HostShard(host, hosts))
    for batch in ds:
      seen.append(batch['label'][batch['mask'] > 0])
  labels = np.concatenate(seen)
  assert labels.size == 360
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(
      np.array([source[i]['label'] for i in range(360)])))


def test_absent_dataset_fails_fast_with_instructions(tmp_path):
  config = base_config()
  config.dataset.name, config.dataset.data_dir = 'cifar10', str(tmp_path)
  with pytest.raises(sources.DatasetNotFoundError) as err:
    sources.open_split(config.dataset, 'train')
  message = str(err.value)
  assert 'cifar10' in message and str(tmp_path) in message and 'tfds build' in message


def test_iterators_far_apart_on_one_dataset(train_source):
  """Readers of one dataset epochs apart (a resume while another reads) all work."""
  ds = ip.train_dataset(train_source, _cifar_fn(), global_batch=64, seed=5)
  later = [ds[step]['label'] for step in (300, 330, 360, 390, 420)]  # 5 different epochs.
  near = ip.iterate(ds, 0, num_threads=2)
  first = next(near)['label']
  fresh = ip.train_dataset(train_source, _cifar_fn(), global_batch=64, seed=5)
  np.testing.assert_array_equal(first, fresh[0]['label'])
  np.testing.assert_array_equal(ds[300]['label'], later[0])


def test_in_memory_gather_equals_the_per_example_path(data_dir):
  """The vectorised batch of an in-memory split is exactly the per-example batch."""
  config = base_config()
  config.dataset.data_dir, config.dataset.cache = data_dir, 'memory'
  source = sources.open_split(config.dataset, 'train')[0]
  assert isinstance(source, sources.ArraySource)
  fn = preprocess.make_preprocess('resize', 8, train=True)
  fast = ip.train_dataset(source, fn, global_batch=96, seed=2)
  slow_fn = lambda ex, rng: fn(ex, rng)  # No identity_for: the per-example path.
  slow = ip.train_dataset(source, slow_fn, global_batch=96, seed=2)
  # 1437 / 96: steps 14 and 15 straddle an epoch boundary; 3 after 130 goes back 8 epochs.
  for step in (0, 14, 15, 40, 63, 64, 130, 3):
    a, b = fast[step], slow[step]
    for key in ('image', 'label'):
      assert a[key].dtype == b[key].dtype
      np.testing.assert_array_equal(a[key], b[key])
  threaded = ip.iterate(fast, 60, num_threads=4)
  for step in range(60, 70):
    np.testing.assert_array_equal(next(threaded)['label'], slow[step]['label'])
  # Evaluation too, padding included (1437 = 14 * 96 + 93: the last batch has 3 pad rows).
  shard = ip.HostShard(1, 2)
  fast_eval = ip.eval_dataset(source, fn, global_batch=96, shard=shard)
  slow_eval = ip.eval_dataset(source, slow_fn, global_batch=96, shard=shard)
  assert len(fast_eval) == len(slow_eval) == 15
  for index in (0, 7, 14):
    a, b = fast_eval[index], slow_eval[index]
    assert sorted(a) == sorted(b) == ['image', 'label', 'mask']
    for key in a:
      assert a[key].dtype == b[key].dtype
      np.testing.assert_array_equal(a[key], b[key])
  assert fast_eval[14]['mask'].sum() == 45  # Host 1 holds rows 48-95: 45 real, 3 padded.


def test_cifar_recipe_on_an_in_memory_split_leaves_pad_crop_flip_to_the_device(data_dir):
  config = base_config()
  config.dataset.update(data_dir=data_dir, preprocess='cifar')
  assert ip.build(config).device_augment == ''  # Unless the train step can do it.
  data = ip.build(config, augment_on_device=True)  # Digits in memory (cache='auto').
  assert data.device_augment == 'cifar' and data.num_workers == 0
  assert data.describe()['device_augment'] == 'cifar'
  source = sources.open_split(config.dataset, 'train')[0]
  order = ip.EpochOrder(len(source), config.seed)
  rows = order(np.arange(config.train.batch_size) + 4 * config.train.batch_size)
  np.testing.assert_array_equal(data.train[4]['image'], source.images[rows])  # Untouched.
  config.dataset.cache = 'none'  # Read through tfds per example: the host does it all.
  data = ip.build(config, augment_on_device=True)
  assert data.device_augment == '' and data.num_workers >= 1
  with data.eval_batches('test') as batches:
    assert sum(b['mask'].sum() for b in batches) == 360


def test_auto_worker_count():
  assert ip.auto_workers(True, cores=64, local_devices=8) == 0  # In memory: threads.
  assert ip.auto_workers(False, cores=2, local_devices=1) == 1
  assert ip.auto_workers(False, cores=16, local_devices=1) == 8  # 8 per accelerator,
  assert ip.auto_workers(False, cores=96, local_devices=8) == 64
  assert ip.auto_workers(False, cores=32, local_devices=8) == 31  # all but one core.
