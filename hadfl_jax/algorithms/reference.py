"""A plain Python-loop reference of one HADFL cycle, for tests.

It follows ``docs/spec.md`` literally: Python loops over devices and local steps (one jitted
single-device step at a time), selection by sorting Gumbel-perturbed log-weights,
``math.floor`` budgets, and aggregation as explicit float64 weighted sums over the group.
It draws the same random numbers as :mod:`hadfl_jax.algorithms.hadfl` (same keys,
same ``jax.random`` calls), so the vmapped, masked, sparse engine must match it to float
tolerance. It is slow on purpose and never used to train.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from hadfl_jax.algorithms import base
from hadfl_jax.algorithms import hadfl as hadfl_lib
from hadfl_jax.core import local
from hadfl_jax.core import mixing
from hadfl_jax.core import selection


def _to_numpy(tree):
  return jax.tree.map(lambda x: np.array(x), tree)


@functools.lru_cache(maxsize=16)
def _jitted_device_step(apply_fn, optimizer, batch_size, task):
  return jax.jit(local.make_device_step(apply_fn, optimizer, batch_size, task))


def reference_cycle(problem: base.Problem, opts: hadfl_lib.Config, state: hadfl_lib.State,
                    data):
  """One HADFL cycle computed with Python loops. Returns ``(state, info)`` like the engine.

  Selection rules and weight rules of one's own (not the four built-ins written out
  here) are taken from their registries.
  """
  n = problem.num_devices
  k = selection.group_size(opts.rho, n)
  faults = problem.faults
  cycle = int(state.cycle)
  k_fault, k_select, k_jitter, k_sync = jax.random.split(jax.random.fold_in(state.key, cycle), 4)

  # Faults: who is up.
  down = [False] * n
  if faults.p_drop > 0:
    down = [bool(d) for d in np.asarray(jax.random.bernoulli(k_fault, faults.p_drop, (n,)))]
  for device, first, end in faults.down_trace:
    if first <= cycle < end:
      down[device] = True
  up = [not d for d in down]

  # Selection: the K largest log(q) + Gumbel among the devices that are up.
  version = [float(v) for v in np.asarray(state.devices.version)]
  speed_est = [float(s) for s in np.asarray(state.speed_est)]
  last_sync = [int(c) for c in np.asarray(state.last_sync)]
  builtin_q = {
      'version': lambda: [v + 1.0 for v in version],
      'speed': lambda: speed_est,
      'uniform': lambda: [1.0] * n,
      'staleness': lambda: [1.0 + cycle - c for c in last_sync],
  }
  if opts.selection in builtin_q:
    q = builtin_q[opts.selection]()
  else:
    q = [float(x) for x in np.asarray(selection.RULES.get(opts.selection)(
        selection.SelectionInputs(
            version_N=np.asarray(version, np.float32), speed_N=np.asarray(speed_est, np.float32),
            last_sync_N=np.asarray(last_sync, np.int32), cycle=cycle,
            num_examples_N=np.asarray(problem.num_examples_N, np.float32))))]
  gumbel = np.asarray(jax.random.gumbel(k_select, (n,)), np.float64)
  candidates = sorted(
      (i for i in range(n) if up[i]), key=lambda i: math.log(q[i]) + gumbel[i], reverse=True
  )
  group = sorted(candidates[:k]) if len(candidates) >= 2 else []

  # Step budgets.
  profile = problem.profile
  m_bytes = problem.model_bytes
  if group:
    g = len(group)
    t_sync = 2 * (g - 1) / g * m_bytes / min(profile.bandwidth_N[i] for i in group)
    t_sync += 2 * (g - 1) * profile.latency
  else:
    t_sync = 0.0
  budgets = []
  for i in range(n):
    horizon = opts.t_local if i in group else opts.t_local + t_sync
    h = math.floor(speed_est[i] * horizon * (1.0 + 1e-6))
    budgets.append(min(max(h, 1), opts.h_cap) if up[i] else 0)

  # Local training: one device at a time, one step at a time.
  step = _jitted_device_step(problem.model.apply, problem.optimizer, problem.batch_size,
                             problem.task)
  params = [jax.tree.map(lambda x, i=i: x[i], state.devices.params) for i in range(n)]
  opt_state = [jax.tree.map(lambda x, i=i: x[i], state.devices.opt_state) for i in range(n)]
  steps = [int(s) for s in np.asarray(state.devices.steps)]
  loss = [0.0] * n
  for i in range(n):
    for _ in range(budgets[i]):
      params[i], opt_state[i], l = step(
          params[i], opt_state[i], state.devices.key[i], steps[i],
          data.images[i], data.labels[i], data.counts[i],
      )
      steps[i] += 1
      loss[i] += float(l) / budgets[i]
    version[i] += budgets[i]

  # Sync failures, then the group average.
  survivors = list(group)
  if group and faults.p_sync_fail > 0:
    fail = np.asarray(jax.random.bernoulli(k_sync, faults.p_sync_fail, (k,)))
    # The engine's slots hold the group in ascending order, then empty slots.
    survivors = [i for slot, i in enumerate(group) if not fail[slot]]
  if len(survivors) < 2:
    survivors = []
  if survivors:
    builtin_raw = {
        'data': lambda: [float(problem.num_examples_N[i]) for i in survivors],
        'uniform': lambda: [1.0] * len(survivors),
        'steps': lambda: [float(budgets[i]) for i in survivors],
        'version': lambda: [version[i] for i in survivors],
    }
    if opts.weights in builtin_raw:
      raw = builtin_raw[opts.weights]()
    else:
      raw_N = np.asarray(mixing.WEIGHTS.get(opts.weights)(mixing.WeightInputs(
          num_examples_N=np.asarray(problem.num_examples_N, np.float32),
          budgets_N=np.asarray(budgets, np.int32), version_N=np.asarray(version, np.float32))))
      raw = [float(raw_N[i]) for i in survivors]
    if sum(raw) <= 0:
      raw = [1.0] * len(survivors)
    a = [r / sum(raw) for r in raw]

    def average(trees):
      def avg(*leaves):
        out = sum(w * np.asarray(x, np.float64) for w, x in zip(a, leaves))
        dtype = np.asarray(leaves[0]).dtype
        return np.round(out).astype(dtype) if np.issubdtype(dtype, np.integer) else out.astype(dtype)
      return jax.tree.map(avg, *trees)

    avg_params = average([params[i] for i in survivors])
    avg_version = sum(w * version[i] for w, i in zip(a, survivors))
    if opts.opt_state == 'average':
      avg_opt = average([opt_state[i] for i in survivors])
    for i in survivors:
      params[i] = avg_params
      version[i] = avg_version
      if opts.opt_state == 'average':
        opt_state[i] = avg_opt
      elif opts.opt_state == 'reset':
        opt_state[i] = problem.optimizer.init(avg_params)

  # The clock.
  true_speed = np.asarray(profile.speed_N, np.float32).astype(np.float64)
  jitter_sigma = profile.jitter_sigma
  if jitter_sigma > 0:
    true_speed = true_speed * np.exp(
        jitter_sigma * np.asarray(jax.random.normal(k_jitter, (n,)), np.float64))
  if group:
    cycle_time = max(budgets[i] / true_speed[i] for i in group) + t_sync
  else:
    cycle_time = opts.t_local
  g = len(survivors)
  bytes_sent = [2 * (g - 1) / g * m_bytes if i in survivors else 0.0 for i in range(n)]
  if jitter_sigma > 0:
    for i in range(n):
      if up[i]:
        speed_est[i] = opts.speed_ema * speed_est[i] + (1 - opts.speed_ema) * true_speed[i]

  stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
  new_state = state.replace(
      devices=state.devices.replace(
          params=stack(params),
          opt_state=stack(opt_state),
          steps=np.asarray(steps, np.int32),
          version=np.asarray(version, np.float32),
      ),
      speed_est=np.asarray(speed_est, np.float32),
      last_sync=np.asarray([cycle if i in survivors else last_sync[i] for i in range(n)], np.int32),
      cycle=np.asarray(cycle + 1, np.int32),
  )
  info = base.CycleInfo(
      cycle_time=np.float32(cycle_time),
      bytes_sent_N=np.asarray(bytes_sent, np.float32),
      server_bytes=np.float32(0.0),
      budgets_N=np.asarray(budgets, np.int32),
      train_loss_N=np.asarray(loss, np.float32),
      up_N=np.asarray(up),
      synced_N=np.asarray([i in survivors for i in range(n)]),
  )
  return new_state, info
