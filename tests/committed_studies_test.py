"""The committed studies: each results/<scenario>/COMMAND, run again on a copy of its
directory with ``cached_only``, finds every run it needs and gives the committed results.

Apart from tests/compare_test.py, which holds the comparison's own tests."""

import ast
import importlib
import json
import shlex
import shutil

import pytest

from hadfl_jax import algorithms
from hadfl_jax import compare
from hadfl_jax import typed_config
from tests import fixtures


def _assert_close(got, want, where='results'):
  if isinstance(want, dict):
    assert isinstance(got, dict) and set(got) == set(want), where
    for k in want:
      _assert_close(got[k], want[k], f'{where}.{k}')
  elif isinstance(want, list):
    assert isinstance(got, list) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_close(g, w, f'{where}[{i}]')
  elif isinstance(want, float):
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
  else:
    assert got == want, where


def _command_config(path):
  """The config that a results/<scenario>/COMMAND's flags build (the packaged config its
  --config names, then each --config.<field>=<value> in order)."""
  lines = [line.strip() for line in path.read_text().splitlines()
           if line.strip() and not line.strip().startswith('#')]
  argv = shlex.split(' '.join(line.rstrip('\\') for line in lines))
  argv = argv[argv.index('hadfl_jax.compare') + 1:]
  name = argv[argv.index('--config') + 1]
  config = importlib.import_module(f'hadfl_jax.configs.{name}').get_config()
  for arg in argv:
    if arg.startswith('--config.'):
      field, _, text = arg[len('--config.'):].partition('=')
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
      *parents, last = field.split('.')
      section = config
      for part in parents:
        section = section[part]
      section[last] = value
  return config


def _recollect(scenario: str, tmp_path, **fields):
  """results/<scenario>/COMMAND run again with ``cached_only`` on a copy of its directory
  (``fields``: config fields the COMMAND leaves to the machine); returns (the results, the
  committed results.json), whose algorithms it checks equal up to float rounding
  (Student's t quantiles differ in the last bits between scipy versions)."""
  committed = fixtures.REPO / 'results' / scenario
  config = _command_config(committed / 'COMMAND')
  for field, value in fields.items():
    section, _, name = field.rpartition('.')
    (config[section] if section else config)[name] = value
  if config.compare.get('winners_from'):
    config.compare.winners_from = str(fixtures.REPO / config.compare.winners_from)
  config.compare.cached_only = True
  shutil.copytree(committed, tmp_path / 'copy')
  results = compare.compare(config, str(tmp_path / 'copy'), log=None)
  with open(committed / 'results.json') as f:
    expected = json.load(f)
  _assert_close(json.loads(json.dumps(results['algorithms'])), expected['algorithms'])
  if 'sweep' in expected:  # The heterogeneity sweep, every run of it found too.
    assert 'not_run' not in json.dumps(results['sweep'])
    _assert_close(json.loads(json.dumps(results['sweep'])), expected['sweep'], 'sweep')
  return results, expected


def test_the_committed_quick_study_is_found_whole_in_its_cache(tmp_path):
  # results/quick_digits/COMMAND, run again, finds every run it needs finished in the
  # committed runs/ and ablation/ and gives the committed results.
  results, expected = _recollect('quick_digits', tmp_path)
  # Only lr 1.6, run for AD-PSGD (whose best lr, 0.8, was then the grid's edge) and for
  # FedBuff (its whole grid re-run for its REVISION 2).
  for name, r in results['algorithms'].items():
    assert {p['lr'] for p in r['not_run']} == (
        set() if name in ('adpsgd', 'fedbuff') else {1.6}), name
  _assert_close(results['ablation']['rows'], expected['ablation']['rows'], 'ablation')


@pytest.mark.parametrize('scenario', ['paper_mnist_tuning', 'paper_mnist',
                                      'noniid_mnist_tuning', 'noniid_mnist',
                                      'many_devices_tuning', 'many_devices',
                                      'many_devices_free_comm', 'many_devices_no_latency',
                                      'hadfl_outsiders/quick', 'hadfl_outsiders/paper'])
def test_the_committed_mnist_studies_are_found_whole_in_their_cache(scenario, tmp_path):
  # results/<scenario>/COMMAND run again finds every run it needs and gives the committed
  # results: nothing is left to run and nothing reported was hand-edited. The tuning
  # (grid, extended edges, options at the best points) chose every lr and H inside its
  # grid; the report ran those winners.
  if not fixtures.SHARED_MNIST.is_dir():
    pytest.skip(f'real MNIST IDX files not found at {fixtures.SHARED_MNIST} '
                '(set HADFL_MNIST_DIR)')
  results, _ = _recollect(scenario, tmp_path, **{'dataset.idx_dir': str(fixtures.SHARED_MNIST)})
  config = _command_config(fixtures.REPO / 'results' / scenario / 'COMMAND')
  for name, r in results['algorithms'].items():
    assert r['not_run'] == [], name
    if scenario.endswith('_tuning'):
      # Every lr and H chosen is interior to its line of the grid: run at a smaller and
      # a larger value, the other coordinate the same (before the options, which ran at
      # that point).
      chosen = {k: v for k, v in r['chosen'].items() if '.' not in k}
      for knob in set(chosen) & {'lr', 'h'}:
        line = sorted(g['point'][knob] for g in r['grid']
                      if not any('.' in k for k in g['point'])
                      and all(g['point'][k] == v for k, v in chosen.items() if k != knob))
        assert line[0] < chosen[knob] < line[-1], (name, knob, line)
      # So is every option chosen: its values run at the chosen (lr, H), the algorithm's
      # default (the point without the option) among them, lie on both sides of it, or
      # it is the least value the option allows (Prague's G = 2).
      for option in {k for g in r['grid'] for k in g['point'] if '.' in k}:
        section, _, field = option.partition('.')
        default = config[section][field]
        line = sorted({g['point'].get(option, default) for g in r['grid']
                       if all(g['point'][k] == v for k, v in chosen.items())})
        value = r['chosen'].get(option, default)
        spec = typed_config.specs(algorithms.ALGORITHMS.get(section).Config)[field]
        assert line[0] < value or value == spec.low, (name, option, line)
        assert value < line[-1], (name, option, line)
