"""Tests of dv_jax.data.cifar100 and the shared long-tail sampler (dv_jax.data.longtail).

The CIFAR-100 files are tiny ones written here in the official python-version format
(`cifar-100-python/{train,test,meta}` pickles, `b'data'` [n, 3072] uint8 channel-major rows).
"""

import pickle

import jax
import numpy as np
import pytest
from scipy import stats

from dv_jax import scaling
from dv_jax.data import cifar100
from dv_jax.data import longtail

NUM_CLASSES = 100
PER_CLASS_TRAIN = 4


def _official_batch(rng, labels):
  data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
  return {b'data': data, b'fine_labels': list(int(l) for l in labels),
          b'coarse_labels': [int(l) // 5 for l in labels], b'filenames': [b'x'] * len(labels)}


@pytest.fixture(scope='module')
def official_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('cifar')
  folder = root / 'cifar-100-python'
  folder.mkdir()
  rng = np.random.default_rng(0)
  train = _official_batch(rng, np.repeat(np.arange(NUM_CLASSES), PER_CLASS_TRAIN))
  test = _official_batch(rng, np.arange(NUM_CLASSES))
  meta = {b'fine_label_names': [f'class{i}'.encode() for i in range(NUM_CLASSES)],
          b'coarse_label_names': [f'super{i}'.encode() for i in range(20)]}
  for name, obj in (('train', train), ('test', test), ('meta', meta)):
    with open(folder / name, 'wb') as f:
      pickle.dump(obj, f)
  return root, train, test


def test_load_official_pickles_layout_and_range(official_dir):
  root, train, test = official_dir
  data = cifar100.load_cifar100(root)
  assert data.x_train.shape == (NUM_CLASSES * PER_CLASS_TRAIN, 32, 32, 3)
  assert data.x_test.shape == (NUM_CLASSES, 32, 32, 3)
  assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
  assert data.label_names[7] == 'class7'
  np.testing.assert_array_equal(data.y_train, train[b'fine_labels'])
  # Independent reading of the official layout: pixel (h, w) of channel c sits at
  # c * 1024 + h * 32 + w of the row.
  raw = train[b'data'].astype(np.float64)
  for i, h, w, c in [(0, 0, 0, 0), (3, 31, 0, 1), (17, 5, 29, 2), (399, 31, 31, 2)]:
    assert data.x_train[i, h, w, c] == pytest.approx(raw[i, c * 1024 + h * 32 + w] / 255.0)
  assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
  np.testing.assert_array_equal(data.channel_mean, np.zeros(3))
  # Pointing at the cifar-100-python folder itself works too.
  again = cifar100.load_cifar100(root / 'cifar-100-python')
  np.testing.assert_array_equal(again.x_test, data.x_test)
  coarse = cifar100.load_cifar100(root, label_mode='coarse')
  np.testing.assert_array_equal(coarse.y_train, train[b'coarse_labels'])
  # The names follow the labels: 20 super-class names, not the 100 fine ones.
  assert coarse.label_names == tuple(f'super{i}' for i in range(20))


class _Python2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Writes what Python 2's `cPickle.dump(obj, f, 2)` wrote for the official CIFAR files.

  Python 2's native strings (the dict keys, the label names, the pixel buffer inside the
  array, the dtype code 'u1' and byte order '|') are BINSTRING opcodes, which Python 3
  reads back as str unless `encoding='bytes'`; and numpy lived at `numpy.core`. A pickle
  written by Python 3 (the `official_dir` fixture) has none of this, so it loads whatever
  the encoding.
  """
  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_python2_str(self, obj):
    raw = obj.encode('latin-1') if isinstance(obj, str) else obj
    if len(raw) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
    else:
      self.write(pickle.BINSTRING + len(raw).to_bytes(4, 'little') + raw)

  def save_python2_global(self, obj, name=None):
    module = obj.__module__.replace('numpy._core', 'numpy.core')
    self.write(pickle.GLOBAL + f'{module}\n{name or obj.__qualname__}\n'.encode())

  dispatch[bytes] = dispatch[str] = save_python2_str
  dispatch[type] = save_python2_global


def _python2_pickle(obj, path):
  with open(path, 'wb') as f:
    pickler = _Python2Pickler(f, protocol=2)
    pickler.dispatch[type(len)] = _Python2Pickler.save_python2_global  # numpy functions
    pickler.dump(obj)


def test_load_python2_pickles_as_distributed(tmp_path):
  # The files at https://www.cs.toronto.edu/~kriz/cifar.html were pickled by Python 2;
  # read without encoding='bytes' the pixel buffer fails to decode as ASCII.
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  rng = np.random.default_rng(4)
  batches = {}
  for split, n in (('train', 6), ('test', 2)):
    fine = [int(v) for v in rng.integers(0, NUM_CLASSES, n)]
    batches[split] = {'filenames': [f'img_{i}.png' for i in range(n)],
                      'batch_label': f'{split}ing batch 1 of 1', 'fine_labels': fine,
                      'coarse_labels': [v // 5 for v in fine],
                      'data': rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
    _python2_pickle(batches[split], folder / split)
  _python2_pickle({'fine_label_names': [f'fine{i}' for i in range(NUM_CLASSES)],
                   'coarse_label_names': [f'coarse{i}' for i in range(20)]}, folder / 'meta')
  assert b'U\x04data' in (folder / 'train').read_bytes()  # a Python 2 str key, as the real file
  data = cifar100.load_cifar100(tmp_path)
  np.testing.assert_array_equal(data.y_train, batches['train']['fine_labels'])
  np.testing.assert_array_equal(data.y_test, batches['test']['fine_labels'])
  assert data.label_names[:2] == ('fine0', 'fine1')
  raw = batches['train']['data'].astype(np.float64)
  for i, h, w, c in [(0, 0, 0, 0), (2, 31, 0, 1), (5, 7, 29, 2)]:
    assert data.x_train[i, h, w, c] == pytest.approx(raw[i, c * 1024 + h * 32 + w] / 255.0)
  coarse = cifar100.load_cifar100(tmp_path / 'cifar-100-python', label_mode='coarse')
  np.testing.assert_array_equal(coarse.y_test, batches['test']['coarse_labels'])
  assert coarse.label_names[-1] == 'coarse19'


def test_npz_matches_pickles_and_normalisation(official_dir, tmp_path):
  root, _, _ = official_dir
  ref = cifar100.load_cifar100(root)
  to_uint8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
  np.savez(tmp_path / 'cifar100.npz', x_train=to_uint8(ref.x_train), y_train=ref.y_train,
           x_test=to_uint8(ref.x_test), y_test=ref.y_test)
  data = cifar100.load_cifar100(tmp_path)
  np.testing.assert_array_equal(data.x_train, ref.x_train)
  np.testing.assert_array_equal(data.y_test, ref.y_test)
  norm = cifar100.load_cifar100(tmp_path, normalize=True)
  x64 = ref.x_train.astype(np.float64)
  mean, std = x64.mean(axis=(0, 1, 2)), x64.std(axis=(0, 1, 2))
  np.testing.assert_allclose(norm.channel_mean, mean, rtol=1e-6)
  np.testing.assert_allclose(norm.x_test, (ref.x_test - mean) / std, atol=1e-5)
  np.testing.assert_allclose(norm.x_train.astype(np.float64).mean(axis=(0, 1, 2)), 0,
                             atol=1e-5)


@pytest.mark.parametrize('chunk', [1, 3, 4096])
def test_channel_statistics_in_chunks_match_float64(monkeypatch, chunk):
  # Computed in chunks of images (a float64 copy of the whole split was 1.2 GB at full size).
  monkeypatch.setattr(cifar100, '_STATS_CHUNK', chunk)
  rng = np.random.default_rng(0)
  images = (rng.random((10, 4, 5, 3)) * [0.2, 1.0, 0.5]).astype(np.float32)
  mean, std = cifar100._channel_stats(images)  # pylint: disable=protected-access
  x64 = images.astype(np.float64)
  np.testing.assert_allclose(mean, x64.mean(axis=(0, 1, 2)), rtol=1e-12)
  np.testing.assert_allclose(std, x64.std(axis=(0, 1, 2)), rtol=1e-12)


def test_missing_files_are_named(official_dir, tmp_path):
  with pytest.raises(ValueError, match='cifar100.npz'):
    cifar100.load_cifar100(tmp_path)
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  root, _, _ = official_dir
  (folder / 'train').write_bytes((root / 'cifar-100-python' / 'train').read_bytes())
  with pytest.raises(ValueError, match=r'missing file .*test'):
    cifar100.load_cifar100(tmp_path)
  with pytest.raises(ValueError, match='does not exist'):
    cifar100.load_cifar100(tmp_path / 'nope')
  np.savez(tmp_path / 'bad.npz', x_train=np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(ValueError, match=r"missing arrays \['y_train'"):
    cifar100.load_cifar100(tmp_path / 'bad.npz')
  np.savez(tmp_path / 'range.npz', x_train=np.full((2, 32, 32, 3), 2.0), y_train=[0, 1],
           x_test=np.zeros((1, 32, 32, 3)), y_test=[0])
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    cifar100.load_cifar100(tmp_path / 'range.npz')


def test_a_downloaded_tarball_or_a_pickle_file_is_named_as_what_it_is(official_dir, tmp_path):
  # Both used to be reported as 'directory ... does not exist'.
  tarball = tmp_path / 'cifar-100-python.tar.gz'
  tarball.write_bytes(b'\x1f\x8b\x08\x00')
  with pytest.raises(ValueError, match=r'cifar-100-python\.tar\.gz is a file, not a folder.*'
                                       r'extract'):
    cifar100.load_cifar100(tarball)
  with pytest.raises(ValueError, match=r'cifar-100-python\.tar\.gz is still packed: '
                                       r'extract it'):
    cifar100.load_cifar100(tmp_path)
  root, _, _ = official_dir
  with pytest.raises(ValueError, match=r'train is a file, not a folder'):
    cifar100.load_cifar100(root / 'cifar-100-python' / 'train')


def test_npz_coarse_labels_must_lie_below_20(tmp_path):
  x = np.zeros((10, 32, 32, 3), np.uint8)
  y = np.arange(10) * 7  # fine labels up to 63, saved where coarse ones were expected
  np.savez(tmp_path / 'c.npz', x_train=x, y_train=y, x_test=x, y_test=y)
  with pytest.raises(ValueError, match=r'c.npz:y_train: labels must lie in \[0, 20\), got '
                     r'range \[0, 63\]'):
    cifar100.load_cifar100(tmp_path / 'c.npz', label_mode='coarse')
  assert cifar100.load_cifar100(tmp_path / 'c.npz').y_train.max() == 63


@pytest.mark.parametrize('empty, message', [('train', 'training split'),
                                            ('test', 'test split')])
def test_empty_split_is_rejected(tmp_path, empty, message):
  arrays = dict(x_train=np.zeros((2, 32, 32, 3), np.uint8), y_train=[0, 1],
                x_test=np.zeros((1, 32, 32, 3), np.uint8), y_test=[0])
  arrays[f'x_{empty}'] = np.zeros((0, 32, 32, 3), np.uint8)
  arrays[f'y_{empty}'] = np.zeros(0, np.int64)
  np.savez(tmp_path / 'c.npz', **arrays)
  # An empty training split used to give a NaN std that passed `std <= 0`, and all-NaN
  # test images.
  for normalize in (True, False):
    with pytest.raises(ValueError, match=message):
      cifar100.load_cifar100(tmp_path / 'c.npz', normalize=normalize)


@pytest.mark.parametrize('kwargs, message', [
    (dict(channel_mean=[0.5, 0.5, np.nan]), 'channel_mean'),
    (dict(channel_std=[1.0, 1.0, np.nan]), 'channel_std'),
    (dict(channel_std=[1.0, np.inf, 1.0]), 'channel_std'),
    (dict(channel_std=[1.0, 0.0, 1.0]), 'channel_std must be positive'),
    (dict(channel_mean=[0.5, 0.5]), 'channel_mean'),
])
def test_generated_images_reject_bad_normalisation(tmp_path, kwargs, message):
  np.savez(tmp_path / 'gen.npz', x=np.zeros((2, 32, 32, 3), np.uint8), y=[0, 1])
  with pytest.raises(ValueError, match=message):
    cifar100.load_generated_images(tmp_path / 'gen.npz', **kwargs)


def test_split_functions_check_x_and_y_rows():
  labels = np.repeat(np.arange(NUM_CLASSES), 2)
  key = jax.random.PRNGKey(0)
  # A short x used to be indexed out of range (or silently paired with the wrong labels).
  for x in (np.zeros((10, 1), np.float32), np.zeros((labels.size + 5, 1), np.float32)):
    with pytest.raises(ValueError, match=r'x and y must have the same number of rows'):
      cifar100.longtail_split(x, labels, beta=2.0, num_samples=5, key=key)
    with pytest.raises(ValueError, match=r'x and y must have the same number of rows'):
      cifar100.truncated_class_split(x, labels, beta=2.0, num_samples=5, key=key, k=70)


def test_longtail_sampler_names_a_missing_last_class():
  labels = np.repeat(np.arange(10), 3)
  key = jax.random.PRNGKey(0)
  # With all classes present the explicit count changes nothing.
  np.testing.assert_array_equal(
      longtail.longtail_indices(labels, beta=2.0, num_samples=50, key=key, num_classes=10),
      longtail.longtail_indices(labels, beta=2.0, num_samples=50, key=key))
  # A missing middle class always raised; a missing last class used to renormalise the
  # Zipf law over 9 classes silently.
  for missing in (4, 9):
    with pytest.raises(ValueError, match=rf'classes \[{missing}\] have positive probability'):
      longtail.longtail_indices(labels[labels != missing], beta=2.0, num_samples=5, key=key,
                                num_classes=10)
  with pytest.raises(ValueError, match='num_classes'):
    longtail.longtail_indices(labels, beta=2.0, num_samples=5, key=key, num_classes=9,
                              class_order=np.arange(10))
  pool = np.repeat(np.arange(cifar100.NUM_CLASSES - 1), 2)
  with pytest.raises(ValueError, match=r'classes \[99\]'):
    cifar100.longtail_split(np.zeros((pool.size, 1)), pool, beta=2.0, num_samples=5, key=key)


def _chi2_pvalue(counts, probs):
  keep = probs > 0
  assert counts[~keep].sum() == 0
  return stats.chisquare(counts[keep], counts.sum() * probs[keep]).pvalue


def test_longtail_indices_follow_zipf_and_class_order():
  labels = np.repeat(np.arange(10), 7)
  order = np.array([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
  idx = longtail.longtail_indices(labels, beta=2.0, num_samples=100_000,
                                  key=jax.random.PRNGKey(0), class_order=order)
  counts = np.bincount(labels[idx], minlength=10)
  ranks = np.arange(1, 11, dtype=np.float64)
  p_rank = ranks ** -2.0 / np.sum(ranks ** -2.0)
  p_label = np.empty(10)
  p_label[order] = p_rank
  assert _chi2_pvalue(counts, p_label) > 1e-3
  assert counts[3] == counts.max()
  # Within a class the example is uniform.
  within = np.bincount(idx[labels[idx] == 3] - 21, minlength=7)
  assert stats.chisquare(within).pvalue > 1e-3
  # Deterministic in the key, different for another key.
  again = longtail.longtail_indices(labels, beta=2.0, num_samples=100_000,
                                    key=jax.random.PRNGKey(0), class_order=order)
  np.testing.assert_array_equal(idx, again)
  other = longtail.longtail_indices(labels, beta=2.0, num_samples=100_000,
                                    key=jax.random.PRNGKey(1), class_order=order)
  assert not np.array_equal(idx, other)


def test_sample_items_reaches_the_far_tail():
  # Float32 inverse-CDF sampling never draws items with p below ~6e-8; ours must.
  p = longtail.zipf_probs(1_000_000, beta=2.0)
  ids = longtail.sample_items(p, num_samples=2_000_000, key=jax.random.PRNGKey(3))
  tail = p[10_000:].sum()  # ~6e-5: expect ~120 draws beyond rank 10^4
  drawn = np.sum(ids >= 10_000)
  assert abs(drawn - 2e6 * tail) < 5 * np.sqrt(2e6 * tail)


@pytest.mark.parametrize('mode,kwargs', [('hard', {'k': 4}), ('top_p', {'top_p': 0.8}),
                                         ('temperature', {'temperature': 0.5}),
                                         ('finite_sample', {'generator_samples': 30})])
def test_truncated_class_split_matches_scaling(mode, kwargs):
  labels = np.repeat(np.arange(12), 3)
  x = np.arange(labels.size, dtype=np.float32)[:, None]
  key = jax.random.PRNGKey(5)
  split = cifar100.truncated_class_split(x, labels, beta=1.5, num_samples=50_000, key=key,
                                         mode=mode, num_classes=12, **kwargs)
  assert split.is_synthetic.all() and split.y.dtype == np.int32
  np.testing.assert_array_equal(labels[split.x[:, 0].astype(int)], split.y)
  p = scaling.zipf(12, 1.5)
  trunc_key = jax.random.split(key)[0]
  q = scaling.synthetic_distribution(
      p, mode=mode, **({'num_samples': kwargs['generator_samples'], 'key': trunc_key}
                       if mode == 'finite_sample' else kwargs))
  counts = np.bincount(split.y, minlength=12)
  assert _chi2_pvalue(counts, q) > 1e-3
  if mode == 'hard':
    assert split.y.max() == 3


def test_generated_images_npz_shards_and_folders(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
  np.savez(tmp_path / 'gen.npz', x=x, y=np.array([0, 1, 2, 3, 4]))
  split = cifar100.load_generated_images(tmp_path / 'gen.npz')
  np.testing.assert_allclose(split.x, x / 255.0, atol=1e-7)
  assert split.is_synthetic.all()
  shards = tmp_path / 'shards'
  shards.mkdir()
  np.savez(shards / 'b.npz', x=x[2:], y=[2, 3, 4])
  np.savez(shards / 'a.npz', x=x[:2], y=[0, 1])
  joined = cifar100.load_generated_images(shards, channel_mean=[0.5] * 3,
                                          channel_std=[0.25] * 3)
  np.testing.assert_allclose(joined.x, (x / 255.0 - 0.5) / 0.25, atol=1e-5)
  np.testing.assert_array_equal(joined.y, [0, 1, 2, 3, 4])
  np.savez(tmp_path / 'badlabel.npz', x=x[:1], y=[100])
  with pytest.raises(ValueError, match='badlabel.npz'):
    cifar100.load_generated_images(tmp_path / 'badlabel.npz')
  image = pytest.importorskip('PIL.Image')
  folders = tmp_path / 'folders'
  for label in (3, 7):
    (folders / str(label)).mkdir(parents=True)
    image.fromarray(x[label % 5]).save(folders / str(label) / 'img0.png')
  split = cifar100.load_generated_images(folders)
  np.testing.assert_array_equal(split.y, [3, 7])
  np.testing.assert_allclose(split.x[1], x[2] / 255.0, atol=1e-7)
  (folders / 'cat').mkdir()
  with pytest.raises(ValueError, match='integer label'):
    cifar100.load_generated_images(folders)


@pytest.mark.parametrize('image_name, label_name', [('image', 'label'), ('arr_0', 'arr_1')])
def test_generated_npz_as_released_by_generators(tmp_path, image_name, label_name):
  # DeepMind's cifar100_ddpm.npz (`image`, `label`) and guided-diffusion's
  # np.savez(path, images, labels) (`arr_0`, `arr_1`) used to be refused for lacking x, y.
  rng = np.random.default_rng(5)
  x = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
  y = np.array([9, 0, 99, 9])
  np.savez(tmp_path / 'gen.npz', **{image_name: x, label_name: y})
  split = cifar100.load_generated_images(tmp_path / 'gen.npz')
  np.testing.assert_allclose(split.x, x / 255.0, atol=1e-7)
  np.testing.assert_array_equal(split.y, y)
  np.savez(tmp_path / 'bad.npz', **{image_name: x, label_name: y + 1})
  with pytest.raises(ValueError, match=rf'bad\.npz:{label_name}: labels must lie in'):
    cifar100.load_generated_images(tmp_path / 'bad.npz')


def test_generated_npz_names_what_it_cannot_read(tmp_path):
  x = np.zeros((2, 32, 32, 3), np.uint8)
  np.savez(tmp_path / 'uncond.npz', x)  # guided-diffusion without class_cond: arr_0 only
  with pytest.raises(ValueError, match=r"uncond\.npz is missing arrays: it holds \['arr_0'\].*"
                                       'class-unconditional'):
    cifar100.load_generated_images(tmp_path / 'uncond.npz')
  np.savez(tmp_path / 'both.npz', x=x, y=[0, 1], image=x[::-1], label=[1, 0])
  with pytest.raises(ValueError, match=r'both\.npz holds images and labels under more than '
                                       'one pair'):
    cifar100.load_generated_images(tmp_path / 'both.npz')


@pytest.mark.parametrize('normalise', [False, True])
def test_generated_npz_is_converted_without_float32_copies(tmp_path, normalise):
  # DeepMind's cifar100_ddpm.npz holds 1M images: 12 GB as float32. Converting each shard
  # and concatenating held two float32 copies, and standardising made two more (peak 4x
  # the result, 49 GB); now the stored uint8 images and the result (1.25x).
  import tracemalloc  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  x = rng.integers(0, 256, size=(300, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, NUM_CLASSES, size=300)
  shards = tmp_path / 'shards'
  shards.mkdir()
  np.savez(shards / 'a.npz', image=x[:100], label=y[:100])
  np.savez(shards / 'b.npz', image=x[100:], label=y[100:])
  mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
  kwargs = dict(channel_mean=mean, channel_std=std) if normalise else {}
  tracemalloc.start()
  try:
    split = cifar100.load_generated_images(shards, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 1.5 * split.x.nbytes
  expected = x / 255.0
  if normalise:
    expected = (expected - mean) / std
  np.testing.assert_allclose(split.x, expected, atol=2e-6)
  np.testing.assert_array_equal(split.y, y)


def test_cifar100_mixture_end_to_end(official_dir, tmp_path):
  root, _, _ = official_dir
  kwargs = dict(num_examples=160, pi=0.25, seed=3, k=5, num_target=40, holdout_fraction=0.25)
  mix = cifar100.cifar100_mixture(root, **kwargs)
  assert mix.train.x.shape == (160, 32, 32, 3)
  assert mix.train.is_synthetic.sum() == 120 and not mix.train.is_synthetic[:40].any()
  assert mix.train.y[mix.train.is_synthetic].max() < 5
  assert mix.target.x.shape[0] == 40 and not mix.target.is_synthetic.any()
  p = longtail.class_probabilities(NUM_CLASSES, beta=2.0)
  np.testing.assert_allclose(mix.test_weight, p[mix.test.y])  # one test image per class
  assert mix.test_weight.sum() == pytest.approx(1.0)
  again = cifar100.cifar100_mixture(root, **kwargs)
  np.testing.assert_array_equal(again.train.x, mix.train.x)
  # T is drawn with a key of its own: drawn with S1's, its class sequence would be S1's
  # (here both have 40 rows).
  assert not np.array_equal(mix.target.y, mix.train.y[:40])
  # Generated images replace the truncation when a source is given.
  gen = np.zeros((3, 32, 32, 3), np.uint8)
  np.savez(tmp_path / 'gen.npz', x=gen, y=[1, 2, 3])
  with_gen = cifar100.cifar100_mixture(root, synthetic_source=tmp_path / 'gen.npz',
                                       normalize=False, **kwargs)
  assert np.all(with_gen.train.x[with_gen.train.is_synthetic] == 0.0)
  # The 3 generated images are resampled to n - round(pi n) = 120 synthetic rows.
  assert with_gen.train.x.shape[0] == 160 and with_gen.train.is_synthetic.sum() == 120
  assert set(with_gen.train.y[with_gen.train.is_synthetic].tolist()) <= {1, 2, 3}
  with pytest.raises(ValueError, match='holdout_fraction'):
    cifar100.cifar100_mixture(root, **{**kwargs, 'holdout_fraction': 1.0})
  # PRNGKey keeps a seed's low 32 bits: 2**32 would silently be seed 0's draws again.
  with pytest.raises(ValueError, match='seed must be an integer'):
    cifar100.cifar100_mixture(root, **{**kwargs, 'seed': 2**32})


@pytest.mark.parametrize('num_samples', [-1, 2.5, True, '3'])
def test_synthetic_split_names_a_bad_num_samples(tmp_path, num_samples):
  # -1 used to fail in NumPy as 'negative dimensions' and 2.5 as a TypeError.
  np.savez(tmp_path / 'gen.npz', x=np.zeros((3, 32, 32, 3), np.uint8), y=[1, 2, 3])
  with pytest.raises(ValueError, match='num_samples must be an integer >= 0'):
    cifar100.synthetic_split(source=tmp_path / 'gen.npz', num_samples=num_samples,
                             key=jax.random.PRNGKey(0))
  ok = cifar100.synthetic_split(source=tmp_path / 'gen.npz', num_samples=5.0,
                                key=jax.random.PRNGKey(0))
  assert ok.y.shape == (5,) and set(ok.y.tolist()) <= {1, 2, 3}


@pytest.mark.parametrize('y_test, match', [
    ([0, 1, 150], r'y_test must hold labels in \[0, 100\), got values in \[0, 150\]'),
    ([0, -1], r'y_test must hold labels in \[0, 100\), got values in \[-1, 0\]'),
    ([0.0, 1.0], 'y_test must be integers'),
])
def test_longtail_test_weights_names_bad_labels(y_test, match):
  # 150 used to fail as a broadcast error and -1 inside np.bincount.
  with pytest.raises(ValueError, match=match):
    cifar100.longtail_test_weights(np.array(y_test), beta=2.0)
  # The reference: p(y) / count(y) with p Zipf(2) over 3 classes, class 0 counted twice.
  p = np.array([1.0, 1 / 4, 1 / 9]) / (1 + 1 / 4 + 1 / 9)
  np.testing.assert_allclose(cifar100.longtail_test_weights([0, 2, 0, 1], beta=2.0,
                                                            num_classes=3),
                             [p[0] / 2, p[2], p[0] / 2, p[1]], rtol=1e-12)


def test_class_order_puts_each_rank_on_its_label_in_probabilities_and_test_weights():
  """class_order[r] is the label of rank r + 1: p(label) = (r + 1)^-beta / H, in float64
  closed form (before, class_order was checked only through a chi-square of draws)."""
  order = [2, 0, 3, 1]  # label 2 the head, label 1 the tail
  rank_of = {label: r + 1 for r, label in enumerate(order)}
  norm = sum(r ** -1.5 for r in range(1, 5))
  want = np.array([rank_of[label] ** -1.5 / norm for label in range(4)])
  np.testing.assert_allclose(longtail.class_probabilities(4, beta=1.5, class_order=order),
                             want, rtol=1e-14)
  # A test split of 2, 1, 3 and 1 rows of labels 0..3: w_j = p(y_j) / count(y_j).
  y_test = np.array([3, 0, 1, 3, 2, 3, 0])
  counts = {0: 2, 1: 1, 2: 1, 3: 3}
  weights = cifar100.longtail_test_weights(y_test, beta=1.5, class_order=order, num_classes=4)
  np.testing.assert_allclose(weights, [want[y] / counts[y] for y in y_test], rtol=1e-14)
  # The weighted mean of a per-label loss is its expectation under the long tail.
  loss_of_label = np.array([0.5, 2.0, 0.1, 1.0])
  np.testing.assert_allclose(weights @ loss_of_label[y_test], want @ loss_of_label, rtol=1e-14)


def test_stratified_partition_is_disjoint_and_balanced():
  labels = np.repeat(np.arange(5), 20)
  parts = longtail.stratified_partition(labels, fractions=(0.1, 0.3, 0.6),
                                        key=jax.random.PRNGKey(0))
  allidx = np.concatenate(parts)
  np.testing.assert_array_equal(np.sort(allidx), np.arange(100))
  for part, frac in zip(parts, (0.1, 0.3, 0.6)):
    np.testing.assert_array_equal(np.bincount(labels[part], minlength=5), [20 * frac] * 5)


def test_sampler_error_paths():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='no example'):
    longtail.sample_by_class(np.array([0, 0, 2]), [0.3, 0.3, 0.4], num_samples=3, key=key)
  with pytest.raises(ValueError, match='class_order'):
    longtail.longtail_indices(np.arange(3), beta=2.0, num_samples=3, key=key,
                              class_order=[0, 0, 1])
  with pytest.raises(ValueError, match='p contains NaN'):
    longtail.sample_items([0.5, np.nan], num_samples=2, key=key)
  with pytest.raises(ValueError, match='beta'):
    longtail.zipf_probs(10, beta=0.5)
  with pytest.raises(ValueError, match='mode'):
    longtail.truncated_probs([0.5, 0.5], mode='nucleus')
  with pytest.raises(ValueError, match='key'):
    longtail.truncated_probs([0.5, 0.5], mode='finite_sample', num_samples=3)
  with pytest.raises(ValueError, match='pi'):
    longtail.split_counts(10, pi=1.5)
  with pytest.raises(ValueError, match='num_samples'):
    longtail.sample_items([1.0], num_samples=-1, key=key)


def _png_folder(tmp_path, arrays):
  """tmp_path/gen with class folder 5/ holding one PNG per array."""
  image = pytest.importorskip('PIL.Image')
  folder = tmp_path / 'gen' / '5'
  folder.mkdir(parents=True)
  for i, a in enumerate(arrays):
    image.fromarray(a).save(folder / f'img{i}.png')
  return tmp_path / 'gen'


def test_generated_folders_skip_hidden_entries_and_refuse_nested_folders(tmp_path):
  x = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
  root = _png_folder(tmp_path, [x])
  # What Jupyter and macOS leave beside real data: not classes, not images.
  (root / '.ipynb_checkpoints').mkdir()
  (root / '5' / '.DS_Store').write_bytes(b'\0\0\0\1Bud1')
  (root / '5' / '._img0.png').write_bytes(b'\0\5\26\7 AppleDouble')
  split = cifar100.load_generated_images(root)
  np.testing.assert_array_equal(split.y, [5])
  np.testing.assert_allclose(split.x[0], x / 255.0, atol=1e-7)
  (root / '5' / 'batch0').mkdir()
  with pytest.raises(ValueError, match="sub-folder 'batch0'"):
    cifar100.load_generated_images(root)


def test_generated_folders_read_every_format_image_folder_reads(tmp_path):
  # WebP, TIFF and PGM images were skipped as if they were captions: a class saved as
  # WebP silently had no images. Sidecar files are still skipped.
  image = pytest.importorskip('PIL.Image')
  rng = np.random.default_rng(7)
  x = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
  root = _png_folder(tmp_path, [x[0]])
  for label, name, options in ((6, 'a.webp', {'lossless': True}), (7, 'b.tiff', {})):
    (root / str(label)).mkdir()
    image.fromarray(x[label - 5]).save(root / str(label) / name, **options)
    (root / str(label) / 'prompt.txt').write_text('a photo of a class')
  split = cifar100.load_generated_images(root)
  np.testing.assert_array_equal(split.y, [5, 6, 7])
  np.testing.assert_allclose(split.x, x / 255.0, atol=1e-7)


def test_generated_folders_read_16_bit_png_and_refuse_transparency(tmp_path):
  gray16 = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
  root = _png_folder(tmp_path, [gray16])
  split = cifar100.load_generated_images(root)
  # convert('RGB') clipped 16-bit values at 255: 99.5% of these pixels came out white.
  np.testing.assert_allclose(split.x[0], np.repeat(gray16[..., None], 3, -1) / 65535.0,
                             atol=0.5 / 255 + 1e-6)
  rgba = np.full((32, 32, 4), 200, np.uint8)
  (root / '5' / 'img0.png').unlink()
  rgba[..., 3] = 255
  image = pytest.importorskip('PIL.Image')
  image.fromarray(rgba).save(root / '5' / 'opaque.png')
  np.testing.assert_allclose(cifar100.load_generated_images(root).x[0], 200 / 255.0,
                             atol=1e-7)
  rgba[0, 0, 3] = 0
  image.fromarray(rgba).save(root / '5' / 'opaque.png')
  with pytest.raises(ValueError, match='opaque.png has transparent pixels'):
    cifar100.load_generated_images(root)


def test_npz_reads_keras_column_labels_and_bytes_label_names(tmp_path):
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, size=(NUM_CLASSES, 32, 32, 3), dtype=np.uint8)
  y = np.arange(NUM_CLASSES)
  # Keras' cifar100.load_data() layout ([n, 1] labels) and names from the meta pickle (bytes).
  np.savez(tmp_path / 'k.npz', x_train=x, y_train=y[:, None], x_test=x, y_test=y[:, None],
           label_names=np.array([f'class{i}'.encode() for i in y]))
  data = cifar100.load_cifar100(tmp_path / 'k.npz')
  np.testing.assert_array_equal(data.y_train, y)
  assert data.y_train.dtype == np.int32 and data.label_names[:2] == ('class0', 'class1')
  np.savez(tmp_path / 'f.npz', x_train=x, y_train=y.astype(np.float32), x_test=x, y_test=y)
  with pytest.raises(ValueError, match='f.npz:y_train: expected 100 integer labels'):
    cifar100.load_cifar100(tmp_path / 'f.npz')
