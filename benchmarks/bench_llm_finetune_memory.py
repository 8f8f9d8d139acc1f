"""Memory of the LLM fine-tunings behind the ground truth, TRAK and TracIn, from XLA's compiler.

Before any gradient block (`bench_lm_ntk_memory.py`), three methods of the paper-scale LLM
tables fine-tune the whole model (`configs/valuation_table.py`: AdamW, float32, batch 8 of
t = 512 tokens, 200 steps, `Llama(remat=True)`), and the ground truth then evaluates the
test split. Each row compares the program the code ran before with the one the LLM configs
now run, both lowered and compiled on abstract shapes (nothing model-sized is allocated;
`compiled.memory_analysis()`, peak = argument + output + temp - alias, as in
bench_lm_ntk_memory.py):
  - ground truth: `ground_truth.vmap_seeds` True (reference: `training._fit_many` over the
    config's R = 2 seeds) against False (`training._fit_jit`, one seed), on the largest
    contributor's 2,000 examples (`retrain` pads to that size; 2,048 rows here, 0.6 MB of
    input more);
  - TRAK: `baselines.trak.vmap_models` True (`_fit_many` over 3 models) against False (one
    model), on the 13,200-example pool padded to 16,384;
  - TracIn: `baselines.tracin.checkpoints_on_host` False (`_fit_jit` stacking 5 checkpoints
    on the device) against True (`training._fit_segment`, one checkpoint's 40 steps, the
    carry donated), on the same pool;
  - evaluation: `ground_truth.eval_block_size` 512 (`_eval_block_many` over 2 seeds, 512
    rows of full-vocabulary logits) against 8 (`_eval_block`, one seed).
ratio = the reference's peak over the row's. Shapes are the public config.json values in
bench_lm_ntk_memory.MODELS.

Caveats (as bench_lm_ntk_memory.py's): a CPU's buffer assignment is not a GPU's (on an
H200 the NTK block's activation buffers took 0.65x of the CPU figure; parameters and
optimizer state do not shrink), and argument + output + temp counts
every buffer as live at once. The host copies of TracIn's checkpoints (5 x the parameters)
are host memory and not in the table.

Usage:
  .venv/bin/python benchmarks/bench_llm_finetune_memory.py --models Qwen2.5-0.5B   # ~3 min
  .venv/bin/python benchmarks/bench_llm_finetune_memory.py                # 3 shapes, ~10 min
  .venv/bin/python benchmarks/bench_llm_finetune_memory.py --tiny         # seconds (tests)
"""

import argparse
import json
import time

import bench_lm_ntk_memory  # benchmarks/: the script's folder is on sys.path

_GIB = 2**30

# A 2-block model of the same family, for the tests: seconds to compile.
TINY = dict(model_type='qwen2', hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=1000,
            tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6,
            max_position_embeddings=512, hidden_act='silu')

# (row, what the config field was before, what the LLM configs set now)
ROWS = (('ground truth', 'vmap_seeds=True, R=2', 'vmap_seeds=False'),
        ('TRAK', 'vmap_models=True, R=3', 'vmap_models=False'),
        ('TracIn', 'checkpoints on the device, J=5', 'checkpoints_on_host=True'),
        ('evaluation', 'eval_block_size=512, R=2', 'eval_block_size=8'))


def _peak(lowered) -> float:
  m = lowered.compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes) / _GIB


def measure(hf: dict, *, seq_len: int, batch_size: int, steps: int, checkpoints: int,
            gt_capacity: int, pool_capacity: int) -> list:
  """`[(row, reference GiB, ours GiB)]` for one model shape (`ROWS`' order)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dv_jax import tasks  # pylint: disable=g-import-not-at-top
  from dv_jax import training  # pylint: disable=g-import-not-at-top
  from dv_jax.models.llama import Llama  # pylint: disable=g-import-not-at-top
  from dv_jax.models.llama import LlamaConfig  # pylint: disable=g-import-not-at-top

  model = Llama(LlamaConfig.from_hf_dict(hf), dtype=jnp.float32, param_dtype=jnp.float32,
                remat=True)
  spec = jax.ShapeDtypeStruct
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), spec((1, 1), jnp.int32))['params']
  # The LLM tasks' classifier: input rows [b, 3, t] (tokens, response mask, length).
  apply_fn = tasks.lm_classifier(tasks._LlamaApply(model))  # pylint: disable=protected-access
  recipe = dict(optimizer='adamw', schedule='cosine', steps=steps, weight_decay=0.0,
                momentum=0.0)
  scalar = dict(n=spec((), jnp.int32), lr=spec((), jnp.float32))

  def data(capacity):
    return spec((capacity, 3, seq_len), jnp.float32), spec((capacity,), jnp.int32)

  one_key = spec((2,), jnp.uint32)

  def keys(r):
    return spec((r, 2), jnp.uint32)

  def fit(capacity, every=0):
    return training._fit_jit.lower(  # pylint: disable=protected-access
        params, *data(capacity), scalar['n'], one_key, scalar['lr'],
        apply_fn=apply_fn, batch_size=batch_size, checkpoint_every=every, **recipe)

  def fit_many(capacity, r):
    return training._fit_many.lower(  # pylint: disable=protected-access
        params, *data(capacity), scalar['n'], keys(r), scalar['lr'], apply_fn=apply_fn,
        batch_size=batch_size, checkpoint_every=0, **recipe)

  def segment(capacity, length):
    state = jax.eval_shape(lambda p: training._init_state(  # pylint: disable=protected-access
        p, jnp.float32(1e-5), **recipe), params)
    return training._fit_segment.lower(  # pylint: disable=protected-access
        (params, state), *data(capacity), scalar['n'], one_key,
        scalar['lr'], spec((), jnp.int32), apply_fn=apply_fn, batch_size=batch_size,
        length=length, **recipe)

  def evaluate(rows, r):
    x, y = data(rows)
    mask = spec((rows,), jnp.float32)
    if r == 1:
      return training._eval_block.lower(params, x, y, mask, apply_fn=apply_fn)  # pylint: disable=protected-access
    stacked = jax.tree_util.tree_map(lambda a: spec((r,) + a.shape, a.dtype), params)
    return training._eval_block_many.lower(stacked, x, y, mask, apply_fn=apply_fn)  # pylint: disable=protected-access

  every = steps // checkpoints
  pairs = ((fit_many(gt_capacity, 2), fit(gt_capacity)),
           (fit_many(pool_capacity, 3), fit(pool_capacity)),
           (fit(pool_capacity, every), segment(pool_capacity, every)),
           (evaluate(512, 2), evaluate(8, 1)))
  return [(row[0], _peak(reference), _peak(ours)) for row, (reference, ours)
          in zip(ROWS, pairs)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='*', default=list(bench_lm_ntk_memory.MODELS),
                      choices=list(bench_lm_ntk_memory.MODELS))
  parser.add_argument('--tiny', action='store_true',
                      help='a 2-block model of 1,000 tokens, t = 32 (the tests)')
  parser.add_argument('--out', help='write the rows as JSON to this path')
  args = parser.parse_args()
  if args.tiny:
    shapes = {'tiny': (TINY, dict(seq_len=32, batch_size=2, steps=10, checkpoints=5,
                                  gt_capacity=16, pool_capacity=64))}
  else:
    paper = dict(seq_len=512, batch_size=8, steps=200, checkpoints=5, gt_capacity=2048,
                 pool_capacity=16384)
    shapes = {name: (bench_lm_ntk_memory.MODELS[name], paper) for name in args.models}
  out = []
  print('| model | program | before | peak GiB | now | peak GiB | ratio | compile s |')
  print('|---|---|---|---|---|---|---|---|')
  for name, (hf, sizes) in shapes.items():
    start = time.perf_counter()
    rows = measure(hf, **sizes)
    seconds = time.perf_counter() - start
    for (row, before, now), (reference, ours) in zip(ROWS, [(r[1], r[2]) for r in rows]):
      print(f'| {name} | {row} | {before} | {reference:.2f} | {now} | {ours:.2f} | '
            f'{reference / ours:.1f}x | {seconds:.0f} |')
      out.append(dict(model=name, program=row, reference_gib=reference, gib=ours))
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump({'rows': out}, f, indent=1)


if __name__ == '__main__':
  main()
