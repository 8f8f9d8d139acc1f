"""dv_jax: valuing real-synthetic training data in JAX (arXiv 2511.13640 and beyond).

This module only re-exports the public names; each lives in the module named for its idea
(see ARCHITECTURE.md). Importing dv_jax changes no JAX setting and imports no optional
backend (neural-tangents, datasets, safetensors are imported where they are used).
"""

from dv_jax import baselines
from dv_jax import bound
from dv_jax import data
from dv_jax import ground_truth
from dv_jax import linalg
from dv_jax import metrics
from dv_jax import mmd
from dv_jax import models
from dv_jax import ntk
from dv_jax import scaling
from dv_jax import training
from dv_jax import valuation
from dv_jax.baselines import BASELINES
from dv_jax.bound import BoundTerms
from dv_jax.bound import bound_terms
from dv_jax.bound import composition_term
from dv_jax.bound import discrepancy_term
from dv_jax.bound import empirical_loss_term
from dv_jax.bound import ntk_term
from dv_jax.data import DATASETS
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import Split
from dv_jax.ground_truth import retrain
from dv_jax.linalg import psd_solve
from dv_jax.linalg import quad_form
from dv_jax.linalg import safe_sqrt
from dv_jax.metrics import bootstrap_ci
from dv_jax.metrics import kendall
from dv_jax.metrics import ranking_stability
from dv_jax.metrics import replicate_reliability
from dv_jax.metrics import spearman
from dv_jax.mmd import bandwidths_from
from dv_jax.mmd import median_heuristic
from dv_jax.mmd import mk_mmd
from dv_jax.mmd import mk_mmd2
from dv_jax.models import MODELS
from dv_jax.ntk import Projection
from dv_jax.ntk import empirical_ntk_fn
from dv_jax.ntk import per_example_grads
from dv_jax.ntk import true_class_logit
from dv_jax.scaling import breakpoints
from dv_jax.scaling import expected_error
from dv_jax.scaling import fit_broken_power_law
from dv_jax.scaling import mixture
from dv_jax.scaling import simulate_error
from dv_jax.scaling import synthetic_distribution
from dv_jax.scaling import zipf
from dv_jax.valuation import default_config
from dv_jax.valuation import leave_one_out
from dv_jax.valuation import shapley
from dv_jax.valuation import value_contributors

__version__ = '0.1.0'
