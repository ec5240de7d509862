r"""Where a training step's time goes: XLA's ops of one step, timed by JAX's profiler.

The training step (one device, batch 32, forward, backward and momentum SGD: what the
engine runs per device per local step) is compiled once and called ``steps`` times under
``jax.profiler.trace``. The trace's per-op events (one per XLA thunk: a fusion, a dot, a
copy) are summed per op and divided by the steps. Each op is classed from the compiled
HLO: ``matmul`` if its computation holds a ``dot`` (the convolutions' and dense layers'
products, forward and backward), ``data movement`` otherwise (building the convolution's
patches, summing their gradient back, pooling, its gradient, ReLU masks, transposes, the
optimizer's update). The report gives each class's share of the step and the matmuls'
FLOP rate (XLA's cost analysis of the dots), against numpy's float32 matmul rate measured
in the same run: what bounds training is the class that holds most of the time.

For the CNN it also times the step with each implementation of its conv+pool block, in
one process, interleaved (:func:`block_ab`): ``fused``, the one the model runs
(:func:`hadfl_jax.models.layers.conv2d_max_pool_patches`), and ``unfused``, the im2col
convolution, bias and pooling as three ops (:func:`~hadfl_jax.models.layers.conv2d_patches`
then :func:`~hadfl_jax.models.layers.max_pool_2x2`), what the model ran before.

Independent ops may run at the same time on different cores (XLA:CPU's thunk executor),
so per-op times can add to a little more or less than the step's wall time; the report
gives both. A dot that XLA:CPU hands to its thread pool (a plain ``dot`` thunk, not a
YNNPACK fusion) can end its trace event before its work does: one such dot, the second
convolution's weight gradient, showed 0.09 ms for 0.23 GFLOP (faster than the machine's
peak), its work counted in the ops that ran beside it. The matmul share is then a lower
bound, and the matmuls' rate an upper bound.

  python -m benchmarks.step_profile --out benchmarks/results     # about 20 s on 2 cores
"""

from __future__ import annotations

import collections
import functools
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from typing import Any

import jax
import numpy as np
import optax

from benchmarks import common
from benchmarks import flops as flops_lib
from hadfl_jax.models import layers

BATCH = 32
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = ', re.M)
_COMPUTATION = re.compile(r'^(?:ENTRY )?%([\w.\-]+) ')


def op_times(jitted, args, steps: int) -> dict[str, float]:
  """Seconds per call of each XLA op of the jitted function, from a profiler trace."""
  jax.block_until_ready(jitted(*args))
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(steps):
        out = jitted(*args)
      jax.block_until_ready(out)
    paths = glob.glob(os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True)
    if not paths:
      raise RuntimeError(f'jax.profiler.trace wrote no perfetto trace under {logdir}')
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  total = collections.Counter()
  for event in events:
    if event.get('ph') == 'X':
      total[event['name']] += event['dur'] * 1e-6  # Microseconds.
  return {name: seconds / steps for name, seconds in total.items()}


def _step_inputs():
  """The optimizer and one batch of random images and labels of every timed step."""
  rng = np.random.default_rng(0)
  x = rng.random((BATCH,) + common.IMAGE_SHAPE, np.float32)
  y = rng.integers(0, common.NUM_CLASSES, (BATCH,)).astype(np.int32)
  return optax.sgd(0.01, momentum=0.9), x, y


def measure(model_name: str, steps: int, repeats: int) -> dict[str, Any]:
  """One device's training step of ``model_name``, op by op."""
  model, params = common.init_params(model_name)
  optimizer, x, y = _step_inputs()
  args = (params, optimizer.init(params), x, y)
  jitted = jax.jit(flops_lib.plain_step(flops_lib.logits_fn(model), optimizer))
  hlo = jitted.lower(*args).compile().as_text()
  # Only the entry computation's ops are thunks of their own, timed in the trace.
  entry = set(_INSTRUCTION.findall(hlo.split('\nENTRY', 1)[1]))
  per_op_flops = op_dot_flops(hlo)  # The entry's ops that compute dots: the matmuls.
  matmuls = set(per_op_flops)
  per_op = {name: t for name, t in op_times(jitted, args, steps).items() if name in entry}
  wall = common.interleaved_medians(
      {'step': lambda: jax.block_until_ready(
          [jitted(*args) for _ in range(steps)])}, repeats)['step'] / steps
  dot_flops = dot_flop_count(hlo)
  matmul_time = sum(t for name, t in per_op.items() if name in matmuls)
  other_time = sum(t for name, t in per_op.items() if name not in matmuls)
  limit = flops_lib.matmul_rate(repeats)
  step_flops = flops_lib.model_flops(
      model, lambda m, *a: flops_lib.plain_step(flops_lib.logits_fn(m), optimizer)(*a), *args)
  # A matmul whose trace event ran faster than the machine can (twice numpy's rate) did
  # its work outside its event (see the module's docstring).
  early = sorted(name for name in matmuls if per_op.get(name, 0) > 0
                 and per_op_flops.get(name, 0) / per_op[name] > 2 * limit)
  top = sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
  return dict(model=model_name, batch=BATCH, steps=steps, wall_s=wall,
              ops_s=matmul_time + other_time, matmul_s=matmul_time, data_movement_s=other_time,
              matmul_share=matmul_time / (matmul_time + other_time),
              step_flops=step_flops, dot_flops=dot_flops,
              matmul_flops_per_s=dot_flops / matmul_time if matmul_time else float('nan'),
              numpy_matmul_flops_per_s=limit, train_flops_per_s=step_flops / wall,
              top_ops=[dict(name=n, seconds=t, matmul=n in matmuls) for n, t in top],
              early_ops={n: dict(seconds=per_op[n], flops=per_op_flops[n]) for n in early},
              num_ops=len(per_op))


_DOT = re.compile(r'^\s*(?:ROOT )?%[\w.\-]+ = f32\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)'
                  r'.*?lhs_contracting_dims=\{([\d,]*)\}')


def _shapes(hlo: str) -> dict[str, list[int]]:
  return {m.group(1): [int(d) for d in m.group(2).split(',') if d]
          for m in re.finditer(r'^\s*(?:ROOT )?%([\w.\-]+) = f32\[([\d,]*)\]', hlo, re.M)}


def _dot_flops(lines, shapes) -> float:
  total = 0.0
  for line in lines:
    m = _DOT.match(line)
    if not m:
      continue
    out = [int(d) for d in m.group(1).split(',') if d]
    lhs = shapes[m.group(2)]
    contracted = int(np.prod([lhs[int(d)] for d in m.group(4).split(',') if d]))
    total += 2.0 * float(np.prod(out)) * contracted
  return total


def dot_flop_count(hlo: str) -> float:
  """FLOP of every ``dot`` in compiled HLO text: 2 x (elements of the output) x (the
  contracted size), from the shapes the text declares (XLA names are unique per module)."""
  return _dot_flops(hlo.splitlines(), _shapes(hlo))


def op_dot_flops(hlo: str) -> dict[str, float]:
  """FLOP of the dots of each top-level op of compiled HLO text (a dot, or a fusion
  whose called computation holds dots): ops without a dot are left out."""
  shapes, bodies, computation = _shapes(hlo), collections.defaultdict(list), None
  for line in hlo.splitlines():
    header = _COMPUTATION.match(line)
    if header and line.rstrip().endswith('{'):
      computation = header.group(1)
    elif computation is not None:
      bodies[computation].append(line)
  entry = hlo.split('\nENTRY', 1)[1].splitlines()
  flops = {}
  for line in entry:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    called = re.search(r'calls=%([\w.\-]+)', line)
    count = _dot_flops([line] + (bodies[called.group(1)] if called else []), shapes)
    if count:
      flops[match.group(1)] = count
  return flops


def _unfused_block(x_BxHxWxC, kernel_KxKxCxF, bias_F):
  """The CNN's block as three ops: im2col convolution, bias, then pooling."""
  return layers.max_pool_2x2(
      layers.conv2d_patches(x_BxHxWxC, kernel_KxKxCxF) + bias_F.reshape(1, 1, 1, -1))


BLOCKS = {'fused': layers.conv2d_max_pool_patches, 'unfused': _unfused_block}


def cnn_apply(block, params, x_BxHxWxC):
  """``hadfl_jax.models.cnn.CNN`` as a function of its conv+pool block (:func:`block_ab`
  checks it against the module)."""
  x = x_BxHxWxC
  for name in sorted(k for k in params if k.startswith('conv')):
    x = jax.nn.relu(block(x, params[name]['kernel'], params[name]['bias']))
  x = x.reshape(x.shape[0], -1)
  x = jax.nn.relu(x @ params['dense0']['kernel'] + params['dense0']['bias'][None])
  return x @ params['dense1']['kernel'] + params['dense1']['bias'][None]


def block_ab(steps: int, repeats: int) -> dict[str, float]:
  """Seconds per training step of the CNN with each block of :data:`BLOCKS`, timed
  interleaved in this process."""
  model, params = common.init_params('cnn')
  optimizer, x, y = _step_inputs()
  np.testing.assert_allclose(cnn_apply(BLOCKS['fused'], params, x),
                             model.apply({'params': params}, x), rtol=1e-4, atol=1e-4)
  opt_state = optimizer.init(params)
  fns = {}
  for name, block in BLOCKS.items():
    step = jax.jit(flops_lib.plain_step(functools.partial(cnn_apply, block), optimizer))
    fns[name] = (lambda step=step: jax.block_until_ready(
        [step(params, opt_state, x, y) for _ in range(steps)]))
  return {name: t / steps for name, t in common.interleaved_medians(fns, repeats).items()}


def run(quick: bool) -> dict[str, Any]:
  steps, repeats = (10, 2) if quick else (100, 5)
  return dict(rows=[measure('cnn', steps=steps, repeats=repeats)],
              blocks=block_ab(steps, repeats), device=common.cpu_info())


def markdown(result: dict[str, Any]) -> str:
  dev = result['device']
  lines = [f'Machine: {common.machine_line(dev)}.', '']
  for r in result['rows']:
    lines += [
        f'`{r["model"]}`, one device, batch {r["batch"]}: a training step took '
        f'{r["wall_s"] * 1e3:.2f} ms ({r["train_flops_per_s"] / 1e9:.0f} GFLOP/s, '
        f'{r["train_flops_per_s"] / r["numpy_matmul_flops_per_s"]:.2f} of numpy\'s float32 '
        f'matmul, {r["numpy_matmul_flops_per_s"] / 1e9:.0f} GFLOP/s in this run); its '
        f'{r["num_ops"]} XLA ops add to {r["ops_s"] * 1e3:.2f} ms.', '',
        f'- matmuls: {r["matmul_s"] * 1e3:.2f} ms, **{r["matmul_share"]:.0%}** of the ops\' '
        f'time, {r["dot_flops"] / 1e9:.2f} GFLOP at '
        f'{r["matmul_flops_per_s"] / 1e9:.0f} GFLOP/s '
        f'({r["matmul_flops_per_s"] / r["numpy_matmul_flops_per_s"]:.2f} of numpy\'s);',
        f'- data movement (patches, their gradient, pooling, masks, transposes, the '
        f'update): {r["data_movement_s"] * 1e3:.2f} ms, **{1 - r["matmul_share"]:.0%}**.', '',
        '| op | ms per step | matmul |', '|---|---|---|']
    lines += [f'| `{o["name"]}` | {o["seconds"] * 1e3:.3f} | {"yes" if o["matmul"] else ""} |'
              for o in r['top_ops']]
    for name, o in r.get('early_ops', {}).items():
      lines += ['', f'`{name}`\'s trace event took {o["seconds"] * 1e3:.3f} ms for '
                f'{o["flops"] / 1e9:.3f} GFLOP, faster than twice numpy\'s rate: its work '
                'ran outside its event (in the ops beside it), so the matmul share above is '
                'a lower bound and their rate an upper bound.']
  if 'blocks' in result:
    b = result['blocks']
    lines += ['', 'The CNN\'s step with each conv+pool block, timed interleaved in this run: '
              + ', '.join(f'{name} {t * 1e3:.2f} ms' for name, t in b.items())
              + f': unfused / fused = **{b["unfused"] / b["fused"]:.2f}**.']
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  return common.section_main(sys.modules[__name__], 'step_profile',
                             "Where a training step's time goes", argv)


if __name__ == '__main__':
  raise SystemExit(main())
