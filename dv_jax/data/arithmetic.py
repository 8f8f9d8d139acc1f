"""Procedural reasoning: arithmetic questions with long-tailed operands.

Questions `a + b` (`operation='add'`) or `a * b mod M` (`'mul_mod'`) over operand values
`0..V-1`. Each operand is drawn independently with Zipf frequencies over value ranks,
`p_r ∝ r^-beta`; by default value `v` has rank `v + 1`, so small numbers are common and large
ones rare (as in text), or a seeded random ranking (`shuffle_values=True`). The synthetic
generator only produces the frequent head: its operands come from the truncation `p'` of `p`
(`hard` at rank `k`, `top_p`, `temperature`, `finite_sample`; METHOD.md section 1), so with
the default ranking and `hard` truncation, synthetic questions never use an operand `>= k`.
Unlike the facts task the answers follow a rule, so a model can in principle carry what it
learns on the head to the tail; how far it does is what the task measures.

Two views of an example:
  * classification: `x` = the two operands as concatenated one-hot vectors (float32
    [n, 2V]) or ids (int32 [n, 2]); `y` = the answer as a class (`2V - 1` classes for
    `add`, `M` for `mul_mod`);
  * text for the LM: prompt `'1 2 + 3 4 ='`, response `'4 6'` (digits space-separated so a
    word-level tokenizer of 18 tokens, 13 symbols and 5 specials, covers every question;
    `mul_mod` writes `'*'` and leaves `mod M` implicit, it is one constant of the task).

Shape legend: `V` operand values, `n` examples.
"""

from typing import NamedTuple, Optional

import jax
import numpy as np

from dv_jax import checks
from dv_jax.data import longtail
from dv_jax.data import tokenize
from dv_jax.data.contributors import Split
from dv_jax.data.longtail import WeightedSplit

OPERATIONS = ('add', 'mul_mod')
REPRESENTATIONS = ('one_hot', 'id')
_MAX_EXACT_PAIRS = 4_000_000


class ArithmeticTask(NamedTuple):
  """One instance of the arithmetic task.

  Attributes:
    value_of_rank: int64 [V]; `value_of_rank[r]` is the operand value of rank `r + 1`.
    p: float64 [V] real operand frequencies by rank.
    p_synthetic: float64 [V] synthetic operand frequencies by rank (the truncation of `p`).
    operation: 'add' or 'mul_mod'.
    modulus: `M` for 'mul_mod', else None.
  """
  value_of_rank: np.ndarray
  p: np.ndarray
  p_synthetic: np.ndarray
  operation: str
  modulus: Optional[int]

  @property
  def num_values(self) -> int:
    return int(self.p.shape[0])

  @property
  def num_classes(self) -> int:
    return 2 * self.num_values - 1 if self.operation == 'add' else int(self.modulus)

  def value_probs(self, *, synthetic: bool = False) -> np.ndarray:
    """float64 [V]: the frequency of each operand VALUE (indexed by value)."""
    by_rank = self.p_synthetic if synthetic else self.p
    out = np.empty_like(by_rank)
    out[self.value_of_rank] = by_rank
    return out


def make_arithmetic_task(*, num_values: int, beta: float, key: jax.Array,
                         operation: str = 'add', modulus: Optional[int] = None,
                         shuffle_values: bool = False, mode: str = 'hard',
                         k: Optional[int] = None, top_p: Optional[float] = None,
                         temperature: Optional[float] = None,
                         generator_samples: Optional[int] = None) -> ArithmeticTask:
  """Builds the operand distributions.

  Args:
    num_values: `V >= 2`.
    beta: Zipf exponent of the real operand frequencies.
    key: JAX PRNG key (value ranking and `finite_sample` truncation are folded from it).
    operation: 'add' or 'mul_mod'.
    modulus: `M >= 2`, required for 'mul_mod'.
    shuffle_values: rank the values in a seeded random order instead of `0, 1, 2, ...`.
    mode, k, top_p, temperature, generator_samples: the synthetic truncation.

  Returns:
    `ArithmeticTask`.
  """
  if operation not in OPERATIONS:
    raise ValueError(f'operation must be one of {OPERATIONS}, got {operation!r}')
  if operation == 'mul_mod':
    modulus = checks.check_int(modulus, 'modulus', minimum=2)
  elif modulus is not None:
    raise ValueError('modulus is only used by operation="mul_mod"')
  num_values = checks.check_int(num_values, 'num_values', minimum=2)
  order_key, trunc_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  p = longtail.zipf_probs(num_values, beta=beta)
  p_syn = longtail.truncated_probs(p, mode=mode, k=k, top_p=top_p, temperature=temperature,
                                   num_samples=generator_samples, key=trunc_key)
  order = (longtail.rng_from_key(order_key).permutation(num_values) if shuffle_values
           else np.arange(num_values))
  return ArithmeticTask(order.astype(np.int64), p, p_syn, operation, modulus)


def _check_operands(task: ArithmeticTask, a, b) -> tuple:
  """`a`, `b` as int64 [n]: 1-D, equal lengths, whole numbers in `[0, V)`.

  Without the check NumPy broadcasting answered silently: `b` of length 1 was paired with
  every `a`, `[n, 1]` operands set `n` ones per one-hot row, and 1.7 became operand 1.
  """
  v = task.num_values
  out = []
  for name, arr in (('a', a), ('b', b)):
    arr = np.asarray(arr)
    if arr.ndim != 1:
      raise ValueError(f'operand {name} must be 1-D [n], got shape {arr.shape}')
    if arr.size and not (np.issubdtype(arr.dtype, np.integer)
                         or (np.issubdtype(arr.dtype, np.floating)
                             and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))):
      raise ValueError(f'operand {name} must hold whole numbers, got dtype {arr.dtype}')
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= v):
      raise ValueError(f'operand {name} must lie in [0, {v})')
    out.append(arr)
  if out[0].shape != out[1].shape:
    raise ValueError(f'operands a and b must have the same length, got {out[0].size} and '
                     f'{out[1].size}')
  return tuple(out)


def answers(task: ArithmeticTask, a, b) -> np.ndarray:
  """The answers (int64 [n]) of operand values a [n], b [n] (whole numbers in `[0, V)`).

  Raises:
    ValueError: operands not 1-D, of different lengths, not whole numbers, or out of range.
  """
  a, b = _check_operands(task, a, b)
  return a + b if task.operation == 'add' else (a * b) % task.modulus


def encode_operands(task: ArithmeticTask, a, b, *,
                    representation: str = 'one_hot') -> np.ndarray:
  """Classifier inputs: one-hot(a) ++ one-hot(b) float32 [n, 2V], or ids int32 [n, 2]."""
  if representation not in REPRESENTATIONS:
    raise ValueError(f'representation must be one of {REPRESENTATIONS}, got '
                     f'{representation!r}')
  a, b = _check_operands(task, a, b)
  v = task.num_values
  if representation == 'id':
    return np.stack([a, b], axis=1).astype(np.int32)
  x = np.zeros((a.size, 2 * v), np.float32)
  rows = np.arange(a.size)
  x[rows, a] = 1.0
  x[rows, v + b] = 1.0
  return x


class ArithmeticExamples(NamedTuple):
  """Sampled questions.

  Attributes:
    split: `Split(x, y = answer class int32 [n], is_synthetic)`.
    a, b: int64 [n] operand values.
  """
  split: Split
  a: np.ndarray
  b: np.ndarray


def sample_arithmetic(task: ArithmeticTask, *, num_samples: int, key: jax.Array,
                      synthetic: bool = False,
                      representation: str = 'one_hot') -> ArithmeticExamples:
  """`num_samples` questions, operands drawn independently from `p` (real) or `p'`."""
  probs = task.p_synthetic if synthetic else task.p
  key_a, key_b = jax.random.split(key)
  a = task.value_of_rank[longtail.sample_items(probs, num_samples=num_samples, key=key_a)]
  b = task.value_of_rank[longtail.sample_items(probs, num_samples=num_samples, key=key_b)]
  split = Split(encode_operands(task, a, b, representation=representation),
                answers(task, a, b).astype(np.int32), np.full(a.size, bool(synthetic)))
  return ArithmeticExamples(split, a, b)


def make_mixture(task: ArithmeticTask, *, num_examples: int, pi: float, key: jax.Array,
                 representation: str = 'one_hot') -> ArithmeticExamples:
  """`round(pi n)` real questions, then `n - round(pi n)` synthetic (head-only) ones."""
  num_real, num_syn = longtail.split_counts(num_examples, pi=pi)
  real_key, syn_key = jax.random.split(key)
  real = sample_arithmetic(task, num_samples=num_real, key=real_key, synthetic=False,
                           representation=representation)
  syn = sample_arithmetic(task, num_samples=num_syn, key=syn_key, synthetic=True,
                          representation=representation)
  cat = lambda f: np.concatenate([f(real), f(syn)])  # pylint: disable=unnecessary-lambda-assignment
  split = Split(cat(lambda e: e.split.x), cat(lambda e: e.split.y),
                cat(lambda e: e.split.is_synthetic))
  return ArithmeticExamples(split, cat(lambda e: e.a), cat(lambda e: e.b))


class ArithmeticTest(NamedTuple):
  """The exact real test distribution.

  Attributes:
    weighted: `WeightedSplit` over all `V^2` operand pairs (a-major order), weight
      `p(a) p(b)`.
    a, b: int64 [V^2] operand values.
  """
  weighted: WeightedSplit
  a: np.ndarray
  b: np.ndarray


def arithmetic_test_split(task: ArithmeticTask, *,
                          representation: str = 'one_hot') -> ArithmeticTest:
  """Every operand pair once with weight `p(a) p(b)`: the exact real test distribution.

  Returns:
    `ArithmeticTest`.

  Raises:
    ValueError: if `V^2` exceeds 4e6 pairs; evaluate a large sample from
      `sample_arithmetic` instead.
  """
  v = task.num_values
  if v * v > _MAX_EXACT_PAIRS:
    raise ValueError(f'num_values={v}: {v * v} operand pairs are too many to enumerate; '
                     'sample the test set with sample_arithmetic')
  a = np.repeat(np.arange(v), v)
  b = np.tile(np.arange(v), v)
  pv = task.value_probs()
  weight = pv[a] * pv[b]
  split = Split(encode_operands(task, a, b, representation=representation),
                answers(task, a, b).astype(np.int32), np.zeros(a.size, dtype=bool))
  return ArithmeticTest(WeightedSplit(split, weight / weight.sum()), a, b)


def _digits(value: int) -> str:
  return ' '.join(str(int(value)))


def arithmetic_text(task: ArithmeticTask, a, b) -> tuple:
  """Prompts `'1 2 + 3 4 ='` and responses `'4 6'` for operand values a [n], b [n]."""
  symbol = '+' if task.operation == 'add' else '*'
  a, b = _check_operands(task, a, b)  # zip below would drop the longer one's tail
  ans = answers(task, a, b)
  prompts = [f'{_digits(x)} {symbol} {_digits(y)} =' for x, y in zip(a, b)]
  return prompts, [_digits(z) for z in ans]


def arithmetic_tokenizer() -> tokenize.VocabTokenizer:
  """Word-level vocabulary: the specials, the ten digits, `+`, `*`, `=`."""
  return tokenize.VocabTokenizer(list(tokenize.SPECIAL_TOKENS)
                                 + [str(d) for d in range(10)] + ['+', '*', '='],
                                 level='word')


def render(task: ArithmeticTask, a, b, *, max_len: Optional[int] = None,
           tokenizer: Optional[tokenize.VocabTokenizer] = None) -> tokenize.TokenizedBatch:
  """Token arrays `<bos> question <sep> answer <eos>` with the response mask.

  `max_len` defaults to the longest question of the task, so nothing is cut.

  Raises:
    ValueError: a `max_len` that would cut a question or its answer (a cut question is a
      false equation).
  """
  if max_len is None:
    digits_v = len(str(task.num_values - 1))
    digits_ans = len(str(task.num_classes - 1))
    max_len = 2 * digits_v + 2 + digits_ans + 3
  prompts, responses = arithmetic_text(task, a, b)
  tokenizer = arithmetic_tokenizer() if tokenizer is None else tokenizer
  return tokenize.encode_pairs(tokenizer, prompts, responses, max_len=max_len, truncate=False)


def arithmetic(*, num_values: int = 100, beta: float = 1.5, operation: str = 'add',
               modulus: Optional[int] = None, mode: str = 'hard', k: Optional[int] = 10,
               top_p: Optional[float] = None, temperature: Optional[float] = None,
               generator_samples: Optional[int] = None, shuffle_values: bool = False,
               num_examples: int = 2000, pi: float = 0.25, seed: int = 0,
               representation: str = 'one_hot') -> tuple:
  """Registry entry: a task, its training mixture and the weighted test split.

  Returns:
    `(ArithmeticTask, train ArithmeticExamples, test ArithmeticTest)`.
  """
  key = jax.random.PRNGKey(checks.check_seed(seed))
  task = make_arithmetic_task(num_values=num_values, beta=beta, key=jax.random.fold_in(key, 0),
                              operation=operation, modulus=modulus,
                              shuffle_values=shuffle_values, mode=mode, k=k, top_p=top_p,
                              temperature=temperature, generator_samples=generator_samples)
  train = make_mixture(task, num_examples=num_examples, pi=pi, key=jax.random.fold_in(key, 1),
                       representation=representation)
  return task, train, arithmetic_test_split(task, representation=representation)
