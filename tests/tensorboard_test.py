"""TensorBoard event files written without TensorFlow, read back by TensorBoard itself."""

import json
import os
import struct

import numpy as np
import pytest

from hadfl_jax import tensorboard
from hadfl_jax import train

tb = pytest.importorskip(
    'tensorboard', reason='the tensorboard package (requirements-dev.txt) reads the files')
from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top,wrong-import-position


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def test_crc32c_check_values():
  # The check value of CRC-32C (RFC 3720, B.4) and of the empty string.
  assert tensorboard.crc32c(b'123456789') == 0xE3069283
  assert tensorboard.crc32c(b'') == 0
  assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros.


def test_events_serialize_as_tensorboards_own_protos():
  ours = tensorboard.event(1234.5, 7, values={'acc': 0.25, 'loss': -3.0})
  theirs = event_pb2.Event(wall_time=1234.5, step=7, summary=summary_pb2.Summary(value=[
      summary_pb2.Summary.Value(tag='acc', simple_value=0.25),
      summary_pb2.Summary.Value(tag='loss', simple_value=-3.0),
  ]))
  assert ours == theirs.SerializeToString()
  header = tensorboard.event(9.0, file_version=tensorboard.FILE_VERSION)
  assert event_pb2.Event.FromString(header).file_version == 'brain.Event:2'


def test_tfrecord_framing():
  record = tensorboard.tfrecord(b'abc')
  (length,) = struct.unpack('<Q', record[:8])
  assert length == 3 and record[12:15] == b'abc' and len(record) == 8 + 4 + 3 + 4
  assert struct.unpack('<I', record[8:12])[0] == tensorboard.masked_crc32c(record[:8])


def test_writer_is_read_back_by_tensorboard(tmp_path):
  with tensorboard.SummaryWriter(tmp_path) as writer:
    for step in range(5):
      writer.scalars(step, {'a': step / 4, 'b': 10.0 * step, 'nan': float('nan')})
  scalars = _scalars(tmp_path)
  assert set(scalars) == {'a', 'b'}  # Non-finite values are skipped.
  assert scalars['a'] == [(s, s / 4) for s in range(5)]
  assert scalars['b'] == [(s, 10.0 * s) for s in range(5)]


def test_a_run_writes_its_rows_for_tensorboard(quick_config, tmp_path):
  quick_config.eval_every = 2
  train.train_and_evaluate(quick_config, str(tmp_path), verbose=False)
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  scalars = _scalars(tmp_path / 'tensorboard')
  for field in ('consensus_accuracy', 'loss', 'sim_time_s', 'bytes_sent',
                'min_device_accuracy', 'train_loss'):
    steps, values = zip(*scalars[field])
    assert list(steps) == [r['cycle'] for r in rows]
    np.testing.assert_allclose(values, [r[field] for r in rows], rtol=1e-6)  # float32.
  assert [s for s, _ in scalars['vs_sim_ms/consensus_accuracy']] == [
      round(r['sim_time_s'] * 1000) for r in rows]
  # Run again in the same workdir (nothing to resume: no checkpoints): one file, anew.
  train.train_and_evaluate(quick_config, str(tmp_path), verbose=False)
  assert len([n for n in os.listdir(tmp_path / 'tensorboard') if 'tfevents' in n]) == 1
  assert len(_scalars(tmp_path / 'tensorboard')['loss']) == len(rows)
