"""Binding a flax.linen model to the ``apply_fn(params, x) -> logits`` interface.

Every consumer in dv_jax (NTK, training, baselines) sees a model as a pure function of its
trainable parameters. Other collections (BatchNorm's ``batch_stats``) are closed over, and
the module is run in inference mode, so the function is deterministic and differentiable
in ``params`` only.

A model with BatchNorm (a ``batch_stats`` collection and a ``train`` argument) is bound to a
``BatchNormApply``: called, it is that same inference-mode function, and it also carries the
standard training recipe's pieces, which the ground truth uses (``dv_jax.ground_truth``):
``train_apply`` (train mode, each batch normalised by its own statistics),
``estimate_batch_stats`` (running averages of trained parameters over training batches) and
``variables_apply`` (inference mode from a full variables dict, to evaluate with them).

Jit caches compiles by the hash of its static arguments, and arrays closed over by a
function become constants of its program: a ``BatchNormApply`` bound to new statistics is a
new program. Code that reads many trained states of one model (TracIn's checkpoints, TRAK's
models) therefore passes the statistics as an argument instead: ``recalibrated_state``
returns ``pair_apply((params, state), x)`` (equal for an equal model) and the pair, so one
compile serves every state of the same shapes.

Shape legend: ``b`` batch, ``n`` examples, ``c`` classes.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Callable, NamedTuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from dv_jax import checks


def check_widths(name: str, values: Any) -> tuple[int, ...]:
  """Layer widths as ints, each an integer >= 1 (a float 7.5 or a 0 is refused, not cut).

  Raises:
    ValueError: naming `name[i]`, for a value that is not a whole number >= 1.
  """
  return tuple(checks.check_int(value, f'{name}[{i}]') for i, value in enumerate(values))


def _accepted_kwargs(model: nn.Module) -> set[str]:
  return set(inspect.signature(type(model).__call__).parameters)


def _inference_kwargs(model: nn.Module) -> dict[str, bool]:
  """``train=False`` / ``deterministic=True`` when the module's ``__call__`` accepts them."""
  accepted = _accepted_kwargs(model)
  kwargs = {}
  if 'train' in accepted:
    kwargs['train'] = False
  if 'deterministic' in accepted:
    kwargs['deterministic'] = True
  return kwargs


def init_model(model: nn.Module, key: Any, sample_x: Any) -> dict[str, Any]:
  """Initialises ``model`` on the first example of ``sample_x``.

  Args:
    model: a flax.linen module.
    key: a ``jax.random.PRNGKey``.
    sample_x: a batch ``[b, ...]`` with the input shape (only ``sample_x[:1]`` is used).

  Returns:
    The variables as a plain dict (``{'params': ..., 'batch_stats': ...}``).

  Raises:
    ValueError: if ``sample_x`` has no batch axis or no rows.
  """
  sample_x = jnp.asarray(sample_x)
  if sample_x.ndim < 1 or sample_x.shape[0] == 0:
    raise ValueError(f'sample_x must be a non-empty batch [b, ...], got shape {sample_x.shape}')
  variables = model.init(key, sample_x[:1], **_inference_kwargs(model))
  return dict(flax.core.unfreeze(variables))


def train_rngs(key: Any) -> dict[str, Any]:
  """The PRNG streams of a train-mode forward pass drawn from ``key``: ``'dropout'``.

  A user's module commonly ties Dropout to the same ``train`` flag as BatchNorm
  (``nn.Dropout(deterministic=not train)``); without this stream its train mode failed
  with flax's "Dropout_0 needs PRNG for 'dropout'". Modules without Dropout ignore it.
  """
  return {'dropout': jax.random.fold_in(key, 1)}


@functools.partial(jax.jit, static_argnames=('model', 'train_kwargs', 'num_batches',
                                             'batch_size'))
def _estimate_batch_stats(params, state, x, num_rows, key, *, model, train_kwargs, num_batches,
                          batch_size):
  """BatchNorm's running averages after ``num_batches`` train-mode batches (inside jit)."""

  def update(batch_stats, b):
    # Rows in [0, num_rows): zero-padded rows beyond it are never drawn.
    batch_key = jax.random.fold_in(key, b)
    rows = jax.random.randint(batch_key, (batch_size,), 0, num_rows, dtype=jnp.int32)
    _, updated = model.apply({**state, 'params': params, 'batch_stats': batch_stats}, x[rows],
                             mutable=['batch_stats'], rngs=train_rngs(batch_key),
                             **dict(train_kwargs))
    # Older flax returns a FrozenDict; the scan carry must keep the plain dict's structure.
    return flax.core.unfreeze(updated['batch_stats']), None

  batch_stats, _ = jax.lax.scan(update, state['batch_stats'], jnp.arange(num_batches))
  return batch_stats


class BatchNormApply:
  """``apply_fn(params, x [b, ...]) -> [b, c]`` of a BatchNorm model, plus its training mode.

  Calling it runs the model in inference mode on the bound statistics (``bind_apply``'s
  contract: each example's output depends on that example only, so per-example NTKs are
  exact). Instances are static arguments of jitted functions, and jit caches compiles by
  hash: two instances binding an equal model to the same state arrays (the same objects)
  are equal, and so are their ``train_apply`` and ``variables_apply``, so they share one
  compile.

  Attributes:
    model: the flax module.
    state: the non-param collections, ``{'batch_stats': ...}``, closed over.
    train_apply: ``train_apply(params, x [b, ...], rng=None) -> [b, c]``: train mode, each
      BatchNorm normalises by the statistics of the batch ``x`` (a row's output depends on
      the other rows); the updated running averages are discarded. A module whose train
      mode also turns on Dropout draws its masks from ``rng`` (``train_rngs``; training
      passes each step's key, None means ``PRNGKey(0)``).
    variables_apply: ``variables_apply(variables, x [b, ...]) -> [b, c]``: inference mode
      from a full variables dict ``{'params': ..., 'batch_stats': ...}``, so that evaluating
      many trained states is one jitted program.
    pair_apply: ``pair_apply((params, state), x [b, ...]) -> [b, c]``: the same, from the
      pair that ``recalibrated_state`` returns. A tuple, not a dict, so that the leaves of
      ``params`` come first, in their own order: a gradient projection, which draws a
      leaf's rows from its index among all leaves, is the same as on ``params`` alone.
  """

  def __init__(self, model: nn.Module, state: dict[str, Any]):
    self.model = model
    # JAX arrays as given (the same objects, so equal binds stay equal); anything else (NumPy
    # statistics, e.g. from np.load) copied into one. Equality below is by identity, which
    # is sound only for immutable leaves: statistics loaded into the same NumPy buffers made
    # a new bind equal to an old one, and a jitted caller reused the old compile's constants.
    self.state = jax.tree_util.tree_map(
        lambda leaf: leaf if isinstance(leaf, jax.Array) else jnp.asarray(leaf), state)
    self._inference_kwargs = tuple(sorted(_inference_kwargs(model).items()))
    self._train_kwargs = tuple(sorted({**dict(self._inference_kwargs), 'train': True}.items()))
    leaves, treedef = jax.tree_util.tree_flatten(self.state)
    # Identity, not values: comparing arrays by value would cost a device sync per lookup.
    # `self.state` holds the leaves, so their ids stay valid while this object lives.
    self._state_key = (treedef, tuple(id(leaf) for leaf in leaves))
    self.train_apply = _TrainApply(self)
    self.variables_apply = _VariablesApply(model, self._inference_kwargs)
    self.pair_apply = _PairApply(model, self._inference_kwargs)

  def __call__(self, params: Any, x: Any) -> jax.Array:
    return self.model.apply({'params': params, **self.state}, x,
                            **dict(self._inference_kwargs))

  def _key(self):
    return (self.model, self._inference_kwargs, self._state_key)

  def __eq__(self, other):
    return type(other) is type(self) and other._key() == self._key()

  def __hash__(self):
    return hash((type(self), self._key()))

  def __repr__(self):
    return f'{type(self).__name__}({self.model!r})'

  def estimate_batch_stats(self, params: Any, x: Any, *, key: Any, num_batches: int,
                           batch_size: int, num_rows: int | None = None) -> dict[str, Any]:
    """Re-estimates BatchNorm's running statistics of ``params`` on the data ``x``.

    Starting from the bound statistics, runs ``num_batches`` train-mode forward passes on
    batches of ``batch_size`` rows drawn uniformly with replacement from the first
    ``num_rows`` rows of ``x`` (batch ``b`` from ``jax.random.fold_in(key, b)``), and keeps
    the running averages each BatchNorm updates (``mean <- m mean + (1 - m) batch_mean``,
    likewise the biased batch variance; ``m`` the module's momentum). The bound statistics
    keep a weight ``m ** num_batches`` (0.9 ** 64 = 1e-3). One compile per
    ``(x.shape, num_batches, batch_size)``: pad ``x`` and pass ``num_rows`` to reuse it.

    Args:
      params: trained parameters.
      x: ``[n, ...]`` the training inputs (zero-padded beyond ``num_rows`` if given).
      key: a ``jax.random.PRNGKey`` (the batches).
      num_batches: number of batches (>= 1).
      batch_size: rows per batch (>= 1).
      num_rows: the real rows of ``x`` (default: all ``n``).

    Returns:
      The ``batch_stats`` collection (a dict with the structure of ``state['batch_stats']``).

    Raises:
      ValueError: naming the argument, for an empty ``x``, non-positive ``num_batches`` /
        ``batch_size``, or ``num_rows`` outside ``[1, n]``.
    """
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
      raise ValueError(f'x must be a non-empty batch [n, ...], got shape {x.shape}')
    num_batches = checks.check_int(num_batches, 'num_batches')
    batch_size = checks.check_int(batch_size, 'batch_size')
    if num_rows is None:
      num_rows = x.shape[0]
    num_rows = checks.check_int(num_rows, 'num_rows', maximum=x.shape[0])
    return _estimate_batch_stats(params, self.state, x, jnp.int32(num_rows), key,
                                 model=self.model, train_kwargs=self._train_kwargs,
                                 num_batches=num_batches, batch_size=batch_size)


  def with_batch_stats(self, batch_stats: Any) -> 'BatchNormApply':
    """The same model bound to other running statistics (e.g. `estimate_batch_stats`')."""
    return BatchNormApply(self.model, {**self.state, 'batch_stats': batch_stats})


def recalibrated(apply_fn: Callable[[Any, Any], jax.Array], params: Any, x: Any, *,
                 key: Any, num_batches: int, batch_size: int
                 ) -> Callable[[Any, Any], jax.Array]:
  """`apply_fn` for trained `params`: BatchNorm statistics re-estimated on `x`, if it has any.

  A model trained with batch statistics (`training.train(..., use_batch_stats=True)`) must
  be read with running statistics of its trained parameters, not those bound at init. A
  plain `apply_fn` is returned unchanged.

  Args:
    apply_fn: from `bind_apply`.
    params: trained parameters.
    x: `[n, ...]` the training inputs.
    key: the batches' PRNG key.
    num_batches: batches of the re-estimate.
    batch_size: rows per batch (capped at `n`).

  Returns:
    An inference-mode `apply_fn(params, x)`.
  """
  if not isinstance(apply_fn, BatchNormApply):
    return apply_fn
  return apply_fn.with_batch_stats(_reestimated_stats(apply_fn, params, x, key=key,
                                                      num_batches=num_batches,
                                                      batch_size=batch_size))


def _reestimated_stats(apply_fn: 'BatchNormApply', params: Any, x: Any, *, key: Any,
                       num_batches: int, batch_size: int) -> dict[str, Any]:
  """`estimate_batch_stats` with the batch size capped at the rows of `x`."""
  x = jnp.asarray(x)
  # estimate_batch_stats checks x (an empty one included) before the capped batch size.
  return apply_fn.estimate_batch_stats(params, x, key=key, num_batches=num_batches,
                                       batch_size=min(int(batch_size), x.shape[0]))


ParamFilter = Union[None, str, Callable[[str, Any], bool]]


class _ParamsOfPair:
  """`param_filter` of `dv_jax.ntk` for a `(params, state)` pair: `filter`'s leaves of params.

  `dv_jax.ntk` spells the path of a leaf of `params` inside the pair as `'0/' + its path in
  `params`; the filter sees the path without that prefix (as it would on `params` alone) and
  never selects a leaf of `state`, so the statistics are held constant.
  """

  def __init__(self, param_filter: ParamFilter):
    if not (param_filter is None or isinstance(param_filter, str) or callable(param_filter)):
      raise ValueError('param_filter must be None, a regex string or a callable '
                       f'(path_str, leaf) -> bool, got {type(param_filter).__name__}')
    try:
      self._pattern = re.compile(param_filter) if isinstance(param_filter, str) else None
    except re.error as e:
      raise ValueError(f'param_filter {param_filter!r} is not a valid regex: {e}') from e
    self.param_filter = param_filter

  def __call__(self, path: str, leaf: Any) -> bool:
    head, _, rest = path.partition('/')
    if head != '0':  # a leaf of the state
      return False
    if self.param_filter is None:
      return True
    if self._pattern is not None:
      return bool(self._pattern.search(rest))
    return bool(self.param_filter(rest, leaf))

  def __repr__(self):
    return f'{self.param_filter!r} (on the params of a (params, state) pair)'


class RecalibratedState(NamedTuple):
  """Trained parameters read with their own statistics, passed as data (`recalibrated_state`).

  Attributes:
    apply_fn: `apply_fn(variables, x [b, ...]) -> [b, c]`, the same object for every state
      of one model (so jitted callers compile once).
    variables: what `apply_fn` takes first: `(params, state)`, or `params` for a model
      without statistics.
    param_filter: `dv_jax.ntk`'s filter selecting, among the leaves of `variables`, the
      leaves of `params` that the given filter selects (the statistics never).
  """
  apply_fn: Callable[[Any, Any], jax.Array]
  variables: Any
  param_filter: ParamFilter


def recalibrated_state(apply_fn: Callable[[Any, Any], jax.Array], params: Any, x: Any, *,
                       key: Any, num_batches: int, batch_size: int,
                       param_filter: ParamFilter = None) -> RecalibratedState:
  """`recalibrated`, with the re-estimated statistics an argument of the returned function.

  `recalibrated` binds the statistics into a new `BatchNormApply`, which jitted callers
  (static in the function) compile afresh for every trained state; this returns
  `pair_apply`, equal for every state of the model, and the pair `(params, state)` to call
  it on, so that differentiating (`dv_jax.ntk.per_example_grads` with the returned
  `param_filter`) or evaluating many checkpoints is one compile. The numbers are those of
  `recalibrated(apply_fn, params, x, ...)(params, .)`. A plain `apply_fn` is returned with
  `params` and `param_filter` unchanged.

  Args:
    apply_fn: from `bind_apply`.
    params: trained parameters.
    x: `[n, ...]` the training inputs.
    key: the batches' PRNG key.
    num_batches: batches of the re-estimate.
    batch_size: rows per batch (capped at `n`).
    param_filter: `dv_jax.ntk`'s filter on the leaves of `params` (None: all).

  Returns:
    `RecalibratedState(apply_fn, variables, param_filter)`.

  Raises:
    ValueError: as `BatchNormApply.estimate_batch_stats` (an empty `x`, a batch count or
      size below 1), naming the argument; a `param_filter` that is not None, a valid regex
      or a callable.
  """
  if not isinstance(apply_fn, BatchNormApply):
    return RecalibratedState(apply_fn, params, param_filter)
  stats = _reestimated_stats(apply_fn, params, x, key=key, num_batches=num_batches,
                             batch_size=batch_size)
  return RecalibratedState(apply_fn.pair_apply,
                           (params, {**apply_fn.state, 'batch_stats': stats}),
                           _ParamsOfPair(param_filter))


class _TrainApply:
  """``BatchNormApply.train_apply``: equal for equal ``BatchNormApply``s (one compile)."""

  # `training` hands a train-mode forward a per-step key (`train_rngs`).
  takes_rng = True

  def __init__(self, bound: BatchNormApply):
    self.bound = bound

  def __call__(self, params: Any, x: Any, rng: Any = None) -> jax.Array:
    b = self.bound
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return b.model.apply({'params': params, **b.state}, x, mutable=['batch_stats'],
                         rngs=train_rngs(rng),
                         **dict(b._train_kwargs))[0]  # pylint: disable=protected-access

  def __eq__(self, other):
    return type(other) is type(self) and other.bound == self.bound

  def __hash__(self):
    return hash((type(self), self.bound))

  def __repr__(self):
    return f'{self.bound!r}.train_apply'


class _VariablesApply:
  """``BatchNormApply.variables_apply``: equal for an equal model (one compile)."""

  def __init__(self, model: nn.Module, inference_kwargs: tuple):
    self.model = model
    self.inference_kwargs = inference_kwargs

  def __call__(self, variables: Any, x: Any) -> jax.Array:
    return self.model.apply(variables, x, **dict(self.inference_kwargs))

  def __eq__(self, other):
    return (type(other) is type(self) and other.model == self.model
            and other.inference_kwargs == self.inference_kwargs)

  def __hash__(self):
    return hash((type(self), self.model, self.inference_kwargs))

  def __repr__(self):
    return f'{type(self).__name__}({self.model!r})'


class _PairApply(_VariablesApply):
  """``BatchNormApply.pair_apply``: equal for an equal model (one compile)."""

  def __call__(self, variables: Any, x: Any) -> jax.Array:
    params, state = variables
    return self.model.apply({'params': params, **state}, x, **dict(self.inference_kwargs))


def bind_apply(model: nn.Module, variables: Any) -> tuple[Callable[[Any, Any], jax.Array], Any]:
  """Splits ``variables`` into a pure ``apply_fn(params, x)`` and the trainable ``params``.

  Args:
    model: a flax.linen module returning logits ``[b, c]``.
    variables: from ``init_model`` (or ``model.init``); must hold ``'params'``.

  Returns:
    ``(apply_fn, params)``: ``apply_fn(params, x [b, ...]) -> [b, c]`` runs the model with
    the non-param collections fixed and ``train=False`` / ``deterministic=True`` passed
    when ``__call__`` accepts them. For a model with a ``'batch_stats'`` collection and a
    ``train`` argument, ``apply_fn`` is a ``BatchNormApply`` (the same function, plus
    ``train_apply``, ``variables_apply`` and ``estimate_batch_stats``); otherwise a plain
    function.

  Raises:
    ValueError: if ``variables`` has no ``'params'`` collection.
  """
  variables = dict(flax.core.unfreeze(variables))
  if 'params' not in variables:
    raise ValueError(f"variables must hold a 'params' collection, got {sorted(variables)}")
  params = variables.pop('params')
  state = variables
  if 'batch_stats' in state and 'train' in _accepted_kwargs(model):
    return BatchNormApply(model, state), params
  kwargs = _inference_kwargs(model)

  def apply_fn(p, x):
    return model.apply({'params': p, **state}, x, **kwargs)

  return apply_fn, params


__all__ = ['init_model', 'bind_apply', 'BatchNormApply', 'recalibrated', 'RecalibratedState',
           'recalibrated_state']
