"""Smoke tests of the benchmark code (tiny sizes; nothing here is timed or compared)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import aggregation
from benchmarks import common
from benchmarks import compile_time
from benchmarks import engine
from benchmarks import eval_share
from benchmarks import flops
from benchmarks import gossip
from benchmarks import step_profile
from benchmarks import memory
from benchmarks import run
from benchmarks import waste
from hadfl_jax.core import local
from hadfl_jax.core import mixing


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


@pytest.mark.parametrize('kind,n', [('pairs', 5), ('pairs', 6), ('ring', 6), ('torus', 9)])
def test_gossip_forms_agree_on_stochastic_mixings(kind, n):
  m = gossip.make_mixing(kind, n)
  mixing.check_stochastic(mixing.neighbours_to_dense(m), doubly=True)
  if kind == 'pairs':  # Disjoint pairs: each device averages with one other (or none).
    assert sorted(np.asarray(m.cols_NxD[:, 1])) == list(range(n))
  state = {'w': jnp.asarray(np.random.default_rng(0).normal(size=(n, 7, 3)), jnp.float32)}
  forms = [jax.jit(form)(m, state)['w'] for form in gossip.FORMS.values()]
  np.testing.assert_allclose(forms[0], forms[1], rtol=1e-6, atol=1e-6)
  run_fn = gossip.runner(mixing.apply_neighbours, m, state, calls=2)
  run_fn()
  run_fn()  # The donated state is fed back.


def test_gossip_cycle_ab_runs_both_forms_on_the_same_schedule(digits_data_dir):
  from hadfl_jax.configs import quick_compare  # pylint: disable=g-import-not-at-top
  config = quick_compare.get_config()
  config.dataset.data_dir = digits_data_dir
  config.algorithm = 'adpsgd'
  row = gossip.cycle_ab(config, warm=1, cycles=2, repeats=1)
  steps = row['local_steps']
  assert set(steps) == set(gossip.FORMS) and len(set(steps.values())) == 1
  assert steps['sum of gathered rows'] > 0 and row['reduction_over_sum'] > 0


def test_run_writes_json_and_markdown(tmp_path):
  assert run.main(['--out', str(tmp_path), '--quick', '--only', 'waste']) == 0
  results = json.loads((tmp_path / 'results.json').read_text())
  assert set(results) == {'waste', 'meta'}
  assert '## Masking waste' in (tmp_path / 'results.md').read_text()


def test_flop_rates_are_measured_against_the_matmul_limit():
  row = flops.measure('small_mlp', 2, repeats=1, steps=1)
  assert row['matmul_flops_per_s'] > 0 and row['flops']['train'] > 0
  # The limit: 2 N^3 FLOP per numpy product, timed in the same rounds as the rest.
  assert row['matmul_flops_per_s'] == pytest.approx(2 * flops.MATMUL_N**3 / row['matmul_seconds'])
  # Besides the chosen sub-buckets, the same ones the other way where the width allows it.
  other = {flops.OTHER_SUB_BUCKETS[not row['sub_buckets']['unroll']]}
  assert set(row['flops_per_s']) - other == {
      'train', 'eval_consensus/chosen', 'eval_devices/chosen', 'plain loop/model'}
  width = min(row['num_devices'], row['sub_buckets']['width'] or row['num_devices'])
  assert (other <= set(row['flops_per_s'])) == (2 <= width <= local.UNROLL_MAX_WIDTH)
  # The plain loop's step is the engine's step: the same FLOP per example (within the
  # engine's own bookkeeping), and it ran as many examples.
  assert row['flops']['plain loop/model'] == pytest.approx(row['flops']['train'], rel=0.1)
  assert row['train_vs_plain'] == pytest.approx(
      row['examples_per_s']['train'] / row['examples_per_s']['plain loop/model'])
  # One dense forward pass: 2 FLOP per weight per example, within XLA's extra counts.
  model, params = common.init_params('small_mlp')
  weights = sum(x.size for x in jax.tree.leaves(params) if x.ndim == 2)
  per_example = row['flops']['eval_consensus/chosen'] / flops.TEST_EXAMPLES
  assert 2 * weights <= per_example <= 2.5 * weights
  # The roofline: the step's FLOP per byte times the measured bandwidth, or the matmul rate.
  for where, bw in row['bandwidth'].items():
    bound = min(row['matmul_flops_per_s'], bw * row['train_intensity'])
    assert row['train_vs_bandwidth_bound'][where] == pytest.approx(
        row['flops_per_s']['train'] / bound)
  # One core: a child pinned to one CPU timed the same training and the matmul; the bound
  # on any split over the cores is cores x that training rate over the all-core limit.
  single = row['one_core']
  if single is not None:
    assert len(single['cpus']) == 1
    assert single['train_flops_per_s'] == pytest.approx(
        row['flops']['train'] / single['train_seconds'])
    assert single['train_vs_matmul'] == pytest.approx(
        single['train_seconds'] ** -1 * row['flops']['train'] * single['matmul_seconds']
        / (2 * flops.MATMUL_N**3))
    assert single['parallel_bound'] == pytest.approx(
        single['cores'] * single['train_flops_per_s'] / row['matmul_flops_per_s'])
  text = flops.markdown({'rows': [row], 'device': common.cpu_info()})
  assert 'vector extensions' in text and '| small_mlp | 2 |' in text
  assert ('On one core (a process pinned to CPU' in text) == (single is not None)
  assert 'a plain single-device loop of the same step' in text and 'GB/s on 4 MB' in text


def test_flop_rates_time_the_chosen_sub_buckets_the_other_way_too(monkeypatch):
  monkeypatch.setattr(flops, 'run_schedule',
                      lambda *a: local.LocalSchedule(max_width=2, unroll=True))
  row = flops.measure('small_mlp', 4, repeats=1, steps=1, with_one_core=False)
  assert row['sub_buckets'] == {'width': 2, 'unroll': True} and row['one_core'] is None
  # The same work both ways: as many FLOP, each timed.
  assert row['flops']['train/vmapped'] == row['flops']['train']
  assert row['seconds']['train/vmapped'] > 0
  text = flops.markdown({'rows': [row], 'device': common.cpu_info()})
  ratio = row['flops_per_s']['train'] / row['flops_per_s']['train/vmapped']
  assert ('2 devices each, as separate step copies. The same sub-buckets vmapped '
          f'(`train/vmapped`): chosen / other = **{ratio:.2f}**.') in text


def test_compile_time_names_the_schedule_that_compiled():
  assert compile_time._describe([], 0) == 'single masked loop'
  assert compile_time._describe([1, 2], 2) == 'buckets 1,2, sub-buckets of <= 2'
  assert (compile_time._describe([4, 4], 2, unroll=True)
          == 'buckets 4,4, sub-buckets of <= 2 as step copies')


def test_step_profile_counts_the_dots_flop_by_hand():
  row = step_profile.measure('small_mlp', steps=3, repeats=1)
  # Dense layers (in, out), batch B: forward and weight gradient 2 B in out FLOP each, the
  # input gradient too except for the first layer (the images get none).
  _, params = common.init_params('small_mlp')
  kernels = [x.shape for x in jax.tree.leaves(params) if x.ndim == 2]
  batch = step_profile.BATCH
  by_hand = sum(3 * 2 * batch * i * o for i, o in kernels) - 2 * batch * kernels[0][0] * kernels[0][1]
  assert row['dot_flops'] == by_hand
  assert row['matmul_s'] > 0 and row['data_movement_s'] > 0
  assert row['matmul_share'] == pytest.approx(row['matmul_s'] / row['ops_s'])
  assert any(o['matmul'] for o in row['top_ops'])
  assert '**' in step_profile.markdown({'rows': [row], 'device': common.cpu_info()})


def test_step_profile_gives_each_ops_dot_flop_and_names_an_op_faster_than_the_machine():
  a, b, c = jnp.ones((4, 5)), jnp.ones((5, 6)), jnp.ones((6, 7))
  hlo = jax.jit(lambda a, b, c: jnp.tanh(a @ b) @ c).lower(a, b, c).compile().as_text()
  per_op = step_profile.op_dot_flops(hlo)
  by_hand = [2 * 4 * 6 * 5, 2 * 4 * 7 * 6]  # 2 x output elements x contracted size.
  assert sorted(per_op.values()) in (by_hand, [sum(by_hand)])  # Apart or fused together.
  assert sum(per_op.values()) == step_profile.dot_flop_count(hlo)
  row = dict(model='m', batch=32, wall_s=1e-3, train_flops_per_s=1e11,
             numpy_matmul_flops_per_s=2e11, num_ops=3, ops_s=1e-3, matmul_s=5e-4,
             matmul_share=0.5, dot_flops=1e8, matmul_flops_per_s=2e11,
             data_movement_s=5e-4, top_ops=[],
             early_ops={'dot.1': dict(seconds=1e-4, flops=2.3e8)})
  text = step_profile.markdown({'rows': [row], 'device': common.cpu_info()})
  assert "`dot.1`'s trace event took 0.100 ms for 0.230 GFLOP" in text


def test_step_profile_times_both_cnn_blocks():
  # block_ab checks its functional CNN against the module before timing it.
  blocks = step_profile.block_ab(steps=1, repeats=1)
  assert set(blocks) == {'fused', 'unfused'} and all(t > 0 for t in blocks.values())
  text = step_profile.markdown({'rows': [], 'blocks': blocks, 'device': common.cpu_info()})
  assert 'unfused / fused = **' in text


def test_memory_report_names_what_holds_the_memory():
  held = dict(runtime=3e8, train_data=5e7, test_data=1e7, device_state=3e7,
              cycle_temporaries=9e7, eval_consensus_temporaries=1e6,
              eval_devices_temporaries=2e7)
  row = dict(scenario='paper-like', num_devices=8, peak_rss_bytes=1.2e9, held_bytes=held,
             goal_bytes=1.5e9, first_run_peak_rss_bytes=1.7e9)
  text = memory.markdown({'rows': [row]})
  assert ('| paper-like | 8 | 1.20 | 1.50 | 1.70 | 0.30 | 0.05 | 0.01 | 0.03 | 0.09 | '
          '0.00 / 0.02 |') in text
  targets = run.targets({'memory': {'rows': [row]}})
  assert 'met: peak memory of a paper-like run <= 1.5 GB: 1.20 GB' in targets
  assert ('NOT met: peak memory of a paper-like first run on a machine (autotune measuring) '
          '<= 1.5 GB: 1.70 GB') in targets
  assert memory.markdown({'rows': [], 'skipped': 'no MNIST'}) == 'Skipped: no MNIST.\n'


def test_eval_share_of_a_study(tmp_path):
  for name, eval_s, wall in (('hadfl_h50_lr0.05', 1.0, 10.0), ('hadfl_h20_lr0.1', 3.0, 10.0),
                             ('ddp_lr0.05', 5.0, 10.0)):
    run_dir = tmp_path / 'runs' / name / 'seed0'
    run_dir.mkdir(parents=True)
    (run_dir / 'timing.json').write_text(json.dumps({'eval_s': eval_s, 'wall_time_s': wall}))
  rows = {r['algorithm']: r for r in eval_share.study_shares(str(tmp_path))}
  assert rows['hadfl']['runs'] == 2 and abs(rows['hadfl']['mean'] - 0.2) < 1e-12
  assert rows['hadfl']['max'] == 0.3 and rows['ddp']['mean'] == 0.5
  text = eval_share.markdown({'device': common.cpu_info(), 'goal': 0.15,
                              'study': {'workdir': str(tmp_path), 'rows': list(rows.values())}})
  assert '| hadfl | 2 | 20.0% | 30.0% |' in text
