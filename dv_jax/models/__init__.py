"""Model zoo. `MODELS` maps a config's `model.name` to a flax.linen constructor.

All image and classification models return logits `[b, c]`; LMs return logits `[b, t, V]`.
Models with BatchNorm keep it in inference mode at init (see `resnet.py`), and
`bind_apply` closes over such state so NTK code differentiates parameters only.
"""

from dv_jax.models.cnn import SmallCNN
from dv_jax.models.common import bind_apply
from dv_jax.models.common import init_model
from dv_jax.models.llama import Llama
from dv_jax.models.llama import LlamaConfig
from dv_jax.models.mlp import MLP
from dv_jax.models.resnet import ResNet18
from dv_jax.models.transformer import SequenceClassifier
from dv_jax.models.transformer import TransformerLM

MODELS = {
    'mlp': MLP,
    'cnn': SmallCNN,
    'resnet18': ResNet18,
    'transformer_lm': TransformerLM,
    'transformer_classifier': SequenceClassifier,
    'llama': Llama,
}


def build_model(name: str, **kwargs):
  """Instantiates `MODELS[name](**kwargs)`; an unknown name raises and lists the known ones."""
  if name not in MODELS:
    raise ValueError(f'model name {name!r} is not one of {sorted(MODELS)}')
  return MODELS[name](**kwargs)
