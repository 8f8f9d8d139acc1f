"""Procedural long-tail facts: the knowledge-acquisition model of Lemma 1 as a learning task.

`N` items, each with a fixed answer among `A` choices (seeded). Real examples draw item ids
from Zipf(beta) over the `N` items (`p_r ∝ r^-beta`, item index `r - 1`); synthetic examples
draw them from a truncation `p'` of `p` (`hard` at rank `k`, `top_p`, `temperature`,
`finite_sample`; METHOD.md section 1). A model has to learn each item's answer from examples
of it; nothing about an item can be inferred from other items, so an item never seen is
answered at chance. The test error is the mass of items answered wrongly under the REAL
distribution, `sum_i p_i [prediction_i != answer_i]` (`facts_error`); for a model that
answers exactly the items it saw, its expectation is Lemma 1's `E(n) = sum_i p_i (1-q_i)^n`.

Inputs, three representations of the item (the answer is the class label `y`):
  * `one_hot` (default): float32 [n, N]. With a Dense first layer each item owns one weight
    row, which only its own examples move, so an MLP learns exactly the items it saw (the
    Lemma's "knows an item iff it saw it"); the MMD sees disjoint items as orthogonal.
    Memory `n * N`, so it is refused for N > 65,536.
  * `id`: int32 [n] item ids, for an embedding model.
  * `code`: float32 [n, code_dim] a fixed random Gaussian code per item (from the task's
    key); near-orthogonal codes let an MLP memorise large N with a small input, at the cost
    of weak interference between items.
and a text rendering `fact <item> ?` -> `a<answer>` for the tiny transformer LM (`render`).

Shape legend: `N` items, `A` answers, `n` examples.
"""

import functools
from typing import NamedTuple, Optional

import jax
import numpy as np

from dv_jax import checks
from dv_jax.data import longtail
from dv_jax.data import tokenize
from dv_jax.data.contributors import Split
from dv_jax.data.longtail import WeightedSplit

REPRESENTATIONS = ('one_hot', 'id', 'code')
MAX_ONE_HOT_ITEMS = 65536


class FactsTask(NamedTuple):
  """One instance of the facts task.

  Attributes:
    answers: int32 [N] the answer of item `i` (item `i` has rank `i + 1`).
    p: float64 [N] real frequencies, Zipf(beta).
    p_synthetic: float64 [N] synthetic frequencies, the truncation of `p`.
    num_answers: `A`.
    code_key: PRNG key of the `code` representation.
  """
  answers: np.ndarray
  p: np.ndarray
  p_synthetic: np.ndarray
  num_answers: int
  code_key: jax.Array

  @property
  def num_items(self) -> int:
    return int(self.answers.shape[0])


def make_facts_task(*, num_items: int, num_answers: int, beta: float, key: jax.Array,
                    mode: str = 'hard', k: Optional[int] = None,
                    top_p: Optional[float] = None, temperature: Optional[float] = None,
                    generator_samples: Optional[int] = None) -> FactsTask:
  """Draws the answers and builds the real and synthetic item distributions.

  Args:
    num_items: `N`.
    num_answers: `A >= 2`.
    beta: Zipf exponent of the real frequencies.
    key: JAX PRNG key (answers, codes and a `finite_sample` truncation are folded from it).
    mode, k, top_p, temperature, generator_samples: the synthetic truncation
      (`longtail.truncated_probs`; `generator_samples` is `M` of `finite_sample`).

  Returns:
    `FactsTask`.
  """
  num_answers = checks.check_int(num_answers, 'num_answers', minimum=2)
  answer_key, trunc_key, code_key = (jax.random.fold_in(key, i) for i in range(3))
  p = longtail.zipf_probs(num_items, beta=beta)
  p_syn = longtail.truncated_probs(p, mode=mode, k=k, top_p=top_p, temperature=temperature,
                                   num_samples=generator_samples, key=trunc_key)
  answers = longtail.rng_from_key(answer_key).integers(0, num_answers, size=p.size)
  return FactsTask(answers.astype(np.int32), p, p_syn, num_answers, code_key)


_CODE_BLOCK = 1024


def _check_item_ids(ids, name: str, num_items: int) -> np.ndarray:
  """`ids` as int64 [n], or a ValueError naming `name`.

  Indexing by unchecked ids misreads silently: -1 is the last item, and a one-hot `Split.x`
  cast to int marks items 0 and 1.
  """
  ids = np.asarray(ids)
  if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
    raise ValueError(f'{name} must be 1-D integer item ids [n], got {ids.dtype} {ids.shape}')
  ids = ids.astype(np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= num_items):
    raise ValueError(f'{name} must lie in [0, {num_items}), got range '
                     f'[{ids.min()}, {ids.max()}]')
  return ids


@functools.partial(jax.jit, static_argnums=2)
def _item_codes_block(code_key, ids_B, code_dim):
  # One code per item id, independent of which other items are drawn.
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(code_key, i),
                                              (code_dim,), np.float32))(ids_B)


def item_codes(task: FactsTask, ids, *, code_dim: int = 64) -> np.ndarray:
  """The fixed Gaussian code of each item, scaled to unit expected squared norm.

  Computed in fixed blocks of 1024 ids (the last one padded) so one compile serves every n.

  Args:
    task: the `FactsTask`.
    ids: int [n] item ids in `[0, N)`.
    code_dim: length of each code.

  Returns:
    float32 [n, code_dim].

  Raises:
    ValueError: `ids` not 1-D integer ids in `[0, N)`, or a bad `code_dim`.
  """
  ids = _check_item_ids(ids, 'ids', task.num_items).astype(np.int32)
  code_dim = checks.check_int(code_dim, 'code_dim')
  num_blocks = -(-ids.size // _CODE_BLOCK)
  padded = np.zeros(num_blocks * _CODE_BLOCK, np.int32)
  padded[:ids.size] = ids
  blocks = [np.asarray(_item_codes_block(task.code_key, padded[j:j + _CODE_BLOCK], code_dim))
            for j in range(0, padded.size, _CODE_BLOCK)]
  codes = np.concatenate(blocks)[:ids.size] if blocks else np.zeros((0, code_dim))
  return codes.astype(np.float32) / np.float32(np.sqrt(code_dim))


def encode_items(task: FactsTask, ids, *, representation: str = 'one_hot',
                 code_dim: int = 64) -> np.ndarray:
  """Inputs for item ids [n] in the chosen representation (see the module docstring).

  Raises:
    ValueError: an unknown `representation`, or `ids` not 1-D integer ids in `[0, N)` (a
      float id was cut to an integer, and a one-hot matrix passed through as "ids").
  """
  if representation not in REPRESENTATIONS:
    raise ValueError(f'representation must be one of {REPRESENTATIONS}, got '
                     f'{representation!r}')
  ids = _check_item_ids(ids, 'item ids', task.num_items)
  if representation == 'id':
    return ids.astype(np.int32)
  if representation == 'code':
    return item_codes(task, ids, code_dim=code_dim)
  if task.num_items > MAX_ONE_HOT_ITEMS:
    raise ValueError(f'representation="one_hot" with {task.num_items} items > '
                     f'{MAX_ONE_HOT_ITEMS}; use "id" or "code"')
  x = np.zeros((ids.size, task.num_items), np.float32)
  x[np.arange(ids.size), ids] = 1.0
  return x


def sample_facts(task: FactsTask, *, num_samples: int, key: jax.Array,
                 synthetic: bool = False, representation: str = 'one_hot',
                 code_dim: int = 64) -> Split:
  """`num_samples` examples with item ids drawn from `p` (real) or `p'` (synthetic).

  Returns:
    `Split(x, y int32 [n] answers, is_synthetic bool [n] = synthetic)`.
  """
  probs = task.p_synthetic if synthetic else task.p
  ids = longtail.sample_items(probs, num_samples=num_samples, key=key)
  return Split(encode_items(task, ids, representation=representation, code_dim=code_dim),
               task.answers[ids], np.full(ids.size, bool(synthetic)))


def make_mixture(task: FactsTask, *, num_examples: int, pi: float, key: jax.Array,
                 representation: str = 'one_hot', code_dim: int = 64) -> Split:
  """The training mixture: `round(pi n)` real examples, then `n - round(pi n)` synthetic.

  Its item frequencies average to `q = pi p + (1 - pi) p'` (METHOD.md section 1).

  Args:
    task: the `FactsTask`.
    num_examples: `n`.
    pi: fraction real, in [0, 1].
    key: JAX PRNG key.
    representation, code_dim: see `encode_items`.

  Returns:
    `Split` with real rows first; `is_synthetic` marks the synthetic rows.
  """
  num_real, num_syn = longtail.split_counts(num_examples, pi=pi)
  real_key, syn_key = jax.random.split(key)
  real = sample_facts(task, num_samples=num_real, key=real_key, synthetic=False,
                      representation=representation, code_dim=code_dim)
  syn = sample_facts(task, num_samples=num_syn, key=syn_key, synthetic=True,
                     representation=representation, code_dim=code_dim)
  return Split(np.concatenate([real.x, syn.x]), np.concatenate([real.y, syn.y]),
               np.concatenate([real.is_synthetic, syn.is_synthetic]))


def facts_test_split(task: FactsTask, *, representation: str = 'one_hot',
                     code_dim: int = 64, max_items: Optional[int] = None) -> WeightedSplit:
  """Every item once, weighted by its real frequency `p_i` (the exact test distribution).

  Args:
    task: the `FactsTask`.
    representation, code_dim: see `encode_items`.
    max_items: keep only the `max_items` most frequent items (weights renormalised), when
      evaluating all `N` is too costly; the dropped tail mass is `sum_{i > max_items} p_i`.

  Returns:
    `WeightedSplit(split, weight = p)`; `sum weight * [wrong]` is the test error.
  """
  num = task.num_items
  if max_items is not None:  # int(2.5) used to keep 2 items without a word
    num = min(checks.check_int(max_items, 'max_items'), num)
  ids = np.arange(num)
  weight = task.p[:num] / task.p[:num].sum()
  split = Split(encode_items(task, ids, representation=representation, code_dim=code_dim),
                task.answers[:num], np.zeros(num, dtype=bool))
  return WeightedSplit(split, weight)


def facts_error(task: FactsTask, predicted_answers) -> float:
  """`sum_i p_i [predicted_answers_i != answers_i]` over all N items.

  Args:
    task: the `FactsTask`.
    predicted_answers: int [N] the model's answer for every item.

  Returns:
    The test error under the real distribution.
  """
  pred = np.asarray(predicted_answers)
  if pred.shape != task.answers.shape:
    raise ValueError(f'predicted_answers must have shape {task.answers.shape}, got '
                     f'{pred.shape}')
  return float(np.sum(task.p * (pred != task.answers)))


def memorizer_error(task: FactsTask, train_item_ids) -> float:
  """Test error of the ideal learner of Lemma 1: it knows exactly the items it saw.

  Args:
    task: the `FactsTask`.
    train_item_ids: int [n] the item ids of the training examples (a `Split.x` sampled
      with `representation='id'`).

  Returns:
    `sum_{i never seen} p_i`.

  Raises:
    ValueError: `train_item_ids` not 1-D integer ids in `[0, N)`.
  """
  ids = _check_item_ids(train_item_ids, 'train_item_ids', task.num_items)
  seen = np.zeros(task.num_items, dtype=bool)
  seen[ids] = True
  return float(np.sum(task.p[~seen]))


# ----------------------------------------------------------------------------------------
# Text rendering for the tiny transformer LM.


def answer_token(answer: int) -> str:
  return f'a{int(answer)}'


def facts_text(item_ids, answers) -> tuple:
  """Prompts `'fact <item> ?'` and responses `'a<answer>'` for item ids [n] and answers [n]."""
  item_ids = np.asarray(item_ids).reshape(-1)
  answers = np.asarray(answers).reshape(-1)
  if item_ids.shape != answers.shape:
    raise ValueError(f'item_ids {item_ids.shape} and answers {answers.shape} differ in length')
  return ([f'fact {int(i)} ?' for i in item_ids], [answer_token(a) for a in answers])


def facts_tokenizer(task: FactsTask) -> tokenize.VocabTokenizer:
  """A word-level vocabulary covering every item and answer.

  Built from the task, not from a training split: an item absent from training must still
  have its own token (else every unseen item would collapse into `<unk>`).
  """
  tokens = (list(tokenize.SPECIAL_TOKENS) + ['fact', '?']
            + [answer_token(a) for a in range(task.num_answers)]
            + [str(i) for i in range(task.num_items)])
  return tokenize.VocabTokenizer(tokens, level='word')


def render(task: FactsTask, item_ids, *, tokenizer: Optional[tokenize.VocabTokenizer] = None,
           max_len: int = 8) -> tokenize.TokenizedBatch:
  """Token arrays `<bos> fact <item> ? <sep> a<answer> <eos>` with the response mask.

  Args:
    task: the `FactsTask`.
    item_ids: int [n] (e.g. a `Split.x` sampled with `representation='id'`).
    tokenizer: default `facts_tokenizer(task)`.
    max_len: `t` (7 tokens are used; the rest is padding).

  Returns:
    `tokenize.TokenizedBatch`.

  Raises:
    ValueError: `item_ids` not 1-D integer ids in `[0, N)` (a one-hot `Split.x` would
      otherwise be flattened into `n * N` prompts of items 0 and 1), or a `max_len` below
      the 7 tokens of a fact.
  """
  item_ids = _check_item_ids(item_ids, 'item_ids', task.num_items)
  prompts, responses = facts_text(item_ids, task.answers[item_ids])
  tokenizer = facts_tokenizer(task) if tokenizer is None else tokenizer
  # Cut, a prompt would lose its item first: every item would read the same.
  return tokenize.encode_pairs(tokenizer, prompts, responses, max_len=max_len, truncate=False)


def facts(*, num_items: int = 1000, num_answers: int = 10, beta: float = 2.0,
          mode: str = 'hard', k: Optional[int] = 30, top_p: Optional[float] = None,
          temperature: Optional[float] = None, generator_samples: Optional[int] = None,
          num_examples: int = 2000, pi: float = 0.25, seed: int = 0,
          representation: str = 'one_hot') -> tuple:
  """Registry entry: a task, its training mixture and the weighted test split.

  Returns:
    `(FactsTask, train Split, test WeightedSplit)`.
  """
  key = jax.random.PRNGKey(checks.check_seed(seed))
  task = make_facts_task(num_items=num_items, num_answers=num_answers, beta=beta,
                         key=jax.random.fold_in(key, 0), mode=mode, k=k, top_p=top_p,
                         temperature=temperature, generator_samples=generator_samples)
  train = make_mixture(task, num_examples=num_examples, pi=pi, key=jax.random.fold_in(key, 1),
                       representation=representation)
  return task, train, facts_test_split(task, representation=representation)


__all__ = ['FactsTask', 'make_facts_task', 'encode_items', 'item_codes', 'sample_facts',
           'make_mixture', 'facts_test_split', 'facts_error', 'memorizer_error',
           'facts_text', 'facts_tokenizer', 'render', 'facts', 'REPRESENTATIONS']
