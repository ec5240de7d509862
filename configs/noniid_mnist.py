r"""Non-IID scenario (docs/spec.md, "Scenarios"): paper-like with Dirichlet(0.5) label shards.

Real MNIST, 8 devices, speeds [1, 1, 2, 2, 4, 4, 8, 8], the 0.4M-parameter CNN, target
98%; only the partition differs from ``configs/paper_mnist.py``.

  python -m hadfl_jax.compare --config configs/noniid_mnist.py --workdir results/noniid_mnist
"""

from hadfl_jax.configs import paper_mnist


def get_config():
  config = paper_mnist.get_config()
  config.partition.kind = 'dirichlet'
  config.partition.alpha = 0.5
  return config
