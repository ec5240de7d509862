"""What machine and software a result came from (recorded beside every comparison and
benchmark).

Figures differ between machines of the same kind: XLA's floating point differs between
CPUs with and without AVX-512 (so a run's exact numbers can too), and so do speeds. Every
``results.json`` therefore names the backend, the device kind, the CPU's model and vector
extensions, and the library versions it was made with.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import jax

VECTOR_FLAGS = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl',
                'avx512_vnni', 'avx512_bf16', 'amx_tile', 'neon', 'asimd', 'sve')
LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'orbax-checkpoint',
             'tensorflow-datasets', 'ml-collections', 'hadfl-jax')


def cpu_model_and_vector_extensions(cpuinfo: str = '/proc/cpuinfo') -> tuple[str, list[str]]:
  """The CPU's model name and the vector extensions it has (from ``/proc/cpuinfo``;
  ``'unknown'`` and none where it cannot be read)."""
  model, flags = '', set()
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip().lower()
        if key in ('model name', 'cpu model') and not model:
          model = value.strip()
        elif key in ('flags', 'features') and not flags:
          flags = set(value.split())
  except OSError:
    pass
  return model or platform.processor() or 'unknown', [f for f in VECTOR_FLAGS if f in flags]


def library_versions() -> dict[str, str | None]:
  """Installed versions of the libraries a result depends on (``None``: not installed)."""
  out = {}
  for name in LIBRARIES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def describe() -> dict[str, Any]:
  """Backend, device kind and count, CPU model and vector extensions, core count, Python
  and library versions."""
  model, vector = cpu_model_and_vector_extensions()
  return dict(backend=jax.default_backend(), device_kind=jax.devices()[0].device_kind,
              device_count=jax.device_count(), process_count=jax.process_count(),
              cpu_model=model, vector_extensions=vector, cpu_count=os.cpu_count(),
              python=platform.python_version(), jax_version=jax.__version__,
              libraries=library_versions())


def release_free_memory() -> bool:
  """Returns the heap's free memory to the operating system (glibc's ``malloc_trim``),
  after work whose buffers and compilations are gone (autotune's timed candidates): the
  process's resident memory then falls back instead of keeping their peak for the rest
  of the run. False where there is no glibc (macOS, musl): nothing is done."""
  import ctypes  # pylint: disable=g-import-not-at-top
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()  # Compiled candidates and their buffers are freed first.
  try:
    libc = ctypes.CDLL('libc.so.6')
    return bool(libc.malloc_trim(0))
  except (OSError, AttributeError):
    return False
