r"""Paper-like scenario (docs/spec.md, "Scenarios"): real MNIST, 8 devices, speeds 1..8.

CNN of about 0.4M float32 parameters, IID shards of the 60k training images, relative
speeds [1, 1, 2, 2, 4, 4, 8, 8] with the fastest device at 10 ms per step, 100 Mbit/s
links with 5 ms latency, batch 32, target 98% consensus test accuracy.

Reads real MNIST from the directory of the four IDX files (train-images-idx3-ubyte.gz, ...),
which the command line names; the run stops at once, naming the field, if it does not:

  python -m hadfl_jax.main --config configs/paper_mnist.py --workdir /tmp/hadfl_paper \
      --config.dataset.idx_dir=/path/to/mnist

``--config.dataset.name=mnist`` reads TFDS's catalog MNIST instead; preparing a catalog
dataset needs TensorFlow (TFDS encodes its images with TF), reading a prepared one does not.
"""

from hadfl_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset.name = 'mnist_idx'
  # config.dataset.idx_dir: set on the command line (where the IDX files are here).
  config.model = 'cnn'
  config.num_devices = 8
  config.batch_size = 32
  config.optimizer.name = 'momentum'
  config.optimizer.learning_rate = 0.02
  config.profile.kind = 'list'
  config.profile.speeds = (1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0)
  config.hadfl.t_local = 0.5
  config.num_cycles = 400
  config.max_sim_time = 0.0
  config.eval_every = 10
  config.target_accuracy = 0.98
  config.stop_at_target = True
  return config
