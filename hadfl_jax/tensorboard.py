"""TensorBoard event files, written without TensorFlow.

A run writes its evaluation rows twice: ``metrics.jsonl`` (the record of the run) and,
for TensorBoard, an event file in ``WORKDIR/tensorboard/``. ``tensorboard --logdir``
on a comparison's workdir shows every run of the grid side by side.

The format is TensorFlow's: a TFRecord file (each record: its length as a little-endian
uint64, the masked CRC-32C of those 8 bytes, the payload, the masked CRC-32C of the
payload) of serialized ``tensorboard.Event`` protocol buffers. The three messages used
here are small enough to encode by hand (field numbers from TensorBoard's
``event.proto`` and ``summary.proto``)::

  Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
            Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; }

so this module needs neither TensorFlow nor the ``tensorboard`` package;
``tests/tensorboard_test.py`` reads the files back with TensorBoard's own reader.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from typing import Mapping

FILE_VERSION = 'brain.Event:2'

# --- CRC-32C (Castagnoli), as TFRecord uses it ------------------------------------------

_CRC32C_POLY = 0x82F63B78  # Reversed polynomial 0x1EDC6F41.


def _crc_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
    table.append(crc)
  return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of ``data`` (``crc32c(b'123456789') == 0xE3069283``)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotated right by 15 bits, plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the payload, the payload's masked CRC."""
  length = struct.pack('<Q', len(payload))
  return (length + struct.pack('<I', masked_crc32c(length)) + payload
          + struct.pack('<I', masked_crc32c(payload)))


# --- Protocol buffer wire format ----------------------------------------------------------


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # Negative int64s are ten bytes, as protobuf writes them.
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire_type) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def scalar_value(tag: str, value: float) -> bytes:
  """A serialized ``Summary.Value`` with a ``simple_value``."""
  return _bytes_field(1, tag.encode('utf-8')) + _field(2, 5, struct.pack('<f', value))


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          values: Mapping[str, float] | None = None) -> bytes:
  """A serialized ``Event``: a file-version header, or a summary of scalars."""
  out = _field(1, 1, struct.pack('<d', wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode('utf-8'))
  if values:
    summary = b''.join(_bytes_field(1, scalar_value(tag, v)) for tag, v in values.items())
    out += _bytes_field(5, summary)
  return out


class SummaryWriter:
  """Appends scalar summaries to a new event file in ``logdir``.

  Example::

    with SummaryWriter('/tmp/run/tensorboard') as writer:
      writer.scalars(step=10, values={'consensus_accuracy': 0.93, 'loss': 0.21})
  """

  def __init__(self, logdir: str | os.PathLike, filename_suffix: str = '.hadfl'):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    self.path = os.path.join(
        logdir, f'events.out.tfevents.{int(now)}.{socket.gethostname()}{filename_suffix}')
    self._file = open(self.path, 'ab')
    self._file.write(tfrecord(event(now, file_version=FILE_VERSION)))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes one event of ``values`` at ``step`` (non-finite values are skipped)."""
    finite = {tag: float(v) for tag, v in values.items() if math.isfinite(float(v))}
    if finite:
      self._file.write(tfrecord(event(time.time(), int(step), values=finite)))
      self._file.flush()

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> 'SummaryWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def remove_event_files(logdir: str | os.PathLike) -> None:
  """Deletes ``logdir``'s event files (a resumed run writes its rows anew, as it does
  ``metrics.jsonl``)."""
  if os.path.isdir(logdir):
    for name in os.listdir(logdir):
      if 'tfevents' in name:
        os.remove(os.path.join(logdir, name))
