r"""Lemma 1: three-phase scaling of the knowledge-acquisition model (METHOD.md section 1).

Reproduces the theory behind the paper's CIFAR-100 scaling figure (test error against
training-set size on log axes for a real-synthetic mixture, beta=2, k=70, pi=0.0625, with
the breakpoints k^beta and k^beta/pi marked): exact error curves E(n) = sum_i p_i
(1 - q_i)^n for Zipf items, a Monte Carlo check, and broken-power-law fits that locate the
breaks. Beyond the paper, the same curves for soft truncations (top-p, temperature, the
finite sample a generator saw), whose breaks the paper leaves open.

Command (CPU; `make quickstart` runs exactly this):

  python experiments/lemma1_theory.py --config=configs/lemma1_theory.py \
      --workdir=workdirs/lemma1_theory

Variants: `configs/lemma1_theory.py:smoke` (tiny, seconds; used by the tests).

Expected result (default, measured): at the paper's cell E(100)=0.0686, E(4900)=0.01119,
E(78400)=0.00717, E(3e6)=0.00160 (quoted: 0.069, 0.0112, 0.0072, 0.0016), Monte Carlo
(50 trials) within 2 standard errors of each. Hard truncation: BIC picks 2 breaks in all 12
cells; fitted/paper ratio 1.05-1.39 for n1 = k^beta and 1.44-2.71 for n2 = k^beta/pi (below
1.9 at pi=0.0625, 2.1-2.7 at pi=0.25, where the plateau is short and sloped); fitted/ours
(asymptote crossings) 0.96-1.06 for n1 and 1.37-2.05 for n2. The paper's cell: fitted
breaks 6.7e3 [6.4e3, 7.1e3] and 1.45e5 [1.37e5, 1.50e5] against 4900 and 78400 (95%
residual bootstrap; the curve is exact, so its residuals are the smooth form's misfit and
the interval says how tightly that form pins the bends, not any sampling noise). Top-p
behaves as hard truncation at its head size; temperature gives one break (slope
tau s -> s, s = 1 - 1/beta) in 7/12 cells; finite samples give a plateau ending near M and
M/pi. Runtime: ~31 s of CPU (1-2 min wall on a loaded 2-core machine); a rerun
reuses every unit in ~5 s.
"""

import ml_collections


def get_config(arg=None):
  """Returns the config; `arg` selects a variant: None / 'default' or 'smoke'."""
  variant = arg or 'default'
  if variant not in ('default', 'smoke'):
    raise ValueError(f"unknown variant {arg!r}; use 'default' or 'smoke'")
  smoke = variant == 'smoke'
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Theory: Zipf items, truncation mechanisms (one parameter list per mode), mixture ratios.
  config.data = ml_collections.ConfigDict()
  config.data.num_items = 5_000 if smoke else 1_000_000
  config.data.betas = (2.0,) if smoke else (2.0, 2.5, 3.0)
  config.data.pis = (0.25,) if smoke else (0.0625, 0.25)
  config.data.modes = ('hard', 'top_p', 'temperature', 'finite_sample')
  config.data.ks = (10,) if smoke else (30, 70)                # hard: truncation rank k
  config.data.top_ps = (0.9,) if smoke else (0.99, 0.999)     # top_p: kept real mass
  config.data.temperatures = (0.5,) if smoke else (0.5, 0.7)  # temperature: tau < 1
  config.data.num_samples = (200,) if smoke else (10_000, 100_000)  # finite_sample: M draws
  # The paper's cell and its quoted error values (METHOD.md section 1).
  config.data.reference = ml_collections.ConfigDict()
  config.data.reference.num_items = 10_000 if smoke else 1_000_000
  config.data.reference.beta = 2.0
  config.data.reference.k = 70
  config.data.reference.pi = 0.0625
  config.data.reference.ns = (100, 4900, 78400, 3_000_000)
  config.data.reference.paper_errors = (0.069, 0.0112, 0.0072, 0.0016)

  # The n grid of every curve (log-spaced) and the Monte Carlo check at the reference cell.
  config.scaling = ml_collections.ConfigDict()
  config.scaling.n_min = 10.0
  config.scaling.n_max = 1e5 if smoke else 1e9
  config.scaling.num_points = 25 if smoke else 65
  config.scaling.mc_ns = (100, 4900, 78400, 3_000_000)
  config.scaling.mc_trials = 4 if smoke else 50

  # Broken power-law fit (dv_jax.scaling.fit_broken_power_law).
  config.fit = ml_collections.ConfigDict()
  config.fit.max_breaks = 2
  config.fit.num_bootstrap = 5 if smoke else 100
  config.fit.bootstrap = 'residual'
  config.fit.ci_level = 0.95
  config.fit.floor = False  # E(n) -> 0: no irreducible error in this model
  config.fit.grid_points = 25
  config.fit.num_starts = 3
  config.fit.min_segment_points = 3
  config.fit.min_break_ratio = 2.0
  config.fit.initial_smoothness = 0.5
  config.fit.smoothness_range = (0.02, 3.0)
  config.fit.slope_range = (0.0, 10.0)  # segment decay exponents: E(n) never rises
  config.fit.sigma_floor = 1e-3
  config.fit.max_evaluations = 200

  config.output = ml_collections.ConfigDict()
  config.output.progress = not smoke        # tqdm bar
  config.output.figure_dpi = 72 if smoke else 150
  config.output.grid_beta = 2.0             # beta shown in the all-modes figure
  config.output.grid_columns = 2
  return config
