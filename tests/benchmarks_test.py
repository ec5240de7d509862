"""Smoke tests of the benchmark code (tiny sizes; nothing here is timed or compared)."""

import json

import jax
import numpy as np

from benchmarks import aggregation
from benchmarks import common
from benchmarks import engine
from benchmarks import flops
from benchmarks import run
from benchmarks import waste


def test_waste_table_orders_schedules():
  rows = {r['scenario'].split(' ')[0]: r for r in waste.waste_table(num_cycles=2)}
  for r in rows.values():
    assert 0.0 <= r['sorted_8'] <= r['single'] < 1.0
    assert r['sorted_8'] <= r['static_8'] + 1e-12  # Sorting by budget never loses.
  # Paper-like speeds 1..8 with 8 buckets: one device per bucket, no waste at all.
  assert rows['paper-like']['sorted_8'] == 0.0
  assert rows['paper-like']['single'] > 0.5
  assert '| paper-like' in waste.markdown({'waste': list(rows.values()), 'timings': []})


def test_engine_measure_runs_every_contender():
  row = engine.measure('small_mlp', 2, target_s=1e-3, repeats=1)
  assert set(row['examples_per_s']) == {'engine', 'engine_one_vmap', 'naive', 'limit'}
  assert all(np.isfinite(v) and v > 0 for v in row['examples_per_s'].values())
  assert '| small_mlp (55,050) | 2 |' in engine.markdown({'rows': [row]})


def test_sparse_aggregation_runner_is_in_place():
  run_fn = aggregation._sparse_runner(16, 4, calls=2)  # pylint: disable=protected-access
  run_fn()
  run_fn()  # The donated state is fed back: a second call works on the new buffers.


def test_run_writes_json_and_markdown(tmp_path):
  assert run.main(['--out', str(tmp_path), '--quick', '--only', 'waste']) == 0
  results = json.loads((tmp_path / 'results.json').read_text())
  assert set(results) == {'waste', 'meta'}
  assert '## Masking waste' in (tmp_path / 'results.md').read_text()


def test_flop_rates_are_measured_against_the_matmul_limit():
  row = flops.measure('small_mlp', 2, repeats=1, steps=1)
  assert row['matmul_flops_per_s'] > 0 and row['flops']['train'] > 0
  assert set(row['flops_per_s']) == {'train', 'eval_consensus/chosen', 'eval_devices/chosen'}
  # One dense forward pass: 2 FLOP per weight per example, within XLA's extra counts.
  model, params = common.init_params('small_mlp')
  weights = sum(x.size for x in jax.tree.leaves(params) if x.ndim == 2)
  per_example = row['flops']['eval_consensus/chosen'] / flops.TEST_EXAMPLES
  assert 2 * weights <= per_example <= 2.5 * weights
  text = flops.markdown({'rows': [row], 'device': common.cpu_info()})
  assert 'vector extensions' in text and '| small_mlp | 2 |' in text
