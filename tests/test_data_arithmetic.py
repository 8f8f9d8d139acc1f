"""Tests of dv_jax.data.arithmetic: long-tailed operands, head-only synthetic questions."""

import jax
import numpy as np
import pytest
from scipy import stats

from dv_jax.data import arithmetic


def _task(**overrides):
  kwargs = dict(num_values=12, beta=1.5, key=jax.random.PRNGKey(0), k=4)
  kwargs.update(overrides)
  return arithmetic.make_arithmetic_task(**kwargs)


def test_operand_frequencies_and_answers():
  task = _task()
  ex = arithmetic.sample_arithmetic(task, num_samples=30_000, key=jax.random.PRNGKey(1))
  r = np.arange(1, 13, dtype=np.float64)
  p = r ** -1.5 / np.sum(r ** -1.5)
  for operand in (ex.a, ex.b):
    assert stats.chisquare(np.bincount(operand, minlength=12), 30_000 * p).pvalue > 1e-3
  # The two operands are drawn independently.
  table = np.histogram2d(ex.a, ex.b, bins=[np.arange(4) - 0.5] * 2)[0]
  assert stats.chi2_contingency(table).pvalue > 1e-3
  np.testing.assert_array_equal(ex.split.y, ex.a + ex.b)
  assert ex.split.x.shape == (30_000, 24)
  np.testing.assert_array_equal(np.argmax(ex.split.x[:, :12], axis=1), ex.a)
  np.testing.assert_array_equal(np.argmax(ex.split.x[:, 12:], axis=1), ex.b)
  assert task.num_classes == 23
  mul = _task(operation='mul_mod', modulus=7)
  ex = arithmetic.sample_arithmetic(mul, num_samples=100, key=jax.random.PRNGKey(1),
                                    representation='id')
  np.testing.assert_array_equal(ex.split.y, (ex.a * ex.b) % 7)
  np.testing.assert_array_equal(ex.split.x, np.stack([ex.a, ex.b], 1))
  assert mul.num_classes == 7


def test_synthetic_generator_only_produces_the_head():
  task = _task()
  mix = arithmetic.make_mixture(task, num_examples=2000, pi=0.1, key=jax.random.PRNGKey(2))
  syn = mix.split.is_synthetic
  assert syn.sum() == 1800 and not syn[:200].any()
  assert mix.a[syn].max() <= 3 and mix.b[syn].max() <= 3
  assert mix.a[~syn].max() > 3
  shuffled = _task(shuffle_values=True)
  assert sorted(shuffled.value_of_rank) == list(range(12))
  assert not np.array_equal(shuffled.value_of_rank, np.arange(12))
  ex = arithmetic.sample_arithmetic(shuffled, num_samples=500, key=jax.random.PRNGKey(3),
                                    synthetic=True)
  assert set(np.unique(ex.a)) <= set(shuffled.value_of_rank[:4])
  again = arithmetic.make_mixture(task, num_examples=2000, pi=0.1, key=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(again.a, mix.a)


def test_exact_weighted_test_split():
  task = _task(shuffle_values=True)
  test = arithmetic.arithmetic_test_split(task, representation='id')
  assert test.a.size == 144
  pv = task.value_probs()
  np.testing.assert_allclose(test.weighted.weight, pv[test.a] * pv[test.b], rtol=1e-12)
  assert test.weighted.weight.sum() == pytest.approx(1.0)
  np.testing.assert_array_equal(test.weighted.split.y, test.a + test.b)
  # value_probs puts rank r's frequency on its value.
  np.testing.assert_allclose(pv[task.value_of_rank], task.p)


def test_text_rendering_and_tokens():
  task = _task(num_values=120)
  prompts, responses = arithmetic.arithmetic_text(task, [12, 7], [105, 0])
  assert prompts == ['1 2 + 1 0 5 =', '7 + 0 =']
  assert responses == ['1 1 7', '7']
  batch = arithmetic.render(task, [12, 7], [105, 0])
  tok = arithmetic.arithmetic_tokenizer()
  assert tok.decode(batch.tokens[0]) == '1 2 + 1 0 5 = 1 1 7'
  assert tok.unk_id not in batch.tokens
  # Longest question: 3 + 1 + 3 + 1 digits/symbols, answer 3 digits, plus bos, sep, eos.
  assert batch.tokens.shape[1] == 14
  np.testing.assert_array_equal(batch.response_mask[0, 9:13], [1, 1, 1, 1])
  assert batch.response_mask[0].sum() == 4 and batch.response_mask[1].sum() == 2
  # mul_mod writes '*': 3 * 4 = 12 = 5 mod 7.
  mul = _task(operation='mul_mod', modulus=7)
  assert arithmetic.arithmetic_text(mul, [3], [4]) == (['3 * 4 ='], ['5'])
  # Before: cut to '2 + 1 0 5 = 1 1 7', a false equation, without a word.
  with pytest.raises(ValueError, match=r"max_len=12 would cut pair 0 \('1 2 \+ 1 0 5 =', "):
    arithmetic.render(task, [12, 7], [105, 0], max_len=12)


def test_error_paths():
  with pytest.raises(ValueError, match='operation'):
    _task(operation='sub')
  with pytest.raises(ValueError, match='modulus'):
    _task(operation='mul_mod')
  with pytest.raises(ValueError, match='modulus'):
    _task(modulus=5)
  with pytest.raises(ValueError, match='num_values'):
    _task(num_values=1)
  task = _task()
  with pytest.raises(ValueError, match=r'operand b must lie in \[0, 12\)'):
    arithmetic.encode_operands(task, [0], [12])
  with pytest.raises(ValueError, match='too many'):
    arithmetic.arithmetic_test_split(_task(num_values=3000, k=5))


@pytest.mark.parametrize('a,b,match', [
    ([1, 2, 3], [4], 'same length'),            # broadcast b to every row before
    ([[1], [2]], [[0], [3]], 'operand a must be 1-D'),  # n ones per one-hot row before
    ([1.7, 2.0], [4, 9], 'operand a must hold whole numbers'),  # 1.7 read as 1 before
    ([1, 2], [np.nan, 0], 'operand b must hold whole numbers'),
    ([True], [1], 'operand a must hold whole numbers'),
    ([-1], [1], r'operand a must lie in \[0, 12\)'),
])
def test_operands_of_the_wrong_shape_or_kind_are_rejected(a, b, match):
  # Before: NumPy broadcasting and int64 casts answered these silently, e.g.
  # encode_operands(task, [1, 2, 3], [4]) gave three rows, each with b = 4, and
  # answers(task, [1.7, 2], [4, 9]) gave [5, 11].
  task = _task()
  for fn in (arithmetic.answers, arithmetic.encode_operands, arithmetic.arithmetic_text):
    with pytest.raises(ValueError, match=match):
      fn(task, a, b)
  with pytest.raises(ValueError, match=match):
    arithmetic.encode_operands(task, a, b, representation='id')


def test_operands_that_are_whole_floats_or_empty_are_accepted():
  task = _task()
  np.testing.assert_array_equal(arithmetic.answers(task, np.array([3.0, 11.0]), [4, 11]),
                                [7, 22])
  assert arithmetic.encode_operands(task, [], []).shape == (0, 24)
  assert arithmetic.arithmetic_text(task, [], []) == ([], [])


@pytest.mark.parametrize('seed', [-1, 2**32, 1.5, True])
def test_registry_entry_refuses_a_seed_outside_a_prng_key(seed):
  # PRNGKey keeps a seed's low 32 bits: 2**32 would silently be seed 0's draws again.
  with pytest.raises(ValueError, match='seed must be an integer'):
    arithmetic.arithmetic(seed=seed)
