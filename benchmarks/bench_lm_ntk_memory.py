"""Memory of one block of LM per-example gradients at 0.5B-1.5B shapes, from XLA's compiler.

The NTK of a language model is the Gram matrix of per-example gradients of
g(x; theta) = mean response-token log-probability (`dv_jax.models.lm.response_logprob_fn`),
computed by `dv_jax.ntk.per_example_grads` in jitted blocks of b examples: each block is one
call of the module-level `dv_jax.ntk._grads_block`. The claim under test is that a random
projection to k dimensions plus a `param_filter` for the last layers makes this fit in GPU
memory for a 0.5B-1.5B model. No GPU and no 0.5B-sized allocation is needed for that: each
case lowers and compiles `_grads_block` on abstract shapes
(`_grads_block.lower(spec, params_abstract, key, x_abstract, y_abstract).compile()`) and
reads `compiled.memory_analysis()`:
  - argument MB: the parameters (all of them: unselected leaves are inputs too), the tokens
    [b, t] and the response mask [b, t];
  - output MB: the block's result, [b, p] unprojected or [b, k] projected;
  - temp MB: XLA's buffers for everything in between (activations, per-example gradients,
    logits [b, t, V], projection chunks);
  - peak MB = argument + output + temp - alias, the executable's footprint as XLA's buffer
    assignment sizes it (alias is 0 in every case here);
  - ref/peak: the reference row's peak over this row's, per model (the reference is
    measured in the same run);
  - pool: the gradients of the whole pool of n examples (`--pool`, default 2000, the
    paper-scale config's LLM subsample budget), n * (k or p) * 4 bytes: what the NTK
    G G^T is built from, whatever the block size.
Shapes are the public Hugging Face `config.json` values of Qwen2.5-0.5B, Llama-3.2-1B and
Qwen2.5-1.5B (hard-coded below), float32 parameters and compute, `Llama(remat=True)` as the
paper-scale config (`configs/valuation_table.py`, model.remat = not smoke), sequence
length t (`--seq-len`, default 512 = the config's max_len) and block b (`--block-size`,
default 4 = the config's grad_block_size). Cases:
  - reference: all parameters, no projection: output [b, p];
  - all+proj: all parameters, projected to k (`--proj-dim`, default 2048);
  - last2+proj: the paper-scale config's filter 'last_layers:2', resolved as the config's
    is (`lm.resolve_param_filter`: the last two blocks and the final norm; the tied head
    is the embedding and is not selected), projected to k;
  - last2: the same filter, no projection;
  - downproj+proj: r'(^|/)norm(/|$)|mlp/down_proj', the final norm and every block's MLP
    output projection (what the paper-scale config selected before 'last_layers:2'): fewer
    parameters than all, but spread over every block, so the backward pass runs through
    all of them; projected to k.
Compile s is lowering plus compilation; compile RSS MB is the child's peak resident memory,
which is the compiler's (nothing model-sized is allocated).

`--measure` checks the estimate against a real run: a fresh child per shape in
`--measure-models` (default Qwen2.5-0.5B) compiles the last2+proj block at
`--measure-seq-len` (128) and `--measure-block-size` (2), creates random float32
parameters (~1.9 GB at 0.5B), runs the compiled block on random tokens, and reports the
memory the block took beyond the parameters, next to the compiled output + temp of the
same executable, and the wall time of the block:
  - on a CPU, its peak resident memory (`VmHWM`, its high-water mark restarted through
    /proc/self/clear_refs once the parameters exist) minus its resident memory just after
    the parameters were created;
  - on a GPU or TPU, where the buffers live in device memory, the device allocator's
    `peak_bytes_in_use` after the run minus its `bytes_in_use` after the parameters (the
    peak cannot be reset; creating the parameters leaf by leaf peaks lower), and a second
    call of the block is timed, the first one paying the runtime's one-off set-up.
Drawing the projection costs about p * k random values per block whatever b is, which a
CPU does slowly, so the measured row projects to `--measure-proj-dim` (256) instead of k;
the compiled estimate at k is printed next to it, and the same block without projection is
timed to separate the projection's share of the time. On an accelerator pass
`--measure-proj-dim 2048 --measure-seq-len 512 --measure-block-size 4`: the paper-scale
config's block itself.

Caveats: the compile-only table is the buffer assignment of the backend it runs on (a
CPU's and a GPU's differ: fusion, rematerialisation and scheduling), and argument +
output + temp counts every buffer as if live at once, an upper-bound-style estimate of the
executable's footprint; it excludes the runtime's own overhead and the rest of the
pipeline (kernel, MMD, other blocks' outputs).

Usage:
  .venv/bin/python benchmarks/bench_lm_ntk_memory.py --quick     # 0.5B shape, t = 128
  .venv/bin/python benchmarks/bench_lm_ntk_memory.py             # 3 shapes, t = 512, b = 4
  .venv/bin/python benchmarks/bench_lm_ntk_memory.py --measure --models   # the real run only
  python benchmarks/bench_lm_ntk_memory.py --models --measure --measure-models Qwen2.5-0.5B \
      Llama-3.2-1B Qwen2.5-1.5B --measure-seq-len 512 --measure-block-size 4 \
      --measure-proj-dim 2048                     # on a GPU: the config's block, 3 shapes
  .venv/bin/python benchmarks/bench_lm_ntk_memory.py --out /tmp/lm_ntk_memory.json
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import case_runner  # benchmarks/case_runner.py: the script's folder is on sys.path


_MB = 2**20

# The public config.json of each model (huggingface.co/<name>/blob/main/config.json), the
# fields that shape the network. `LlamaConfig.from_hf_dict` drops the fields it does not
# store (it rejects use_sliding_window=true); the run prints which of these it dropped.
MODELS = {
    'Qwen2.5-0.5B': dict(
        model_type='qwen2', hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=32768, hidden_act='silu', use_sliding_window=False,
        sliding_window=32768, max_window_layers=24, torch_dtype='bfloat16'),
    'Llama-3.2-1B': dict(
        model_type='llama', hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        tie_word_embeddings=True, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=dict(rope_type='llama3', factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        max_position_embeddings=131072, hidden_act='silu', attention_bias=False,
        mlp_bias=False, torch_dtype='bfloat16'),
    'Qwen2.5-1.5B': dict(
        model_type='qwen2', hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
        max_position_embeddings=131072, hidden_act='silu', use_sliding_window=False,
        sliding_window=131072, max_window_layers=28, torch_dtype='bfloat16'),
}

CASES = ('reference', 'all+proj', 'last2+proj', 'last2', 'downproj+proj')
# Every block's MLP output and the final norm: a filter spread over all blocks.
DOWN_PROJ_FILTER = r'(^|/)norm(/|$)|mlp/down_proj'


# ----------------------------------------------------------------------------------------
# Child side: one case, printed as one JSON line.


def _setup(case: dict):
  """Model, abstract params, the NTK scalar and the parameter filter of one case."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dv_jax.models import lm  # pylint: disable=g-import-not-at-top
  from dv_jax.models.llama import Llama  # pylint: disable=g-import-not-at-top
  from dv_jax.models.llama import LlamaConfig  # pylint: disable=g-import-not-at-top

  hf = MODELS[case['model']]
  config = LlamaConfig.from_hf_dict(hf)
  model = Llama(config, dtype=jnp.float32, param_dtype=jnp.float32, remat=case['remat'])
  params_abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                   jax.ShapeDtypeStruct((1, 1), jnp.int32))['params']
  # The lambda is one object for the child's life, so jit's identity hash never recompiles.
  scalar_fn = lm.response_logprob_fn(lambda p, x: model.apply({'params': p}, x))
  name = case['name']
  if name in ('reference', 'all+proj'):
    param_filter = None
  elif name == 'downproj+proj':
    param_filter = DOWN_PROJ_FILTER
  else:  # configs/valuation_table.py's paper-scale LLM spec, resolved as the run resolves it
    param_filter = lm.resolve_param_filter('last_layers:2', params_abstract)
  ignored = sorted(set(hf) - {field.name for field in dataclasses.fields(LlamaConfig)})
  return model, config, params_abstract, scalar_fn, param_filter, ignored


def _compile(scalar_fn, params, param_filter, proj_dim, b: int, t: int):
  """The compiled `_grads_block` of `per_example_grads` for a block of b sequences of t."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from dv_jax import ntk  # pylint: disable=g-import-not-at-top

  # Built exactly as per_example_grads builds them (ntk.py), so the executable is the one a
  # real run would call per block.
  mask = ntk._selection_mask(params, param_filter)  # pylint: disable=protected-access
  spec = ntk._GradSpec(scalar_fn, mask, proj_dim,  # pylint: disable=protected-access
                       None if proj_dim is None else 'rademacher')
  key = None if proj_dim is None else jax.random.PRNGKey(0)
  tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
  response_mask = jax.ShapeDtypeStruct((b, t), jnp.float32)
  start = time.perf_counter()
  lowered = ntk._grads_block.lower(spec, params, key, tokens,  # pylint: disable=protected-access
                                   response_mask)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  memory = {field: int(getattr(stats, f'{field}_size_in_bytes'))
            for field in ('argument', 'output', 'temp', 'alias')}
  memory['peak'] = memory['argument'] + memory['output'] + memory['temp'] - memory['alias']
  p = ntk.flat_param_count(params, param_filter)
  return compiled, key, {'p': p, 'compile_s': compile_s, **memory}


def _run_compile_case(case: dict) -> dict:
  _, config, params_abstract, scalar_fn, param_filter, ignored = _setup(case)
  proj_dim = case['proj_dim'] if case['name'].endswith('+proj') else None
  _, _, result = _compile(scalar_fn, params_abstract, param_filter, proj_dim, case['b'],
                          case['t'])
  result.update(status='ok', k=proj_dim, compile_rss_mb=case_runner.maxrss_mb(),
                ignored_fields=ignored,
                logits_mb=4 * case['b'] * case['t'] * config.vocab_size / _MB)
  return result


def _reset_peak_rss() -> bool:
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _random_params(params_abstract, scale: float):
  """Float32 params of the given shapes: norm weights 1, biases 0, the rest N(0, scale^2).

  Filled in place in NumPy one leaf at a time and copied to jax before the next, so the
  resident memory afterwards is the parameters plus little, and the transient one leaf.
  (A jitted `model.init` leaves several GB of its own buffers resident on CPU, which the
  block could then reuse unseen.)
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)

  def make(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if name == 'weight':
      return jnp.ones(leaf.shape, jnp.float32)
    if name == 'bias':
      return jnp.zeros(leaf.shape, jnp.float32)
    values = np.empty(leaf.shape, np.float32)
    rng.standard_normal(dtype=np.float32, out=values)
    values *= scale
    return jnp.asarray(values).block_until_ready()

  return jax.tree_util.tree_map_with_path(make, params_abstract)


def _device_memory() -> dict:
  """The default device's allocator statistics; empty on a CPU (which has none).

  On a GPU or TPU the parameters and the block's buffers live in device memory, which the
  process's RSS does not see: `bytes_in_use` and `peak_bytes_in_use` (since the process
  started; JAX cannot reset it) are what the allocator reports.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() == 'cpu':
    return {}
  stats = jax.devices()[0].memory_stats() or {}
  return {key: int(stats[key]) for key in ('bytes_in_use', 'peak_bytes_in_use') if key in stats}


def _run_measure_case(case: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  _, config, params_abstract, scalar_fn, param_filter, _ = _setup(case)
  b, t = case['b'], case['t']
  # Compiled before the parameters exist, so the compiler's own memory is not counted in
  # the run's increment, and the estimate and the run are one and the same executable.
  compiled, key, estimate = _compile(scalar_fn, params_abstract, param_filter,
                                     case['proj_dim'], b, t)
  estimate_full_k = estimate
  if case['full_proj_dim'] != case['proj_dim']:
    _, _, estimate_full_k = _compile(scalar_fn, params_abstract, param_filter,
                                     case['full_proj_dim'], b, t)
  compiled_noproj, _, estimate_noproj = _compile(scalar_fn, params_abstract, param_filter,
                                                 None, b, t)
  rss_before_params_mb = case_runner.current_rss_mb()
  device_before_params = _device_memory()

  start = time.perf_counter()
  params = _random_params(params_abstract, config.initializer_range)
  init_s = time.perf_counter() - start
  rss_params_mb = case_runner.current_rss_mb()
  device_params = _device_memory()
  maxrss_init_mb = case_runner.maxrss_mb()
  # Restart the high-water mark here, so VmHWM below is the block's own peak and not
  # an earlier transient (Linux >= 4.0; otherwise the peak since the process started).
  hwm_reset = _reset_peak_rss()

  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (b, t)), jnp.int32)
  response_mask = jnp.asarray(np.arange(t)[None].repeat(b, 0) >= t // 2, jnp.float32)
  start = time.perf_counter()
  grads_bk = compiled(params, key, tokens, response_mask)
  grads_bk.block_until_ready()
  block_s = time.perf_counter() - start
  maxrss_run_mb = case_runner.maxrss_mb()
  device_run = _device_memory()
  finite = bool(jnp.isfinite(grads_bk).all())

  # After the memory reading: the same block without the projection, for the time split.
  start = time.perf_counter()
  compiled_noproj(params, None, tokens, response_mask).block_until_ready()
  block_noproj_s = time.perf_counter() - start
  # An accelerator's first call also pays one-off runtime set-up (kernel loading): the
  # steady time per block, what a pool of n / b blocks costs, is the second call's.
  block_again_s = None
  if device_run:
    start = time.perf_counter()
    compiled(params, key, tokens, response_mask).block_until_ready()
    block_again_s = time.perf_counter() - start
  return {'status': 'ok', 'estimate': estimate, 'estimate_full_k': estimate_full_k,
          'estimate_noproj': estimate_noproj, 'rss_before_params_mb': rss_before_params_mb,
          'rss_params_mb': rss_params_mb, 'maxrss_init_mb': maxrss_init_mb,
          'maxrss_run_mb': maxrss_run_mb, 'init_s': init_s, 'block_s': block_s,
          'block_noproj_s': block_noproj_s, 'block_again_s': block_again_s, 'finite': finite,
          'hwm_reset': hwm_reset,
          'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'device_before_params': device_before_params, 'device_params': device_params,
          'device_run': device_run}


def _child(case: dict) -> None:
  result = _run_compile_case(case) if case['kind'] == 'compile' else _run_measure_case(case)
  case_runner.print_result(result)


# ----------------------------------------------------------------------------------------
# Parent side: spawn, collect, print.


def _human_bytes(num: float) -> str:
  for unit, size in (('TB', 2**40), ('GB', 2**30), ('MB', 2**20), ('KB', 2**10)):
    if num >= size:
      return f'{num / size:.3g} {unit}'
  return f'{num:.0f} B'


def _print_table(rows: list, pool: int) -> None:
  print(f'\n| model | case | p | k | argument MB | output MB | temp MB | peak MB | ref/peak '
        f'| pool n={pool} | compile s | status |')
  print('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|')
  for row in rows:
    r, ref = row['result'], row['reference']
    if r['status'] != 'ok':
      print(f'| {row["model"]} | {row["case"]} | | | | | | | | | | {r["status"]} |')
      continue
    ratio = (f'{ref["peak"] / r["peak"]:.2f}x' if ref and ref['status'] == 'ok' else '-')
    width = r['k'] if r['k'] else r['p']
    print(f'| {row["model"]} | {row["case"]} | {r["p"]:,} | {r["k"] or "-"} '
          f'| {r["argument"] / _MB:,.0f} | {r["output"] / _MB:,.1f} | {r["temp"] / _MB:,.0f} '
          f'| {r["peak"] / _MB:,.0f} | {ratio} | {_human_bytes(pool * width * 4)} '
          f'| {r["compile_s"]:.1f} | ok |')
  sys.stdout.flush()


def _print_device_measure(r: dict, case: dict) -> None:
  """The accelerator's rows: its allocator's bytes, not the process's RSS."""
  est, full, noproj = r['estimate'], r['estimate_full_k'], r['estimate_noproj']
  before, params, run = r['device_before_params'], r['device_params'], r['device_run']
  in_use_params = params['bytes_in_use']
  block_peak = run['peak_bytes_in_use'] - in_use_params
  # The peak cannot be reset: if creating the parameters peaked higher than the block,
  # the block's own peak is only bounded by it.
  bounded = run['peak_bytes_in_use'] <= params['peak_bytes_in_use']
  print(f'{r["device_kind"]} ({r["backend"]}); device memory from the allocator\'s '
        f'memory_stats(), MB = 2^20 bytes')
  print('| quantity | MB |')
  print('|---|---:|')
  print(f'| compiled argument (params + tokens) | {est["argument"] / _MB:,.0f} |')
  print(f'| device bytes in use after params created, minus before | '
        f'{(in_use_params - before.get("bytes_in_use", 0)) / _MB:,.0f} |')
  print(f'| compiled output + temp, k = {case["proj_dim"]} | '
        f'{(est["output"] + est["temp"]) / _MB:,.0f} |')
  if case['proj_dim'] != case['full_proj_dim']:
    print(f'| compiled output + temp, k = {case["full_proj_dim"]} (same shapes) | '
          f'{(full["output"] + full["temp"]) / _MB:,.0f} |')
  print(f'| compiled output + temp, no projection (same filter) | '
        f'{(noproj["output"] + noproj["temp"]) / _MB:,.0f} |')
  print(f'| **measured: device peak of the run minus in use after params** | '
        f'**{"<= " if bounded else ""}{block_peak / _MB:,.0f}** |')
  print(f'| device peak of the process (params + block) | '
        f'{run["peak_bytes_in_use"] / _MB:,.0f} |')
  print(f'\np = {est["p"]:,}; one block: {r["block_s"]:.3f} s the first call, '
        f'{r["block_again_s"]:.3f} s the second, with the projection to k = '
        f'{case["proj_dim"]}; {r["block_noproj_s"]:.3f} s without (the gradients alone); '
        f'init {r["init_s"]:.1f} s; output finite: {r["finite"]}; '
        f'child wall {r["wall_s"]:.0f} s.')
  sys.stdout.flush()


def _print_measure(r: dict, case: dict) -> None:
  print(f'\nMeasured: {case["model"]} shape, random float32 init, last2+proj, '
        f't = {case["t"]}, b = {case["b"]}, k = {case["proj_dim"]} '
        f'(remat={case["remat"]})')
  if r['status'] != 'ok':
    print(f'  {r["status"]}')
    return
  if r.get('device_run'):
    _print_device_measure(r, case)
    return
  est, full, noproj = r['estimate'], r['estimate_full_k'], r['estimate_noproj']
  measured_mb = r['maxrss_run_mb'] - r['rss_params_mb']
  print('| quantity | MB |')
  print('|---|---:|')
  print(f'| compiled argument (params + tokens) | {est["argument"] / _MB:,.0f} |')
  print(f'| resident after params created, minus before | '
        f'{r["rss_params_mb"] - r["rss_before_params_mb"]:,.0f} |')
  print(f'| compiled output + temp, k = {case["proj_dim"]} | '
        f'{(est["output"] + est["temp"]) / _MB:,.0f} |')
  print(f'| compiled output + temp, k = {case["full_proj_dim"]} (same shapes) | '
        f'{(full["output"] + full["temp"]) / _MB:,.0f} |')
  print(f'| compiled output + temp, no projection (same filter) | '
        f'{(noproj["output"] + noproj["temp"]) / _MB:,.0f} |')
  print(f'| **measured: peak RSS of the run minus RSS after params** | **{measured_mb:,.0f}** |')
  print(f'| peak RSS while creating params (before the reset) | {r["maxrss_init_mb"]:,.0f} |')
  print(f'| peak RSS of the run (high-water mark '
        f'{"reset after params" if r["hwm_reset"] else "NOT reset: since process start"}) '
        f'| {r["maxrss_run_mb"]:,.0f} |')
  print(f'\np = {est["p"]:,}; one block: {r["block_s"]:.1f} s with the projection to '
        f'k = {case["proj_dim"]}, {r["block_noproj_s"]:.1f} s without '
        f'(the gradients alone); init {r["init_s"]:.1f} s; output finite: {r["finite"]}; '
        f'child wall {r["wall_s"]:.0f} s.')
  if case['proj_dim'] != case['full_proj_dim']:
    print(f'The measured row projects to k = {case["proj_dim"]}, not {case["full_proj_dim"]}: '
          f'the draws cost ~p * k random values per block, so k = {case["full_proj_dim"]} '
          f'would take about {case["full_proj_dim"] / case["proj_dim"]:.0f}x the projection '
          f'time on this CPU; its compiled memory is in the table above.')
  sys.stdout.flush()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', nargs='*', default=list(MODELS), choices=list(MODELS),
                      help='model shapes for the compile-only table (none: skip it)')
  parser.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
  parser.add_argument('--seq-len', type=int, default=512, help='t, tokens per example')
  parser.add_argument('--block-size', type=int, default=4, help='b, examples per block')
  parser.add_argument('--proj-dim', type=int, default=2048, help='k of the +proj cases')
  parser.add_argument('--pool', type=int, default=2000,
                      help='n, examples whose gradients make the NTK (pool column)')
  parser.add_argument('--no-remat', dest='remat', action='store_false',
                      help='Llama(remat=False) (the paper-scale config uses remat=True)')
  parser.add_argument('--quick', action='store_true',
                      help='Qwen2.5-0.5B shape only, t = 128 (overrides --models, --seq-len)')
  parser.add_argument('--measure', action='store_true',
                      help='also run last2+proj for real (on --measure-models shapes)')
  parser.add_argument('--measure-models', nargs='+', default=['Qwen2.5-0.5B'],
                      choices=list(MODELS), help='model shapes of the --measure run')
  parser.add_argument('--measure-seq-len', type=int, default=128)
  parser.add_argument('--measure-block-size', type=int, default=2)
  parser.add_argument('--measure-proj-dim', type=int, default=256,
                      help='k of the measured run (k = --proj-dim is too slow on a CPU)')
  parser.add_argument('--timeout', type=float, default=1200, help='seconds per case')
  parser.add_argument('--out', help='write the rows as JSON to this path')
  parser.add_argument('--case', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.case:
    _child(json.loads(args.case))
    return

  models = ['Qwen2.5-0.5B'] if args.quick else args.models
  t = 128 if args.quick else args.seq_len
  import jax  # pylint: disable=g-import-not-at-top
  print(f'python {sys.version.split()[0]}, jax {jax.__version__}, backend '
        f'{jax.default_backend()}, {os.cpu_count()} CPUs visible; float32, '
        f'remat={args.remat}, t = {t}, b = {args.block_size}, k = {args.proj_dim}, '
        f'pool n = {args.pool}; one subprocess per case; MB = 2^20 bytes', flush=True)

  rows = []
  for model in models:
    reference = None
    for name in args.cases:
      case = {'kind': 'compile', 'model': model, 'name': name, 't': t,
              'b': args.block_size, 'proj_dim': args.proj_dim, 'remat': args.remat}
      result = case_runner.spawn(__file__, case, args.timeout)
      if name == 'reference':
        reference = result
      rows.append({'model': model, 'case': name, 't': t, 'b': args.block_size,
                   'remat': args.remat, 'result': result, 'reference': reference})
      print(f'  {model} {name}: {result["status"]}'
            + (f' ({result["wall_s"]:.0f} s)' if 'wall_s' in result else ''),
            file=sys.stderr, flush=True)
  if rows:
    _print_table(rows, args.pool)
    for model in models:
      ok = [row['result'] for row in rows
            if row['model'] == model and row['result']['status'] == 'ok']
      if ok:
        print(f'{model}: one float32 logits copy [b, t, V] = {ok[0]["logits_mb"]:,.0f} MB; '
              f'config.json fields not stored in LlamaConfig: '
              f'{", ".join(ok[0]["ignored_fields"]) or "none"}')

  measured = []
  for model in (args.measure_models if args.measure else ()):
    case = {'kind': 'measure', 'model': model, 'name': 'last2+proj',
            't': args.measure_seq_len, 'b': args.measure_block_size,
            'proj_dim': args.measure_proj_dim, 'full_proj_dim': args.proj_dim,
            'remat': args.remat}
    measured.append({'case': case, 'result': case_runner.spawn(__file__, case, args.timeout)})
    _print_measure(measured[-1]['result'], case)

  if args.out:
    out = {'args': vars(args), 'jax': jax.__version__, 'cpus': os.cpu_count(),
           'rows': [{k: v for k, v in row.items() if k != 'reference'} for row in rows],
           'measured': measured}
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=1)
    print(f'\nwrote {args.out}')


if __name__ == '__main__':
  main()
