r"""Many-devices scenario (docs/spec.md, "Scenarios"): N = 64, lognormal speeds, faults.

Real MNIST, 64 devices with speeds lognormal(sigma = 0.8) (seeded; the fastest at 10 ms
per step), 30% of the devices down in every cycle at random, Dirichlet(0.3) label shards,
the 0.4M-parameter CNN, target 97%. Per-device accuracy is measured on 200 test examples
(the consensus model on all 10,000) to keep 64 device evaluations cheap.

  python -m hadfl_jax.compare --config configs/many_devices.py --workdir results/many_devices
"""

from hadfl_jax.configs import paper_mnist


def get_config():
  config = paper_mnist.get_config()
  config.num_devices = 64
  config.profile.kind = 'lognormal'
  config.profile.sigma = 0.8
  config.faults.p_drop = 0.3
  config.partition.kind = 'dirichlet'
  config.partition.alpha = 0.3
  config.target_accuracy = 0.97
  config.device_eval_examples = 200
  return config
