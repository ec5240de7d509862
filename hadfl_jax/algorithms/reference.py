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

  # The clock: this cycle's true speeds, the group's slowest compute, then the sync.
  true_speed = np.asarray(profile.speed_N, np.float32).astype(np.float64)
  jitter_sigma = profile.jitter_sigma
  if jitter_sigma > 0:
    true_speed = true_speed * np.exp(
        jitter_sigma * np.asarray(jax.random.normal(k_jitter, (n,)), np.float64))
  if group:
    cycle_time = max(budgets[i] / true_speed[i] for i in group) + t_sync
  else:
    cycle_time = opts.t_local
  carry = [0.0] * n
  if opts.outsiders == 'carried':  # Outsiders run the cycle as it lasts, keeping the rest.
    carried_in = [float(c) for c in np.asarray(state.carry)]
    for i in range(n):
      if up[i] and i not in group:
        available = cycle_time + carried_in[i]
        h = math.floor(true_speed[i] * available * (1.0 + 1e-6))
        budgets[i] = min(h, opts.h_cap)
        carry[i] = max(available - h / true_speed[i], 0.0) if h <= opts.h_cap else 0.0

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

  g = len(survivors)
  bytes_sent = [2 * (g - 1) / g * m_bytes if i in survivors else 0.0 for i in range(n)]
  if jitter_sigma > 0:
    for i in range(n):
      if up[i] and budgets[i] > 0:
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
      carry=np.asarray(carry, np.float32),
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


def _event_draws(problem: base.Problem, key, device: int, events_so_far: int, cycle: int,
                 num_keys: int):
  """One event's draws, as :mod:`hadfl_jax.algorithms.asynchronous` makes them:
  ``(down, true_speed, keys)`` (the last of the ``num_keys`` keys is the jitter's)."""
  k_down, *keys = jax.random.split(
      jax.random.fold_in(jax.random.fold_in(key, device), events_so_far), num_keys + 1)
  faults, profile = problem.faults, problem.profile
  down = faults.p_drop > 0 and bool(jax.random.bernoulli(k_down, faults.p_drop))
  down = down or any(d == device and a <= cycle < b for d, a, b in faults.down_trace)
  speed = float(np.float32(profile.speed_N[device]))
  if profile.jitter_sigma > 0:
    speed *= math.exp(profile.jitter_sigma * float(jax.random.normal(keys[-1])))
  return down, speed, keys


def reference_adpsgd(problem: base.Problem, config, state, data, until_s: float):
  """AD-PSGD as a plain event loop: pops one event at a time (earliest first, ties by
  device index) until every pending event is at or after ``until_s``.

  Float64 event times, Python lists of per-device models, one jitted single-device step
  at a time, and the same per-event random draws as
  :mod:`hadfl_jax.algorithms.adpsgd` (keys ``fold_in(fold_in(key, i), e_i)``). With a
  tick window small enough that no two events share a tick, the vectorised engine must
  match it to float tolerance (``tests/events_test.py``).

  Returns:
    ``(state, bytes_sent)``: the state after those events, and the bytes each device sent.
  """
  from hadfl_jax.algorithms import graphs  # pylint: disable=g-import-not-at-top
  n, h, m = problem.num_devices, config.local_steps, problem.model_bytes
  graph = graphs.make_graph(config.graph, n)
  profile, faults = problem.profile, problem.faults
  step = _jitted_device_step(problem.model.apply, problem.optimizer, problem.batch_size,
                             problem.task)
  row = lambda tree, i: jax.tree.map(lambda x: np.asarray(x[i], np.float64), tree)
  params = [row(state.devices.params, i) for i in range(n)]
  delta = [row(state.delta, i) for i in range(n)]
  opt_state = [jax.tree.map(lambda x, i=i: x[i], state.devices.opt_state) for i in range(n)]
  steps = [int(s) for s in np.asarray(state.devices.steps)]
  version = [float(v) for v in np.asarray(state.devices.version)]
  pending = [bool(p) for p in np.asarray(state.pending_N)]
  down = [bool(d) for d in np.asarray(state.down_N)]
  next_t = [float(t) for t in np.asarray(state.clock.next_N)]
  events_n = [int(e) for e in np.asarray(state.clock.events_N)]
  cycle = int(state.cycle)
  sent = [0.0] * n

  while min(next_t) < until_s:
    i = min(range(n), key=lambda d: (next_t[d], d))
    down[i], speed, (k_partner, k_fail, _) = _event_draws(problem, state.key, i, events_n[i],
                                                          cycle, 3)
    duration = h / speed
    if not down[i]:
      if pending[i]:
        degree = int(graph.degree_N[i])
        j = i
        if degree:
          u = float(jax.random.uniform(k_partner))
          j = int(graph.cols_NxD[i, 1 + min(math.floor(u * degree), degree - 1)])
        failed = faults.p_sync_fail > 0 and bool(jax.random.bernoulli(k_fail, faults.p_sync_fail))
        if j != i and not down[j] and not failed:
          mean = jax.tree.map(lambda a, b: (a + b) / 2, params[i], params[j])
          params[i] = params[j] = mean
          version[i] = version[j] = (version[i] + version[j]) / 2
          sent[i] += m
          sent[j] += m
          link = min(float(profile.bandwidth_N[i]), float(profile.bandwidth_N[j]))
          duration += m / link + profile.latency
        params[i] = jax.tree.map(lambda x, d: x + d, params[i], delta[i])
        version[i] += h
      start = params[i]
      x = jax.tree.map(lambda a: a.astype(np.float32), start)
      for _ in range(h):
        x, opt_state[i], _ = step(x, opt_state[i], state.devices.key[i], steps[i],
                                  data.images[i], data.labels[i], data.counts[i])
        steps[i] += 1
      delta[i] = jax.tree.map(lambda new, old: np.asarray(new, np.float64) - old, x, start)
      pending[i] = True
    next_t[i] += duration
    events_n[i] += 1

  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs).astype(np.float32), *trees)
  new_state = state.replace(
      devices=state.devices.replace(
          params=stack(params),
          opt_state=jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *opt_state),
          steps=np.asarray(steps, np.int32), version=np.asarray(version, np.float32)),
      delta=stack(delta), pending_N=np.asarray(pending), down_N=np.asarray(down),
      clock=state.clock.replace(next_N=np.asarray(next_t, np.float32),
                                events_N=np.asarray(events_n, np.int32)))
  return new_state, np.asarray(sent)


def reference_prague(problem: base.Problem, config, state, data, until_s: float):
  """Prague as a plain event loop (one event at a time, earliest first, ties by index;
  groups are formed right after an event leaves at least G devices ready), with the
  group generator's draws of :func:`hadfl_jax.algorithms.prague.group_order` and the
  per-event draws of :mod:`hadfl_jax.algorithms.prague`. Returns ``(state, bytes_sent)``.
  """
  from hadfl_jax.algorithms import prague  # pylint: disable=g-import-not-at-top
  n, h, g, m = problem.num_devices, config.local_steps, config.group_size, problem.model_bytes
  profile, faults = problem.profile, problem.faults
  step = _jitted_device_step(problem.model.apply, problem.optimizer, problem.batch_size,
                             problem.task)
  row = lambda tree, i: jax.tree.map(lambda x: np.asarray(x[i]), tree)
  params = [row(state.devices.params, i) for i in range(n)]
  opt_state = [row(state.devices.opt_state, i) for i in range(n)]
  steps = [int(s) for s in np.asarray(state.devices.steps)]
  version = [float(v) for v in np.asarray(state.devices.version)]
  ready = [bool(r) for r in np.asarray(state.ready_N)]
  ready_at = [float(t) for t in np.asarray(state.ready_at_N)]
  down = [bool(d) for d in np.asarray(state.down_N)]
  next_t = [float(t) for t in np.asarray(state.clock.next_N)]
  events_n = [int(e) for e in np.asarray(state.clock.events_N)]
  formations, cycle = int(state.formations), int(state.cycle)
  sent = [0.0] * n

  def draws(i):
    return _event_draws(problem, state.key, i, events_n[i], cycle, 2)

  def busy(i):
    return h / draws(i)[1]

  def train(i):
    for _ in range(h):
      params[i], opt_state[i], _ = step(params[i], opt_state[i], state.devices.key[i], steps[i],
                                        data.images[i], data.labels[i], data.counts[i])
      steps[i] += 1

  while min(next_t) < until_s:
    i = min(range(n), key=lambda d: (next_t[d], d))
    t = next_t[i]
    down[i] = draws(i)[0]
    new_next = {}
    if events_n[i] == 0:  # Time 0: start the first H steps.
      train(i)
      new_next[i] = t + busy(i)
    elif down[i]:
      new_next[i] = t + busy(i)
    else:
      ready[i], ready_at[i] = True, t
      new_next[i] = float(np.finfo(np.float32).max)  # events.NEVER
    if sum(ready) >= g:  # The group generator.
      order = [int(d) for d in np.asarray(prague.group_order(
          jax.random.fold_in(state.key, formations), np.asarray(ready)))]
      for first in range(0, sum(ready) // g * g, g):
        members = order[first:first + g]
        fails = {d: faults.p_sync_fail > 0 and bool(jax.random.bernoulli(
            jax.random.fold_in(draws(d)[2][0], formations), faults.p_sync_fail)) for d in members}
        alive = [d for d in members if not fails[d]]
        t_form = max(ready_at[d] for d in members)
        t_sync = 0.0
        if len(alive) >= 2:
          k = len(alive)
          mean = jax.tree.map(lambda *xs: sum(np.asarray(x, np.float64) for x in xs) / k,
                              *[params[d] for d in alive])
          v = sum(version[d] for d in alive) / k
          t_sync = (2 * (k - 1) / k * m / min(float(profile.bandwidth_N[d]) for d in alive)
                    + 2 * (k - 1) * profile.latency)
          for d in alive:
            params[d] = jax.tree.map(lambda x: x.astype(np.float32), mean)
            version[d] = v
            sent[d] += 2 * (k - 1) / k * m
        for d in members:
          ready[d] = False
          train(d)
          new_next[d] = t_form + (t_sync if d in alive and len(alive) >= 2 else 0.0) + busy(d)
      formations += 1
    events_n[i] += 1
    for d, t_next in new_next.items():
      next_t[d] = t_next

  stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
  new_state = state.replace(
      devices=state.devices.replace(params=stack(params), opt_state=stack(opt_state),
                                    steps=np.asarray(steps, np.int32),
                                    version=np.asarray(version, np.float32)),
      ready_N=np.asarray(ready), ready_at_N=np.asarray(ready_at, np.float32),
      down_N=np.asarray(down), formations=np.asarray(formations, np.int32),
      clock=state.clock.replace(next_N=np.asarray(next_t, np.float32),
                                events_N=np.asarray(events_n, np.int32)))
  return new_state, np.asarray(sent)


def reference_fedbuff(problem: base.Problem, config, state, data, until_s: float):
  """FedBuff as a plain event loop (one upload at a time, earliest first, ties by index),
  with the per-event draws of :mod:`hadfl_jax.algorithms.fedbuff`. Returns
  ``(state, bytes_sent, server_bytes)``.
  """
  n, h, k, m = problem.num_devices, config.local_steps, config.buffer_size, problem.model_bytes
  profile, faults = problem.profile, problem.faults
  step = _jitted_device_step(problem.model.apply, problem.optimizer, problem.batch_size,
                             problem.task)
  row = lambda tree, i: jax.tree.map(lambda x: np.asarray(x[i]), tree)
  f64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  params = [row(state.devices.params, i) for i in range(n)]
  opt_state = [row(state.devices.opt_state, i) for i in range(n)]
  delta = [f64(row(state.delta, i)) for i in range(n)]
  steps = [int(s) for s in np.asarray(state.devices.steps)]
  pulled = [int(v) for v in np.asarray(state.pulled_N)]
  down = [bool(d) for d in np.asarray(state.down_N)]
  next_t = [float(t) for t in np.asarray(state.clock.next_N)]
  events_n = [int(e) for e in np.asarray(state.clock.events_N)]
  server, buffer = f64(state.server), f64(state.buffer)
  version, buffered, cycle = int(state.version), int(state.buffered), int(state.cycle)
  sent, server_bytes = [0.0] * n, 0.0
  link = [m / float(np.float32(b)) + profile.latency for b in profile.bandwidth_N]

  while min(next_t) < until_s:
    i = min(range(n), key=lambda d: (next_t[d], d))
    down[i], speed, (k_fail, _) = _event_draws(problem, state.key, i, events_n[i], cycle, 2)
    start = events_n[i] == 0
    if start:
      duration = h / speed + link[i]
    elif down[i]:
      duration = h / speed
    else:
      duration = 2 * link[i] + h / speed
      server_bytes += m  # The download that follows.
      failed = faults.p_sync_fail > 0 and bool(jax.random.bernoulli(k_fail, faults.p_sync_fail))
      if not failed:
        w = (1.0 + version - pulled[i]) ** (-config.staleness_exponent)
        buffer = jax.tree.map(lambda b, d: b + w * d, buffer, delta[i])
        buffered += 1
        sent[i] += m
        server_bytes += m
        if buffered >= k:
          server = jax.tree.map(lambda x, b: x + config.server_lr * b / k, server, buffer)
          buffer = jax.tree.map(np.zeros_like, buffer)
          buffered = 0
          version += 1
    if start or not down[i]:  # Pull the current model, run H steps from it.
      x = jax.tree.map(lambda a: a.astype(np.float32), server)
      pulled[i] = version
      origin = x
      for _ in range(h):
        x, opt_state[i], _ = step(x, opt_state[i], state.devices.key[i], steps[i],
                                  data.images[i], data.labels[i], data.counts[i])
        steps[i] += 1
      params[i] = x
      delta[i] = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                              x, origin)
    next_t[i] += duration
    events_n[i] += 1

  stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
  f32 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
  new_state = state.replace(
      devices=state.devices.replace(params=stack(params), opt_state=stack(opt_state),
                                    steps=np.asarray(steps, np.int32)),
      delta=f32(stack(delta)), pulled_N=np.asarray(pulled, np.int32), server=f32(server),
      version=np.asarray(version, np.int32), buffer=f32(buffer),
      buffered=np.asarray(buffered, np.int32), down_N=np.asarray(down),
      clock=state.clock.replace(next_N=np.asarray(next_t, np.float32),
                                events_N=np.asarray(events_n, np.int32)))
  return new_state, np.asarray(sent), server_bytes
