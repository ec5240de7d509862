r"""Quick comparison (docs/spec.md, "Scenarios", quick): every algorithm on the UCI digits.

The quick scenario of ``configs/default.py`` with a one-point grid, every algorithm on the
five seeds of ``compare.seeds`` (a few minutes of CPU), runs stopped at the 90% target or
after 20 simulated seconds. The test suite (on one seed) and the notebook
``colabs/compare_quick.ipynb`` run it.

  python -m hadfl_jax.compare --config configs/quick_compare.py --workdir /tmp/compare_quick
"""

from hadfl_jax.configs import default


def get_config():
  config = default.get_config()
  config.compare.learning_rates = (0.05,)
  config.compare.local_steps = (5,)
  config.compare.eval_interval_s = 0.2
  config.num_cycles = 1000
  config.max_sim_time = 20.0
  config.target_accuracy = 0.9
  config.stop_at_target = True
  return config
