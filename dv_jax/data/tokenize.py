"""Tokenisers and fixed-length token arrays for the language-model tasks.

`VocabTokenizer` is a small, deterministic character- or word-level tokenizer whose vocabulary
is built from a training split (the CPU-scale tasks train their LM from scratch);
`HFTokenizer` adapts a Hugging Face `tokenizers` `tokenizer.json` (the paper-scale path with a
pretrained backbone) to the same interface. `encode_pairs` lays a (prompt, response) pair out
as `<bos> prompt <sep> response <eos> <pad>...` with a response mask, which is what LM
scoring needs (METHOD.md: the LM's `g` is the mean log-probability of the response tokens).

Shape legend: `n` sequences, `t` tokens per sequence (`max_len`).
"""

import collections
import json
import os
import re
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from dv_jax import checks

PAD, UNK, BOS, EOS, SEP = '<pad>', '<unk>', '<bos>', '<eos>', '<sep>'
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, SEP)
LEVELS = ('char', 'word')
# Words are runs of letters/digits/underscore; every other non-space character stands alone.
_WORD_RE = re.compile(r'\w+|[^\w\s]', re.UNICODE)


class TokenizedBatch(NamedTuple):
  """Fixed-length token arrays.

  Attributes:
    tokens: int32 [n, t]; padded with the tokenizer's pad id after `lengths`.
    response_mask: float32 [n, t]; 1 on response tokens (and the response's `<eos>`), 0 on
      the prompt, separators and padding. With next-token logits `logits[:, j]` predicting
      `tokens[:, j + 1]`, the response NLL is `sum_j mask[:, j + 1] * nll_j`.
    lengths: int32 [n] number of real (non-pad) tokens; `attention_mask = arange(t) < lengths`.
  """
  tokens: np.ndarray
  response_mask: np.ndarray
  lengths: np.ndarray


class VocabTokenizer:
  """Character- or word-level tokenizer over a fixed vocabulary.

  Ids 0..4 are `<pad>`, `<unk>`, `<bos>`, `<eos>`, `<sep>`; unknown symbols map to `<unk>`.
  Word level splits on `\\w+|[^\\w\\s]` and decodes by joining with spaces (so decoding is the
  normalised text, not the original spacing); char level is exact.

  Attributes:
    tokens: the vocabulary, id = position.
    level: 'char' or 'word'.
    lowercase: whether text is lowercased before splitting.
  """

  def __init__(self, tokens: Sequence[str], *, level: str = 'word', lowercase: bool = False):
    if level not in LEVELS:
      raise ValueError(f'level must be one of {LEVELS}, got {level!r}')
    tokens = list(tokens)
    if tuple(tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f'tokens must start with the special tokens {SPECIAL_TOKENS}')
    if len(set(tokens)) != len(tokens):
      raise ValueError('tokens has duplicates')
    self.tokens = tokens
    self.level = level
    self.lowercase = lowercase
    self._ids = {tok: i for i, tok in enumerate(tokens)}
    self.pad_id, self.unk_id, self.bos_id, self.eos_id, self.sep_id = range(len(SPECIAL_TOKENS))

  @classmethod
  def fit(cls, texts: Iterable[str], *, level: str = 'word', max_vocab: Optional[int] = None,
          min_count: int = 1, lowercase: bool = False,
          extra_tokens: Sequence[str] = ()) -> 'VocabTokenizer':
    """Builds the vocabulary from training texts.

    Symbols are ordered by decreasing count, ties broken by the symbol itself, so the same
    texts always give the same ids.

    Args:
      texts: the training split.
      level: 'char' or 'word'.
      max_vocab: cap on the vocabulary size, special tokens included.
      min_count: symbols seen fewer times become `<unk>`.
      lowercase: lowercase before splitting.
      extra_tokens: symbols always included (after the specials), e.g. label names.

    Returns:
      `VocabTokenizer`.
    """
    if level not in LEVELS:
      raise ValueError(f'level must be one of {LEVELS}, got {level!r}')
    if max_vocab is not None:
      max_vocab = checks.check_int(max_vocab, 'max_vocab', minimum=None)
      if max_vocab < len(SPECIAL_TOKENS) + len(extra_tokens):
        raise ValueError(f'max_vocab={max_vocab} leaves no room beyond the '
                         f'{len(SPECIAL_TOKENS)} special and {len(extra_tokens)} extra tokens')
    min_count = checks.check_int(min_count, 'min_count')
    if isinstance(texts, (str, bytes)):
      # Iterating a bare string fits a vocabulary of its characters, whatever the level.
      raise ValueError('texts must be a sequence of strings, got one string')
    probe = cls(list(SPECIAL_TOKENS), level=level, lowercase=lowercase)
    counts = collections.Counter()
    for text in texts:
      counts.update(probe.split(text))
    fixed = list(SPECIAL_TOKENS)
    for tok in extra_tokens:
      if tok not in fixed:
        fixed.append(tok)
    ranked = sorted((tok for tok, c in counts.items() if c >= min_count and tok not in fixed),
                    key=lambda tok: (-counts[tok], tok))
    if max_vocab is not None:
      ranked = ranked[:max_vocab - len(fixed)]
    return cls(fixed + ranked, level=level, lowercase=lowercase)

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def split(self, text: str) -> List[str]:
    """The symbols of `text` (characters or words)."""
    if not isinstance(text, str):
      raise ValueError(f'text must be a string, got {type(text).__name__}')
    if self.lowercase:
      text = text.lower()
    return list(text) if self.level == 'char' else _WORD_RE.findall(text)

  def encode(self, text: str) -> List[int]:
    """Token ids of `text`, without special tokens."""
    return [self._ids.get(sym, self.unk_id) for sym in self.split(text)]

  def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
    """Text of `ids`; special tokens are dropped unless `skip_special=False`."""
    symbols = []
    for i in ids:
      i = int(i)
      if not 0 <= i < len(self.tokens):
        raise ValueError(f'token id {i} outside the vocabulary of size {len(self.tokens)}')
      if skip_special and i < len(SPECIAL_TOKENS) and i != self.unk_id:
        continue
      symbols.append(self.tokens[i])
    return ''.join(symbols) if self.level == 'char' else ' '.join(symbols)

  def to_json(self) -> str:
    """The vocabulary as JSON (the caller writes it; dv_jax/ does no file I/O)."""
    return json.dumps({'tokens': self.tokens, 'level': self.level,
                       'lowercase': self.lowercase})

  @classmethod
  def from_json(cls, text: str) -> 'VocabTokenizer':
    spec = json.loads(text)
    return cls(spec['tokens'], level=spec['level'], lowercase=spec['lowercase'])


class HFTokenizer:
  """A Hugging Face `tokenizers.Tokenizer` behind the `VocabTokenizer` interface.

  Text is encoded without the tokenizer's own post-processing (`add_special_tokens=False`);
  `encode_pairs` adds the special tokens named here, so the layout is the same for both
  tokenizers. A special token left as None is not inserted (a Llama-style tokenizer has a
  `<s>` bos and `</s>` eos but no separator).

  Args:
    tokenizer: a `tokenizers.Tokenizer`, or the path of a `tokenizer.json`.
    pad_token, unk_token, bos_token, eos_token, sep_token: special token strings, each
      looked up in the vocabulary (ValueError if absent). Without a pad token the pad id is 0
      (padding is masked out by `lengths` anyway).
  """

  def __init__(self, tokenizer, *, pad_token: Optional[str] = None,
               unk_token: Optional[str] = None, bos_token: Optional[str] = None,
               eos_token: Optional[str] = None, sep_token: Optional[str] = None):
    if isinstance(tokenizer, (str, os.PathLike)):
      try:
        import tokenizers  # pylint: disable=g-import-not-at-top
      except ImportError as e:
        raise ImportError('HFTokenizer needs the `tokenizers` package: '
                          'pip install "dv_jax[data]"') from e
      path = os.fspath(tokenizer)
      if not os.path.isfile(path):
        raise ValueError(f'tokenizer file {path} does not exist')
      tokenizer = tokenizers.Tokenizer.from_file(path)
    elif tokenizer.truncation is not None or tokenizer.padding is not None:
      tokenizer = type(tokenizer).from_str(tokenizer.to_str())  # the caller's stays as it is
    # A tokenizer.json saves the truncation / padding it was last used with (repacked
    # checkpoints ship max_length 2048 or Fixed(128) padding), and `encode` applies them even
    # without special tokens: every text would be cut on the right or padded with ids that
    # count as response tokens. `encode_pairs` truncates and pads itself.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    self.tokenizer = tokenizer

    def lookup(name, token):
      if token is None:
        return None
      token_id = tokenizer.token_to_id(token)
      if token_id is None:
        raise ValueError(f'{name}={token!r} is not in the tokenizer vocabulary')
      return token_id

    self.unk_id = lookup('unk_token', unk_token)
    self.bos_id = lookup('bos_token', bos_token)
    self.eos_id = lookup('eos_token', eos_token)
    self.sep_id = lookup('sep_token', sep_token)
    pad_id = lookup('pad_token', pad_token)
    self.pad_id = 0 if pad_id is None else pad_id

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str) -> List[int]:
    if not isinstance(text, str):
      raise ValueError(f'text must be a string, got {type(text).__name__}')
    return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Iterable[int], *, skip_special: bool = True) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)


def glues_texts_encoded_apart(tokenizer, first: str = 'The answer', second: str = 'is here'
                              ) -> bool:
  """Whether two texts encoded apart read as one glued text (`'a lot.' + 'positive'`).

  `encode_pairs` encodes prompt and response apart. A byte-level BPE (Qwen2, Llama-3)
  gives a text's first word no leading space, so without a separator token the model reads
  `'a lot.positive'`; a Metaspace tokenizer (Llama-2) starts every text with its word marker,
  as a space would. Decided by decoding: `first` and `second` encoded apart against
  `first + ' ' + second` encoded whole.
  """
  apart = tokenizer.encode(first) + tokenizer.encode(second)
  whole = tokenizer.encode(f'{first} {second}')
  return (tokenizer.decode(apart, skip_special=False)
          != tokenizer.decode(whole, skip_special=False))


def _check_texts(texts, name: str) -> list:
  if isinstance(texts, (str, bytes)):
    # list('abc') would silently be three one-character texts.
    raise ValueError(f'{name} must be a sequence of strings, got one string')
  texts = list(texts)
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise ValueError(f'{name}[{i}] must be a string, got {type(text).__name__}')
  return texts


def _specials(tokenizer) -> Tuple[list, list, list]:
  bos = [] if getattr(tokenizer, 'bos_id', None) is None else [tokenizer.bos_id]
  sep = [] if getattr(tokenizer, 'sep_id', None) is None else [tokenizer.sep_id]
  eos = [] if getattr(tokenizer, 'eos_id', None) is None else [tokenizer.eos_id]
  return bos, sep, eos


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                 max_len: int, truncate: bool = True) -> TokenizedBatch:
  """Lays out `<bos> prompt <sep> response <eos>` in `[n, max_len]` with a response mask.

  Too-long pairs are cut so the response survives: the response (with its `<eos>`) keeps at
  most `max_len - len(bos + sep) - 1` tokens when the prompt is non-empty (one slot stays
  for the prompt's last token) and `max_len - len(bos + sep)` when it is empty, cut at its
  end (the `<eos>` goes first, so a cut response has none), and the prompt keeps its last
  tokens that still fit. Free text survives a cut; a question does not (`12 + 34 = 46` cut
  to `2 + 34 = 46` is a false fact): `truncate=False` refuses any pair that does not fit
  whole.

  Prompt and response are encoded separately, so nothing stands between them but `<sep>`.
  A Metaspace tokenizer (Llama-2) starts each text with its word marker, as a space would;
  a byte-level BPE (Qwen2, Llama-3) adds no space, so without a separator the response is
  glued to the prompt (`'a lot.' + 'positive'` reads `'a lot.positive'`, and `positive` is
  not the `Ġpositive` token the text `'a lot. positive'` would give). For those tokenizers
  name their newline token, `'Ċ'`, as the separator (`sep_token='Ċ'`).

  Args:
    tokenizer: `VocabTokenizer` or `HFTokenizer` (or any object with `encode`, `pad_id`,
      `bos_id`, `sep_id`, `eos_id`; a None special is not inserted).
    prompts: [n] strings.
    responses: [n] strings (empty strings allowed: only `<eos>` is then scored).
    max_len: `t`.
    truncate: cut a pair that does not fit (True), or raise (False).

  Returns:
    `TokenizedBatch` (tokens int32 [n, t], response_mask float32 [n, t], lengths int32 [n]).

  Raises:
    ValueError: a bare string for `prompts` or `responses`, a non-string entry, unequal
      lengths, a non-integer or too small `max_len` (with `truncate=False`: shorter than a
      pair), a pair left without a response
      token (an empty response and a tokenizer without `<eos>`: nothing to score), or an
      empty prompt with a tokenizer that has neither `<bos>` nor `<sep>`.
  """
  max_len = checks.check_int(max_len, 'max_len')
  prompts = _check_texts(prompts, 'prompts')
  responses = _check_texts(responses, 'responses')
  if len(prompts) != len(responses):
    raise ValueError(f'prompts has {len(prompts)} entries but responses has {len(responses)}')
  bos, sep, eos = _specials(tokenizer)
  budget = max_len - len(bos) - len(sep)
  if budget < 2:
    raise ValueError(f'max_len={max_len} leaves no room for a prompt and a response token')
  n = len(prompts)
  tokens = np.full((n, max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((n, max_len), np.float32)
  lengths = np.zeros(n, np.int32)
  for i, (prompt, response) in enumerate(zip(prompts, responses)):
    p_ids = tokenizer.encode(prompt)
    r_ids = tokenizer.encode(response) + eos
    need = len(bos) + len(p_ids) + len(sep) + len(r_ids)
    if not truncate and need > max_len:
      raise ValueError(f'max_len={max_len} would cut pair {i} ({prompt!r}, {response!r}), '
                       f'which needs {need} tokens')
    r_ids = r_ids[:budget - min(len(p_ids), 1)]
    if not r_ids:
      raise ValueError(f'responses[{i}] = {response!r} leaves no response token to score '
                       '(the tokenizer has no eos token)')
    p_ids = p_ids[max(len(p_ids) - (budget - len(r_ids)), 0):]
    head = bos + p_ids + sep
    if not head:
      # The response would start at position 0, which no logit predicts: its first token
      # was masked in but never scored.
      raise ValueError(f'prompts[{i}] = {prompt!r} encodes to no token and the tokenizer has '
                       'no bos or sep token: the first response token has nothing to be '
                       'predicted from')
    seq = head + r_ids
    tokens[i, :len(seq)] = seq
    mask[i, len(head):len(seq)] = 1.0
    lengths[i] = len(seq)
  return TokenizedBatch(tokens, mask, lengths)


def encode_prompts(tokenizer, prompts: Sequence[str], *,
                   max_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """`<bos> prompt <sep>`, right-padded: the input for sampling a response.

  A too-long prompt keeps its last tokens.

  Returns:
    tokens int32 [n, max_len] and lengths int32 [n] (the `prompt_lengths` of
    `dv_jax.models.transformer.sample`).
  """
  max_len = checks.check_int(max_len, 'max_len')
  prompts = _check_texts(prompts, 'prompts')
  bos, sep, _ = _specials(tokenizer)
  budget = max_len - len(bos) - len(sep)
  if budget < 1:
    raise ValueError(f'max_len={max_len} leaves no room for a prompt token')
  tokens = np.full((len(prompts), max_len), tokenizer.pad_id, np.int32)
  lengths = np.zeros(len(prompts), np.int32)
  for i, prompt in enumerate(prompts):
    ids = tokenizer.encode(prompt)
    seq = bos + ids[max(len(ids) - budget, 0):] + sep
    tokens[i, :len(seq)] = seq
    lengths[i] = len(seq)
  return tokens, lengths


def encode_texts(tokenizer, texts: Sequence[str], *,
                 max_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """`<bos> text <eos>`, right-padded, cut at `max_len` (the `<eos>` is lost when cut).

  Returns:
    tokens int32 [n, max_len] and lengths int32 [n].
  """
  max_len = checks.check_int(max_len, 'max_len')
  texts = _check_texts(texts, 'texts')
  bos, _, eos = _specials(tokenizer)
  if max_len < len(bos) + 1:
    raise ValueError(f'max_len={max_len} leaves no room for a token')
  tokens = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for i, text in enumerate(texts):
    seq = (bos + tokenizer.encode(text) + eos)[:max_len]
    tokens[i, :len(seq)] = seq
    lengths[i] = len(seq)
  return tokens, lengths


def decode_batch(tokenizer, tokens, lengths, *, start=0) -> List[str]:
  """Decodes row `i` from `start[i]` (scalar or [n]) to `lengths[i]`, specials dropped."""
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  starts = np.broadcast_to(np.asarray(start), lengths.shape)
  return [tokenizer.decode(tokens[i, starts[i]:lengths[i]]) for i in range(tokens.shape[0])]
