r"""The valuation table on real data (the paper's Table 1, analog on a CPU benchmark).

K contributors of scikit-learn's handwritten digits, each a mixture of real digits and
synthetic digits from a class-conditional PCA-Gaussian generator fitted on real digits
only, sampled through the truncations of METHOD.md section 1 (hard, top-p, temperature,
finite sample), with different sizes, real fractions pi and label noise. Every method
values the K contributors against the TARGET split; the ground truth retrains a model on
each contributor and measures the loss on the separate TEST split (never seen by a
method). Rows: our score in every variant of METHOD.md section 2 (the defaults named),
with standardized weights and with fitted weights (NNLS, leave-one-contributor-out), and
the baselines DAVINZ, TracIn, TRAK and random; columns: Spearman and Kendall against the
ground truth with bootstrap CIs, and the wall time beside the retraining cost. Backbones:
an MLP and a small CNN.

Variants (`--config=configs/valuation_table.py:<variant>`):
  digits        (default) one benchmark draw, K=12 contributors, MLP and SmallCNN backbones.
  digits_draws  the same on 5 independent draws (split, contributors and theta0 reseeded);
                the table adds mean ± std over draws.
  smoke         tiny (seconds): used by the tests.

Commands:

  python experiments/valuation_table.py --config=configs/valuation_table.py:digits \
      --workdir=workdirs/valuation_table
  python experiments/valuation_table.py --config=configs/valuation_table.py:digits_draws \
      --workdir=workdirs/valuation_table_draws

Expected result (measured, Spearman against retraining; see <workdir>/table.md):
  digits (draw 0): ours-proposed 0.78 (MLP) / 0.69 (CNN), ours-recommended the same,
    METHOD.md defaults 0.26 / 0.05; DAVINZ 0.73 / 0.66, TracIn 0.85 / 0.77, TRAK 0.71 /
    0.66, random -0.24 / -0.21. 95% bootstrap CIs are about +-0.4 wide with K=12.
  digits_draws (mean ± std over 5 draws): ours-proposed 0.73 ± 0.08 / 0.70 ± 0.10,
    ours-recommended 0.66 ± 0.09 / 0.63 ± 0.14, METHOD.md defaults 0.30 / 0.19;
    DAVINZ 0.63 / 0.56, TracIn 0.78 ± 0.13 / 0.59 ± 0.12, TRAK 0.61 / 0.58, random
    0.00 / 0.04. The 0.8 target is not reached; TracIn is ahead on the MLP.
Runtime (2 CPU cores, measured): digits 81 s wall (113 s CPU); digits_draws ~5 min.
"""

import ml_collections

VARIANTS = ('digits', 'digits_draws', 'smoke')

# Rows of our method: 'name|field=value;field=value' overrides of the config sections
# (ntk, mmd, bound, valuation); values are Python literals (bare words are strings). The
# first row is METHOD.md's defaults. `ours-recommended` (METHOD.md's options only) and
# `ours-proposed` (adds our mixture discrepancy, beyond METHOD.md) were chosen on
# development draws of the benchmark (data seeds 100-105, ground truth on half of the
# target split, the other half given to the methods), never on the test split.
OURS_DEFAULT = 'ours-paper-defaults|'
OURS_RECOMMENDED = ('ours-recommended|ntk.residual=one_hot;'
                    "bound.terms=('discrepancy','ntk','composition')")
OURS_PROPOSED = ('ours-proposed|ntk.residual=one_hot;mmd.discrepancy=mixture;'
                 "bound.terms=('discrepancy','ntk','composition')")
OURS_VARIANTS = (
    OURS_DEFAULT,
    'ours-label-aware-D|mmd.label_aware=True',
    'ours-init-features-D|mmd.feature_space=init_features',
    'ours-unbiased-D|mmd.estimator=unbiased',
    'ours-mixture-D|mmd.discrepancy=mixture',
    'ours-one-hot-N|ntk.residual=one_hot',
    'ours-paper-N-normalization|ntk.normalization=paper',
    'ours-block-diagonal-N|ntk.method=block_diagonal;ntk.block_size=64',
    'ours-label-aware-D+one-hot-N|mmd.label_aware=True;ntk.residual=one_hot',
    OURS_RECOMMENDED,
    OURS_PROPOSED,
    'ours-fit-weights|valuation.weights=fit',
    ('ours-fit-weights-proposed|valuation.weights=fit;valuation.fit_target=log_loss;'
     'ntk.residual=one_hot;mmd.discrepancy=mixture'),
)


def base_config(arg: str) -> ml_collections.ConfigDict:
  """The sections every digits valuation experiment shares: seed, data, model, ntk, mmd,
  bound, valuation (the ablation and the subsampling study load this file and add theirs).
  """
  if arg not in VARIANTS:
    raise ValueError(f'unknown variant {arg!r}; known: {VARIANTS}')
  smoke = arg == 'smoke'
  config = ml_collections.ConfigDict()
  config.variant = arg
  config.seed = 0

  # Digits: pool / target / test splits, the generator and K contributors.
  config.data = ml_collections.ConfigDict()
  config.data.split_seed = 0
  config.data.target_size = 200
  config.data.test_size = 400
  config.data.pool_fraction = 0.3 if smoke else 1.0
  config.data.generator_components = 20
  config.data.num_contributors = 4 if smoke else 12
  config.data.size_range = (12, 30) if smoke else (40, 200)
  config.data.pis = (0.0, 0.25, 0.5, 0.75, 1.0)
  config.data.truncations = ('none', 'hard:6', 'hard:3', 'top_p:0.6', 'temperature:0.3',
                             'finite_sample:8')
  config.data.label_noises = (0.0, 0.0, 0.1, 0.3, 0.5)
  config.data.synthetic_beta = 1.0
  config.data.contributor_seed = 0
  # Independent benchmark draws: draw d shifts split_seed, contributor_seed and
  # model.init_seed by d (digits: one draw, digits_draws: five).
  config.data.num_draws = 5 if arg == 'digits_draws' else 1

  # Backbones, initialised once from model.init_seed: theta0 is shared by every method and
  # by the ground truth.
  config.model = ml_collections.ConfigDict()
  config.model.backbones = ('mlp',) if smoke else ('mlp', 'cnn')
  config.model.mlp_hidden_sizes = (16,) if smoke else (64,)
  config.model.cnn_channels = (4, 8) if smoke else (8, 16)
  config.model.init_seed = 1

  # Our method: METHOD.md section 2 defaults (dv_jax.valuation.default_config()).
  config.ntk = ml_collections.ConfigDict(dict(
      residual='true_class', method='full', block_size=512, num_permutations=1,
      num_sub=256, eps=1e-4, normalization='per_example', param_filter='',
      projection_dim=0, projection_kind='rademacher', grad_block_size=256))
  config.mmd = ml_collections.ConfigDict(dict(
      feature_space='raw', standardize=True, label_aware=False, discrepancy='parts',
      num_kernels=5, estimator='biased', block_size=512, feature_block_size=256))
  config.bound = ml_collections.ConfigDict(dict(
      terms=('empirical_loss', 'discrepancy', 'ntk', 'composition')))
  config.valuation = ml_collections.ConfigDict()
  config.valuation.weights = 'standardize'
  config.valuation.fit_target = 'loss'
  config.valuation.subsample = 0
  config.valuation.min_subsample = 2
  return config


def ground_truth_config(arg: str) -> ml_collections.ConfigDict:
  """Retrain from theta0 on each subset, R seeds, loss on the TEST split."""
  smoke = arg == 'smoke'
  return ml_collections.ConfigDict(dict(
      optimizer='adam', learning_rate=1e-2, steps=20 if smoke else 300,
      batch_size=16 if smoke else 64, weight_decay=0.0, momentum=0.0, schedule='constant',
      num_seeds=2 if smoke else 3, seed=0))


def get_config(arg: str = 'digits') -> ml_collections.ConfigDict:
  """The config of `arg` in `VARIANTS`."""
  config = base_config(arg)
  smoke = arg == 'smoke'
  config.valuation.variants = (OURS_DEFAULT, OURS_PROPOSED, OURS_VARIANTS[-1]) if smoke \
      else OURS_VARIANTS
  # Probe coalitions of the fitted weights: the K contributors themselves plus
  # num_unions random unions of union_size contributors (seeded); contributor i is scored
  # by weights fitted on the probes that do not contain it.
  config.valuation.fit_num_unions = 4 if smoke else 8
  config.valuation.fit_union_size = 2
  config.valuation.fit_seed = 0

  # Baselines (dv_jax.baselines): DAVINZ as its official code, TracIn and TRAK trained
  # with the ground truth's recipe on the pooled data.
  config.baselines = ml_collections.ConfigDict()
  config.baselines.methods = ('davinz', 'tracin', 'trak', 'random')
  train = dict(optimizer='adam', learning_rate=1e-2, steps=20 if smoke else 300,
               batch_size=16 if smoke else 64, weight_decay=0.0, momentum=0.0,
               schedule='constant')
  config.baselines.davinz = ml_collections.ConfigDict(dict(
      sigma=5.0, jitter=1e-4, num_blocks=1, num_permutations=1, param_filter='kernel',
      grad_block_size=256))
  config.baselines.tracin = ml_collections.ConfigDict(dict(
      train=ml_collections.ConfigDict(train), num_checkpoints=2 if smoke else 5,
      projection_dim=0, projection_kind='rademacher', grad_block_size=256))
  config.baselines.trak = ml_collections.ConfigDict(dict(
      train=ml_collections.ConfigDict(train), num_models=2 if smoke else 3,
      projection_dim=32 if smoke else 512, projection_kind='rademacher', ridge=1e-3,
      grad_block_size=256))
  config.baselines.random = ml_collections.ConfigDict(dict(seed_offset=0))

  config.ground_truth = ground_truth_config(arg)

  config.output = ml_collections.ConfigDict()
  config.output.bootstrap_resamples = 200 if smoke else 2000
  config.output.ci_level = 0.95
  config.output.progress = not smoke
  return config
