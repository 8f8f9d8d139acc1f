"""The shared optax training loop (ground truth, TracIn / TRAK baselines, scaling curves).

One recipe: minibatches of ``batch_size`` indices drawn uniformly *with replacement* from the
``n`` training examples at every step, mean cross-entropy, an optax optimiser, ``steps``
steps under ``lax.scan``. The data are zero-padded to a fixed capacity and ``n`` is a traced
scalar, so one compiled program serves every subset size up to that capacity (padded rows
are never drawn). ``train_many_seeds`` vmaps the same program over PRNG keys.

BatchNorm. By default the loss is ``apply_fn(params, xb)``: for a model bound by
``dv_jax.models.bind_apply`` that is inference mode, BatchNorm a fixed affine map on its
bound statistics. ``use_batch_stats=True`` trains as the standard recipe does, each
minibatch normalised by its own statistics (``apply_fn.train_apply``); the running
statistics are then re-estimated after training (``dv_jax.models.common.recalibrated``, as
the ground truth, TracIn and TRAK do).

Shape legend: ``n`` examples, ``c`` classes, ``R`` seeds, ``T`` steps, ``J`` checkpoints.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dv_jax import checks
from dv_jax import config_checks

OPTIMIZERS = ('adam', 'sgd', 'adamw')
SCHEDULES = ('constant', 'cosine')


class TrainConfig(NamedTuple):
  """The training recipe (an ``ml_collections.ConfigDict`` with these fields works too).

  Attributes:
    optimizer: ``'adam'``, ``'sgd'`` or ``'adamw'``.
    learning_rate: base learning rate ``eta``.
    steps: number of optimiser steps ``T``.
    batch_size: examples per step (drawn with replacement).
    weight_decay: decoupled decay for ``adamw``; an L2 term added to the gradient
      (``optax.add_decayed_weights``) for ``adam`` and ``sgd``.
    momentum: heavy-ball momentum of ``sgd`` (0: none); must be 0 for the other optimisers.
    schedule: ``'constant'`` or ``'cosine'`` (``eta_t = eta (1 + cos(pi t / T)) / 2``).
    checkpoint_every: save parameters after every this many steps (0: never); must divide
      ``steps``. TracIn reads the checkpoints and their learning rates.
  """
  optimizer: str = 'adam'
  learning_rate: float = 1e-2
  steps: int = 300
  batch_size: int = 64
  weight_decay: float = 0.0
  momentum: float = 0.0
  schedule: str = 'constant'
  checkpoint_every: int = 0


def as_train_config(config: Any, *, extra_fields: Sequence[str] = ()) -> TrainConfig:
  """Reads the ``TrainConfig`` fields from a TrainConfig, ConfigDict, dict or object.

  Missing fields take the ``TrainConfig`` defaults. A dict or ConfigDict may hold only
  those fields and the caller's ``extra_fields`` (e.g. the ground truth's ``num_seeds``):
  a misspelt ``lr`` would otherwise train silently with the default learning rate.

  Args:
    config: the recipe (None: the defaults).
    extra_fields: other keys the caller reads from the same mapping.

  Raises:
    ValueError: naming the field, for an unknown key, an unknown optimiser or schedule,
      non-positive ``steps`` / ``batch_size`` / ``learning_rate``, negative
      ``weight_decay``, ``momentum`` outside ``[0, 1)`` or non-zero for an optimiser other
      than ``sgd``, or a ``checkpoint_every`` that does not divide ``steps``.
  """
  if config is None:
    config = TrainConfig()
  if hasattr(config, 'keys'):  # a dict or ConfigDict (a TrainConfig has no keys)
    known = set(TrainConfig._fields) | set(extra_fields)
    unknown = sorted(set(config.keys()) - known)
    if unknown:
      raise ValueError(f'config has unknown training fields {unknown}; valid: '
                       f'{sorted(known)}')
  values = {}
  for field in TrainConfig._fields:
    default = TrainConfig._field_defaults[field]
    if isinstance(config, dict):
      values[field] = config.get(field, default)
    else:
      values[field] = getattr(config, field, default)
  c = TrainConfig(**values)
  if c.optimizer not in OPTIMIZERS:
    raise ValueError(f'config.optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}')
  if c.schedule not in SCHEDULES:
    raise ValueError(f'config.schedule must be one of {SCHEDULES}, got {c.schedule!r}')
  steps = config_checks.config_int(c.steps, 'steps')
  batch_size = config_checks.config_int(c.batch_size, 'batch_size')
  # config_float, not float(): float() read True as 1.0, and failed on None with a
  # TypeError that did not name the field.
  learning_rate = config_checks.config_float(c.learning_rate, 'learning_rate',
                                             lambda v: v > 0, 'finite and > 0')
  weight_decay = config_checks.config_float(c.weight_decay, 'weight_decay',
                                            lambda v: v >= 0, 'finite and >= 0')
  # momentum >= 1 lets the velocity grow without bound
  momentum = config_checks.config_float(c.momentum, 'momentum', lambda v: 0 <= v < 1,
                                        'a number in [0, 1)')
  # Only sgd has a heavy-ball momentum: adam / adamw would train silently without it.
  if momentum and c.optimizer != 'sgd':
    raise ValueError(f'config.momentum={c.momentum} is used only by optimizer sgd, got '
                     f'optimizer {c.optimizer!r}; set momentum to 0')
  every = config_checks.config_int(c.checkpoint_every, 'checkpoint_every', minimum=0)
  if every and steps % every:
    raise ValueError(f'config.checkpoint_every must be 0 or divide steps={steps}, got '
                     f'{every}')
  return c._replace(steps=steps, batch_size=batch_size,
                    checkpoint_every=every, learning_rate=learning_rate,
                    weight_decay=weight_decay, momentum=momentum)


class TrainResult(NamedTuple):
  """What ``train`` returns (``train_many_seeds``: every field gains a leading ``[R]``).

  Attributes:
    params: the trained parameters (same pytree as the input).
    losses: ``[T]`` mean minibatch cross-entropy at each step (before its update).
    checkpoints: parameters after steps ``e, 2e, ..., T`` stacked on a leading ``[J]`` axis
      (``e = checkpoint_every``), or None.
    learning_rates: ``[J]`` the mean learning rate over the steps since the previous
      checkpoint (steps ``j e, ..., (j + 1) e - 1`` for checkpoint ``j``), or None. TracInCP
      weighs checkpoint ``j`` by the step size used between it and the one before; under a
      decaying schedule that step size is not constant, and its mean keeps the first-order
      sum over those steps (the rate of the last step alone gives a cosine run's final
      checkpoint a weight near 0).
  """
  params: Any
  losses: jax.Array
  checkpoints: Any = None
  learning_rates: jax.Array | None = None


class Evaluation(NamedTuple):
  """Mean cross-entropy and accuracy (``[R]`` each for ``evaluate_many``)."""
  loss: jax.Array
  accuracy: jax.Array


def cross_entropy(logits: Any, labels: Any) -> jax.Array:
  """Per-example softmax cross-entropy ``logsumexp(z) - z_y``.

  Args:
    logits: ``[n, c]``.
    labels: ``[n]`` int in ``[0, c)`` (checked when concrete; a traced label is not).

  Returns:
    ``[n]`` losses.

  Raises:
    ValueError: ``logits`` not ``[n, c]``, ``labels`` not ``[n]`` integers, or (for
      concrete labels) a label outside ``[0, c)``: the gather turns ``c`` into NaN and
      ``-1`` into the last class, silently.
  """
  logits = jnp.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f'logits must be [n, c], got shape {logits.shape}')
  if not isinstance(labels, jax.Array):  # (tracers are jax.Arrays too)
    labels = np.asarray(labels)
  if labels.shape != logits.shape[:1]:
    raise ValueError(f'labels must be [{logits.shape[0]}] (one per row of logits), got shape '
                     f'{labels.shape}')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integer class indices, got dtype {labels.dtype}')
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= logits.shape[1]:
      raise ValueError(f'labels must lie in [0, {logits.shape[1]}) (the number of logits), '
                       f'got values in [{low}, {high}]')
  labels = jnp.asarray(labels, jnp.int32)
  true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  return jax.nn.logsumexp(logits, axis=-1) - true_logit


def learning_rate_at(step: Any, *, learning_rate: float, schedule: str, steps: int) -> jax.Array:
  """The learning rate ``eta_t`` of step ``t`` (0-based) under ``schedule``.

  Raises:
    ValueError: an unknown ``schedule`` (it would otherwise be read as cosine), or for
      ``cosine``, ``steps`` not an integer >= 1 (0 gave NaN, ``step / 0``).
  """
  if schedule not in SCHEDULES:
    raise ValueError(f'schedule must be one of {SCHEDULES}, got {schedule!r}')
  step = jnp.asarray(step, jnp.float32)
  if schedule == 'constant':
    return jnp.full_like(step, learning_rate)
  steps = checks.check_int(steps, 'steps')  # static under jit (`_STATIC`), so checkable
  return learning_rate * 0.5 * (1.0 + jnp.cos(jnp.pi * step / steps))


def _optimizer(lr_fn, *, optimizer, weight_decay, momentum) -> optax.GradientTransformation:
  if optimizer == 'adamw':
    return optax.adamw(lr_fn, weight_decay=weight_decay)
  tx = optax.adam(lr_fn) if optimizer == 'adam' else optax.sgd(lr_fn, momentum=momentum or None)
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  return tx


_STATIC = ('apply_fn', 'optimizer', 'schedule', 'steps', 'batch_size', 'weight_decay',
           'momentum', 'checkpoint_every')


def _recipe_optimizer(learning_rate, *, optimizer, schedule, steps, weight_decay,
                      momentum) -> optax.GradientTransformation:
  """The recipe's optimizer, its learning rate following ``schedule`` over ``steps``."""
  lr_fn = functools.partial(learning_rate_at, learning_rate=learning_rate, schedule=schedule,
                            steps=steps)
  return _optimizer(lr_fn, optimizer=optimizer, weight_decay=weight_decay, momentum=momentum)


def _step_fn(x_pad, y_pad, n, key, learning_rate, *, apply_fn, optimizer, schedule, steps,
             batch_size, weight_decay, momentum):
  """``(tx, step)``: the optimizer and one training step ``(carry, t) -> (carry, loss)``."""
  tx = _recipe_optimizer(learning_rate, optimizer=optimizer, schedule=schedule, steps=steps,
                         weight_decay=weight_decay, momentum=momentum)

  # A train-mode forward (BatchNorm's `train_apply`) also takes the step's key, for a
  # module whose train mode turns on Dropout too.
  takes_rng = getattr(apply_fn, 'takes_rng', False)

  def loss_fn(p, xb, yb, step_key):
    logits = apply_fn(p, xb, step_key) if takes_rng else apply_fn(p, xb)
    return jnp.mean(cross_entropy(logits, yb))

  def step(carry, t):
    p, state = carry
    step_key = jax.random.fold_in(key, t)
    # Indices in [0, n): padded rows beyond n are never drawn.
    # int32 explicitly: under jax_enable_x64 the default int64 draws other indices.
    idx = jax.random.randint(step_key, (batch_size,), 0, n, dtype=jnp.int32)
    loss, grads = jax.value_and_grad(loss_fn)(p, x_pad[idx], y_pad[idx], step_key)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), loss

  return tx, step


def _interval_rates(learning_rate, *, schedule, steps, checkpoint_every):
  """``[J]`` the mean learning rate over each checkpoint's interval (``TrainResult``)."""
  rates = learning_rate_at(jnp.arange(steps), learning_rate=learning_rate, schedule=schedule,
                           steps=steps)
  return rates.reshape(steps // checkpoint_every, checkpoint_every).mean(axis=1)


def _fit(params, x_pad, y_pad, n, key, learning_rate, *, apply_fn, optimizer, schedule, steps,
         batch_size, weight_decay, momentum, checkpoint_every):
  """The whole training run for one key: ``lax.scan`` over steps (inside jit)."""
  tx, step = _step_fn(x_pad, y_pad, n, key, learning_rate, apply_fn=apply_fn,
                      optimizer=optimizer, schedule=schedule, steps=steps,
                      batch_size=batch_size, weight_decay=weight_decay, momentum=momentum)
  carry = (params, tx.init(params))
  if not checkpoint_every:
    (params, _), losses = jax.lax.scan(step, carry, jnp.arange(steps))
    return TrainResult(params, losses)

  num_checkpoints = steps // checkpoint_every

  def chunk(carry, j):
    carry, losses = jax.lax.scan(step, carry, j * checkpoint_every + jnp.arange(checkpoint_every))
    return carry, (carry[0], losses)

  (params, _), (checkpoints, losses) = jax.lax.scan(chunk, carry, jnp.arange(num_checkpoints))
  rates = _interval_rates(learning_rate, schedule=schedule, steps=steps,
                          checkpoint_every=checkpoint_every)
  return TrainResult(params, losses.reshape(steps), checkpoints, rates)


_SEGMENT_STATIC = tuple(f for f in _STATIC if f != 'checkpoint_every') + ('length',)


@functools.partial(jax.jit, static_argnames=_SEGMENT_STATIC, donate_argnums=(0,))
def _fit_segment(carry, x_pad, y_pad, n, key, learning_rate, first_step, *, apply_fn,
                 optimizer, schedule, steps, batch_size, weight_decay, momentum, length):
  """Steps ``first_step, ..., first_step + length - 1`` of ``_fit``'s run, from ``carry``
  (its ``(params, optimizer state)``, donated: the next segment reuses its memory)."""
  _, step = _step_fn(x_pad, y_pad, n, key, learning_rate, apply_fn=apply_fn,
                     optimizer=optimizer, schedule=schedule, steps=steps,
                     batch_size=batch_size, weight_decay=weight_decay, momentum=momentum)
  return jax.lax.scan(step, carry, first_step + jnp.arange(length))


@functools.partial(jax.jit, static_argnames=('optimizer', 'schedule', 'steps', 'weight_decay',
                                              'momentum'))
def _init_state(params, learning_rate, **recipe):
  return _recipe_optimizer(learning_rate, **recipe).init(params)


def _fit_host_checkpoints(params, x_pad, y_pad, n, key, learning_rate, *, apply_fn, optimizer,
                          schedule, steps, batch_size, weight_decay, momentum,
                          checkpoint_every):
  """``_fit`` with checkpoints, one jitted segment per checkpoint, each copied to the host.

  The same steps, keys and learning rates as ``_fit``; the device holds one training state
  instead of it plus ``J`` stacked checkpoints (34.5 GiB for TracIn's 5 of a 1.5B LLM).
  """
  recipe = dict(optimizer=optimizer, schedule=schedule, steps=steps,
                weight_decay=weight_decay, momentum=momentum)
  # A copy of theta0: the carry is donated, and the caller keeps its params.
  carry = (jax.tree_util.tree_map(jnp.copy, params),
           _init_state(params, learning_rate, **recipe))
  checkpoints, losses = [], []
  for j in range(steps // checkpoint_every):
    carry, segment_losses = _fit_segment(carry, x_pad, y_pad, n, key, learning_rate,
                                         jnp.int32(j * checkpoint_every), apply_fn=apply_fn,
                                         batch_size=batch_size, length=checkpoint_every,
                                         **recipe)
    checkpoints.append(jax.device_get(carry[0]))
    losses.append(segment_losses)
  stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *checkpoints)
  rates = _interval_rates(learning_rate, schedule=schedule, steps=steps,
                          checkpoint_every=checkpoint_every)
  return TrainResult(carry[0], jnp.concatenate(losses), stacked, rates)


_fit_jit = jax.jit(_fit, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _fit_many(params, x_pad, y_pad, n, keys, learning_rate, *, apply_fn, optimizer, schedule,
              steps, batch_size, weight_decay, momentum, checkpoint_every):
  fit = functools.partial(
      _fit, apply_fn=apply_fn, optimizer=optimizer, schedule=schedule, steps=steps,
      batch_size=batch_size, weight_decay=weight_decay, momentum=momentum,
      checkpoint_every=checkpoint_every)
  return jax.vmap(lambda k: fit(params, x_pad, y_pad, n, k, learning_rate))(keys)


def _next_power_of_two(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def _input_dtype(x: np.ndarray) -> type:
  """int32 for token / id inputs (embedding lookups need them exact), float32 otherwise."""
  return np.int32 if np.issubdtype(x.dtype, np.integer) else np.float32


def _check_xy(x: Any, y: Any, *, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x)
  # Float32 images are not copied: at the :cifar100 grid's 313,600 rows a copy is 3.9 GB.
  x = x.astype(_input_dtype(x), copy=False)
  y = np.asarray(y)
  if x.ndim < 2 or x.shape[0] == 0:
    raise ValueError(f'x must be a non-empty batch [n, ...], got shape {x.shape}')
  if not np.all(np.isfinite(x)):
    raise ValueError('x contains NaN or Inf')
  if y.shape != (x.shape[0],):
    raise ValueError(f'y must have shape ({x.shape[0]},) to match x, got {y.shape}')
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f'y must hold integer labels, got dtype {y.dtype}')
  if num_classes is not None:
    _check_labels(y, num_classes)
  return x, y.astype(np.int32)


def _check_labels(y: np.ndarray, num_classes: int) -> None:
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f'y has labels in [{y.min()}, {y.max()}], expected [0, {num_classes})')


def pad_examples(x: Any, y: Any, capacity: int) -> tuple[np.ndarray, np.ndarray]:
  """Zero-pads ``x [n, ...]`` and ``y [n]`` to ``capacity >= n`` rows (host arrays)."""
  n = x.shape[0]
  if capacity < n:
    raise ValueError(f'pad_to={capacity} is smaller than the {n} examples')
  x_pad = np.zeros((capacity,) + x.shape[1:], _input_dtype(np.asarray(x)))
  y_pad = np.zeros((capacity,), np.int32)
  x_pad[:n] = x
  y_pad[:n] = y
  return x_pad, y_pad


def _loss_apply(apply_fn, use_batch_stats):
  """The function the training loss calls: ``apply_fn`` or its train-mode forward."""
  if not use_batch_stats:
    return apply_fn
  train_apply = getattr(apply_fn, 'train_apply', None)
  if train_apply is None:
    raise ValueError('use_batch_stats=True needs an apply_fn with a train_apply (a '
                     'BatchNorm model bound by dv_jax.models.bind_apply), got '
                     f'{apply_fn!r}')
  return train_apply


def padded_capacity(n: int, pad_to: int | None = None) -> int:
  """The rows ``n`` training examples are padded to: ``pad_to`` (>= n), else the next power
  of two >= n. The training program compiles once per (steps, capacity).

  Raises:
    ValueError: a ``pad_to`` that is not an integer >= n.
  """
  if pad_to is None:
    return _next_power_of_two(n)
  return checks.check_int(pad_to, 'pad_to', minimum=n)


def _prepare(apply_fn, params, x, y, *, config, num_classes, pad_to, use_batch_stats):
  c = as_train_config(config)
  if use_batch_stats and c.batch_size < 2:
    # A one-row batch has zero variance: BatchNorm outputs its offset alone (nothing before
    # it learns), and the running statistics re-estimated from such batches divide by
    # sqrt(eps) at test time (digits, BatchNorm MLP: test loss 8.2-8.8 against ln 10 = 2.3).
    raise ValueError(f'config.batch_size={c.batch_size} cannot train a BatchNorm model with '
                     'batch statistics: a batch of one row has zero variance; use '
                     'batch_size >= 2')
  loss_apply = _loss_apply(apply_fn, use_batch_stats)
  x, y = _check_xy(x, y, num_classes=num_classes)
  # Every leaf is differentiated and updated; an integer one (a step counter) failed inside
  # jax.grad with a message naming no leaf, even when a gradient method filtered it out.
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise ValueError(f'params leaf {jax.tree_util.keystr(path)} has non-float dtype '
                       f'{jnp.result_type(leaf)}: training updates every leaf of params; keep '
                       'integer state outside them')
  # A NaN theta0 trains to NaN losses without a word: ground truth came back all NaN and
  # failed much later, in the rank correlation.
  bad = checks.non_finite_leaf(params)
  if bad is not None:
    raise ValueError(f'params leaf {bad} holds NaN or Inf')
  out = jax.eval_shape(apply_fn, params, jnp.asarray(x[:1]))
  if out.shape != (1, num_classes):
    raise ValueError(f'num_classes={num_classes} but apply_fn returns logits of shape '
                     f'{out.shape} for one example')
  x_pad, y_pad = pad_examples(x, y, padded_capacity(x.shape[0], pad_to))
  static = dict(apply_fn=loss_apply, optimizer=c.optimizer, schedule=c.schedule, steps=c.steps,
                batch_size=c.batch_size, weight_decay=c.weight_decay, momentum=c.momentum,
                checkpoint_every=c.checkpoint_every)
  return c, x_pad, y_pad, jnp.int32(x.shape[0]), static


def train(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: Any, y: Any, *,
          config: Any, key: Any, num_classes: int, pad_to: int | None = None,
          use_batch_stats: bool = False, checkpoints_on_host: bool = False) -> TrainResult:
  """Trains ``params`` on ``(x, y)`` with the shared recipe.

  Minimises the mean cross-entropy of minibatches drawn with replacement; one compile per
  ``(apply_fn, recipe, capacity)``, where the capacity is ``pad_to`` or the next power of
  two ``>= n``.

  Args:
    apply_fn: ``apply_fn(params, x [b, ...]) -> logits [b, c]`` (hashable; reuse the same
      function object to reuse the compiled program).
    params: initial parameters ``theta0`` (a pytree).
    x: ``[n, ...]`` features.
    y: ``[n]`` int labels in ``[0, num_classes)``.
    config: ``TrainConfig`` or a ConfigDict with its fields.
    key: a ``jax.random.PRNGKey`` (the minibatch order): step ``t`` trains on the rows
      ``jax.random.randint(fold_in(key, t), (batch_size,), 0, n)``.
    num_classes: ``c``; checked against the logits of ``apply_fn``.
    pad_to: capacity the data are padded to (>= n).
    use_batch_stats: the loss calls ``apply_fn.train_apply`` (BatchNorm normalises each
      minibatch by its own statistics) instead of ``apply_fn``; the returned parameters
      then need re-estimated running statistics to be evaluated.
    checkpoints_on_host: with ``checkpoint_every``, train one jitted segment per checkpoint
      and keep the checkpoints as host (NumPy) arrays, so that the device never holds them
      all (``J`` parameter copies beside the training state); the same steps and numbers,
      float32 rounding aside. Without checkpoints it changes nothing.

  Returns:
    ``TrainResult``.

  Raises:
    ValueError: naming the argument, for NaN/Inf or empty ``x``, mismatched or out-of-range
      ``y``, logits that do not have ``num_classes`` columns, a non-float ``params`` leaf,
      a bad config, ``use_batch_stats`` with an ``apply_fn`` that has no ``train_apply``
      or with ``batch_size`` 1, or ``key`` not one PRNG key.
  """
  key = checks.check_key(key)
  if not isinstance(checkpoints_on_host, (bool, np.bool_)):
    raise ValueError(f'checkpoints_on_host must be True or False, got {checkpoints_on_host!r}')
  c, x_pad, y_pad, n, static = _prepare(apply_fn, params, x, y, config=config,
                                        num_classes=num_classes, pad_to=pad_to,
                                        use_batch_stats=use_batch_stats)
  fit = _fit_host_checkpoints if checkpoints_on_host and c.checkpoint_every else _fit_jit
  return fit(params, x_pad, y_pad, n, key, jnp.float32(c.learning_rate), **static)


def train_many_seeds(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: Any,
                     y: Any, *, config: Any, keys: Any, num_classes: int,
                     pad_to: int | None = None, use_batch_stats: bool = False) -> TrainResult:
  """``train`` vmapped over ``keys [R, 2]``: ``R`` runs from the same ``params``.

  Returns:
    ``TrainResult`` whose fields have a leading ``[R]`` axis; run ``r`` equals
    ``train(..., key=keys[r])``.
  """
  keys = jnp.asarray(keys)
  if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):  # new-style typed keys [R]
    keys = jax.random.key_data(keys)
  if keys.ndim != 2 or keys.shape[0] == 0:
    raise ValueError(f'keys must be a stack of PRNG keys [R, 2] (or typed keys [R]), got '
                     f'shape {keys.shape}')
  c, x_pad, y_pad, n, static = _prepare(apply_fn, params, x, y, config=config,
                                        num_classes=num_classes, pad_to=pad_to,
                                        use_batch_stats=use_batch_stats)
  return _fit_many(params, x_pad, y_pad, n, keys, jnp.float32(c.learning_rate), **static)


def _eval_block_sums(params, xb, yb, mask, apply_fn):
  logits = apply_fn(params, xb)
  # where, not a product: a padded (all-zero) row may give NaN logits (e.g. a model that
  # normalises its input), and NaN * 0 is NaN.
  valid = mask > 0
  row_loss = cross_entropy(logits, yb)
  loss = jnp.where(valid, row_loss, 0.0)
  # A row whose loss is NaN or Inf (logits NaN or +Inf: a diverged model) predicts nothing:
  # its argmax (class 0 for a NaN row) counted as a prediction, and chance-like accuracy
  # stood beside a NaN loss. Its correctness is NaN, as its loss is. A -inf logit (a masked
  # class) leaves both finite.
  hit = jnp.where(jnp.isfinite(row_loss),
                  (jnp.argmax(logits, axis=-1) == yb).astype(jnp.float32), jnp.nan)
  correct = jnp.where(valid, hit, 0.0)
  return jnp.sum(loss), jnp.sum(correct)


_eval_block = jax.jit(_eval_block_sums, static_argnames=('apply_fn',))


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _eval_block_many(params, xb, yb, mask, apply_fn):
  return jax.vmap(lambda p: _eval_block_sums(p, xb, yb, mask, apply_fn))(params)


def _evaluate(block_fn, apply_fn, one_params, params, x, y, block_size):
  # Shapes first: an empty or 1-D x reached the model below and failed inside it (a
  # ZeroDivisionError, a dot_general shape error) instead of naming x.
  x, y = _check_xy(x, y, num_classes=None)
  # Labels outside the logits would be gathered silently (clamped, or wrapped from -1).
  _check_labels(y, int(jax.eval_shape(apply_fn, one_params, x[:1]).shape[-1]))
  block_size = checks.check_int(block_size, 'block_size')
  n = x.shape[0]
  block = min(block_size, _next_power_of_two(n))
  num_blocks = -(-n // block)
  x_pad, y_pad = pad_examples(x, y, num_blocks * block)
  # Host arrays: slicing them costs no device compile per block shape.
  mask = (np.arange(num_blocks * block) < n).astype(np.float32)
  loss_sum, correct_sum = 0.0, 0.0
  for b in range(num_blocks):  # Python loop over fixed-size jitted blocks.
    sl = slice(b * block, (b + 1) * block)
    loss_b, correct_b = block_fn(params, x_pad[sl], y_pad[sl], mask[sl])
    loss_sum, correct_sum = loss_sum + loss_b, correct_sum + correct_b
  return Evaluation(loss_sum / n, correct_sum / n)


def evaluate(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: Any, y: Any, *,
             block_size: int = 512) -> Evaluation:
  """Mean cross-entropy and accuracy of ``apply_fn(params, .)`` on ``(x, y)``.

  Evaluated in jitted blocks of ``min(block_size, next_pow2(n))`` rows; the last block is
  zero-padded and masked.

  Args:
    apply_fn: ``apply_fn(params, x [b, ...]) -> logits [b, c]``.
    params: parameters.
    x: ``[n, ...]`` features.
    y: ``[n]`` int labels.
    block_size: rows per jitted block.

  Returns:
    ``Evaluation(loss [], accuracy [])``; when a row's loss is NaN or Inf (logits NaN or
    +Inf: a diverged model), the mean loss is too and the accuracy is NaN.

  Raises:
    ValueError: for NaN/Inf or empty ``x``, mismatched ``y``, labels outside the logits'
      classes or a bad ``block_size``.
  """
  block_fn = functools.partial(_eval_block, apply_fn=apply_fn)
  return _evaluate(block_fn, apply_fn, params, params, x, y, block_size)


def evaluate_many(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, x: Any, y: Any,
                  *, block_size: int = 512) -> Evaluation:
  """``evaluate`` vmapped over parameters stacked on a leading ``[R]`` axis.

  Returns:
    ``Evaluation(loss [R], accuracy [R])``.
  """
  block_fn = functools.partial(_eval_block_many, apply_fn=apply_fn)
  first = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
  return _evaluate(block_fn, apply_fn, first, params, x, y, block_size)


__all__ = ['OPTIMIZERS', 'SCHEDULES', 'TrainConfig', 'as_train_config', 'TrainResult',
           'Evaluation', 'cross_entropy', 'learning_rate_at', 'pad_examples', 'padded_capacity',
           'train',
           'train_many_seeds', 'evaluate', 'evaluate_many']
