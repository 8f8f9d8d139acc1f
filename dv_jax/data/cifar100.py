"""CIFAR-100 for the three-phase scaling experiment (METHOD.md sections 1 and 5).

Reads the official python version (`cifar-100-python/{train,test,meta}` pickles, as
distributed at https://www.cs.toronto.edu/~kriz/cifar.html) or a `cifar100.npz` from a local
directory; nothing is downloaded. The real training data is a long-tail resample of the
balanced training set (class of rank `r` has frequency `∝ r^-beta`); the synthetic split is
either a local directory / `.npz` of generated images, or real images drawn from a truncated
class distribution (`hard` at rank `k`, `top_p`, `temperature`, `finite_sample`), which is the
knowledge-acquisition model of Lemma 1 applied to classes.

Shape legend: `n` examples, images `[n, 32, 32, 3]` float32 (NHWC), labels int32 `[n]`.
"""

import os
import pickle
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from dv_jax import checks
from dv_jax.data import longtail
from dv_jax.data.contributors import Split
from dv_jax.data.longtail import longtail_indices  # re-exported: the CIFAR sampler

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 100
_NPZ_NAME = 'cifar100.npz'
_PICKLE_DIR = 'cifar-100-python'
_TARBALL = 'cifar-100-python.tar.gz'  # the official download, which holds _PICKLE_DIR
# What torchvision's ImageFolder reads, the layout generated class folders are written for;
# other files (captions, metadata) are skipped.
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
# (images, labels) array names in the npz files generators write (a file holding two of
# these pairs is refused as ambiguous): ours; DeepMind's released DDPM samples
# (`cifar100_ddpm.npz`, Gowal et al. 2021, read as `npzfile['image']`, `npzfile['label']`);
# guided-diffusion's `image_sample.py`, whose `np.savez(path, images, labels)` names them
# `arr_0`, `arr_1`.
_GENERATED_NPZ_NAMES = (('x', 'y'), ('image', 'label'), ('arr_0', 'arr_1'))


class Cifar100(NamedTuple):
  """The loaded data set.

  Attributes:
    x_train: float32 [50000, 32, 32, 3], in [0, 1] or standardised per channel.
    y_train: int32 [50000] fine (or coarse) labels.
    x_test: float32 [10000, 32, 32, 3].
    y_test: int32 [10000].
    label_names: tuple of class names (empty when the source has none).
    channel_mean: float32 [3] subtracted from the [0, 1] images (zeros if not normalised).
    channel_std: float32 [3] the images were divided by (ones if not normalised).
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  label_names: Tuple[str, ...]
  channel_mean: np.ndarray
  channel_std: np.ndarray


class MixtureSplits(NamedTuple):
  """Splits of the real-synthetic CIFAR-100 mixture.

  Attributes:
    train: the mixture `S = S1 ∪ S2` (real rows first), `is_synthetic` marks `S2`.
    target: `T`, a long-tail sample from training images held out of `train`.
    test: the full official test split (balanced).
    test_weight: float64 [n_test], sums to 1: `p(y) / count(y)`, so a weighted mean over
      `test` is the expectation under the real long-tail distribution, without resampling
      noise.
  """
  train: Split
  target: Split
  test: Split
  test_weight: np.ndarray


def _official_rows_to_nhwc(rows: np.ndarray, name: str) -> np.ndarray:
  """[n, 3072] channel-major rows (1024 R, 1024 G, 1024 B, each row-major) -> [n, 32, 32, 3]."""
  if rows.ndim != 2 or rows.shape[1] != 3072:
    raise ValueError(f'{name}: expected data of shape [n, 3072], got {rows.shape}')
  return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _to_unit_float(images: np.ndarray, name: str, out: Optional[np.ndarray] = None
                   ) -> np.ndarray:
  """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1], validated.

  Written into `out` (float32 of the same shape) when given, with no temporary of its size.
  """
  if images.dtype == np.uint8:
    # The float32 division of `astype(float32) / float32(255)`, without the float32 copy.
    return np.divide(images, np.float32(255.0), out=out, dtype=np.float32)
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'{name}: images must be uint8 or float, got dtype {images.dtype}')
  if out is None:
    images = images.astype(np.float32)
  else:
    out[...] = images
    images = out
  if not np.all(np.isfinite(images)):
    raise ValueError(f'{name}: images contain NaN or Inf')
  if images.size and (images.min() < 0.0 or images.max() > 1.0):
    raise ValueError(f'{name}: float images must lie in [0, 1], got range '
                     f'[{images.min()}, {images.max()}]')
  return images


def _nhwc(images: np.ndarray, name: str) -> np.ndarray:
  """[n, 32, 32, 3] or official [n, 3072] rows -> [n, 32, 32, 3] (a view), dtype unchanged."""
  if images.ndim == 2:
    images = _official_rows_to_nhwc(images, name)
  if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f'{name}: expected images of shape [n, 32, 32, 3] or [n, 3072], got '
                     f'{images.shape}')
  return images


def _to_nhwc(images: np.ndarray, name: str) -> np.ndarray:
  return _to_unit_float(_nhwc(images, name), name)


def _check_labels(labels, n: int, name: str, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape == (n, 1):
    # Keras' `cifar100.load_data()` returns labels as a column [n, 1], the usual source of a
    # saved cifar100.npz; unambiguous, so accepted rather than refused.
    labels = labels[:, 0]
  if labels.shape != (n,) or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
    raise ValueError(f'{name}: expected {n} integer labels, got shape {labels.shape} and '
                     f'dtype {labels.dtype}')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{name}: labels must lie in [0, {num_classes}), got range '
                     f'[{labels.min()}, {labels.max()}]')
  return labels.astype(np.int32)


def _read_pickle(path: Path) -> dict:
  # The official distribution is a pickle; only load files you trust.
  with open(path, 'rb') as f:
    return pickle.load(f, encoding='bytes')


def _load_pickles(folder: Path, label_key: bytes):
  splits = []
  for split in ('train', 'test'):
    path = folder / split
    if not path.is_file():
      raise ValueError(f'CIFAR-100: missing file {path} (official python version layout: '
                       f'{_PICKLE_DIR}/train, {_PICKLE_DIR}/test, {_PICKLE_DIR}/meta)')
    batch = _read_pickle(path)
    for field in (b'data', label_key):
      if field not in batch:
        raise ValueError(f'CIFAR-100: {path} has no {field!r} entry')
    images = _to_nhwc(np.asarray(batch[b'data']), str(path))
    labels = _check_labels(np.asarray(batch[label_key]), images.shape[0], str(path),
                           NUM_CLASSES if label_key == b'fine_labels' else 20)
    splits.append((images, labels))
  names = ()
  meta_path = folder / 'meta'
  if meta_path.is_file():
    meta = _read_pickle(meta_path)
    name_key = label_key.replace(b'labels', b'label_names')
    names = tuple(n.decode('utf-8') if isinstance(n, bytes) else str(n)
                  for n in meta.get(name_key, ()))
  return splits[0], splits[1], names


def _load_npz(path: Path, label_mode: str):
  with np.load(path, allow_pickle=False) as data:
    missing = [f for f in ('x_train', 'y_train', 'x_test', 'y_test') if f not in data.files]
    if missing:
      raise ValueError(f'CIFAR-100: {path} is missing arrays {missing}')
    num_classes = NUM_CLASSES if label_mode == 'fine' else 20
    out = []
    for split in ('train', 'test'):
      images = _to_nhwc(np.asarray(data[f'x_{split}']), f'{path}:x_{split}')
      labels = _check_labels(data[f'y_{split}'], images.shape[0], f'{path}:y_{split}',
                             num_classes)
      out.append((images, labels))
    # Names copied from the official meta pickle are bytes; str() of them gives "b'apple'".
    names = (tuple(n.decode('utf-8') if isinstance(n, bytes) else str(n)
                   for n in data['label_names'].tolist())
             if 'label_names' in data.files else ())
  return out[0], out[1], names


# Images per pass of `_channel_stats`: a float64 block of ~100 MB, never the whole split.
_STATS_CHUNK = 4096


def _channel_stats(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of `[n, h, w, 3]` images, summed in float64.

  Two passes over chunks of images: `images.std(dtype=float64)` made a float64 copy of the
  whole split (1.2 GB for CIFAR-100's training images, twice their float32 size).
  """
  count = images.shape[0] * images.shape[1] * images.shape[2]
  chunks = [images[s:s + _STATS_CHUNK] for s in range(0, images.shape[0], _STATS_CHUNK)]
  mean = sum(c.sum(axis=(0, 1, 2), dtype=np.float64) for c in chunks) / count
  # `c - mean` is a float64 chunk (mean is float64), never a float64 copy of the split.
  squares = sum(np.square(c - mean).sum(axis=(0, 1, 2)) for c in chunks)
  return mean, np.sqrt(squares / count)


def load_cifar100(directory, *, normalize: bool = False, label_mode: str = 'fine') -> Cifar100:
  """Loads CIFAR-100 from local files.

  Looked up in this order: `directory` itself if it is an `.npz` file;
  `directory/cifar100.npz` (arrays `x_train`, `y_train`, `x_test`, `y_test`, optional
  `label_names`; images uint8 [n, 32, 32, 3] / [n, 3072] or float in [0, 1]; labels [n]
  or Keras' [n, 1]);
  `directory/cifar-100-python/{train,test,meta}`; `directory/{train,test,meta}`.

  Args:
    directory: a folder (or `.npz` path).
    normalize: standardise each channel with the mean / std of the loaded training images
      (computed here, recorded in the result, applied to both splits).
    label_mode: 'fine' (100 classes, the default) or 'coarse' (20 super-classes).

  Returns:
    `Cifar100`.

  Raises:
    ValueError: naming the missing file, the malformed array, or the empty split.
  """
  if label_mode not in ('fine', 'coarse'):
    raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
  path = Path(os.fspath(directory))
  if path.is_file() and path.suffix == '.npz':
    loaded = _load_npz(path, label_mode)
  elif path.is_file():
    # The downloaded tarball or one of the pickles: 'does not exist' was said of them.
    raise ValueError(f'CIFAR-100: {path} is a file, not a folder or an .npz; pass the folder '
                     f'holding {_PICKLE_DIR}/ (extract {_TARBALL} there first) or '
                     f'{_NPZ_NAME}')
  elif not path.is_dir():
    raise ValueError(f'CIFAR-100: directory {path} does not exist')
  elif (path / _NPZ_NAME).is_file():
    loaded = _load_npz(path / _NPZ_NAME, label_mode)
  else:
    label_key = b'fine_labels' if label_mode == 'fine' else b'coarse_labels'
    folder = path / _PICKLE_DIR
    if not folder.is_dir() and (path / 'train').is_file():
      folder = path
    if not folder.is_dir():
      packed = ((f'; {path / _TARBALL} is still packed: extract it there '
                 f'(tar xzf {_TARBALL})') if (path / _TARBALL).is_file() else '')
      raise ValueError(f'CIFAR-100: found neither {path / _NPZ_NAME} nor '
                       f'{folder / "train"} (official python version) in {path}{packed}')
    loaded = _load_pickles(folder, label_key)
  (x_train, y_train), (x_test, y_test), names = loaded
  for split, images in (('training', x_train), ('test', x_test)):
    # An empty training split would also make the normalisation statistics NaN.
    if images.shape[0] == 0:
      raise ValueError(f'CIFAR-100: the {split} split in {path} has no images')
  mean = np.zeros(3, np.float32)
  std = np.ones(3, np.float32)
  if normalize:
    mean, std = (s.astype(np.float32) for s in _channel_stats(x_train))
    # `not > 0` rather than `<= 0`: a NaN std must fail too.
    if not np.all(np.isfinite(mean)) or not np.all(std > 0) or not np.all(np.isfinite(std)):
      raise ValueError(f'CIFAR-100: cannot standardise the training images: channel mean '
                       f'{mean}, std {std} (a constant channel has std 0)')
    # In place: both arrays are this function's own float32 copies (`_to_unit_float`).
    for images in (x_train, x_test):
      images -= mean
      images /= std
  return Cifar100(x_train, y_train, x_test, y_test, names, mean, std)


def load_generated_images(source, *, channel_mean=None, channel_std=None,
                          num_classes: int = NUM_CLASSES) -> Split:
  """Loads generated (synthetic) images with labels from local disk.

  Accepted layouts:
    * an `.npz` file with images `x` (uint8 [n, 32, 32, 3] / [n, 3072] official rows, or
      float in [0, 1]) and labels `y` (int [n]); or the same arrays named `image` and
      `label` (DeepMind's `cifar100_ddpm.npz`), or `arr_0` and `arr_1` (guided-diffusion's
      `image_sample.py`);
    * a directory of such `.npz` shards, concatenated in sorted file-name order;
    * a directory with one sub-folder per class named by its integer label
      (`0/`, `1/`, ...) holding 32x32 image files (read with Pillow; grayscale, palette,
      16-bit and opaque RGBA are converted to RGB, other sizes and transparency refused).
    Hidden entries (names starting with '.') are skipped.

  Args:
    source: the file or directory.
    channel_mean, channel_std: [3] standardisation of the real data (`Cifar100.channel_mean`
      / `channel_std`), applied so both halves of the mixture share one input scale.
    num_classes: labels must lie in `[0, num_classes)`.

  Returns:
    `Split` with `is_synthetic` all True.

  Raises:
    ValueError: naming the malformed file or the invalid `channel_mean` / `channel_std`.
  """
  path = Path(os.fspath(source))
  if path.is_file() and path.suffix == '.npz':
    shards = [path]
  elif path.is_dir():
    shards = sorted(p for p in path.iterdir() if p.suffix == '.npz' and not _hidden(p))
  else:
    raise ValueError(f'synthetic source {path} is neither an .npz file nor a directory')
  if shards:
    x, y = _load_generated_npz(shards, num_classes)
  else:
    x, y = _load_image_folders(path, num_classes)
  if x.shape[0] == 0:
    raise ValueError(f'synthetic source {path} holds no images')
  if channel_mean is not None or channel_std is not None:
    mean = np.zeros(3, np.float32) if channel_mean is None else np.asarray(channel_mean,
                                                                           np.float32)
    std = np.ones(3, np.float32) if channel_std is None else np.asarray(channel_std, np.float32)
    for name, value in (('channel_mean', mean), ('channel_std', std)):
      if value.shape != (3,) or not np.all(np.isfinite(value)):
        raise ValueError(f'{name} must be 3 finite numbers, got {value.tolist()}')
    if not np.all(std > 0):
      raise ValueError(f'channel_std must be positive, got {std.tolist()}')
    # In place: `x` is this function's own float32 array (`(x - mean) / std` made two
    # more of its size, 25 GB for the 1M images of cifar100_ddpm.npz).
    x -= mean
    x /= std
  return Split(x, y, np.ones(x.shape[0], dtype=bool))


def _load_generated_npz(shards: Sequence[Path], num_classes: int
                        ) -> Tuple[np.ndarray, np.ndarray]:
  """float32 images [n, 32, 32, 3] and int32 labels [n] of npz shards, in order.

  The stored (uint8) images are converted straight into one float32 array: converting each
  shard and concatenating held the images in float32 twice.
  """
  stored, labels = [], []
  for shard in shards:
    with np.load(shard, allow_pickle=False) as data:
      image_name, label_name = _generated_npz_names(data.files, shard)
      images = _nhwc(np.asarray(data[image_name]), f'{shard}:{image_name}')
      stored.append((images, f'{shard}:{image_name}'))
      labels.append(_check_labels(data[label_name], images.shape[0], f'{shard}:{label_name}',
                                  num_classes))
  x = np.empty((sum(l.size for l in labels),) + IMAGE_SHAPE, np.float32)
  start = 0
  for k, (images, name) in enumerate(stored):
    _to_unit_float(images, name, out=x[start:start + images.shape[0]])
    start += images.shape[0]
    stored[k] = None  # each shard's stored copy goes once it is converted
  return x, np.concatenate(labels)


def _generated_npz_names(files: Sequence[str], shard: Path) -> Tuple[str, str]:
  """The (images, labels) array names of a generated-images npz (`_GENERATED_NPZ_NAMES`)."""
  found = [pair for pair in _GENERATED_NPZ_NAMES if set(pair) <= set(files)]
  if len(found) > 1:
    raise ValueError(f'synthetic source {shard} holds images and labels under more than one '
                     f'pair of names {found}; keep one')
  if not found:
    # guided-diffusion writes labels only for a class-conditional model.
    unlabelled = ('; arr_0 without arr_1 is a class-unconditional sample, which has no '
                  'labels' if 'arr_0' in files else '')
    raise ValueError(f'synthetic source {shard} is missing arrays: it holds {sorted(files)}, '
                     f'not images and labels named as one of {list(_GENERATED_NPZ_NAMES)}'
                     f'{unlabelled}')
  return found[0]


def _hidden(path: Path) -> bool:
  # Tools leave hidden entries beside real data: Jupyter's `.ipynb_checkpoints/`, macOS's
  # `.DS_Store` and `._name.png` AppleDouble files (not images, though named like them).
  return path.name.startswith('.')


def _load_image_folders(path: Path, num_classes: int):
  class_dirs = sorted((p for p in path.iterdir() if p.is_dir() and not _hidden(p)),
                      key=lambda p: p.name)
  files, labels = [], []
  for class_dir in class_dirs:
    if not class_dir.name.isdigit() or int(class_dir.name) >= num_classes:
      raise ValueError(f'synthetic source: class folder {class_dir} must be named by an '
                       f'integer label in [0, {num_classes})')
    for f in sorted(class_dir.iterdir()):
      if _hidden(f):
        continue
      if f.is_dir():
        # Images one level deeper (`7/batch0/*.png`) would be skipped without a word and
        # the class silently lose them.
        raise ValueError(f'synthetic source: class folder {class_dir} holds a sub-folder '
                         f'{f.name!r}; put the images directly in the class folder')
      if f.suffix.lower() in _IMAGE_SUFFIXES:
        files.append(f)
        labels.append(int(class_dir.name))
  if not files:
    raise ValueError(f'synthetic source {path}: no .npz shards and no class folders of images '
                     f'({", ".join(_IMAGE_SUFFIXES)})')
  try:
    from PIL import Image  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('reading image folders needs Pillow: pip install pillow') from e
  images = []
  for f in files:
    with Image.open(f) as im:
      arr = _image_to_rgb(im, f)
    if arr.shape != IMAGE_SHAPE:
      raise ValueError(f'synthetic source: {f} has shape {arr.shape}, expected {IMAGE_SHAPE}')
    images.append(arr)
  return _to_unit_float(np.stack(images), str(path)), np.asarray(labels, np.int32)


def _image_to_rgb(im, f: Path) -> np.ndarray:
  """A Pillow image -> uint8 [h, w, 3], refusing what `convert('RGB')` would get wrong."""
  if im.mode.startswith('I;16'):
    # 16-bit PNG: convert('RGB') clips values above 255 instead of rescaling, so almost every
    # pixel of a 16-bit grayscale image would come out white.
    gray = np.round(np.asarray(im, dtype=np.float64) / 257.0).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if im.mode in ('I', 'F'):
    raise ValueError(f'synthetic source: {f} has Pillow mode {im.mode!r} (32-bit integer or '
                     f'float pixels) of unknown range; save it as 8-bit RGB')
  if 'A' in im.getbands() or 'transparency' in im.info:
    # convert('RGB') drops the alpha channel: under transparent pixels is arbitrary colour.
    alpha = np.asarray(im.convert('RGBA'))[..., 3]
    if alpha.size and alpha.min() < 255:
      raise ValueError(f'synthetic source: {f} has transparent pixels (alpha down to '
                       f'{alpha.min()}); composite it onto a background first')
  return np.asarray(im.convert('RGB'), dtype=np.uint8)


def _check_rows(x, y):
  """x, y as arrays, after checking they have one row per example each."""
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim == 0 or y.ndim != 1 or x.shape[0] != y.shape[0]:
    raise ValueError(f'x and y must have the same number of rows, got x of shape {x.shape} '
                     f'and y of shape {y.shape}')
  return x, y


def longtail_split(x, y, *, beta: float, num_samples: int, key: jax.Array,
                   class_order: Optional[Sequence[int]] = None,
                   num_classes: int = NUM_CLASSES) -> Split:
  """The real long-tail training data: `num_samples` draws, class of rank `r` `∝ r^-beta`.

  Args:
    x: [n_pool, ...] images of a balanced pool.
    y: int [n_pool] labels.
    beta, num_samples, key, class_order: see `longtail.longtail_indices`.
    num_classes: `C`; every class must have an example in `y`.

  Returns:
    `Split` with `is_synthetic` all False.

  Raises:
    ValueError: if x and y differ in rows, or a class has no example in `y`.
  """
  x, y = _check_rows(x, y)
  idx = longtail_indices(y, beta=beta, num_samples=num_samples, key=key,
                         class_order=class_order, num_classes=num_classes)
  return Split(np.asarray(x)[idx], np.asarray(y)[idx].astype(np.int32),
               np.zeros(idx.size, dtype=bool))


def truncated_class_indices(y, *, beta: float, num_samples: int, key: jax.Array,
                            mode: str = 'hard', k: Optional[int] = None,
                            top_p: Optional[float] = None, temperature: Optional[float] = None,
                            generator_samples: Optional[int] = None,
                            class_order: Optional[Sequence[int]] = None,
                            num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Indices into `y` (int64 [num_samples]) drawn by the truncated class distribution `p'`.

  See `truncated_class_split`, which takes the images at these indices.
  """
  trunc_key, sample_key = jax.random.split(key)
  p_ranked = longtail.zipf_probs(num_classes, beta=beta)
  q_ranked = longtail.truncated_probs(p_ranked, mode=mode, k=k, top_p=top_p,
                                      temperature=temperature, num_samples=generator_samples,
                                      key=trunc_key)
  q_label = longtail.ranks_to_labels(q_ranked, class_order)
  return longtail.sample_by_class(y, q_label, num_samples=num_samples, key=sample_key)


def truncated_class_split(x, y, *, beta: float, num_samples: int, key: jax.Array,
                          mode: str = 'hard', k: Optional[int] = None,
                          top_p: Optional[float] = None, temperature: Optional[float] = None,
                          generator_samples: Optional[int] = None,
                          class_order: Optional[Sequence[int]] = None,
                          num_classes: int = NUM_CLASSES) -> Split:
  """A synthetic split drawn from the truncated class distribution `p'` (METHOD.md section 1).

  `p` is Zipf(beta) over class ranks; `p' = truncation(p)` (`hard` at rank `k`, `top_p`,
  `temperature`, or `finite_sample` of `generator_samples` draws); images of each drawn class
  are taken uniformly from the pool. The shift between real and synthetic is then exactly
  the truncated class tail, which is what the three-phase analysis models; it does not model
  the pixel-level shift of generated images (use `load_generated_images` for that).

  Args:
    x: [n_pool, ...] images.
    y: int [n_pool] labels.
    beta: Zipf exponent of the real class distribution.
    num_samples: number of synthetic examples.
    key: JAX PRNG key.
    mode, k, top_p, temperature, generator_samples: the truncation.
    class_order: [C] labels in rank order (default `0..C-1`).
    num_classes: `C`.

  Returns:
    `Split` with `is_synthetic` all True.

  Raises:
    ValueError: if x and y differ in rows, or a class drawn with positive probability has
      no example in `y`.
  """
  x, y = _check_rows(x, y)
  idx = truncated_class_indices(y, beta=beta, num_samples=num_samples, key=key, mode=mode,
                                k=k, top_p=top_p, temperature=temperature,
                                generator_samples=generator_samples, class_order=class_order,
                                num_classes=num_classes)
  return Split(np.asarray(x)[idx], np.asarray(y)[idx].astype(np.int32),
               np.ones(idx.size, dtype=bool))


def synthetic_split(x=None, y=None, *, source=None, num_samples: Optional[int] = None,
                    key: Optional[jax.Array] = None, beta: float = 2.0, mode: str = 'hard',
                    k: Optional[int] = 70, top_p: Optional[float] = None,
                    temperature: Optional[float] = None,
                    generator_samples: Optional[int] = None,
                    class_order: Optional[Sequence[int]] = None, channel_mean=None,
                    channel_std=None) -> Split:
  """The synthetic half `S2`: generated images from `source`, or a class-truncated draw.

  With `source`, loads `load_generated_images(source)` and, if `num_samples` is given,
  draws that many of them with replacement (uniformly, from `key`). Without `source`, calls
  `truncated_class_split(x, y, ...)`.

  Returns:
    `Split` with `is_synthetic` all True.

  Raises:
    ValueError: naming the argument: a `num_samples` that is not an integer >= 0, a missing
      `key` or pool, or a malformed `source` (`load_generated_images`).
  """
  if num_samples is not None:
    # Checked before the images are read: -1 failed in NumPy as 'negative dimensions' and
    # 2.5 as a TypeError, neither naming num_samples.
    num_samples = checks.check_int(num_samples, 'num_samples', minimum=0)
  if source is not None:
    split = load_generated_images(source, channel_mean=channel_mean, channel_std=channel_std)
    if num_samples is None:
      return split
    if key is None:
      raise ValueError('key is required to subsample the synthetic source')
    idx = longtail.rng_from_key(key).integers(0, split.x.shape[0], size=num_samples)
    return Split(split.x[idx], split.y[idx], split.is_synthetic[idx])
  if x is None or y is None:
    raise ValueError('synthetic_split needs either source (generated images) or the pool x, y')
  if num_samples is None or key is None:
    raise ValueError('num_samples and key are required for a class-truncated synthetic split')
  return truncated_class_split(x, y, beta=beta, num_samples=num_samples, key=key, mode=mode,
                               k=k, top_p=top_p, temperature=temperature,
                               generator_samples=generator_samples, class_order=class_order)


def longtail_test_weights(y_test, *, beta: float,
                          class_order: Optional[Sequence[int]] = None,
                          num_classes: int = NUM_CLASSES) -> np.ndarray:
  """Weights `w_j = p(y_j) / count(y_j)` over a test split, summing to 1.

  `sum_j w_j loss_j` is the expected loss under the real long-tail class distribution.

  Returns:
    float64 [n_test].

  Raises:
    ValueError: naming `y_test` when it is not 1-D integer labels in `[0, num_classes)`, or
      lacks a class of positive probability.
  """
  y_test = checks.check_indices(y_test, 'y_test')
  # A label >= num_classes failed as a broadcast error in the final indexing, and -1 in
  # np.bincount; neither named y_test.
  if y_test.size and (y_test.min() < 0 or y_test.max() >= num_classes):
    raise ValueError(f'y_test must hold labels in [0, {num_classes}), got values in '
                     f'[{y_test.min()}, {y_test.max()}]')
  p = longtail.class_probabilities(num_classes, beta=beta, class_order=class_order)
  counts = np.bincount(y_test, minlength=num_classes)
  if np.any((counts == 0) & (p > 0)):
    raise ValueError('y_test lacks a class with positive long-tail probability')
  return p[y_test] / counts[y_test]


def cifar100_mixture(directory, *, num_examples: int, pi: float, seed: int = 0,
                     beta: float = 2.0, mode: str = 'hard', k: Optional[int] = 70,
                     top_p: Optional[float] = None, temperature: Optional[float] = None,
                     generator_samples: Optional[int] = None, num_target: int = 1000,
                     holdout_fraction: float = 0.1, normalize: bool = True,
                     synthetic_source=None, shuffle_classes: bool = False) -> MixtureSplits:
  """The CIFAR-100 real-synthetic mixture of the scaling experiment (paper: beta=2, k=70,
  pi=0.0625).

  A seeded, class-stratified `holdout_fraction` of the training images is set aside for the
  target `T`; the
  mixture draws `round(pi n)` real long-tail examples and `n - round(pi n)` synthetic ones
  from the rest.

  Args:
    directory: see `load_cifar100`.
    num_examples: `n = |S|`.
    pi: fraction real.
    seed: the one seed; keys are folded in per stage.
    beta, mode, k, top_p, temperature, generator_samples: real and synthetic distributions.
    num_target: `|T|`.
    holdout_fraction: share of the training images reserved for `T`.
    normalize: standardise channels (statistics of the full training split).
    synthetic_source: generated images (see `load_generated_images`) instead of truncation.
    shuffle_classes: rank the classes in a seeded random order instead of `0..99`.

  Returns:
    `MixtureSplits`.
  """
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f'holdout_fraction must lie in (0, 1), got {holdout_fraction!r}')
  seed = checks.check_seed(seed)
  data = load_cifar100(directory, normalize=normalize)
  key = jax.random.PRNGKey(seed)
  order_key, hold_key, real_key, syn_key, target_key = (jax.random.fold_in(key, i)
                                                       for i in range(5))
  class_order = (longtail.rng_from_key(order_key).permutation(NUM_CLASSES)
                 if shuffle_classes else None)
  hold, pool = longtail.stratified_partition(
      data.y_train, fractions=(holdout_fraction, 1.0 - holdout_fraction), key=hold_key)
  num_real, num_syn = longtail.split_counts(num_examples, pi=pi)
  # Indices first, images once: copying the pool's images would double the ~600 MB set.
  y_pool = data.y_train[pool]
  real_idx = pool[longtail_indices(y_pool, beta=beta, num_samples=num_real, key=real_key,
                                   class_order=class_order, num_classes=NUM_CLASSES)]
  real = Split(data.x_train[real_idx], data.y_train[real_idx], np.zeros(num_real, bool))
  if synthetic_source is not None:
    syn = synthetic_split(source=synthetic_source, num_samples=num_syn, key=syn_key,
                          channel_mean=data.channel_mean if normalize else None,
                          channel_std=data.channel_std if normalize else None)
  else:
    syn_idx = pool[truncated_class_indices(
        y_pool, beta=beta, num_samples=num_syn, key=syn_key, mode=mode, k=k, top_p=top_p,
        temperature=temperature, generator_samples=generator_samples,
        class_order=class_order)]
    syn = Split(data.x_train[syn_idx], data.y_train[syn_idx], np.ones(num_syn, bool))
  train = Split(np.concatenate([real.x, syn.x]), np.concatenate([real.y, syn.y]),
                np.concatenate([real.is_synthetic, syn.is_synthetic]))
  target_idx = hold[longtail_indices(data.y_train[hold], beta=beta, num_samples=num_target,
                                     key=target_key, class_order=class_order,
                                     num_classes=NUM_CLASSES)]
  target = Split(data.x_train[target_idx], data.y_train[target_idx],
                 np.zeros(num_target, bool))
  test = Split(data.x_test, data.y_test, np.zeros(data.y_test.size, dtype=bool))
  weights = longtail_test_weights(data.y_test, beta=beta, class_order=class_order)
  return MixtureSplits(train, target, test, weights)
