"""dv_jax: valuing real-synthetic training data in JAX (arXiv 2511.13640 and beyond)."""

__version__ = '0.1.0'
