"""Tests of dv_jax.data.text (JSONL / datasets layouts) and dv_jax.data.tokenize."""

import json

import numpy as np
import pytest

from dv_jax.data import text
from dv_jax.data import tokenize


def _write_jsonl(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records), encoding='utf-8')
  return path


SST2 = [{'sentence': 'a gorgeous film', 'label': 1},
        {'sentence': 'dull and slow', 'label': 0, 'source': 'synthetic'},
        {'sentence': 'fine', 'label': 'positive', 'source': 'real'}]
IMDB = [{'text': 'Loved it.', 'label': 1}, {'text': 'Awful.', 'label': 0, 'source': None}]
ALPACA = [{'instruction': 'Add the numbers.', 'input': '2 and 3', 'output': '5'},
          {'instruction': 'Say hi.', 'input': '', 'output': 'hi', 'source': 'synthetic'},
          {'instruction': 'Name a colour.', 'output': 'red'}]
GSM8K = [{'question': 'Tom has 2 apples and buys 3. How many?',
          'answer': 'He has 2 + 3 = <<2+3=5>>5 apples.\n#### 5'},
         {'question': 'A big number?', 'answer': 'It is 1,000 times 2.\n#### 2,000',
          'source': 'synthetic'}]


def test_sentiment_sst2_and_imdb_layouts(tmp_path):
  data = text.load_text_task(_write_jsonl(tmp_path / 'sst2.jsonl', SST2), task='sentiment')
  assert data.prompts == ['a gorgeous film', 'dull and slow', 'fine']
  assert data.responses == ['positive', 'negative', 'positive']
  np.testing.assert_array_equal(data.labels, [1, 0, 1])
  np.testing.assert_array_equal(data.is_synthetic, [False, True, False])
  assert data.final_answers is None and data.labels.dtype == np.int32
  imdb = text.load_text_task(_write_jsonl(tmp_path / 'imdb.jsonl', IMDB), task='sentiment')
  assert imdb.prompts == ['Loved it.', 'Awful.']
  np.testing.assert_array_equal(imdb.is_synthetic, [False, False])


def test_instruction_and_reasoning_layouts(tmp_path):
  alpaca = text.load_text_task(_write_jsonl(tmp_path / 'a.jsonl', ALPACA), task='instruction')
  assert alpaca.prompts == ['Add the numbers.\n\n2 and 3', 'Say hi.', 'Name a colour.']
  assert alpaca.responses == ['5', 'hi', 'red']
  assert alpaca.labels is None
  np.testing.assert_array_equal(alpaca.is_synthetic, [False, True, False])
  gsm = text.load_text_task(_write_jsonl(tmp_path / 'g.jsonl', GSM8K), task='reasoning')
  assert gsm.final_answers == ['5', '2000']
  assert gsm.responses[0].endswith('#### 5')
  np.testing.assert_array_equal(gsm.is_synthetic, [False, True])
  first = text.load_text_task(tmp_path / 'g.jsonl', task='reasoning', max_records=1)
  assert len(first.prompts) == 1
  for bad in (1.5, True, 0):
    with pytest.raises(ValueError, match='max_records must be an integer >= 1'):
      text.load_text_task(tmp_path / 'g.jsonl', task='reasoning', max_records=bad)
  both = text.concatenate([first, text.subset(gsm, [1])])
  assert both.final_answers == ['5', '2000']


def test_gsm8k_final_answer_is_after_the_last_marker():
  # A solution that revises itself: the answer is what follows its last '####'.
  assert text.gsm8k_final_answer('step 1 #### 5 then redo #### 1,000') == '1000'


@pytest.mark.parametrize('task,record,message', [
    ('sentiment', {'sentence': 'x', 'label': 1, 'source': 'generated'},
     r'line 2: source must be one of'),
    ('sentiment', {'sentence': 'x'}, r"line 2: missing field 'label'"),
    ('sentiment', {'review': 'x', 'label': 0}, r"line 2: sentiment records need 'sentence'"),
    # GLUE's SST-2 test split: the hint named only IMDB's unlabelled split.
    ('sentiment', {'sentence': 'x', 'label': -1, 'idx': 0},
     r"line 2: label -1 marks an unlabelled record \(GLUE SST-2's test split and IMDB's "
     r'unsupervised split have no labels\); read a labelled split'),
    ('sentiment', {'text': 'x', 'label': 2}, r'line 2: label 2 outside \[0, 2\)'),
    ('sentiment', {'text': 'x', 'label': 'meh'}, r"line 2: label 'meh' is not one of"),
    ('instruction', {'instruction': 'x'}, r"line 2: missing field 'output'"),
    ('instruction', {'instruction': 3, 'output': 'y'}, r"line 2: field 'instruction' must"),
    ('reasoning', {'question': 'q', 'answer': 'no marker'}, r"line 2: answer has no '####'"),
    # Used to be accepted as the final answer ''.
    ('reasoning', {'question': 'q', 'answer': 'x\n#### '}, r"line 2: answer has nothing after"),
    # Empty text fields used to be accepted (an empty Alpaca `input` still is: see ALPACA).
    ('reasoning', {'question': '', 'answer': '#### 1'}, r"line 2: field 'question' is empty"),
    ('sentiment', {'sentence': '', 'label': 1}, r"line 2: field 'sentence' is empty"),
    ('sentiment', {'text': ' ', 'label': 1}, r"line 2: field 'text' is empty"),
    ('instruction', {'instruction': '', 'output': 'y'}, r"line 2: field 'instruction' is empty"),
    # One of the records with an empty output in Stanford's alpaca_data.json: the message
    # now says how to go on.
    ('instruction', {'instruction': 'Calculate the area of the following shape in square '
                                    'centimeters.', 'input': 'rectangle of size 4 cm x 5 cm',
                     'output': ''},
     r"line 2: field 'output' is empty; drop the records with an empty 'output' from the "
     r'file first, or skip them with drop_empty=True \(config.data.drop_empty\)'),
])
def test_bad_records_name_file_line_and_field(tmp_path, task, record, message):
  good = {'sentiment': SST2[0], 'instruction': ALPACA[0], 'reasoning': GSM8K[0]}[task]
  path = _write_jsonl(tmp_path / 'bad.jsonl', [good, record])
  with pytest.raises(ValueError, match=message) as info:
    text.load_text_task(path, task=task)
  assert 'bad.jsonl' in str(info.value)


def test_drop_empty_skips_records_with_an_empty_text_field(tmp_path):
  # Stanford's alpaca_data.json holds records with an empty output: with drop_empty the
  # file loads without them, in order, and a warning counts them.
  empty = [dict(ALPACA[0], output=''), dict(ALPACA[1], instruction='  ')]
  records = [ALPACA[0], empty[0], ALPACA[1], empty[1], ALPACA[2]]
  path = tmp_path / 'alpaca_data.json'
  path.write_text(json.dumps(records, indent=4))
  with pytest.warns(UserWarning, match=r"skipped 2 record\(s\) with an empty text field "
                                       r"\(drop_empty\); the first: .*record 1: field 'output' "
                                       'is empty$'):
    data = text.load_text_task(path, task='instruction', drop_empty=True)
  assert data.responses == [r['output'] for r in (ALPACA[0], ALPACA[1], ALPACA[2])]
  # Other faults are still refused, and a file of empty records has none to read.
  _write_jsonl(tmp_path / 'missing.jsonl', [ALPACA[0], {'instruction': 'x'}])
  with pytest.raises(ValueError, match="line 2: missing field 'output'"):
    text.load_text_task(tmp_path / 'missing.jsonl', task='instruction', drop_empty=True)
  _write_jsonl(tmp_path / 'empty.jsonl', empty)
  with pytest.warns(UserWarning, match='skipped 2'), \
      pytest.raises(ValueError, match='empty.jsonl: no records'):
    text.load_text_task(tmp_path / 'empty.jsonl', task='instruction', drop_empty=True)


def test_file_level_errors(tmp_path):
  bad = tmp_path / 'broken.jsonl'
  bad.write_text('{"sentence": "a", "label": 1}\n\n{not json\n')
  with pytest.raises(ValueError, match='broken.jsonl line 3: invalid JSON'):
    text.load_text_task(bad, task='sentiment')
  with pytest.raises(ValueError, match='does not exist'):
    text.load_text_task(tmp_path / 'missing.jsonl', task='sentiment')
  (tmp_path / 'empty.jsonl').write_text('\n')
  with pytest.raises(ValueError, match='empty.jsonl: no records'):
    text.load_text_task(tmp_path / 'empty.jsonl', task='sentiment')
  with pytest.raises(ValueError, match='task must be one of'):
    text.load_text_task(bad, task='translation')
  (tmp_path / 'plain').mkdir()
  with pytest.raises(ValueError, match='not a datasets save_to_disk directory'):
    text.load_text_task(tmp_path / 'plain', task='sentiment')


def test_json_array_and_json_lines_under_a_json_name(tmp_path):
  """Stanford Alpaca ships alpaca_data.json as ONE JSON array; `Dataset.to_json` writes JSON
  lines under whatever name it is given. Both used to be refused as 'expected a .jsonl'."""
  array = tmp_path / 'alpaca_data.json'
  array.write_text('\ufeff' + json.dumps(ALPACA, indent=4), encoding='utf-8')
  data = text.load_text_task(array, task='instruction')
  assert data.prompts == ['Add the numbers.\n\n2 and 3', 'Say hi.', 'Name a colour.']
  np.testing.assert_array_equal(data.is_synthetic, [False, True, False])
  lines = _write_jsonl(tmp_path / 'to_json.json', GSM8K)
  assert text.load_text_task(lines, task='reasoning').final_answers == ['5', '2000']
  # Errors still name the file and the record (or line).
  array.write_text(json.dumps([ALPACA[0], {'instruction': 'x'}]), encoding='utf-8')
  with pytest.raises(ValueError, match=r"alpaca_data.json record 1: .*'output'"):
    text.load_text_task(array, task='instruction')
  array.write_text('[{"instruction": "x",\n "output": }]', encoding='utf-8')
  with pytest.raises(ValueError, match='alpaca_data.json line 2: invalid JSON'):
    text.load_text_task(array, task='instruction')
  array.write_text('{"instruction": "x", "output": "y"}', encoding='utf-8')
  assert text.load_text_task(array, task='instruction').responses == ['y']  # one JSON line
  # A pretty-printed array may open with blank lines (here after the byte-order mark).
  array.write_text('\ufeff\n\n  ' + json.dumps(ALPACA[:1]), encoding='utf-8')
  assert text.load_text_task(array, task='instruction').prompts == [
      'Add the numbers.\n\n2 and 3']
  # A .json file has no splits either.
  with pytest.raises(ValueError, match=r"split='train' given but .*alpaca_data.json is a JSON"):
    text.load_text_task(array, task='instruction', split='train')
  (tmp_path / 'data.csv').write_text('sentence,label\n')
  with pytest.raises(ValueError, match='expected a .jsonl / .json file'):
    text.load_text_task(tmp_path / 'data.csv', task='sentiment')


def test_jsonl_with_byte_order_mark(tmp_path):
  # Used to fail with 'invalid JSON': the BOM was read as part of the first line.
  path = tmp_path / 'bom.jsonl'
  path.write_text('\ufeff' + json.dumps(SST2[0]) + '\n', encoding='utf-8')
  np.testing.assert_array_equal(text.load_text_task(path, task='sentiment').labels, [1])


@pytest.mark.parametrize('encoding,bad_line', [('utf-16', 1), ('cp1252', 2)])
def test_jsonl_not_utf8_names_file_and_line(tmp_path, encoding, bad_line):
  # Used to raise the codec's bare "'utf-8' codec can't decode byte ...", with no file name.
  path = tmp_path / 'win.jsonl'
  lines = [json.dumps(SST2[0]), json.dumps({'sentence': 'café', 'label': 1}, ensure_ascii=False)]
  path.write_bytes(('\r\n'.join(lines) + '\r\n').encode(encoding))
  with pytest.raises(ValueError, match=f'win.jsonl line {bad_line}: not UTF-8 text'):
    text.load_text_task(path, task='sentiment')


@pytest.mark.parametrize('flag', [{'is_synthetic': True}, {'Source': 'synthetic'},
                                  {'synthetic': 1}, {'source': None, 'is_synthetic': True}])
def test_synthetic_flag_under_another_name_is_refused(tmp_path, flag):
  # Used to be ignored: every record read as real, so pi = 1 for every contributor.
  path = _write_jsonl(tmp_path / 'gen.jsonl', [SST2[0], {**SST2[0], **flag}])
  with pytest.raises(ValueError, match=r"gen.jsonl line 2: no 'source' field but a"):
    text.load_text_task(path, task='sentiment')


def test_subset_refuses_a_boolean_mask_and_float_indices(tmp_path):
  data = text.load_text_task(_write_jsonl(tmp_path / 'sst2.jsonl', SST2), task='sentiment')
  # A mask used to be read as the indices 0 and 1: [True, False, True] gave records 1, 0, 1.
  with pytest.raises(ValueError, match='indices must be integers, got dtype bool'):
    text.subset(data, ~data.is_synthetic)
  with pytest.raises(ValueError, match='indices must be integers, got dtype float64'):
    text.subset(data, [1.7])
  assert text.subset(data, np.flatnonzero(~data.is_synthetic)).prompts == [
      'a gorgeous film', 'fine']
  assert text.subset(data, []).prompts == []


def test_split_is_rejected_for_jsonl(tmp_path):
  # Used to be ignored silently, as if the file were the requested split.
  path = _write_jsonl(tmp_path / 'sst2.jsonl', SST2)
  with pytest.raises(ValueError, match=r"split='train' given but .*sst2.jsonl is a JSON file"):
    text.load_text_task(path, task='sentiment', split='train')


def test_datasets_directory_saved_in_arrow_format(tmp_path):
  datasets = pytest.importorskip('datasets')
  data = datasets.Dataset.from_list(SST2[:2])
  # Used to fail with "field 'sentence' must be a string, got StringScalar".
  data.with_format('arrow').save_to_disk(str(tmp_path / 'arrow'))
  loaded = text.load_text_task(tmp_path / 'arrow', task='sentiment')
  assert loaded.prompts == ['a gorgeous film', 'dull and slow']
  np.testing.assert_array_equal(loaded.labels, [1, 0])


@pytest.mark.parametrize('names', [['negative', 'positive'], ['neg', 'pos'],
                                   ['positive', 'negative'], ['POS', 'Neg']])
def test_datasets_class_label_names_decide_polarity(tmp_path, names):
  datasets = pytest.importorskip('datasets')
  features = datasets.Features({'text': datasets.Value('string'),
                                'label': datasets.ClassLabel(names=names)})
  # Id 0 is names[0]: 'positive' in the reversed order, which used to be read as negative.
  datasets.Dataset.from_dict({'text': ['first', 'second'], 'label': [0, 1]},
                             features=features).save_to_disk(str(tmp_path / 'd'))
  loaded = text.load_text_task(tmp_path / 'd', task='sentiment')
  want = [0 if n.lower().startswith('neg') else 1 for n in names]
  np.testing.assert_array_equal(loaded.labels, want)
  assert loaded.responses == [text.SENTIMENT_LABEL_NAMES[w] for w in want]


def test_datasets_class_label_names_unrecognised(tmp_path):
  datasets = pytest.importorskip('datasets')
  features = datasets.Features({'text': datasets.Value('string'),
                                'label': datasets.ClassLabel(names=['bad', 'good'])})
  datasets.Dataset.from_dict({'text': ['x'], 'label': [1]},
                             features=features).save_to_disk(str(tmp_path / 'd'))
  with pytest.raises(ValueError, match=r"ClassLabel names \['bad', 'good'\]"):
    text.load_text_task(tmp_path / 'd', task='sentiment')
  # Naming the classes through label_names maps them.
  loaded = text.load_text_task(tmp_path / 'd', task='sentiment', label_names=('bad', 'good'))
  np.testing.assert_array_equal(loaded.labels, [1])


def test_datasets_class_label_source_is_read_by_name(tmp_path):
  datasets = pytest.importorskip('datasets')
  features = datasets.Features({'sentence': datasets.Value('string'),
                                'label': datasets.Value('int64'),
                                'source': datasets.ClassLabel(names=['real', 'synthetic'])})
  # Stored as the ids 1 and 0; read as ids they are not 'real' / 'synthetic' at all.
  datasets.Dataset.from_dict({'sentence': ['good', 'bad'], 'label': [1, 0], 'source': [1, 0]},
                             features=features).save_to_disk(str(tmp_path / 'd'))
  loaded = text.load_text_task(tmp_path / 'd', task='sentiment')
  np.testing.assert_array_equal(loaded.is_synthetic, [True, False])


def test_datasets_save_to_disk_directory(tmp_path):
  datasets = pytest.importorskip('datasets')
  train = datasets.Dataset.from_list([{'question': r['question'], 'answer': r['answer'],
                                       'source': r.get('source', 'real')} for r in GSM8K])
  test = datasets.Dataset.from_list([{'question': 'q?', 'answer': '#### 7',
                                      'source': 'fake'}])
  datasets.DatasetDict({'train': train, 'test': test}).save_to_disk(str(tmp_path / 'dd'))
  data = text.load_text_task(tmp_path / 'dd', task='reasoning', split='train')
  assert data.final_answers == ['5', '2000']
  np.testing.assert_array_equal(data.is_synthetic, [False, True])
  with pytest.raises(ValueError, match=r"splits \['test', 'train'\]; pass split="):
    text.load_text_task(tmp_path / 'dd', task='reasoning')
  with pytest.raises(ValueError, match=r"\(split 'test'\) record 0: source must be"):
    text.load_text_task(tmp_path / 'dd', task='reasoning', split='test')
  train.save_to_disk(str(tmp_path / 'single'))
  single = text.load_text_task(tmp_path / 'single', task='reasoning')
  assert single.prompts == data.prompts


# ----------------------------------------------------------------------------------------
# tokenize


def test_vocab_tokenizer_is_deterministic_and_ordered():
  texts = ['the cat sat', 'the dog, the cat!', 'a dog']
  tok = tokenize.VocabTokenizer.fit(texts, level='word')
  assert tok.tokens[:5] == list(tokenize.SPECIAL_TOKENS)
  # Counts: the 3, cat 2, dog 2, then singletons alphabetically (punctuation sorts first).
  assert tok.tokens[5:] == ['the', 'cat', 'dog', '!', ',', 'a', 'sat']
  assert tok.encode('the cat ate') == [5, 6, tok.unk_id]
  # <unk> stands for a real word: decode keeps it where it drops <bos>, <eos> and <pad>.
  assert tok.decode(tok.encode('the cat ate')) == 'the cat <unk>'
  assert tok.decode(tok.encode('the dog, the cat!')) == 'the dog , the cat !'
  capped = tokenize.VocabTokenizer.fit(texts, level='word', max_vocab=7, extra_tokens=['<x>'])
  assert capped.tokens == list(tokenize.SPECIAL_TOKENS) + ['<x>', 'the']
  chars = tokenize.VocabTokenizer.fit(texts, level='char')
  assert chars.decode(chars.encode('the cat')) == 'the cat'
  restored = tokenize.VocabTokenizer.from_json(chars.to_json())
  assert restored.tokens == chars.tokens and restored.level == 'char'


def test_encode_pairs_layout_mask_and_truncation():
  tok = tokenize.VocabTokenizer(list(tokenize.SPECIAL_TOKENS) + list('abcdxyz'), level='char')
  ids = {c: tok.tokens.index(c) for c in 'abcdxyz'}
  batch = tokenize.encode_pairs(tok, ['ab', 'abcd'], ['x', 'xyz'], max_len=8)
  bos, sep, eos, pad = tok.bos_id, tok.sep_id, tok.eos_id, tok.pad_id
  np.testing.assert_array_equal(batch.tokens[0], [bos, ids['a'], ids['b'], sep, ids['x'], eos,
                                                  pad, pad])
  np.testing.assert_array_equal(batch.response_mask[0], [0, 0, 0, 0, 1, 1, 0, 0])
  # Too long (4 + 3 + 1 + 2 > 8): the prompt keeps its last tokens, the response survives.
  np.testing.assert_array_equal(batch.tokens[1], [bos, ids['c'], ids['d'], sep, ids['x'],
                                                  ids['y'], ids['z'], eos])
  np.testing.assert_array_equal(batch.lengths, [6, 8])
  # A response longer than the budget keeps one prompt token and loses its <eos>.
  cut = tokenize.encode_pairs(tok, ['ab'], ['xyzxyz'], max_len=6)
  np.testing.assert_array_equal(cut.tokens[0], [bos, ids['b'], sep, ids['x'], ids['y'],
                                                ids['z']])
  np.testing.assert_array_equal(cut.response_mask[0], [0, 0, 0, 1, 1, 1])
  # With an empty prompt no slot is kept for it: the response fills max_len - 2 tokens.
  empty = tokenize.encode_pairs(tok, [''], ['xyzxyz'], max_len=6)
  np.testing.assert_array_equal(empty.tokens[0], [bos, sep, ids['x'], ids['y'], ids['z'],
                                                  ids['x']])
  np.testing.assert_array_equal(empty.response_mask[0], [0, 0, 1, 1, 1, 1])
  # truncate=False: a pair that fits whole is laid out as before, a longer one refused.
  whole = tokenize.encode_pairs(tok, ['ab'], ['x'], max_len=6, truncate=False)
  np.testing.assert_array_equal(whole.tokens, batch.tokens[:1, :6])
  with pytest.raises(ValueError, match=r"max_len=8 would cut pair 1 \('abcd', 'xyz'\), "
                     r'which needs 10 tokens'):
    tokenize.encode_pairs(tok, ['ab', 'abcd'], ['x', 'xyz'], max_len=8, truncate=False)
  prompts, lengths = tokenize.encode_prompts(tok, ['abcd'], max_len=4)
  np.testing.assert_array_equal(prompts[0], [bos, ids['c'], ids['d'], sep])
  texts, lengths = tokenize.encode_texts(tok, ['ab', 'abcdab'], max_len=5)
  np.testing.assert_array_equal(lengths, [4, 5])
  assert tokenize.decode_batch(tok, texts, lengths) == ['ab', 'abcd']
  with pytest.raises(ValueError, match='max_len'):
    tokenize.encode_pairs(tok, ['a'], ['b'], max_len=3)
  with pytest.raises(ValueError, match='responses has 1'):
    tokenize.encode_pairs(tok, ['a', 'b'], ['b'], max_len=8)
  with pytest.raises(ValueError, match=r'prompts\[1\] must be a string'):
    tokenize.encode_pairs(tok, ['a', 3], ['b', 'c'], max_len=8)
  with pytest.raises(ValueError, match='special tokens'):
    tokenize.VocabTokenizer(['a', 'b'])


class _EosOnlyTokenizer:
  """A tokenizer with `<eos>` but neither `<bos>` nor `<sep>` (a Qwen2-style HFTokenizer)."""
  pad_id, bos_id, sep_id, eos_id = 0, None, None, 1

  def encode(self, text):
    return [2 + len(word) for word in text.split()]


def test_encode_pairs_refuses_an_empty_prompt_without_bos_or_sep():
  # The response used to start at position 0, which no logit predicts: its first token was
  # in the mask but never scored, so the mean log-probability silently skipped it.
  with pytest.raises(ValueError, match=r"prompts\[1\] = '' encodes to no token"):
    tokenize.encode_pairs(_EosOnlyTokenizer(), ['a', ''], ['bb', 'bb c'], max_len=6)
  batch = tokenize.encode_pairs(_EosOnlyTokenizer(), ['a'], ['bb c'], max_len=6)
  np.testing.assert_array_equal(batch.tokens, [[3, 4, 3, 1, 0, 0]])
  np.testing.assert_array_equal(batch.response_mask, [[0, 1, 1, 1, 0, 0]])


def test_hf_tokenizer_adapter(tmp_path):
  tokenizers = pytest.importorskip('tokenizers')
  vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, 'the': 3, 'cat': 4, 'sat': 5}
  hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  hf.save(str(tmp_path / 'tokenizer.json'))
  tok = tokenize.HFTokenizer(tmp_path / 'tokenizer.json', bos_token='<s>', eos_token='</s>',
                             unk_token='<unk>')
  assert tok.vocab_size == 6 and tok.sep_id is None and tok.pad_id == 0
  assert tok.encode('the cat sat') == [3, 4, 5]
  batch = tokenize.encode_pairs(tok, ['the cat'], ['sat'], max_len=7)
  # No separator: <s> the cat sat </s> <pad> <pad>.
  np.testing.assert_array_equal(batch.tokens[0], [1, 3, 4, 5, 2, 0, 0])
  np.testing.assert_array_equal(batch.response_mask[0], [0, 0, 0, 1, 1, 0, 0])
  with pytest.raises(ValueError, match="sep_token='<sep>' is not in"):
    tokenize.HFTokenizer(tmp_path / 'tokenizer.json', sep_token='<sep>')
  with pytest.raises(ValueError, match='does not exist'):
    tokenize.HFTokenizer(tmp_path / 'missing.json')


@pytest.mark.parametrize('saved', ['truncation', 'padding'])
def test_hf_tokenizer_ignores_the_truncation_and_padding_a_tokenizer_json_saved(tmp_path,
                                                                                saved):
  # Repacked checkpoints ship a tokenizer.json with the truncation (max_length 2048) or
  # padding (Fixed(128)) it was last used with, and Tokenizer.encode applies them even
  # without special tokens: a response was cut on the right and <eos> appended mid-answer
  # (truncate=False raising nothing), or pad ids were scored as response tokens.
  tokenizers = pytest.importorskip('tokenizers')
  vocab = {'<unk>': 0, '<pad>': 1, '</s>': 2, 'the': 3, 'cat': 4, 'sat': 5, 'on': 6, 'mat': 7}
  hf = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  hf.save(str(tmp_path / 'plain.json'))
  if saved == 'truncation':
    hf.enable_truncation(max_length=2)
  else:
    hf.enable_padding(pad_id=1, pad_token='<pad>', length=8)
  hf.save(str(tmp_path / 'saved.json'))
  kwargs = dict(eos_token='</s>', pad_token='<pad>')
  want = tokenize.encode_pairs(tokenize.HFTokenizer(tmp_path / 'plain.json', **kwargs),
                               ['the cat'], ['sat on the mat'], max_len=10, truncate=False)
  np.testing.assert_array_equal(want.tokens[0], [3, 4, 5, 6, 3, 7, 2, 1, 1, 1])
  for tokenizer in (tmp_path / 'saved.json', hf):  # a file, or a caller's Tokenizer object
    got = tokenize.encode_pairs(tokenize.HFTokenizer(tokenizer, **kwargs), ['the cat'],
                                ['sat on the mat'], max_len=10, truncate=False)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.response_mask, want.response_mask)
  # The caller's object keeps its own settings.
  assert (hf.truncation if saved == 'truncation' else hf.padding) is not None


def test_byte_level_bpe_glues_prompt_and_response_unless_the_newline_separates_them():
  """A byte-level BPE (Qwen2, Llama-3) encodes the separately encoded response without a
  leading space: with no sep token the model reads 'a lot.positive'; sep_token='Ċ' (the
  byte-level newline) gives 'a lot.\npositive' (encode_pairs' docstring, the LLM configs)."""
  tokenizers = pytest.importorskip('tokenizers')
  alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
  vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
  vocab['<eos>'] = len(vocab)
  hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, []))
  hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  hf.decoder = tokenizers.decoders.ByteLevel()
  hf.add_special_tokens(['<eos>'])
  for sep_token, text in ((None, 'a lot.positive<eos>'), ('Ċ', 'a lot.\npositive<eos>')):
    tok = tokenize.HFTokenizer(hf, eos_token='<eos>', sep_token=sep_token)
    batch = tokenize.encode_pairs(tok, ['a lot.'], ['positive'], max_len=24)
    ids = batch.tokens[0, :batch.lengths[0]].tolist()
    assert hf.decode(ids, skip_special_tokens=False) == text
    response = [hf.id_to_token(i) for i in batch.tokens[0][batch.response_mask[0] > 0]]
    assert response == list('positive') + ['<eos>']  # no 'Ġ' (space) before 'p'
  # What load_lm_checkpoint warns of when no separator is named.
  assert tokenize.glues_texts_encoded_apart(tokenize.HFTokenizer(hf))


def test_glues_texts_encoded_apart_tells_byte_level_from_metaspace_and_word_level():
  tokenizers = pytest.importorskip('tokenizers')
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  byte_level = tokenizers.Tokenizer(tokenizers.models.BPE(
      {symbol: i for i, symbol in enumerate(alphabet)}, []))
  byte_level.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  byte_level.decoder = tokenizers.decoders.ByteLevel()
  assert byte_level.decode(byte_level.encode('a').ids + byte_level.encode('b').ids) == 'ab'
  assert tokenize.glues_texts_encoded_apart(tokenize.HFTokenizer(byte_level))
  # Llama-2's Metaspace starts every text with its word marker, as a space would.
  letters = sorted(set('▁Theanswerishere'))
  metaspace = tokenizers.Tokenizer(tokenizers.models.BPE(
      {symbol: i for i, symbol in enumerate(letters)}, []))
  metaspace.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
  metaspace.decoder = tokenizers.decoders.Metaspace()
  assert metaspace.decode(metaspace.encode('is').ids + metaspace.encode('here').ids) == 'is here'
  assert not tokenize.glues_texts_encoded_apart(tokenize.HFTokenizer(metaspace))
  # A word-level tokenizer (the tests' checkpoints) joins words with spaces whatever it read.
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel({'[UNK]': 0, 'is': 1},
                                                           unk_token='[UNK]'))
  words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  assert not tokenize.glues_texts_encoded_apart(tokenize.HFTokenizer(words))


def test_hf_tokenizer_honours_llama3_ignore_merges(tmp_path):
  """Llama-3's tokenizer.json sets BPE `ignore_merges`: a word in the vocabulary is one
  token, whatever the merges. tokenizers < 0.19 ignores the field without a word and splits
  such words, so the installed version must be the one setup.py's floor asks for."""
  pytest.importorskip('tokenizers')
  spec = {'version': '1.0', 'truncation': None, 'padding': None, 'added_tokens': [],
          'normalizer': None, 'pre_tokenizer': {'type': 'WhitespaceSplit'},
          'post_processor': None, 'decoder': None,
          'model': {'type': 'BPE', 'dropout': None, 'unk_token': None,
                    'continuing_subword_prefix': None, 'end_of_word_suffix': None,
                    'fuse_unk': False, 'byte_fallback': False, 'ignore_merges': True,
                    'vocab': {'a': 0, 'b': 1, 'c': 2, 'ab': 3, 'abc': 4},
                    'merges': ['a b']}}
  (tmp_path / 'tokenizer.json').write_text(json.dumps(spec))
  tok = tokenize.HFTokenizer(tmp_path / 'tokenizer.json')
  assert tok.encode('abc') == [4]  # merges alone give 'ab' + 'c' = [3, 2]
