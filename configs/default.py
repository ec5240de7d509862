r"""Quick scenario: HADFL on the embedded UCI digits, a few seconds of CPU.

Typed sections (partition, optimizer, profile, every algorithm's, faults, engine) take
their fields, defaults and bounds from their classes (named beside each section); the
rest is written here.

The default of the quick start and of CI. Eight devices with speeds 1..8, IID shards of
the 1,437 training digits, a small MLP.

  python -m hadfl_jax.main --config configs/default.py --workdir /tmp/hadfl_quick

Every other config imports this one and overrides what differs.
"""

import ml_collections

from hadfl_jax import algorithms
from hadfl_jax import optim
from hadfl_jax.comparison import config as comparison
from hadfl_jax.core import engine
from hadfl_jax.core import faults
from hadfl_jax.core import profiles
from hadfl_jax.data import partitioning as data


def get_config() -> ml_collections.ConfigDict:
  """The complete set of fields, with the quick scenario's values."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.algorithm = 'hadfl'  # hadfl_jax.algorithms.ALGORITHMS
  # Modules imported before anything is named: a researcher's additions (algorithms,
  # selection rules, models, losses, partitioners) register themselves when imported.
  config.imports = ()

  # Data: a TFDS name ('digits', 'mnist_idx', or a catalog name such as 'mnist').
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'digits'
  config.dataset.train_split = 'train'
  config.dataset.test_split = 'test'
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir.
  config.dataset.idx_dir = ml_collections.config_dict.placeholder(str)  # For mnist_idx.

  # How the training set is split over the devices (hadfl_jax/data/partitioning.py,
  # PartitionConfig: kind iid | dirichlet | shards | quantity, alpha, classes_per_device,
  # quantity_alpha, min_examples).
  config.partition = data.PartitionConfig().to_config_dict()

  config.num_devices = 8
  config.model = 'digits_mlp'  # hadfl_jax.models.MODELS
  config.loss = 'cross_entropy'  # hadfl_jax.core.task.LOSSES
  config.batch_size = 32

  # Each device's local optimizer (hadfl_jax/optim.py, OptimizerConfig: name sgd | momentum
  # | adam, learning_rate, momentum, weight_decay).
  config.optimizer = optim.OptimizerConfig().to_config_dict()

  # Device heterogeneity (hadfl_jax/core/profiles.py, ProfileConfig: kind list | tiers |
  # geometric | lognormal, relative speeds, ratio, sigma, seconds_per_step of the fastest
  # device, jitter_sigma, bandwidth_mbps, latency_s, bytes_per_param). Quick scenario:
  # speeds 1, 1, 2, 2, 4, 4, 8, 8; 10 ms per step; 100 Mbit/s links, 5 ms latency.
  config.profile = profiles.ProfileConfig().to_config_dict()

  # Every registered algorithm's options, one section each (config.hadfl, config.ddp,
  # config.dfedavg, config.fedavg, config.dpsgd), with the defaults its typed Config
  # declares (hadfl_jax/algorithms/<name>.py, the only place they live). Only the section of
  # config.algorithm matters to a run (and to its resume check and run cache).
  for name in algorithms.names():
    config[name] = algorithms.config_of(name).to_config_dict()

  # The comparison (python -m hadfl_jax.compare; hadfl_jax/comparison/config.py,
  # CompareConfig: algorithms, learning_rates and local_steps grids (HADFL's fastest device
  # runs H steps: t_local = H * profile.seconds_per_step), extra_local_steps, options
  # (grids of an algorithm's own options), extend_edges and options_at_best (how the grid
  # grows), seeds (every point on each; mean and 95% CI), eval_interval_s and eval_growth,
  # winners_from, cached_only, stop_collapsed, sweep_ratios, sweep, ablation).
  config.compare = comparison.CompareConfig().to_config_dict()

  # Faults (docs/spec.md, step 5): every algorithm runs under them (hadfl_jax/core/faults.py).
  config.faults = faults.FaultsConfig().to_config_dict()

  # The engine: how the simulation runs, not what it computes (README, "Performance";
  # hadfl_jax/core/engine.py: num_buckets, bucket_mib, mesh_shards, multi-host fields).
  config.engine = engine.EngineConfig().to_config_dict()

  # The run.
  config.num_cycles = 60
  config.max_sim_time = 0.0  # simulated seconds; 0 means no limit
  config.eval_every = 5  # cycles between evaluations (when eval_interval_s is 0)
  # Evaluate on a schedule in simulated seconds instead (0 disables): after a cycle that
  # passes the next point, the next is max(t + eval_interval_s, t * (1 + eval_growth)).
  config.eval_interval_s = 0.0
  config.eval_growth = 0.0
  config.eval_batch_size = 1000
  config.device_eval_examples = 1000  # test examples for per-device accuracy
  config.target_accuracy = 0.9
  config.stop_at_target = False
  # Resolve the time to target to the cycle: the consensus models of the cycles between
  # two evaluations are kept, and evaluated once, when the target is first reached
  # (hadfl_jax/train.py, run). The curves keep the schedule above.
  config.refine_target = True
  config.checkpoint_every = 0  # cycles; 0 disables checkpoints
  return config
