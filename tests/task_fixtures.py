"""Tiny on-disk fixtures of the paper-scale tasks (shared by test_tasks and
test_valuation_tasks): a fake CIFAR-100 in the official pickle layout, Alpaca / GSM8K /
SST-2 JSONL files with `source` flags, and a tiny random Llama / Qwen2 checkpoint with a
word-level `tokenizer.json`. Everything is written under a directory the test owns.
"""

import json
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dv_jax.models import checkpoint
from dv_jax.models.llama import Llama
from dv_jax.models.llama import LlamaConfig

SPECIALS = ('[UNK]', '<pad>', '<s>', '</s>')
WORDS = ('give', 'list', 'name', 'three', 'two', 'red', 'blue', 'green', 'colors', 'fruits',
         'apple', 'pear', 'plum', 'write', 'a', 'short', 'poem', 'about', 'the', 'sea', 'sky',
         'and', 'is', 'how', 'many', 'has', 'tom', 'ann', 'cats', 'dogs', 'if', 'he', 'buys',
         'more', 'then', 'so', 'answer', '####', '=', '+', '?', '.') + tuple(str(i)
                                                                          for i in range(10))
# The sentiment label names (dv_jax.data.text.SENTIMENT_LABEL_NAMES), the responses of the
# SST-2 fixture; after WORDS so that the other fixtures' token ids stay as they were.
LABEL_WORDS = ('negative', 'positive')
TOKENS = dict(bos_token='<s>', eos_token='</s>', pad_token='<pad>', sep_token='')


def write_fake_cifar100(root, *, per_class_train: int = 6, per_class_test: int = 2,
                        seed: int = 0) -> Path:
  """`root/cifar-100-python/{train,test,meta}` with random uint8 images; returns root."""
  root = Path(root)
  folder = root / 'cifar-100-python'
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)

  def batch(labels):
    return {b'data': rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
            b'fine_labels': [int(l) for l in labels],
            b'coarse_labels': [int(l) // 5 for l in labels],
            b'filenames': [b'x'] * len(labels)}

  train = batch(np.repeat(np.arange(100), per_class_train))
  test = batch(np.repeat(np.arange(100), per_class_test))
  meta = {b'fine_label_names': [f'class{i}'.encode() for i in range(100)],
          b'coarse_label_names': [f'super{i}'.encode() for i in range(20)]}
  for name, obj in (('train', train), ('test', test), ('meta', meta)):
    with open(folder / name, 'wb') as f:
      pickle.dump(obj, f)
  return root


def write_generated_npz(path, *, num: int = 60, classes=(0, 1, 2, 3, 5), seed: int = 1) -> Path:
  """Generated images `x uint8 [num, 32, 32, 3]`, `y` cycling over `classes`."""
  rng = np.random.default_rng(seed)
  y = np.resize(np.asarray(classes), num)
  np.savez(path, x=rng.integers(0, 256, size=(num, 32, 32, 3), dtype=np.uint8), y=y)
  return Path(path)


def _sentence(rng, lo, hi):
  return ' '.join(rng.choice(WORDS[:36], size=int(rng.integers(lo, hi + 1))))


def write_alpaca_jsonl(path, *, num_real: int = 30, num_synthetic: int = 24,
                       seed: int = 0) -> Path:
  """Alpaca-layout records (`instruction`, `input`, `output`, `source`)."""
  rng = np.random.default_rng(seed)
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(num_real + num_synthetic):
      record = {'instruction': _sentence(rng, 2, 5),
                'input': _sentence(rng, 1, 3) if i % 3 == 0 else '',
                'output': _sentence(rng, 1, 6),
                'source': 'real' if i < num_real else 'synthetic'}
      f.write(json.dumps(record) + '\n')
  return Path(path)


def write_gsm8k_jsonl(path, *, num_real: int = 30, num_synthetic: int = 24,
                      seed: int = 0) -> Path:
  """GSM8K-layout records (`question`, `answer` ending in `#### n`, `source`)."""
  # Distinct questions with one-digit answers (every token is in the vocabulary).
  pairs = [(a, b) for a in range(10) for b in range(10 - a)]
  order = np.random.default_rng(seed).permutation(len(pairs))
  if num_real + num_synthetic > len(pairs):
    raise ValueError(f'at most {len(pairs)} distinct questions')
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(num_real + num_synthetic):
      a, b = pairs[order[i]]
      record = {'question': f'tom has {a} cats and buys {b} more . how many ?',
                'answer': f'{a} + {b} = {a + b} #### {a + b}',
                'source': 'real' if i < num_real else 'synthetic'}
      f.write(json.dumps(record) + '\n')
  return Path(path)


def write_sst2_jsonl(path, *, num_real: int = 30, num_synthetic: int = 24,
                     seed: int = 0) -> Path:
  """SST-2-layout records (`sentence`, integer `label`, `source`), both labels in each part."""
  rng = np.random.default_rng(seed)
  with open(path, 'w', encoding='utf-8') as f:
    for i in range(num_real + num_synthetic):
      record = {'sentence': _sentence(rng, 3, 8), 'label': i % 2,
                'source': 'real' if i < num_real else 'synthetic'}
      f.write(json.dumps(record) + '\n')
  return Path(path)


def write_tiny_checkpoint(directory, *, model_type: str = 'qwen2', seed: int = 0) -> Path:
  """A random 2-layer Llama / Qwen2 checkpoint and a word-level tokenizer.json."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS + LABEL_WORDS)}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(str(directory / 'tokenizer.json'))
  config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=64, tie_word_embeddings=True,
                       model_type=model_type, rms_norm_eps=1e-6)
  params = jax.jit(Llama(config).init)(jax.random.PRNGKey(seed),
                                       jnp.zeros((1, 4), jnp.int32))['params']
  checkpoint.save_hf_checkpoint(directory, config, params)
  return directory
