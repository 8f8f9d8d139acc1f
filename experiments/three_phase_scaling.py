r"""Three-phase scaling (Lemma 1) measured on trained models: test loss against |S|.

For every mixture size n = |S| of a log grid (and every seed), a mixture of round(pi n)
real and n - round(pi n) synthetic examples is drawn (real items ~ Zipf(beta); synthetic
items from the truncation p' of the real distribution), a fresh model is trained on it with
one recipe, and its test loss and error are measured on the REAL item distribution: every
item (class) weighted by its real frequency p_i, so the test metrics are exact expectations
with no test-sampling noise. A smoothly broken power law is fitted to the mean curve
(`dv_jax.scaling.fit_broken_power_law`: BIC picks 0-2 breaks, bootstrap intervals) and the
fitted breaks are compared with the paper's k^beta and k^beta/pi, with our asymptote-crossing
predictions (`dv_jax.scaling.predicted_breakpoints`) and with the breaks the same fit finds
on the exact theory curve E(n) = sum_i p_i (1 - q_i)^n at the same sizes. The exact curve
is the limit of infinitely many seeds; to know how far a break of a mean over a few seeds
may stray with no model in the loop, the ideal learner (it knows exactly the items it saw)
is simulated at the measured sizes and seed count and fitted the same way
(`ideal_learner_resolution`). A second figure repeats this for the truncation mechanisms
(hard, top-p, temperature, finite sample).

Tasks (see `configs/three_phase_scaling.py`):
  facts / item_mlp: procedural facts (`dv_jax.data.facts`), each item an embedding row read
    by an MLP (defined here, `ItemMLP`). Embeddings start near 0 and only the rows of items
    in a batch get gradient, so the model answers exactly the items it saw and the rest at
    chance: Lemma 1's learner, trained by gradient descent.
  facts / transformer_lm: the same facts as text, `<bos> fact <item> ? <sep>` -> `a<answer>`;
    a tiny decoder LM (`dv_jax.models.transformer.TransformerLM`) trained with the next-token
    loss on the answer token only (over its whole vocabulary; the `<eos>` after the answer
    carries no knowledge and is not scored).
  cifar100 / resnet18: CIFAR-100 classes as items (the paper's experiment), images of each
    drawn class taken uniformly from the official training split, ResNet-18 trained with
    BatchNorm in training mode and its statistics re-estimated on the mixture afterwards.

  python experiments/three_phase_scaling.py --config=configs/three_phase_scaling.py:facts \
      --workdir=workdirs/three_phase_facts

Outputs in --workdir: config.json, log.txt, units/ (one JSON per trained (mode, n, seed),
written atomically as it finishes; a rerun skips them, so an interrupted run resumes, and a
unit trained under another data / model / train config is refused), units.csv, curve.csv
(per mode and n: means over seeds and the theory), breakpoints.csv (every fit against every
prediction, with the fit's residual-bootstrap and a seed-bootstrap interval; the theory row
of hard truncation carries the ideal learner's `ideal_*` columns), ideal_learner.csv (the
ideal learner's resolution at the measured seed count and at `fit.ideal_seed_counts`),
results.json, and the figures three_phase.{png,pdf} and truncation_modes.{png,pdf}.

`--config.a.b=...` overrides are checked before flag parsing: a field that does not exist
fails with the valid keys of its section listed (`check_config_overrides`). `run` then checks
every setting it reads (`check_config`, naming the key) and every saved unit it would reuse
(`check_saved_units`) before any data are loaded or any unit is trained.
"""

import abc
import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dv_jax import config_checks
from dv_jax import plotting
from dv_jax import results
from dv_jax import scaling
from dv_jax import training
from dv_jax.data import cifar100
from dv_jax.data import contributors
from dv_jax.data import facts
from dv_jax.data import longtail
from dv_jax.models import common
from dv_jax.models.mlp import MLP
from dv_jax.models.resnet import ResNet18
from dv_jax.models.transformer import TransformerLM

MODES = scaling.MODES
# The keyword each mode's parameter goes by in the data loaders.
# fold_in stream of the ideal-learner simulation (units use crc32 of their names).
_IDEAL_LEARNER_STREAM = 1
_LOADER_ARGUMENT = {'hard': 'k', 'top_p': 'top_p', 'temperature': 'temperature',
                    'finite_sample': 'generator_samples'}


# ---------------------------------------------------------------------------------------
# Models and jitted blocks.


class ItemMLP(nn.Module):
  """An item-embedding table read by an MLP: item ids [b] (or [b, 1]) -> logits [b, c].

  The ids arrive as int32 (the shared training loop keeps integer inputs exact: through
  float32, ids from 2^24 up would collide).

  Attributes:
    num_items: N, rows of the table.
    embed_dim: width of an item embedding.
    embed_init: standard deviation of the initial embeddings; near 0, so an item never seen
      in training is mapped to (almost) the shared bias of the MLP: answered at chance.
    hidden_sizes: hidden widths of the MLP.
    num_classes: c, the number of answers.
  """
  num_items: int
  embed_dim: int
  embed_init: float
  hidden_sizes: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ids_B = jnp.asarray(x).reshape(x.shape[0]).astype(jnp.int32)
    embed = nn.Embed(self.num_items, self.embed_dim,
                     embedding_init=nn.initializers.normal(self.embed_init))
    return MLP(tuple(self.hidden_sizes), self.num_classes)(embed(ids_B))


def _last_position_logits(module: TransformerLM, tokens: jax.Array) -> jax.Array:
  """Next-token logits [b, V] at the last position of tokens [b, t] (the answer slot)."""
  return module.lm_head(module.hidden_states(tokens)[:, -1])


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def _metrics_block(apply_fn, params, x_B, y_B):
  logits = apply_fn(params, x_B)
  return training.cross_entropy(logits, y_B), jnp.argmax(logits, axis=-1) == y_B


def per_example_metrics(apply_fn, params, x: np.ndarray, y: np.ndarray, *,
                        block_size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Per-example cross-entropy and correctness, in fixed-size jitted blocks.

  The last block is zero-padded (padded rows are dropped), so one compile serves every n.

  Returns:
    float64 loss [n] and bool correct [n].
  """
  n = x.shape[0]
  block = min(int(block_size), 1 << max(n - 1, 0).bit_length())
  num_blocks = -(-n // block)
  # Integer inputs (item ids, tokens) stay integers; anything else becomes float32.
  x_pad, y_pad = training.pad_examples(np.asarray(x), np.asarray(y, np.int32),
                                       num_blocks * block)
  losses, correct = [], []
  for b in range(num_blocks):  # a Python loop over fixed-size blocks, not examples
    loss_b, correct_b = _metrics_block(apply_fn, params, x_pad[b * block:(b + 1) * block],
                                       y_pad[b * block:(b + 1) * block])
    losses.append(np.asarray(loss_b, np.float64))
    correct.append(np.asarray(correct_b))
  return np.concatenate(losses)[:n], np.concatenate(correct)[:n]


@functools.partial(jax.jit, static_argnames=('model',))
def _batch_stats_step(model, params, batch_stats, x_B):
  """One BatchNorm running-average update from a training batch (train-mode forward)."""
  _, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x_B, train=True,
                           mutable=['batch_stats'])
  return updated['batch_stats']


def _next_power_of_two(n: int) -> int:
  return 1 << max(int(n) - 1, 0).bit_length()


def run_pad_to(config, grid) -> Optional[int]:
  """The capacity every unit's data are padded to: the largest size's under
  `train.pad_to_max` (one training program per step count), else None (each size its own)."""
  return _next_power_of_two(int(max(grid))) if config.train.pad_to_max else None


def steps_for(n: int, train_config) -> int:
  """`clip(next_pow2(ceil(epochs n / batch)), min_steps, max_steps)` optimiser steps.

  Powers of two keep the number of distinct (compiled) step counts small.
  """
  raw = max(1, math.ceil(train_config.epochs * n / train_config.batch_size))
  return int(min(max(_next_power_of_two(raw), train_config.min_steps),
                 train_config.max_steps))


def _recipe(config, steps: int) -> training.TrainConfig:
  t = config.train
  return training.TrainConfig(optimizer=t.optimizer, learning_rate=t.learning_rate,
                              steps=steps, batch_size=t.batch_size,
                              weight_decay=t.weight_decay, momentum=t.momentum,
                              schedule=t.schedule)


# ---------------------------------------------------------------------------------------
# Truncation parameters.


def matched_temperature(p: np.ndarray, *, k: int, pi: float, iterations: int = 60) -> float:
  """The smallest temperature in (0, 1) whose effective cut `effective_k` reaches `k`.

  A larger temperature fattens the synthetic tail, so the number of synthetic-dominated
  items grows with it; bisection in log temperature.

  Raises:
    ValueError: if even a temperature of 0.999 gives fewer than `k` items.
  """
  def cut(tau):
    p_syn = scaling.synthetic_distribution(p, mode='temperature', temperature=tau)
    return scaling.effective_k(p, p_syn, pi=pi, mode='temperature')
  low, high = 1e-3, 0.999
  if cut(high) < k:
    raise ValueError(f'no temperature < 1 gives an effective cut of k={k} at pi={pi}')
  if cut(low) >= k:
    return low
  for _ in range(iterations):
    middle = math.sqrt(low * high)
    low, high = (middle, high) if cut(middle) < k else (low, middle)
  return high


def truncation_parameters(p: np.ndarray, config) -> Dict[str, Dict[str, Any]]:
  """Per mode, the loader keyword and value of its truncation parameter.

  With `config.truncation.match_k` the soft modes are matched to `config.data.k`: `top_p`
  keeps exactly the top k items (a nucleus cut of a rank-ordered Zipf IS a hard cut),
  `temperature` is the smallest one with `effective_k = k`, and `finite_sample` draws
  `M = ceil(1 / p_k)` samples (so `#{i : M p_i >= 1} = k`).

  Only the modes of `config.truncation.modes` are returned: a mode that is not run must
  not fail the run (no temperature may reach the cut at a large pi).
  """
  data, trunc = config.data, config.truncation
  k = int(data.k)
  if trunc.match_k:
    values = {'hard': lambda: k,
              'top_p': lambda: float(np.cumsum(p)[k - 1]),
              'temperature': lambda: matched_temperature(p, k=k, pi=data.pi),
              'finite_sample': lambda: int(math.ceil(1.0 / p[k - 1]))}
  else:
    values = {'hard': lambda: k, 'top_p': lambda: float(trunc.top_p),
              'temperature': lambda: float(trunc.temperature),
              'finite_sample': lambda: int(trunc.generator_samples)}
  return {mode: {_LOADER_ARGUMENT[mode]: values[mode]()} for mode in MODES
          if mode in trunc.modes}


# ---------------------------------------------------------------------------------------
# Tasks: draw a mixture, train, evaluate on the real distribution.


class _Task(abc.ABC):
  """What every task provides; subclasses fill it in."""
  num_classes: int
  apply_fn: Any          # training apply_fn(params, x) -> logits
  eval_apply_fn: Any     # evaluation apply_fn(eval_params, x) -> logits

  @abc.abstractmethod
  def distributions(self, mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """Real `p` and synthetic `p'` item frequencies `[N]` of `mode` (rank order)."""

  @abc.abstractmethod
  def run_unit(self, mode: str, n: int, key: jax.Array, replicate_key: jax.Array,
               pad_to: Optional[int]) -> Dict[str, Any]:
    """Draws the mixture of `n` examples (from `key`), trains, evaluates.

    `replicate_key` is shared by every unit of one seed (the facts' answers are drawn from
    it); `pad_to` is the capacity the training data are padded to (None: per size).
    """


def _seen_metrics(weight: np.ndarray, loss: np.ndarray, correct: np.ndarray,
                  seen: np.ndarray) -> Dict[str, float]:
  """Test loss / error under `weight` and their split into seen and unseen items."""
  wrong = ~correct
  seen_mass = float(weight[seen].sum())
  unseen_mass = float(weight[~seen].sum())
  return {
      'loss': float(np.sum(weight * loss)),
      'error': float(np.sum(weight * wrong)),
      'memorizer_error': unseen_mass,
      'seen_error': float(np.sum(weight[seen] * wrong[seen]) / seen_mass) if seen_mass
                    else math.nan,
      'seen_loss': float(np.sum(weight[seen] * loss[seen]) / seen_mass) if seen_mass
                   else math.nan,
      'unseen_loss': float(np.sum(weight[~seen] * loss[~seen]) / unseen_mass) if unseen_mass
                     else math.nan,
  }


class FactsTask(_Task):
  """Procedural facts read by `ItemMLP` (ids) or the tiny `TransformerLM` (text)."""

  def __init__(self, config, key: jax.Array):
    data = config.data
    self.config = config
    p = longtail.zipf_probs(data.num_items, beta=data.beta)
    self.parameters = truncation_parameters(p, config)
    # One task per mode from the same key (the answers are redrawn per seed in run_unit).
    self.tasks = {mode: facts.make_facts_task(
        num_items=data.num_items, num_answers=data.num_answers, beta=data.beta, key=key,
        mode=mode, **self.parameters[mode]) for mode in self.parameters}
    task = self.tasks['hard']
    model_config = config.model
    if model_config.name == 'item_mlp':
      self.model = ItemMLP(num_items=data.num_items, embed_dim=model_config.embed_dim,
                           embed_init=model_config.embed_init,
                           hidden_sizes=tuple(model_config.hidden_sizes),
                           num_classes=data.num_answers)
      self.item_inputs = np.arange(data.num_items, dtype=np.int32)[:, None]
      self.answer_labels = np.arange(data.num_answers, dtype=np.int32)
      self.num_classes = data.num_answers
      self.init_input = jnp.asarray(self.item_inputs[:1])
      model = self.model
      self.apply_fn = lambda params, x: model.apply({'params': params}, x)
    elif model_config.name == 'transformer_lm':
      tokenizer = facts.facts_tokenizer(task)
      rendered = facts.render(task, np.arange(data.num_items), tokenizer=tokenizer)
      first_response = np.argmax(rendered.response_mask > 0, axis=1)
      if np.any(first_response != first_response[0]):
        raise ValueError('the facts rendering does not put every answer at one position')
      answer_position = int(first_response[0])
      # The LM reads everything before the answer; causal, so later tokens do not matter.
      self.item_inputs = rendered.tokens[:, :answer_position]  # int32 token ids
      # The label of answer a is the token id of `a<a>` (the prompts do not depend on it).
      self.answer_labels = np.array(
          [tokenizer.encode(facts.answer_token(a))[0] for a in range(data.num_answers)],
          dtype=np.int32)
      if not np.array_equal(self.answer_labels[task.answers],
                            rendered.tokens[:, answer_position]):
        raise ValueError('the answer tokens of the rendering do not match the tokenizer')
      self.num_classes = tokenizer.vocab_size
      self.model = TransformerLM(vocab_size=tokenizer.vocab_size,
                                 num_layers=model_config.num_layers,
                                 num_heads=model_config.num_heads,
                                 d_model=model_config.d_model, d_ff=model_config.d_ff,
                                 max_len=answer_position)
      self.init_input = jnp.asarray(rendered.tokens[:1, :answer_position], jnp.int32)
      model = self.model
      self.apply_fn = lambda params, x: model.apply(
          {'params': params}, x.astype(jnp.int32), method=_last_position_logits)
    else:
      raise ValueError(f"config.model.name must be 'item_mlp' or 'transformer_lm' for "
                       f"facts, got {model_config.name!r}")
    self.eval_apply_fn = self.apply_fn

  def distributions(self, mode):
    task = self.tasks[mode]
    return task.p, task.p_synthetic

  def run_unit(self, mode, n, key, replicate_key, pad_to):
    # Each seed draws its own answers: the chance level of the unseen items (the error of
    # a learner that answers them all alike) is then right on average over seeds, not
    # tied to one answer assignment.
    answers = longtail.rng_from_key(replicate_key).integers(
        0, self.config.data.num_answers, size=self.config.data.num_items).astype(np.int32)
    task = self.tasks[mode]._replace(answers=answers)
    labels = self.answer_labels[answers]
    data_key, init_key, train_key = (jax.random.fold_in(key, i) for i in range(3))
    mixture = facts.make_mixture(task, num_examples=n, pi=self.config.data.pi, key=data_key,
                                 representation='id')
    ids = np.asarray(mixture.x, np.int64)
    params = self.model.init(init_key, self.init_input)['params']
    steps = steps_for(n, self.config.train)
    trained = training.train(self.apply_fn, params, self.item_inputs[ids],
                             labels[ids], config=_recipe(self.config, steps),
                             key=train_key, num_classes=self.num_classes, pad_to=pad_to)
    loss, correct = per_example_metrics(self.eval_apply_fn, trained.params, self.item_inputs,
                                        labels, block_size=self.config.train.eval_block_size)
    seen = np.zeros(task.num_items, dtype=bool)
    seen[ids] = True
    out = _seen_metrics(task.p / task.p.sum(), loss, correct, seen)
    out.update(steps=steps, num_distinct_items=int(seen.sum()),
               train_loss_final=float(np.mean(np.asarray(trained.losses)[-max(steps // 10, 1):])))
    return out


class Cifar100Task(_Task):
  """CIFAR-100 classes as items; ResNet-18; test split weighted by the real class law."""

  def __init__(self, config, key: jax.Array):
    data = config.data
    if not data.directory:
      raise ValueError('config.data.directory must name a local CIFAR-100 folder '
                       '(cifar-100-python/ or cifar100.npz); nothing is downloaded')
    if config.model.name != 'resnet18':
      raise ValueError(f"config.model.name must be 'resnet18' for cifar100, got "
                       f"{config.model.name!r}")
    self.config = config
    self.data = cifar100.load_cifar100(data.directory, normalize=data.normalize)
    self.num_classes = cifar100.NUM_CLASSES
    if data.num_items != self.num_classes:
      raise ValueError(f'config.data.num_items must be {self.num_classes} for cifar100, '
                       f'got {data.num_items}')
    self.p = longtail.zipf_probs(self.num_classes, beta=data.beta)
    self.parameters = truncation_parameters(self.p, config)
    # One generator per mode: a finite sample is drawn once, as a generator sees it once.
    self.p_synthetic = {
        mode: longtail.truncated_probs(
            self.p, mode=mode, key=jax.random.fold_in(key, i),
            **{('num_samples' if name == 'generator_samples' else name): value
               for name, value in self.parameters[mode].items()})
        for i, mode in enumerate(MODES) if mode in self.parameters}
    self.test_weight = cifar100.longtail_test_weights(self.data.y_test, beta=data.beta)
    self.model = ResNet18(num_classes=self.num_classes,
                          num_filters=config.model.num_filters)
    # Jitted once and reused by every unit (an eager init re-dispatches each op per unit).
    self.init = jax.jit(functools.partial(common.init_model, self.model))
    reference = self.init(jax.random.fold_in(key, 99), jnp.asarray(self.data.x_train[:1]))
    model, reference_stats = self.model, reference['batch_stats']
    # Training normalises with batch statistics (the running ones are not read in train
    # mode, so closing over the reference tree is exact); evaluation uses re-estimated ones.
    self.apply_fn = lambda params, x: model.apply(
        {'params': params, 'batch_stats': reference_stats}, x, train=True,
        mutable=['batch_stats'])[0]
    self.eval_apply_fn = lambda variables, x: model.apply(variables, x, train=False)

  def distributions(self, mode):
    return self.p, self.p_synthetic[mode]

  def run_unit(self, mode, n, key, replicate_key, pad_to):
    del replicate_key  # classes have no per-seed content
    config = self.config
    real_key, syn_key, init_key, train_key, bn_key = (jax.random.fold_in(key, i)
                                                      for i in range(5))
    num_real, num_syn = longtail.split_counts(n, pi=config.data.pi)
    y_pool = self.data.y_train
    idx = np.concatenate([
        longtail.sample_by_class(y_pool, self.p, num_samples=num_real, key=real_key),
        longtail.sample_by_class(y_pool, self.p_synthetic[mode], num_samples=num_syn,
                                 key=syn_key)])
    x, y = self.data.x_train[idx], y_pool[idx]
    variables = self.init(init_key, jnp.asarray(x[:1]))
    steps = steps_for(n, config.train)
    trained = training.train(self.apply_fn, variables['params'], x, y,
                             config=_recipe(config, steps), key=train_key,
                             num_classes=self.num_classes, pad_to=pad_to)
    batch_stats = variables['batch_stats']
    batch = min(config.train.batch_size, n)
    for b in range(config.train.bn_batches):
      rows = longtail.rng_from_key(jax.random.fold_in(bn_key, b)).integers(0, n, size=batch)
      batch_stats = _batch_stats_step(self.model, trained.params, batch_stats,
                                      jnp.asarray(x[rows]))
    eval_variables = {'params': trained.params, 'batch_stats': batch_stats}
    loss, correct = per_example_metrics(self.eval_apply_fn, eval_variables, self.data.x_test,
                                        self.data.y_test,
                                        block_size=config.train.eval_block_size)
    seen_classes = np.zeros(self.num_classes, dtype=bool)
    seen_classes[y] = True
    out = _seen_metrics(self.test_weight, loss, correct, seen_classes[self.data.y_test])
    out.update(steps=steps, num_distinct_items=int(seen_classes.sum()),
               train_loss_final=float(np.mean(np.asarray(trained.losses)[-max(steps // 10, 1):])))
    return out


def make_task(config, key: jax.Array) -> _Task:
  if config.data.name == 'facts':
    return FactsTask(config, key)
  if config.data.name == 'cifar100':
    return Cifar100Task(config, key)
  raise ValueError(f"config.data.name must be 'facts' or 'cifar100', got {config.data.name!r}")


# ---------------------------------------------------------------------------------------
# Grid, predictions, fits.


def size_grid(config, num_points: Optional[int] = None) -> np.ndarray:
  """Distinct integer sizes, log-spaced from `k^beta / grid_below` to `k^beta/pi * above`."""
  data, grid = config.data, config.scaling
  paper = scaling.breakpoints(data.beta, data.k, data.pi)
  low = max(1.0, paper.n1 / grid.grid_below)
  high = max(low + 1.0, paper.n2 * grid.grid_above)
  points = grid.num_points if num_points is None else num_points
  return np.unique(np.round(np.geomspace(low, high, points)).astype(np.int64))


def predictions(config, mode: str, p: np.ndarray, p_syn: np.ndarray,
                parameters: Dict[str, Any]) -> Dict[str, Any]:
  """The paper's breaks at the effective cut, and ours (asymptote crossings)."""
  data = config.data
  value = next(iter(parameters.values()))
  num_samples = value if mode == 'finite_sample' else None
  k_eff = scaling.effective_k(p, p_syn, pi=data.pi, mode=mode, num_samples=num_samples)
  paper = (scaling.breakpoints(data.beta, k_eff, data.pi) if k_eff >= 1
           else scaling.Breakpoints(math.nan, math.nan))
  if mode == 'temperature':  # no plateau: only the end of the synthetic phase
    paper = paper._replace(n1=math.nan)
  try:
    ours = scaling.predicted_breakpoints(
        data.beta, data.pi, mode=mode,
        k=k_eff if mode in ('hard', 'top_p') and k_eff >= 1 else None,
        temperature=value if mode == 'temperature' else None, num_samples=num_samples)
  except ValueError as error:  # e.g. a degenerate cut
    logging.warning('no prediction of ours for %s: %s', mode, error)
    ours = scaling.Breakpoints(math.nan, math.nan)
  return {'k_eff': k_eff, 'parameter': next(iter(parameters)), 'value': value,
          'paper': [paper.n1, paper.n2], 'ours': [ours.n1, ours.n2]}


def _fit_options(config) -> Dict[str, Any]:
  return scaling.fit_options(config.fit, seed=config.seed)


def _three_phases(num_breaks: int, slopes: np.ndarray) -> bool:
  """Two breaks, and the middle segment decays slower than both others."""
  return bool(num_breaks == 2 and slopes[1] < min(slopes[0], slopes[2]))


def _fittable(y: np.ndarray) -> np.ndarray:
  """`[T]` the sizes a log-log fit can read: value finite and > 0."""
  y = np.asarray(y, np.float64)
  return np.isfinite(y) & (y > 0)


def _refit(config, x: np.ndarray, curves: Sequence[np.ndarray], predicted: Sequence[float]
           ) -> List[Optional[Tuple[List[float], bool]]]:
  """Per curve, `(breaks paired with predicted, three phases)`, or None if the fit failed.

  The refits of a resampling study: the fit of `fit_curve` (the same options and the same
  sizes left out, `_fittable`), without a residual bootstrap of its own.
  """
  x = np.asarray(x, np.float64)
  options = dict(_fit_options(config), num_bootstrap=0)
  out = []
  for y in curves:
    # The sizes fit_curve leaves out are left out here too: a size every seed got exactly
    # right (error 0) failed every refit, so the curve had no seed interval at all.
    y = np.asarray(y, np.float64)
    keep = _fittable(y)
    try:
      fit = scaling.fit_broken_power_law(x[keep], y[keep], **options)
    except ValueError:  # e.g. too few sizes left
      out.append(None)
      continue
    out.append((scaling.match_breaks(fit.breaks, predicted),
                _three_phases(fit.num_breaks, scaling.segment_slopes(fit.params))))
  return out


def _break_summary(matched: np.ndarray, ci_level: float,
                   predicted: Optional[Sequence[float]] = None) -> Dict[str, float]:
  """Per break `n1` / `n2` of `[M, 2]` refitted breaks (NaN: not found): the fraction
  found, median and percentile interval of those found and, given `predicted`, the
  fraction of all M within 2x of it. The interval is over the breaks found only: one found
  (or the same resample drawn each time) gives it zero width, which is no certainty;
  read it with `found`."""
  tail = 100.0 * (1.0 - ci_level) / 2.0
  out = {}
  for j, label in enumerate(('n1', 'n2')):
    found = matched[:, j][np.isfinite(matched[:, j])]
    out[f'{label}_found'] = found.size / len(matched)
    out[f'{label}_median'] = float(np.median(found)) if found.size else math.nan
    out[f'{label}_lo'], out[f'{label}_hi'] = (
        (float(np.percentile(found, tail)), float(np.percentile(found, 100.0 - tail)))
        if found.size else (math.nan, math.nan))
    if predicted is not None:
      target = float(predicted[j])
      out[f'{label}_within_2x'] = (
          float(np.sum(np.abs(np.log(found / target)) <= math.log(2.0))) / len(matched)
          if math.isfinite(target) and target > 0 else math.nan)
  return out


def fit_curve(config, x: np.ndarray, y: np.ndarray, *, bootstrap: bool = True
              ) -> Dict[str, Any]:
  """Broken power-law fit of a curve; a curve too short or invalid gives NaN breaks.

  Sizes whose value is not finite and > 0 (an error of 0 at the largest sizes) are left out
  of the log-log fit, with a logged warning naming them.

  `bootstrap=False` skips the fit's residual bootstrap (for noise-free theory curves, whose
  residuals are misfit, not noise).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = _fittable(y)
  if not keep.all():  # a log-log fit cannot read them; said, not dropped silently
    logging.warning('fit leaves out the sizes %s: their values %s are not finite and > 0',
                    x[~keep].tolist(), y[~keep].tolist())
  options = _fit_options(config)
  if not bootstrap:
    options['num_bootstrap'] = 0
  try:
    fit = scaling.fit_broken_power_law(x[keep], y[keep], **options)
  except ValueError as error:
    logging.warning('fit skipped: %s', error)
    return {'ok': False, 'reason': str(error), 'num_breaks': 0, 'breaks': [], 'break_ci': [],
            'breaks_on_edge': [], 'curve': [math.nan] * x.size, 'segment_slopes': [],
            'three_phases': False}
  params = fit.params
  slopes = scaling.segment_slopes(params)
  three = _three_phases(fit.num_breaks, slopes)
  return {'ok': True, 'reason': '', 'num_breaks': fit.num_breaks, 'breaks': fit.breaks,
          'break_ci': fit.break_ci,
          'breaks_on_edge': [bool(b) for b in scaling.breaks_on_edge(fit)],
          'curve': scaling.broken_power_law(x, params),
          'segment_slopes': slopes, 'three_phases': three, 'floor': params.floor,
          'bic': fit.bic}


def _resampled_mean(per_seed: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """The mean curve of the seeds `rows` drew, its spread about the mean of all seeds
  restored: the log-ratio to that mean scaled by `sqrt(R / (R - 1))`.

  The mean of `R` seeds drawn with replacement varies by `(R - 1) / R` of the variance of
  the mean of `R` seeds, as a fit's residuals are shrunk by `(T - p) / T`
  (`scaling.bootstrap_residuals` rescales those). Scaled in log space, as the fits read the
  curve, so a resampled curve stays positive; an all-zero size stays zero.
  """
  num_seeds = per_seed.shape[0]
  mean = per_seed.mean(axis=0)
  ratio = np.divide(per_seed[rows].mean(axis=0), mean, out=np.ones_like(mean),
                    where=mean > 0)
  return mean * ratio ** math.sqrt(num_seeds / (num_seeds - 1))


def seed_bootstrap(config, x: np.ndarray, per_seed: np.ndarray, predicted: Sequence[float]
                   ) -> Optional[Dict[str, Any]]:
  """Breaks of the mean curve over seeds resampled with replacement (whole seed curves).

  Data-sampling noise is correlated along a seed's curve, which the fit's own residual
  bootstrap (on the mean curve) does not see; resampling seeds does. Each resample's spread
  is restored to that of a fresh set of `R` seeds (`_resampled_mean`). On simulated
  two-break curves (25 sizes, 5% noise of the mean, 100 fits each) the 95% interval held
  the true breaks in 82% / 90% of fits at R = 4 seeds and 93% / 92% at R = 10; without
  the restoration in 78% / 83% and 92% / 91%.

  Args:
    config: the experiment config (`fit.*`).
    x: `[T]` sizes.
    per_seed: `[R, T]` the metric of every seed.
    predicted: the predicted `(n1, n2)` the fitted breaks are paired with.

  Returns:
    Median and percentile interval of each matched break, and the fraction of resamples
    whose fit shows three phases (over the resamples whose fit succeeded: `replicates`);
    None with fewer than `fit.seed_bootstrap_min_seeds` seeds (at least 2) or no
    resamples. Also every
    resample in draw order: `resample_seeds` `[B, R]` (the rows of `per_seed` it drew)
    and `resample_breaks` `[B, 2]` (its matched breaks, NaN where not found or the fit
    failed). The draws come from `config.seed` alone, so runs with one seed and seed count
    draw the same rows: breakpoint_sweep pairs its cuts' resamples through them.
  """
  num_seeds = per_seed.shape[0]
  # One seed has no spread to resample (and `_resampled_mean` no sqrt(R / (R - 1))).
  if num_seeds < max(2, config.fit.seed_bootstrap_min_seeds) or config.fit.seed_bootstrap < 1:
    return None
  rng = np.random.default_rng(config.seed)
  draws = np.array([rng.integers(num_seeds, size=num_seeds)
                    for _ in range(int(config.fit.seed_bootstrap))])
  refits = _refit(config, x, [_resampled_mean(per_seed, rows) for rows in draws], predicted)
  fits = [fit for fit in refits if fit is not None]
  if not fits:
    return None
  return {'replicates': len(fits), 'three_phases': float(np.mean([t for _, t in fits])),
          **_break_summary(np.asarray([m for m, _ in fits], float), config.fit.ci_level),
          'resample_seeds': draws.tolist(),
          'resample_breaks': [[float(b) for b in fit[0]] if fit is not None
                              else [math.nan, math.nan] for fit in refits]}


def ideal_learner_resolution(config, sizes: np.ndarray, p: np.ndarray, q: np.ndarray,
                             predicted: Sequence[float], *, num_seeds: int, key: jax.Array
                             ) -> Optional[Dict[str, Any]]:
  """Where the fit puts the breaks of Lemma 1's learner when it is measured like the model.

  The exact `E(n)` is a mean over infinitely many seeds; a measured curve averages
  `num_seeds`. Each of `config.fit.ideal_replicates` replicates draws `num_seeds` Monte
  Carlo curves of the ideal learner (it knows exactly the items it saw,
  `scaling.simulate_error`, a fresh sample per size like the measured units) at `sizes`,
  fits their mean like the measured curve and pairs
  the breaks with `predicted`. No model is in the loop, so the spread of these breaks is
  the resolution of the breakpoint estimate at this grid and seed count, and `within_2x`
  is how often the ideal learner itself lands within a factor 2 of the prediction.

  Args:
    config: the experiment config (`fit.*`).
    sizes: `[T]` the measured sizes.
    p: `[N]` real item frequencies (the test distribution).
    q: `[N]` the training mixture's frequencies.
    predicted: the `(n1, n2)` the fitted breaks are paired with.
    num_seeds: curves averaged per replicate, as in the measured mean.
    key: `jax.random.PRNGKey` of the simulation.

  Returns:
    `{'replicates', 'num_seeds', 'three_phases'}` and, per break `n1` / `n2`, its median,
    percentile interval (`fit.ci_level`), the fraction of replicates that found it and
    the fraction within 2x of `predicted`; None when `fit.ideal_replicates` or `num_seeds`
    is below 1.
  """
  replicates = int(config.fit.ideal_replicates)
  if replicates < 1 or num_seeds < 1:
    return None
  sizes = np.asarray(sizes, np.int64)
  # Not nested: every measured unit (size, seed) draws its training set afresh from its own
  # key, so the noise of neighbouring sizes is independent, and so is the ideal learner's.
  errors = scaling.simulate_error(key, sizes, p, q, trials=replicates * num_seeds,
                                  nested=False).errors
  curves = errors.reshape(replicates, num_seeds, sizes.size).mean(axis=1)
  # A failed fit counts as breaks not found (and not within 2x): rates are over all.
  fits = [fit or ([math.nan, math.nan], False)
          for fit in _refit(config, sizes.astype(np.float64), curves, predicted)]
  return {'replicates': replicates, 'num_seeds': int(num_seeds),
          'three_phases': float(np.mean([t for _, t in fits])),
          **_break_summary(np.asarray([m for m, _ in fits], float), config.fit.ci_level,
                           predicted)}


def ideal_learner_by_seeds(config, sizes: np.ndarray, p: np.ndarray, q: np.ndarray,
                           predicted: Sequence[float], *, measured: Dict[str, Any],
                           key: jax.Array) -> List[Dict[str, Any]]:
  """The ideal learner's resolution at the measured seed count and at `fit.ideal_seed_counts`.

  A power analysis of the breakpoint estimate: would more seeds bring a fitted break within
  2x of `predicted`? As the seed count grows, the replicates' breaks close in on the fit of
  the exact `E(n)`; their `within_2x` rate tends to 1 or 0 as that fit is inside or outside
  the factor 2.

  Args:
    config: the experiment config (`fit.*`).
    sizes, p, q, predicted: as `ideal_learner_resolution`.
    measured: `ideal_learner_resolution` at the measured seed count (its row, unchanged).
    key: the key of the measured seed count's simulation; another seed count `s` draws
      from `fold_in(key, s)`.

  Returns:
    One row per seed count in increasing order, each `ideal_learner_resolution`'s dict plus
    `measured` (True for the measured seed count).
  """
  rows = {int(measured['num_seeds']): dict(measured, measured=True)}
  for num_seeds in config.fit.ideal_seed_counts:
    num_seeds = int(num_seeds)
    if num_seeds not in rows:
      resolution = ideal_learner_resolution(config, sizes, p, q, predicted,
                                             num_seeds=num_seeds,
                                             key=jax.random.fold_in(key, num_seeds))
      rows[num_seeds] = dict(resolution, measured=False)
  return [rows[num_seeds] for num_seeds in sorted(rows)]


def _ideal_columns(resolution: Optional[Dict[str, Any]]) -> Dict[str, Any]:
  """`ideal_<break>_<stat>` cells of the theory row of breakpoints.csv (empty if None)."""
  stats = ('median', 'lo', 'hi', 'found', 'within_2x')
  return {f'ideal_{label}_{stat}': resolution[f'{label}_{stat}'] if resolution else math.nan
          for label in ('n1', 'n2') for stat in stats}


def paired_breaks(prediction: Dict[str, Any], mode: str) -> List[float]:
  """The predicted `(n1, n2)` a mode's fitted breaks are paired with: the paper's, except
  under temperature, which has no plateau for the paper's n1 (ours, from its asymptotes)."""
  return prediction['paper'] if mode != 'temperature' else prediction['ours']


def breakpoint_row(curve: str, mode: str, fit: Dict[str, Any], prediction: Dict[str, Any],
                   reference: Optional[Dict[str, Any]], max_breaks: int) -> Dict[str, Any]:
  """One row of breakpoints.csv: a fit against the paper's, our and the theory's breaks."""
  row = {'curve': curve, 'mode': mode, 'parameter': prediction['parameter'],
         'value': prediction['value'], 'k_eff': prediction['k_eff'],
         'num_breaks': fit['num_breaks'], 'three_phases': fit['three_phases']}
  for j in range(max_breaks):
    has = j < fit['num_breaks']
    row[f'fit_break{j + 1}'] = float(fit['breaks'][j]) if has else math.nan
    row[f'fit_break{j + 1}_lo'] = float(fit['break_ci'][j][0]) if has else math.nan
    row[f'fit_break{j + 1}_hi'] = float(fit['break_ci'][j][1]) if has else math.nan
    # Held at an end of the sizes' range: censored, the bend lies there or beyond.
    row[f'fit_break{j + 1}_on_edge'] = bool(fit['breaks_on_edge'][j]) if has else None
  references = {'paper': prediction['paper'], 'ours': prediction['ours']}
  paired = paired_breaks(prediction, mode)
  if reference is not None:
    references['theoryfit'] = scaling.match_breaks(reference['breaks'], paired)
  matched = scaling.match_breaks(fit['breaks'], paired)
  for j, label in enumerate(('n1', 'n2')):
    row[f'fit_{label}'] = matched[j]
    for name, values in references.items():
      row[f'{name}_{label}'] = values[j]
      ratio = matched[j] / values[j] if values[j] and math.isfinite(values[j]) else math.nan
      row[f'ratio_{name}_{label}'] = ratio
      row[f'within_2x_{name}_{label}'] = (bool(abs(math.log(ratio)) <= math.log(2.0))
                                          if math.isfinite(ratio) else None)
  boot = fit.get('seed_bootstrap')
  for label in ('n1', 'n2'):
    for stat in ('median', 'lo', 'hi', 'found'):
      row[f'seedboot_{label}_{stat}'] = boot[f'{label}_{stat}'] if boot else math.nan
  row['seedboot_three_phases'] = boot['three_phases'] if boot else math.nan
  for j in range(max_breaks + 1):
    slopes = fit['segment_slopes']
    row[f'segment_slope{j}'] = float(slopes[j]) if j < len(slopes) else math.nan
  return row


# ---------------------------------------------------------------------------------------
# Figures.


def _break_intervals(fit: Dict[str, Any]) -> Tuple[np.ndarray, str]:
  """`[J, 2]` intervals to draw: the seed bootstrap's if there is one, else the fit's own."""
  boot = fit.get('seed_bootstrap')
  if boot:
    return np.array([[boot['n1_lo'], boot['n1_hi']], [boot['n2_lo'], boot['n2_hi']]]), 'seeds'
  return np.asarray(fit['break_ci'], dtype=float).reshape(-1, 2), 'residuals'


def _shade_intervals(ax, fit: Dict[str, Any], color: str) -> str:
  intervals, source = _break_intervals(fit)
  for low, high in intervals:
    if np.isfinite(low) and np.isfinite(high):
      ax.axvspan(low, high, color=color, alpha=0.08, lw=0)
  return source


def _three_phase_figure(config, curve_rows, fits, theory, prediction, num_classes):
  data = config.data
  rows = [row for row in curve_rows if row['mode'] == 'hard']
  n = np.array([row['n'] for row in rows], dtype=float)
  fig, axes = plotting.new_figure(ncols=2, panel_size=(5.8, 4.4))
  chance = 1.0 - 1.0 / data.num_answers
  panels = (
      ('loss', 'test loss (real distribution)', math.log(data.num_answers),
       f'ln(A) E(n): Lemma 1, unseen items at chance (A={data.num_answers})'),
      ('error', 'test error (real distribution)', chance,
       '(1 - 1/A) E(n): Lemma 1, unseen items at chance'),
  )
  for ax, (metric, ylabel, scale, theory_label) in zip(axes[0], panels):
    fit = fits[('measured_' + metric, 'hard')]
    mean = np.array([row[f'{metric}_mean'] for row in rows])
    sem = np.array([row[f'{metric}_sem'] for row in rows])
    curves = [
        plotting.Curve(theory['n'], scale * theory['hard'], theory_label, color='0.55',
                       width=1.2),
        plotting.Curve(n, mean, f'measured, mean of {config.scaling.num_seeds} seed(s)',
                       color='C0', predicted_breaks=prediction['paper'],
                       fitted_breaks=fit['breaks'], fit=fit['curve'] if fit['ok'] else None,
                       fit_color='k'),  # in the curve's own blue the fit hid under it
    ]
    # A NaN s.e. (one seed) gets no bar: a zero-length one read as no uncertainty at all.
    points = ([plotting.Points(n, mean, '±1 s.e. over seeds', yerr=sem, marker='.',
                               color='C0')] if np.isfinite(sem).any() else [])
    if metric == 'error':
      points.append(plotting.Points(
          n, chance * np.array([row['memorizer_error_mean'] for row in rows]),
          '(1 - 1/A) x unseen mass of the same samples', marker='x', color='C3'))
    plotting.plot_loglog_curves(ax, curves, points=points, xlabel='|S| (training examples)',
                                ylabel=ylabel)
    source = _shade_intervals(ax, fit, 'C0')
    breaks = ', '.join(f'{b:.0f}' for b in fit['breaks']) or 'none'
    theory_breaks = ', '.join(f'{b:.0f}' for b in fits[('theory', 'hard')]['breaks'])
    level = plotting.percent(config.fit.ci_level)  # 0.975: '97.5%', not '98%'
    ax.set_title(f"{metric}: fitted breaks {breaks} (shaded: {level} CI, "
                 f"bootstrap over {source})\npredicted k^beta={prediction['paper'][0]:.0f}, "
                 f"k^beta/pi={prediction['paper'][1]:.0f}; same fit on E(n): {theory_breaks}",
                 fontsize=8)
  fig.suptitle(f'Three-phase scaling: {data.name} / {config.model.name}, beta={data.beta:g}, '
               f'k={data.k}, pi={data.pi:g}, N={data.num_items}', fontsize=10)
  return fig


def shared_predicted_breaks(predictions: Dict[str, Sequence[float]]
                            ) -> Tuple[List[float], Dict[str, List[float]]]:
  """Splits each mode's predicted breaks into those two or more modes share and its own.

  Args:
    predictions: per mode, its predicted breaks (NaN or None: none).

  Returns:
    `(shared, own)`: the positions predicted by more than one mode (equal up to rounding,
    as matched modes have one k_eff), and per mode the positions no other mode predicts.
  """
  finite = {mode: [float(b) for b in breaks if b is not None and math.isfinite(float(b))]
            for mode, breaks in predictions.items()}
  shared = []
  for mode, breaks in finite.items():
    for position in breaks:
      others = sum(any(math.isclose(position, b, rel_tol=1e-9) for b in finite[other])
                   for other in finite if other != mode)
      if others and not any(math.isclose(position, s, rel_tol=1e-9) for s in shared):
        shared.append(position)
  own = {mode: [b for b in breaks if not any(math.isclose(b, s, rel_tol=1e-9) for s in shared)]
         for mode, breaks in finite.items()}
  return sorted(shared), own


def _modes_figure(config, curve_rows, fits, theory, mode_predictions):
  measured_modes = [mode for mode in config.truncation.modes
                    if ('measured_loss', mode) in fits]
  ncols = 2 if measured_modes else 1
  fig, axes = plotting.new_figure(ncols=ncols, panel_size=(5.8, 4.4))

  def width(mode):
    # top_p of a rank-ordered Zipf is a hard cut: the thick hard curve shows under it.
    return 3.5 if mode == 'hard' else 1.6

  # Matched modes share k_eff and so the paper's breaks: drawn once, in black, rather than
  # in the color of whichever mode came last over the others'.
  def panel(ax, modes, curve_of, **kwargs):
    shared, own = shared_predicted_breaks(
        {mode: mode_predictions[mode]['paper'] for mode in modes})
    curves = [curve_of(mode)._replace(predicted_breaks=own[mode]) for mode in modes]
    # Fitted breaks of different modes can nearly coincide (hard and top_p): a marker per
    # mode at the top of the axes keeps each one visible.
    plotting.plot_loglog_curves(ax, curves, xlabel='|S| (training examples)',
                                shared_breaks=shared,
                                shared_label='predicted break (shared: same k_eff)',
                                mark_fitted_breaks=True, **kwargs)

  colors = {mode: f'C{index}' for index, mode in enumerate(config.truncation.modes)}

  def theory_curve(mode):
    pred = mode_predictions[mode]
    return plotting.Curve(
        theory['n'], theory[mode],
        f"{mode} ({pred['parameter']}={pred['value']:.4g}, k_eff={pred['k_eff']})",
        color=colors[mode], fitted_breaks=fits[('theory', mode)]['breaks'], width=width(mode))

  panel(axes[0, 0], list(config.truncation.modes), theory_curve,
        ylabel='E(n), exact (Lemma 1)',
        title='theory: solid k_eff^beta, k_eff^beta/pi; dashed and \u25bc: fitted')
  if measured_modes:
    def measured_curve(mode):
      rows = [row for row in curve_rows if row['mode'] == mode and row['in_mode_grid']]
      return plotting.Curve(
          [row['n'] for row in rows], [row['loss_mean'] for row in rows],
          f"{mode} ({rows[0]['num_seeds']} seeds)", color=colors[mode],
          fitted_breaks=fits[('measured_loss', mode)]['breaks'], width=width(mode))

    panel(axes[0, 1], measured_modes, measured_curve, ylabel='test loss (real distribution)',
          title=f'measured: {config.data.name} / {config.model.name}')
  data = config.data
  fig.suptitle(f'Truncation mechanisms at matched effective cut: beta={data.beta:g}, '
               f'k={data.k}, pi={data.pi:g}, N={data.num_items}', fontsize=10)
  return fig


# ---------------------------------------------------------------------------------------
# The experiment.


def _unit_name(mode: str, n: int, replicate: int) -> str:
  return f'{mode}-n{n:09d}-r{replicate}'


def unit_fingerprint(config) -> str:
  """Hash of every config field a trained unit depends on (not the grid or the fits)."""
  trunc = config.truncation
  fields = {'seed': config.seed, 'data': config.data, 'model': config.model,
            'train': config.train,
            'truncation': {name: trunc[name] for name in ('match_k', 'top_p', 'temperature',
                                                          'generator_samples')}}
  text = json.dumps(results.to_jsonable(fields), sort_keys=True)
  return hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]


def _aggregate(units: List[Dict[str, Any]], mode: str, n: int) -> Dict[str, Any]:
  row = {'mode': mode, 'n': n, 'num_seeds': len(units)}
  for metric in ('loss', 'error', 'memorizer_error', 'seen_error', 'unseen_loss',
                 'seen_loss', 'train_loss_final', 'num_distinct_items', 'steps', 'seconds'):
    values = np.array([u[metric] if u[metric] is not None else math.nan for u in units],
                      dtype=float)
    row[f'{metric}_mean'] = float(np.mean(values))
    if metric in ('loss', 'error', 'memorizer_error'):
      row[f'{metric}_sem'] = (float(np.std(values, ddof=1) / math.sqrt(values.size))
                              if values.size > 1 else math.nan)
  return row


# The models each data set can be read by (`make_task`).
_MODELS = {'facts': ('item_mlp', 'transformer_lm'), 'cifar100': ('resnet18',)}


def fit_points_needed(config) -> int:
  """The fewest distinct sizes a curve needs for the fit of `config.fit`.

  The fit has up to `1 + 2 + 3 * max_breaks` parameters (floor, amplitude, slope, three per
  break) and needs more points than that, and `min_segment_points` distinct sizes on each
  side of its break grid (`dv_jax.scaling.fit_broken_power_law`).
  """
  fit = config.fit
  return max(4 + 3 * int(fit.max_breaks), 2 * int(fit.min_segment_points))


def _check_fit(config) -> None:
  """Every `config.fit` field, as `fit_broken_power_law` and the resampling studies read it.

  `fit_curve` turns a fit's ValueError into "no breaks" (a curve that reached 0, too few
  points): a bad option would otherwise turn every fit into NaN breaks after all the
  training, with only a log warning.
  """
  fit = config.fit
  config_checks.config_int(fit.max_breaks, 'fit.max_breaks', minimum=0, maximum=3)
  for field, minimum in (('num_bootstrap', 0), ('grid_points', 1), ('num_starts', 1),
                         ('min_segment_points', 1), ('seed_bootstrap', 0),
                         ('seed_bootstrap_min_seeds', 2), ('ideal_replicates', 0)):
    config_checks.config_int(fit[field], f'fit.{field}', minimum=minimum)
  counts = [config_checks.config_int(count, f'fit.ideal_seed_counts[{index}]', minimum=1)
            for index, count in enumerate(fit.ideal_seed_counts)]
  if len(set(counts)) != len(counts):
    raise ValueError(f'config.fit.ideal_seed_counts repeats a count: {tuple(counts)}')
  if fit.bootstrap not in ('residual', 'case'):
    raise ValueError(f"config.fit.bootstrap must be 'residual' or 'case', got "
                     f'{fit.bootstrap!r}')
  config_checks.config_float(fit.ci_level, 'fit.ci_level', lambda v: 0 < v < 1,
                'in (0, 1) (0.95, not 95)')
  config_checks.config_bool(fit.floor, 'fit.floor')
  config_checks.config_float(fit.min_break_ratio, 'fit.min_break_ratio', lambda v: v > 1, '> 1')
  config_checks.config_float(fit.sigma_floor, 'fit.sigma_floor', lambda v: v > 0, '> 0')
  bounds = tuple(fit.smoothness_range)
  if len(bounds) != 2:
    raise ValueError(f'config.fit.smoothness_range must be (low, high), got {bounds}')
  low = config_checks.config_float(bounds[0], 'fit.smoothness_range[0]', lambda v: v > 0, '> 0')
  config_checks.config_float(bounds[1], 'fit.smoothness_range[1]', lambda v: v > low,
                f'> smoothness_range[0]={low}')
  config_checks.config_float(fit.initial_smoothness, 'fit.initial_smoothness',
                lambda v: bounds[0] <= v <= bounds[1], f'in config.fit.smoothness_range {bounds}')
  # And whatever else the fit itself refuses (e.g. grid_points = 1 with a break to place).
  try:
    scaling.check_fit_options(**_fit_options(config))
  except ValueError as error:
    raise ValueError(f'config.fit: {error}') from error


def _check_model(config) -> None:
  data, model = config.data, config.model
  if model.name not in _MODELS[data.name]:
    raise ValueError(f'config.model.name must be one of {_MODELS[data.name]} for '
                     f'{data.name}, got {model.name!r}')
  if model.name == 'item_mlp':
    config_checks.config_int(model.embed_dim, 'model.embed_dim', minimum=1)
    config_checks.config_float(model.embed_init, 'model.embed_init', lambda v: v >= 0, '>= 0')
    for index, width in enumerate(model.hidden_sizes):
      config_checks.config_int(width, f'model.hidden_sizes[{index}]', minimum=1)
  elif model.name == 'transformer_lm':
    for field in ('d_model', 'num_layers', 'num_heads', 'd_ff'):
      config_checks.config_int(model[field], f'model.{field}', minimum=1)
    if model.d_model % model.num_heads:
      raise ValueError(f'config.model.d_model={model.d_model} must be a multiple of '
                       f'config.model.num_heads={model.num_heads}')
  else:
    config_checks.config_int(model.num_filters, 'model.num_filters', minimum=1)


def _check_train(config) -> None:
  train = config.train
  for field in ('batch_size', 'min_steps', 'eval_block_size'):
    config_checks.config_int(train[field], f'train.{field}', minimum=1)
  if config_checks.config_int(train.max_steps, 'train.max_steps', minimum=1) < int(train.min_steps):
    raise ValueError(f'config.train.max_steps={train.max_steps} must be >= '
                     f'config.train.min_steps={train.min_steps}')
  config_checks.config_float(train.epochs, 'train.epochs', lambda v: v > 0, '> 0')
  config_checks.config_bool(train.pad_to_max, 'train.pad_to_max')
  # Without a re-estimate a ResNet would be evaluated with its initial BN statistics.
  config_checks.config_int(train.bn_batches, 'train.bn_batches',
              minimum=1 if config.model.name == 'resnet18' else 0)
  try:  # the recipe as every unit's `training.train` will read it
    training.as_train_config(_recipe(config, int(train.min_steps)))
  except ValueError as error:  # its message names `config.<recipe field>`
    raise ValueError(str(error).replace('config.', 'config.train.', 1)) from error


def _check_truncation(config) -> None:
  trunc = config.truncation
  modes = tuple(trunc.modes)
  unknown = [mode for mode in modes if mode not in MODES]
  if unknown or 'hard' not in modes:
    raise ValueError(f'config.truncation.modes must hold hard and only modes of {MODES}, '
                     f'got {modes}')
  if len(set(modes)) != len(modes):  # a repeated mode repeats its rows and fits
    raise ValueError(f'config.truncation.modes repeats a mode: {modes}')
  if not config_checks.config_bool(trunc.match_k, 'truncation.match_k'):
    if 'top_p' in modes:
      config_checks.config_float(trunc.top_p, 'truncation.top_p', lambda v: 0 < v <= 1, 'in (0, 1]')
    if 'temperature' in modes:
      config_checks.config_float(trunc.temperature, 'truncation.temperature', lambda v: 0 < v < 1,
                    'in (0, 1) (a thinned tail)')
    if 'finite_sample' in modes:
      config_checks.config_int(trunc.generator_samples, 'truncation.generator_samples', minimum=1)
  config_checks.config_int(trunc.grid_stride, 'truncation.grid_stride', minimum=1)
  if config_checks.config_bool(trunc.measure, 'truncation.measure'):
    config_checks.config_int(trunc.num_seeds, 'truncation.num_seeds', minimum=1)


def check_config(config) -> None:
  """Fails, naming the field, on a setting that would break (or be dropped) after training.

  Runs before any data are loaded or any unit is trained: every field `run` reads.

  Raises:
    ValueError: naming the config field.
  """
  config_checks.config_seed(config)
  data, grid = config.data, config.scaling
  if data.name not in _MODELS:
    raise ValueError(f"config.data.name must be 'facts' or 'cifar100', got {data.name!r}")
  num_items = config_checks.config_int(data.num_items, 'data.num_items', minimum=2)
  config_checks.config_int(data.num_answers, 'data.num_answers', minimum=2)
  if data.name == 'cifar100':
    for field in ('num_items', 'num_answers'):
      if data[field] != cifar100.NUM_CLASSES:
        raise ValueError(f'config.data.{field} must be {cifar100.NUM_CLASSES} for cifar100 '
                         f'(the classes are the items and the answers), got {data[field]}')
    config_checks.config_bool(data.normalize, 'data.normalize')
  config_checks.config_float(data.beta, 'data.beta', lambda v: v > 1,
                             '> 1 (a normalisable Zipf tail)')
  config_checks.config_float(data.pi, 'data.pi', lambda v: 0 < v <= 1, 'in (0, 1]')
  try:
    k = config_checks.config_int(data.k, 'data.k', minimum=1)
  except ValueError:
    k = 0
  if not 1 <= k < num_items:
    raise ValueError(f'config.data.k must be an integer in [1, config.data.num_items), got '
                     f'k={data.k}, num_items={data.num_items}')
  _check_model(config)
  _check_train(config)
  _check_truncation(config)
  _check_fit(config)
  config_checks.config_float(grid.grid_below, 'scaling.grid_below', lambda v: v > 0, '> 0')
  config_checks.config_float(grid.grid_above, 'scaling.grid_above', lambda v: v > 0, '> 0')
  config_checks.config_int(grid.num_seeds, 'scaling.num_seeds', minimum=1)
  config_checks.config_int(grid.theory_points, 'scaling.theory_points', minimum=2)
  # The fit needs more points than its largest model has parameters; rounding to integer
  # sizes can merge neighbouring points of the log grid, so count the distinct sizes.
  minimum = fit_points_needed(config)
  if config_checks.config_int(grid.num_points, 'scaling.num_points', minimum=1) < minimum:
    raise ValueError(f'config.scaling.num_points must be >= {minimum} for a fit with '
                     f'{config.fit.max_breaks} breaks, got {grid.num_points}')
  sizes = size_grid(config)
  if sizes.size < minimum:
    raise ValueError(f'config.scaling.num_points={grid.num_points} gives only {sizes.size} '
                     f'distinct integer sizes between {sizes.min()} and {sizes.max()}; the fit '
                     f'needs >= {minimum}: widen config.scaling.grid_below / grid_above or '
                     'use fewer points')
  stride = int(config.truncation.grid_stride)
  if config.truncation.measure and len(config.truncation.modes) > 1:
    measured = sizes[::stride].size
    if measured < minimum:
      # Otherwise the soft modes would be trained and then never fitted ("fit skipped").
      raise ValueError(f'config.truncation.grid_stride={stride} leaves {measured} sizes for '
                       f'the measured soft modes; their fit needs >= {minimum} (lower it, '
                       'or set config.truncation.measure=False)')
  config_checks.config_float(config.output.figure_dpi, 'output.figure_dpi', lambda v: v > 0, '> 0')
  config_checks.config_bool(config.output.progress, 'output.progress')


def planned_units(config) -> List[Tuple[str, int, int]]:
  """`(mode, n, replicate)` of every unit `run(config, ...)` uses, in training order."""
  grid = size_grid(config)
  mode_grid = grid[::int(config.truncation.grid_stride)]
  work = [('hard', int(n), r) for n in grid for r in range(int(config.scaling.num_seeds))]
  if config.truncation.measure:
    work += [(mode, int(n), r) for mode in config.truncation.modes if mode != 'hard'
             for n in mode_grid for r in range(int(config.truncation.num_seeds))]
  return work


def check_saved_units(config, workdir) -> Dict[str, Dict[str, Any]]:
  """Every saved unit `run(config, workdir)` would reuse, refused if trained otherwise.

  Reads the config alone (no data, no model) and writes nothing, so that a caller (the
  breakpoint sweep) can check all its workdirs before any training.

  Returns:
    `{unit name: saved unit}` of the planned units already in `workdir/units`.

  Raises:
    ValueError: a saved unit was trained under another data / model / train config.
  """
  directory = Path(workdir) / 'units'
  if not directory.is_dir():
    return {}
  store = results.UnitStore(directory)
  fingerprint = unit_fingerprint(config)
  saved = {}
  for mode, n, replicate in planned_units(config):
    name = _unit_name(mode, n, replicate)
    if name in store:
      saved[name] = store.load(name)
      if saved[name].get('fingerprint') != fingerprint:
        raise ValueError(f'unit {name} in {store.directory} was trained with another data / '
                         'model / train config; use a fresh --workdir')
  return saved


def run(config, workdir) -> Dict[str, Any]:
  """Trains every unit not yet in `workdir/units`, then fits, writes tables and figures.

  Args:
    config: a `configs/three_phase_scaling.py` ConfigDict.
    workdir: output directory.

  Returns:
    `{'breakpoints': rows, 'curve': rows, 'units_computed': names trained in this call,
    'summary': the headline numbers, 'files': written paths, 'runtime_s': seconds}`, as in
    results.json, and (returned only, not written) `seed_bootstrap`: per measured curve
    and mode with a seed bootstrap, `{'curve', 'mode', 'replicates', 'breaks'}`: the
    replicate ids each resample drew (`[B, R]`) and its matched `(n1, n2)` (`[B, 2]`, NaN
    where not found), for breakpoint_sweep's paired interval of the slope.

  Raises:
    ValueError: before any work, naming the config field of a bad setting
      (`check_config`) or a saved unit trained under another config (`check_saved_units`).
  """
  start = time.perf_counter()
  workdir = Path(workdir)
  check_config(config)
  # Every saved unit this run would use is checked before any training (and before the
  # units/ folder is made), so a refused rerun leaves the workdir as it was.
  units = check_saved_units(config, workdir)
  store = results.UnitStore(workdir / 'units')
  key = jax.random.PRNGKey(config.seed)
  task = make_task(config, jax.random.fold_in(key, 0))

  grid = size_grid(config)
  mode_grid = grid[::int(config.truncation.grid_stride)]
  work = planned_units(config)
  pad_to = run_pad_to(config, grid)

  computed = []
  fingerprint = unit_fingerprint(config)
  for mode, n, replicate in tqdm(work, desc='train |S| grid', disable=not config.output.progress):
    name = _unit_name(mode, n, replicate)
    if name not in units:  # saved units were loaded (and checked) above
      unit_key = contributors.fold_in_name(key, name)
      tic = time.perf_counter()
      replicate_key = contributors.fold_in_name(key, f'replicate-{replicate}')
      out = task.run_unit(mode, n, unit_key, replicate_key, pad_to)
      # Refused before it is saved: a diverged unit's NaN loss was stored as finished, so its
      # size dropped out of the fit (or the seed bootstrap failed on it) on every rerun.
      if not math.isfinite(out['loss']):
        raise ValueError(f"unit {name}: training diverged (test loss {out['loss']}); it was "
                         f'not saved; lower config.train.learning_rate '
                         f'({config.train.learning_rate!r})')
      out.update(mode=mode, n=n, replicate=replicate, seconds=time.perf_counter() - tic,
                 fingerprint=fingerprint)
      store.save(name, out)
      computed.append(name)
      logging.info('%s: loss %.4f error %.4f (unseen mass %.4f) %d steps %.1fs', name,
                   out['loss'], out['error'], out['memorizer_error'], out['steps'],
                   out['seconds'])
      units[name] = store.load(name)  # as a rerun will read it (JSON round trip)
  # In training order, however many were saved before: the means over seeds then add the
  # same numbers in the same order, so a resumed run's tables equal an uninterrupted one's.
  units = {name: units[name] for name in (_unit_name(*unit) for unit in work)}
  train_seconds = time.perf_counter() - start

  # Theory: exact E(n) per mode, on the measured grid (for fits) and a dense grid (figure).
  mode_predictions, theory, theory_on_grid, mixtures = {}, {}, {}, {}
  theory['n'] = np.geomspace(grid.min(), grid.max(), config.scaling.theory_points)
  for mode in config.truncation.modes:
    p, p_syn = task.distributions(mode)
    q = mixtures[mode] = scaling.mixture(p, p_syn, config.data.pi)
    mode_predictions[mode] = predictions(config, mode, p, p_syn, task.parameters[mode])
    theory[mode] = scaling.expected_error(theory['n'], p, q)
    theory_on_grid[mode] = scaling.expected_error(grid.astype(np.float64), p, q)

  # Per (mode, n): means over seeds.
  curve_rows = []
  for mode in config.truncation.modes:
    for n in grid:
      members = [u for u in units.values() if u['mode'] == mode and u['n'] == n]
      if not members:
        continue
      row = _aggregate(members, mode, int(n))
      row['in_mode_grid'] = bool(n in mode_grid)
      row['theory_error'] = float(theory_on_grid[mode][np.searchsorted(grid, n)])
      curve_rows.append(row)

  # Fits: measured curves and the theory at the same sizes (the like-for-like reference).
  fits, breakpoint_rows, ideal, ideal_rows, resamples = {}, [], {}, [], []
  max_breaks = config.fit.max_breaks
  for mode in tqdm(config.truncation.modes, desc='fit breakpoints',
                   disable=not config.output.progress):
    pred = mode_predictions[mode]
    paired = paired_breaks(pred, mode)
    rows = [row for row in curve_rows if row['mode'] == mode]
    if mode != 'hard':
      rows = [row for row in rows if row['in_mode_grid']]
    n_measured = np.array([row['n'] for row in rows], dtype=np.int64)
    # The theory is fitted at exactly the sizes that were measured (all sizes if none).
    sizes = n_measured if rows else grid
    theory_fit = fit_curve(config, sizes, theory_on_grid[mode][np.searchsorted(grid, sizes)],
                           bootstrap=False)
    fits[('theory', mode)] = theory_fit
    theory_row = breakpoint_row('theory', mode, theory_fit, pred, None, max_breaks)
    breakpoint_rows.append(theory_row)
    if not rows:
      continue
    replicates = sorted({u['replicate'] for u in units.values() if u['mode'] == mode})
    if mode == 'hard':
      # The theory at the measured seed count, not only at infinitely many seeds.
      ideal_key = jax.random.fold_in(key, _IDEAL_LEARNER_STREAM)
      real = task.distributions(mode)[0]
      ideal[mode] = ideal_learner_resolution(
          config, n_measured, real, mixtures[mode], paired, num_seeds=len(replicates),
          key=ideal_key)
      theory_row.update(_ideal_columns(ideal[mode]))
      if ideal[mode] is not None:  # ... and at more seeds: would they resolve the bar?
        ideal_rows = ideal_learner_by_seeds(config, n_measured, real, mixtures[mode],
                                            paired, measured=ideal[mode], key=ideal_key)
    # The ideal learner on the same samples separates data noise from the model's own.
    metrics = ('loss', 'error', 'memorizer_error') if mode == 'hard' else ('loss', 'error')
    for metric in metrics:
      fit = fit_curve(config, n_measured, [row[f'{metric}_mean'] for row in rows])
      complete = [r for r in replicates
                  if all(_unit_name(mode, int(n), r) in units for n in n_measured)]
      per_seed = np.array([[units[_unit_name(mode, int(n), r)][metric] for n in n_measured]
                           for r in complete])
      if per_seed.size and fit['ok']:
        fit['seed_bootstrap'] = boot = seed_bootstrap(config, n_measured.astype(float),
                                                      per_seed, paired)
        if boot is not None:  # the resamples by replicate id, so runs can be paired
          resamples.append({
              'curve': f'measured_{metric}', 'mode': mode,
              'replicates': np.asarray(complete)[np.asarray(boot['resample_seeds'])].tolist(),
              'breaks': boot['resample_breaks']})
      fits[(f'measured_{metric}', mode)] = fit
      breakpoint_rows.append(breakpoint_row(f'measured_{metric}', mode, fit, pred, theory_fit,
                                            max_breaks))
  for row in breakpoint_rows:
    logging.info('%s/%s: %d breaks %s; fit/paper n1 %.2f n2 %.2f', row['curve'], row['mode'],
                 row['num_breaks'], [row[f'fit_break{j + 1}'] for j in range(max_breaks)],
                 row['ratio_paper_n1'], row['ratio_paper_n2'])

  files = [
      results.write_csv(workdir / 'units.csv', [units[name] for name in sorted(units)]),
      results.write_csv(workdir / 'curve.csv', curve_rows),
      results.write_csv(workdir / 'breakpoints.csv', breakpoint_rows),
  ]
  if ideal_rows:
    files.append(results.write_csv(workdir / 'ideal_learner.csv', ideal_rows))
  else:
    # A refit here without the ideal learner (config.fit is outside the units' fingerprint)
    # must not leave an earlier run's rows beside these results.
    (workdir / 'ideal_learner.csv').unlink(missing_ok=True)
  dpi = config.output.figure_dpi
  files += plotting.save_figure(
      _three_phase_figure(config, curve_rows, fits, theory, mode_predictions['hard'],
                          task.num_classes), workdir / 'three_phase', dpi=dpi)
  files += plotting.save_figure(
      _modes_figure(config, curve_rows, fits, theory, mode_predictions),
      workdir / 'truncation_modes', dpi=dpi)

  headline = {row['curve']: row for row in breakpoint_rows if row['mode'] == 'hard'}
  summary = {
      'predicted_paper': mode_predictions['hard']['paper'],
      'predicted_ours': mode_predictions['hard']['ours'],
      'fitted_loss': list(headline.get('measured_loss', {}).get(f'fit_{j}', math.nan)
                          for j in ('n1', 'n2')),
      'fitted_error': list(headline.get('measured_error', {}).get(f'fit_{j}', math.nan)
                           for j in ('n1', 'n2')),
      'fitted_theory': [headline['theory']['fit_n1'], headline['theory']['fit_n2']],
      'three_phases_loss': headline.get('measured_loss', {}).get('three_phases'),
      'three_phases_error': headline.get('measured_error', {}).get('three_phases'),
      'ideal_learner': ideal.get('hard'),
      'ideal_learner_by_seeds': ideal_rows,
  }
  output = {
      'summary': summary,
      'breakpoints': breakpoint_rows,
      'curve': curve_rows,
      'truncation': {mode: mode_predictions[mode] for mode in config.truncation.modes},
      'units_computed': computed,
      'num_units': len(units),
      'train_seconds': train_seconds,  # this call (0-ish on a rerun that reuses every unit)
      'unit_seconds_total': float(sum(u['seconds'] for u in units.values())),
      'runtime_s': time.perf_counter() - start,
  }
  files.append(workdir / 'results.json')
  output['files'] = [str(path) for path in files]
  results.write_json(workdir / 'results.json', output)
  output['seed_bootstrap'] = resamples  # per resample: for the caller, not results.json
  logging.info('three_phase_scaling: %d units trained, %d reused, %.1f s', len(computed),
               len(units) - len(computed), output['runtime_s'])
  return output


if __name__ == '__main__':
  import launch  # experiments/launch.py, beside this script
  launch.main(run, name='three_phase_scaling')
