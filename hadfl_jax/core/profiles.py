"""Device heterogeneity profiles: compute speed, link bandwidth and latency.

A profile gives every simulated device a speed s_i in local SGD steps per simulated
second, a link bandwidth b_i in bytes per simulated second, and a latency l. Speeds are
configured relative to each other and scaled so that the fastest device needs
``seconds_per_step`` per step (``docs/spec.md``, "The simulated clock": the cost per step
comes from the profile, never from the CPU running the simulation).

Profile kinds (``config.profile.kind``):

* ``list``: an explicit list of N relative speeds (``speeds``).
* ``tiers``: a short list of tier speeds (``speeds``); devices are split into equal
  contiguous blocks, one per tier.
* ``geometric``: N speeds spread geometrically from 1 to ``ratio`` (the heterogeneity
  sweep of the spec).
* ``lognormal``: N speeds exp(sigma * normal), seeded (the many-devices scenario).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from hadfl_jax import typed_config as tc

PROFILE_KINDS = ('list', 'tiers', 'geometric', 'lognormal')


@dataclasses.dataclass(frozen=True)
class ProfileConfig(tc.Section):
  """Device heterogeneity (``config.profile``; see the module docstring)."""

  SECTION = 'profile'

  kind: str = tc.choice('list', PROFILE_KINDS)
  speeds: tuple | None = tc.numbers((1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0), low=0,
                                    low_open=True, min_len=0, optional=True,
                                    doc='relative speeds (list) or tier speeds (tiers)')
  ratio: float = tc.number(8.0, low=1, doc='geometric: fastest / slowest')
  sigma: float = tc.number(0.8, low=0, doc='lognormal: sigma of log speed')
  seconds_per_step: float = tc.number(0.01, low=0, low_open=True,
                                      doc='simulated seconds per step of the fastest device')
  jitter_sigma: float = tc.number(0.0, low=0, doc='per-cycle speed jitter')
  bandwidth_mbps: float = tc.number(100.0, low=0, low_open=True, doc='link bandwidth, Mbit/s')
  latency_s: float = tc.number(0.005, low=0, doc='per-message latency, seconds')
  bytes_per_param: int = tc.integer(4, low=1, doc='bytes of one parameter on the wire')

  def check_devices(self, num_devices: int, prefix: str) -> None:
    speeds = self.speeds or ()
    if self.kind == 'list' and len(speeds) != num_devices:
      tc.fail(prefix + 'speeds', self.speeds, f'profile.kind=list needs one speed per device '
              f'(num_devices={num_devices}), got {len(speeds)}')
    if self.kind == 'tiers' and not 1 <= len(speeds) <= num_devices:
      tc.fail(prefix + 'speeds', self.speeds, f'profile.kind=tiers needs 1 to '
              f'num_devices={num_devices} tier speeds, got {len(speeds)}')


class DeviceProfile(NamedTuple):
  """Static heterogeneity of the N devices.

  Attributes:
    speed_N: local steps per simulated second, float64 (N,).
    bandwidth_N: link bandwidth, bytes per simulated second, float64 (N,).
    latency: per-message latency, seconds.
    jitter_sigma: per-cycle speed jitter: a device's true speed in a cycle is
      ``s_i exp(jitter_sigma z_i)``, z_i standard normal.
  """

  speed_N: np.ndarray
  bandwidth_N: np.ndarray
  latency: float
  jitter_sigma: float = 0.0


def relative_speeds(
    kind: str,
    num_devices: int,
    *,
    speeds: Sequence[float] = (),
    ratio: float = 1.0,
    sigma: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
  """Relative speeds of the N devices (only their ratios matter).

  Raises:
    ValueError: unknown kind, a speed list of the wrong length, non-positive speeds.
  """
  if kind == 'list':
    rel = np.asarray(speeds, np.float64)
    if rel.shape != (num_devices,):
      raise ValueError(
          f'profile.speeds must list one speed per device ({num_devices}), '
          f'got {len(rel)}'
      )
  elif kind == 'tiers':
    tiers = np.asarray(speeds, np.float64)
    if tiers.ndim != 1 or not 1 <= tiers.size <= num_devices:
      raise ValueError(
          f'profile.speeds must list between 1 and {num_devices} tier speeds, '
          f'got {len(tiers)}'
      )
    rel = tiers[np.arange(num_devices) * tiers.size // num_devices]
  elif kind == 'geometric':
    if ratio < 1:
      raise ValueError(f'profile.ratio must be >= 1, got {ratio}')
    rel = np.geomspace(1.0, ratio, num_devices) if num_devices > 1 else np.ones(1)
  elif kind == 'lognormal':
    if sigma < 0:
      raise ValueError(f'profile.sigma must be >= 0, got {sigma}')
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5BEED]))
    rel = np.exp(sigma * rng.standard_normal(num_devices))
  else:
    raise ValueError(f'profile.kind must be one of {PROFILE_KINDS}, got {kind!r}')
  if not np.all(np.isfinite(rel)) or np.any(rel <= 0):
    raise ValueError(f'profile speeds must be positive and finite, got {rel.tolist()}')
  return rel


def make_profile(profile_config, num_devices: int, seed: int) -> DeviceProfile:
  """Builds a :class:`DeviceProfile` from ``config.profile``.

  Args:
    profile_config: the ``profile`` ConfigDict (kind, speeds, ratio, sigma,
      seconds_per_step, bandwidth_mbps, latency_s).
    num_devices: N.
    seed: the run's seed (used by the lognormal kind).

  Returns:
    The profile, speeds scaled so the fastest device runs ``1 / seconds_per_step``
    steps per second, bandwidths converted from Mbit/s to bytes/s.
  """
  rel = relative_speeds(
      profile_config.kind,
      num_devices,
      speeds=tuple(profile_config.speeds or ()),
      ratio=profile_config.ratio,
      sigma=profile_config.sigma,
      seed=seed,
  )
  if profile_config.seconds_per_step <= 0:
    raise ValueError(
        f'profile.seconds_per_step must be > 0, got {profile_config.seconds_per_step}'
    )
  speed_N = rel / rel.max() / profile_config.seconds_per_step
  mbps = np.broadcast_to(np.asarray(profile_config.bandwidth_mbps, np.float64), (num_devices,))
  if np.any(mbps <= 0):
    raise ValueError(f'profile.bandwidth_mbps must be > 0, got {profile_config.bandwidth_mbps}')
  if profile_config.latency_s < 0:
    raise ValueError(f'profile.latency_s must be >= 0, got {profile_config.latency_s}')
  return DeviceProfile(
      speed_N=speed_N,
      bandwidth_N=mbps * 1e6 / 8.0,
      latency=float(profile_config.latency_s),
      jitter_sigma=float(getattr(profile_config, 'jitter_sigma', 0.0)),
  )
