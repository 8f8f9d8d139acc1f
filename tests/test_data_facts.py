"""Tests of dv_jax.data.facts: the procedural long-tail facts task."""

import jax
import numpy as np
import pytest
from scipy import stats

from dv_jax import scaling
from dv_jax.data import facts
from dv_jax.data import longtail


def _task(**overrides):
  kwargs = dict(num_items=50, num_answers=4, beta=2.0, key=jax.random.PRNGKey(0), k=8)
  kwargs.update(overrides)
  return facts.make_facts_task(**kwargs)


def test_task_distributions_and_determinism():
  task = _task()
  i = np.arange(1, 51, dtype=np.float64)
  np.testing.assert_allclose(task.p, i ** -2 / np.sum(i ** -2), rtol=1e-12)
  head = task.p[:8] / task.p[:8].sum()
  np.testing.assert_allclose(task.p_synthetic, np.r_[head, np.zeros(42)], rtol=1e-12)
  assert task.answers.dtype == np.int32 and set(np.unique(task.answers)) <= {0, 1, 2, 3}
  np.testing.assert_array_equal(_task().answers, task.answers)
  assert not np.array_equal(_task(key=jax.random.PRNGKey(1)).answers, task.answers)
  temp = _task(mode='temperature', temperature=0.5, k=None)
  np.testing.assert_allclose(temp.p_synthetic, task.p ** 2 / np.sum(task.p ** 2), rtol=1e-10)


def test_sampled_frequencies_follow_p_and_p_synthetic():
  task = _task()
  real = facts.sample_facts(task, num_samples=40_000, key=jax.random.PRNGKey(1),
                            representation='id')
  counts = np.bincount(real.x, minlength=50)
  assert stats.chisquare(counts, 40_000 * task.p).pvalue > 1e-3
  np.testing.assert_array_equal(real.y, task.answers[real.x])
  assert not real.is_synthetic.any()
  syn = facts.sample_facts(task, num_samples=20_000, key=jax.random.PRNGKey(2),
                           synthetic=True, representation='id')
  assert syn.is_synthetic.all() and syn.x.max() < 8
  counts = np.bincount(syn.x, minlength=8)
  assert stats.chisquare(counts, 20_000 * task.p_synthetic[:8]).pvalue > 1e-3


def test_mixture_counts_flags_and_representations():
  task = _task()
  mix = facts.make_mixture(task, num_examples=30, pi=0.3, key=jax.random.PRNGKey(3))
  assert mix.x.shape == (30, 50) and mix.x.dtype == np.float32
  np.testing.assert_array_equal(mix.is_synthetic, [False] * 9 + [True] * 21)
  ids = np.argmax(mix.x, axis=1)
  np.testing.assert_array_equal(mix.x.sum(axis=1), np.ones(30))
  np.testing.assert_array_equal(mix.y, task.answers[ids])
  assert ids[9:].max() < 8
  by_id = facts.make_mixture(task, num_examples=30, pi=0.3, key=jax.random.PRNGKey(3),
                             representation='id')
  np.testing.assert_array_equal(by_id.x, ids)
  # Codes are a fixed function of the item: the same item gets the same code in any batch.
  codes_a = facts.item_codes(task, [5, 1, 5], code_dim=16)
  codes_b = facts.item_codes(task, np.arange(1200) % 7, code_dim=16)  # spans two blocks
  np.testing.assert_array_equal(codes_a[0], codes_a[2])
  np.testing.assert_array_equal(codes_a[0], codes_b[5])
  np.testing.assert_array_equal(codes_b[1], codes_b[1 + 7 * 150])
  assert codes_b.shape == (1200, 16)
  assert not np.allclose(codes_a[0], codes_a[1])


def test_item_codes_have_unit_expected_squared_norm():
  task = _task(num_items=1000)
  # code_dim=16 as in test_mixture_counts_flags_and_representations: one compile serves both.
  codes = facts.item_codes(task, np.arange(1000), code_dim=16).astype(np.float64)
  # Entries N(0, 1/16): the squared norm is chi2_16 / 16, mean 1 and sd 0.35, so the mean
  # over 1000 items is 1 +- 0.011 (without the 1/sqrt(code_dim) scale it would be 16).
  assert np.mean(np.sum(codes ** 2, axis=1)) == pytest.approx(1.0, abs=0.05)
  assert np.var(codes) == pytest.approx(1 / 16, rel=0.05)


def test_weighted_test_split_and_error():
  task = _task()
  test = facts.facts_test_split(task, representation='id')
  np.testing.assert_array_equal(test.split.x, np.arange(50))
  np.testing.assert_allclose(test.weight, task.p)
  assert facts.facts_error(task, task.answers) == 0.0
  assert facts.facts_error(task, (task.answers + 1) % 4) == pytest.approx(1.0)
  wrong = task.answers.copy()
  wrong[[0, 3]] = (wrong[[0, 3]] + 1) % 4
  assert facts.facts_error(task, wrong) == pytest.approx(task.p[0] + task.p[3])
  head = facts.facts_test_split(task, representation='one_hot', max_items=10)
  assert head.split.x.shape == (10, 50) and head.weight.sum() == pytest.approx(1.0)


def test_memorizer_error_matches_lemma_expectation():
  # A learner that knows exactly the items it saw has expected error
  # sum_i p_i (1 - p_i)^n_real (1 - p'_i)^n_syn for a mixture of fixed counts; Lemma 1's
  # E(n) = sum_i p_i (1 - q_i)^n is the same with iid draws from q.
  task = _task(num_items=200)
  n, pi = 300, 0.25
  n_real = round(pi * n)
  errors = [facts.memorizer_error(task, facts.make_mixture(
      task, num_examples=n, pi=pi, key=jax.random.PRNGKey(r), representation='id').x)
            for r in range(150)]
  exact = np.sum(task.p * (1 - task.p) ** n_real * (1 - task.p_synthetic) ** (n - n_real))
  se = np.std(errors) / np.sqrt(len(errors))
  assert abs(np.mean(errors) - exact) < 4 * se
  q = scaling.mixture(task.p, task.p_synthetic, pi)
  lemma = scaling.expected_error(n, task.p, q)
  assert float(lemma) == pytest.approx(exact, rel=0.1)


def test_text_rendering_for_the_lm():
  task = _task()
  prompts, responses = facts.facts_text([3, 12], task.answers[[3, 12]])
  assert prompts == ['fact 3 ?', 'fact 12 ?']
  assert responses == [f'a{task.answers[3]}', f'a{task.answers[12]}']
  tok = facts.facts_tokenizer(task)
  assert tok.vocab_size == 5 + 2 + 4 + 50
  batch = facts.render(task, [3, 49], tokenizer=tok)
  assert batch.tokens.shape == (2, 8)
  assert tok.unk_id not in batch.tokens
  assert tok.decode(batch.tokens[1]) == f'fact 49 ? a{task.answers[49]}'
  np.testing.assert_array_equal(batch.response_mask[1], [0, 0, 0, 0, 0, 1, 1, 0])
  assert facts.render(task, [3], tokenizer=tok, max_len=7).tokens.shape == (1, 7)
  # Before: cut to '? a<answer>', the item gone, so every fact read the same.
  with pytest.raises(ValueError, match=r'max_len=6 would cut pair 0 .* needs 7 tokens'):
    facts.render(task, [3], tokenizer=tok, max_len=6)


def test_error_paths():
  task = _task()
  with pytest.raises(ValueError, match='representation'):
    facts.encode_items(task, [0], representation='embedding')
  with pytest.raises(ValueError, match=r'item ids must lie in \[0, 50\)'):
    facts.encode_items(task, [50])
  # Before: 0.5 and 1.7 were cut to items 0 and 1, and a one-hot matrix came back as "ids".
  with pytest.raises(ValueError, match=r'item ids must be 1-D integer item ids'):
    facts.encode_items(task, [0.5, 1.7])
  with pytest.raises(ValueError, match=r'item ids must be 1-D integer item ids'):
    facts.encode_items(task, np.eye(50)[[3, 4]], representation='id')
  with pytest.raises(ValueError, match='num_answers'):
    _task(num_answers=1)
  with pytest.raises(ValueError, match='k'):
    _task(k=None)
  with pytest.raises(ValueError, match='predicted_answers'):
    facts.facts_error(task, np.zeros(3))
  big = facts.make_facts_task(num_items=70_000, num_answers=2, beta=2.0,
                              key=jax.random.PRNGKey(0), k=5)
  with pytest.raises(ValueError, match='one_hot'):
    facts.encode_items(big, [0])
  with pytest.raises(ValueError, match='pi'):
    facts.make_mixture(task, num_examples=5, pi=-0.1, key=jax.random.PRNGKey(0))


def test_one_hot_at_the_item_limit():
  # Exactly MAX_ONE_HOT_ITEMS items were refused one-hot encoding, the limit being inclusive.
  limit = facts.MAX_ONE_HOT_ITEMS
  task = _task(num_items=limit, num_answers=2, k=10)
  x = facts.encode_items(task, np.array([0, limit - 1]))
  assert x.shape == (2, limit) and x[1, -1] == 1.0


def test_item_ids_are_checked_not_misread():
  task = _task()
  # -1 silently marked the last item as seen; a one-hot Split.x cast to int marked items 0
  # and 1; render flattened it into n * N prompts.
  with pytest.raises(ValueError, match=r'train_item_ids must lie in \[0, 50\)'):
    facts.memorizer_error(task, [3, -1])
  one_hot = facts.encode_items(task, [3, 7])
  with pytest.raises(ValueError, match='train_item_ids must be 1-D integer'):
    facts.memorizer_error(task, one_hot)
  with pytest.raises(ValueError, match='item_ids must be 1-D integer'):
    facts.render(task, one_hot)
  with pytest.raises(ValueError, match=r'ids must lie in \[0, 50\)'):
    facts.item_codes(task, [-1])
  assert facts.memorizer_error(task, []) == pytest.approx(1.0)
  assert facts.item_codes(task, [], code_dim=4).shape == (0, 4)


# ----------------------------------------------------------------------------------------
# dv_jax.data.longtail, which draws the facts' item ids.


class _TopUniform:
  """Stands in for a NumPy generator whose every uniform is the largest double below 1."""

  def random(self, size):
    return np.full(size, np.nextafter(1.0, 0.0))


@pytest.mark.parametrize('p', [
    longtail.truncated_probs(longtail.zipf_probs(1000, beta=2.0), mode='hard', k=7),
    np.array([0.1] * 10 + [0.0] * 5),
])
def test_sample_items_never_draws_a_zero_mass_tail(p, monkeypatch):
  # These p sum to 1 - 2^-53 before their zero tail; with only cdf[-1] set to 1, a uniform
  # in that gap drew the last item, whose synthetic frequency is 0.
  monkeypatch.setattr(longtail, 'rng_from_key', lambda key: _TopUniform())
  ids = longtail.sample_items(p, num_samples=3, key=jax.random.PRNGKey(0))
  last_positive = np.flatnonzero(p)[-1]
  np.testing.assert_array_equal(ids, last_positive)


def test_sample_items_frequencies_chi_square():
  p = longtail.truncated_probs(longtail.zipf_probs(30, beta=2.0), mode='hard', k=12)
  ids = longtail.sample_items(p, num_samples=100_000, key=jax.random.PRNGKey(3))
  assert ids.max() < 12
  counts = np.bincount(ids, minlength=30)[:12]
  assert stats.chisquare(counts, 100_000 * p[:12]).pvalue > 1e-3


@pytest.mark.parametrize('value', [None, float('nan'), float('inf'), 2.5, -1, True])
def test_sample_items_names_a_bad_num_samples(value):
  with pytest.raises(ValueError, match='num_samples must be an integer >= 0'):
    longtail.sample_items([0.5, 0.5], num_samples=value, key=jax.random.PRNGKey(0))


@pytest.mark.parametrize('seed', [-1, 2**32, 1.5, True])
def test_registry_entry_refuses_a_seed_outside_a_prng_key(seed):
  # PRNGKey keeps a seed's low 32 bits: 2**32 would silently be seed 0's draws again.
  with pytest.raises(ValueError, match='seed must be an integer'):
    facts.facts(seed=seed)
