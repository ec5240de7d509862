"""Aggregation cost: HADFL's sparse group average grows with K * M, not with N^2 * M.

One aggregation (:func:`hadfl_jax.core.mixing.apply_group`: gather K rows, one weighted
sum, scatter K rows) on a stacked state of N models of M float32 parameters, jitted
with the state donated, so the scatter writes in place: its cost does not depend on N.
Against it, the dense form ``W_NxN @ x_NxM`` that a naive implementation would run
(only for small N: its cost is N^2 M). Times are medians of interleaved repeats, each
covering ``calls`` aggregations.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from hadfl_jax.core import mixing

PARAMS = 16_384  # M: 64 KiB of float32 per model.


def _group(num_devices: int, k: int, seed: int) -> mixing.GroupMixing:
  idx = np.sort(np.random.default_rng(seed).choice(num_devices, k, replace=False))
  return mixing.GroupMixing(idx_K=jnp.asarray(idx, jnp.int32),
                            weight_K=jnp.full((k,), 1.0 / k, jnp.float32),
                            valid_K=jnp.ones((k,), bool))


def _state(num_devices: int) -> dict[str, jax.Array]:
  return {'w': jnp.ones((num_devices, PARAMS - 64), jnp.float32),
          'b': jnp.ones((num_devices, 64), jnp.float32)}


def _sparse_runner(num_devices: int, k: int, calls: int):
  apply = jax.jit(lambda x, g: mixing.apply_group(g, x), donate_argnums=0)
  box = {'x': _state(num_devices)}
  groups = [_group(num_devices, k, s) for s in range(calls)]

  def run():
    for g in groups:
      box['x'] = apply(box['x'], g)
    jax.block_until_ready(box['x'])

  return run


def _dense_runner(num_devices: int, k: int, calls: int):
  w_NxN = jnp.asarray(mixing.group_to_dense(_group(num_devices, k, 0), num_devices),
                      jnp.float32)
  apply = jax.jit(lambda x, w: jax.tree.map(lambda v: w @ v, x), donate_argnums=0)
  box = {'x': _state(num_devices)}

  def run():
    for _ in range(calls):
      box['x'] = apply(box['x'], w_NxN)
    jax.block_until_ready(box['x'])

  return run


def run(quick: bool) -> dict[str, Any]:
  k, calls, repeats = 32, 20, 3
  ns = (64, 1024) if quick else (64, 256, 1024, 4096, 16384)
  dense_ns = (64,) if quick else (64, 256, 1024)
  fns = {}
  for n in ns:
    fns[f'sparse/{n}/{k}'] = _sparse_runner(n, k, calls)
  for n in dense_ns:
    fns[f'dense/{n}/{k}'] = _dense_runner(n, k, 2)
  k_sweep_n = 1024 if quick else 4096
  ks = (8, 128) if quick else (8, 32, 128, 512)
  for kk in ks:
    if kk != k or k_sweep_n not in ns:
      fns[f'sparse/{k_sweep_n}/{kk}'] = _sparse_runner(k_sweep_n, kk, calls)
  seconds = common.interleaved_medians(fns, repeats)
  rows = []
  for name, s in seconds.items():
    kind, n, kk = name.split('/')
    per_call = s / (calls if kind == 'sparse' else 2)
    rows.append(dict(kind=kind, num_devices=int(n), k=int(kk), params=PARAMS,
                     state_bytes=int(n) * PARAMS * 4, ms_per_aggregation=1e3 * per_call))
  base = next(r for r in rows if r['kind'] == 'sparse' and r['num_devices'] == ns[0]
              and r['k'] == k)['ms_per_aggregation']
  for r in rows:
    r['vs_sparse_n64_k32'] = r['ms_per_aggregation'] / base
  return dict(rows=rows, k=k, device=common.cpu_info())


def markdown(result: dict[str, Any]) -> str:
  lines = ['| form | N | K | state (MB) | ms / aggregation | relative to sparse N=64, K=32 |',
           '|---|---|---|---|---|---|']
  for r in sorted(result['rows'], key=lambda r: (r['kind'] != 'sparse', r['k'] != 32,
                                                  r['k'], r['num_devices'])):
    lines.append(f"| {'sparse gather/sum/scatter' if r['kind'] == 'sparse' else 'dense W @ x'}"
                 f" | {r['num_devices']:,} | {r['k']} | {r['state_bytes'] / 1e6:,.0f} | "
                 f"{r['ms_per_aggregation']:.3f} | {r['vs_sparse_n64_k32']:.1f}x |")
  return '\n'.join(lines)
