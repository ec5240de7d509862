r"""Quick scenario: HADFL on the embedded UCI digits, a few seconds of CPU.

The default of the quick start and of CI. Eight devices with speeds 1..8, IID shards of
the 1,437 training digits, a small MLP.

  python -m hadfl_jax.main --config configs/default.py --workdir /tmp/hadfl_quick

Every other config imports this one and overrides what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """The complete set of fields, with the quick scenario's values."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.algorithm = 'hadfl'

  # Data: a TFDS name ('digits', 'mnist_idx', or a catalog name such as 'mnist').
  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'digits'
  config.dataset.train_split = 'train'
  config.dataset.test_split = 'test'
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir.
  config.dataset.idx_dir = ml_collections.config_dict.placeholder(str)  # For mnist_idx.

  # How the training set is split over the devices.
  config.partition = ml_collections.ConfigDict()
  config.partition.kind = 'iid'  # iid | dirichlet | shards | quantity
  config.partition.alpha = 0.5  # Dirichlet label skew.
  config.partition.classes_per_device = 2  # shards
  config.partition.quantity_alpha = 1.0  # quantity skew
  config.partition.min_examples = 1

  config.num_devices = 8
  config.model = 'digits_mlp'
  config.batch_size = 32

  # Each device's local optimizer.
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'momentum'  # sgd | momentum | adam
  config.optimizer.learning_rate = 0.05
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 0.0

  # Device heterogeneity (hadfl_jax/core/profiles.py).
  config.profile = ml_collections.ConfigDict()
  config.profile.kind = 'list'  # list | tiers | geometric | lognormal
  config.profile.speeds = (1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0)  # relative
  config.profile.ratio = 8.0  # geometric: fastest / slowest
  config.profile.sigma = 0.8  # lognormal
  config.profile.seconds_per_step = 0.01  # of the fastest device
  config.profile.jitter_sigma = 0.0  # per-cycle speed jitter
  config.profile.speed_ema = 0.9  # coordinator's EMA of observed speeds
  config.profile.bandwidth_mbps = 100.0
  config.profile.latency_s = 0.005
  config.profile.bytes_per_param = 4

  # HADFL's choices (HADFL.md, "One HADFL cycle").
  config.hadfl = ml_collections.ConfigDict()
  config.hadfl.rho = 0.5
  config.hadfl.selection = 'version'  # version | speed | uniform | staleness
  # data | uniform | steps | version. 'version' won HADFL's ablation (results/ablation,
  # docs/results.md: 11% shorter time to target than 'data' on the quick scenario, on each
  # of 3 seeds); the MNIST results pin 'data', the default when they were run.
  config.hadfl.weights = 'version'
  config.hadfl.opt_state = 'average'  # average | keep | reset
  config.hadfl.t_local = 0.1  # simulated seconds of local training per cycle
  config.hadfl.h_cap = 1000

  # The baselines (HADFL.md, "Baselines"; hadfl_jax/algorithms/baselines.py).
  config.baselines = ml_collections.ConfigDict()
  config.baselines.local_steps = 10  # H of dfedavg, fedavg and dpsgd
  config.baselines.ddp_steps = 10  # synchronous steps per jitted ddp cycle
  config.baselines.fedavg_fraction = 0.5  # C: clients per FedAvg round, K = round(C N)
  config.baselines.graph = 'ring'  # dpsgd graph: ring | torus | exponential
  config.baselines.opt_state = 'average'  # average | keep | reset

  # The comparison (python -m hadfl_jax.compare; hadfl_jax/compare.py).
  config.compare = ml_collections.ConfigDict()
  config.compare.algorithms = ('hadfl', 'dfedavg', 'ddp', 'fedavg', 'dpsgd')
  config.compare.learning_rates = (0.02, 0.05)  # the same grid for every algorithm
  # H grid: local steps of dfedavg/fedavg/dpsgd; HADFL's fastest device runs H steps
  # (t_local = H * profile.seconds_per_step).
  config.compare.local_steps = (5, 20)
  # More H values for some algorithms only, e.g. 'dfedavg=20,10;dpsgd=5' (reported as such).
  config.compare.extra_local_steps = ''
  config.compare.eval_interval_s = 0.0  # simulated seconds between evaluations; 0: auto
  config.compare.eval_growth = 0.1  # ... and at most this relative step in simulated time
  # An earlier results.json: run each algorithm at the point that won there (no grid).
  config.compare.winners_from = ml_collections.config_dict.placeholder(str)
  config.compare.cached_only = False  # only collect finished runs; list the others as not run
  config.compare.sweep_ratios = (1.0, 2.0, 4.0, 8.0, 16.0)  # heterogeneity sweep
  config.compare.sweep = False  # run the heterogeneity sweep too
  config.compare.ablation = False  # run HADFL's ablation too

  # Faults (HADFL.md, step 5).
  config.faults = ml_collections.ConfigDict()
  config.faults.p_drop = 0.0
  config.faults.p_sync_fail = 0.0
  config.faults.down_trace = ()  # rows (device, first_cycle, end_cycle)

  # The engine: how the simulation runs, not what it computes (README, "Performance").
  config.engine = ml_collections.ConfigDict()
  config.engine.num_buckets = 8  # Local training in <= this many budget-sorted buckets.
  # MiB of device state per sub-bucket (cache blocking); None: 4 on CPU, no limit on GPU/TPU.
  config.engine.bucket_mib = ml_collections.config_dict.placeholder(float)
  config.engine.mesh_shards = 0  # Accelerators to shard the device axis over; 0 = all.
  config.engine.distributed = False  # Multi-host: jax.distributed.initialize() first.
  config.engine.coordinator_address = ml_collections.config_dict.placeholder(str)
  config.engine.num_processes = ml_collections.config_dict.placeholder(int)
  config.engine.process_id = ml_collections.config_dict.placeholder(int)

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
  config.checkpoint_every = 0  # cycles; 0 disables checkpoints
  return config
