"""A persistent JAX compilation cache for test modules that run the same programs often.

Runs of the run loop rebuild their jitted functions, so each run compiles again; with
the cache on, a program compiled once in the session is loaded from disk afterwards.
"""

import contextlib
import pathlib

import jax
from jax.experimental.compilation_cache import compilation_cache

_OPTIONS = {
    'jax_persistent_cache_min_compile_time_secs': 0.0,
    'jax_persistent_cache_min_entry_size_bytes': -1,
}


@contextlib.contextmanager
def persistent_compilation_cache(directory: pathlib.Path):
  """Caches compiled programs in ``directory`` inside the block; restores the config after."""
  options = {'jax_compilation_cache_dir': str(directory), **_OPTIONS}
  old = {name: getattr(jax.config, name) for name in options}
  compilation_cache.reset_cache()
  for name, value in options.items():
    jax.config.update(name, value)
  try:
    yield
  finally:
    for name, value in old.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
