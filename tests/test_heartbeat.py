"""The heartbeat between a component and its supervisor, on a fake clock."""

from __future__ import annotations

import os

import pytest
from roguewatch.runtime import heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(heartbeat.time, "monotonic", c)
    return c


def test_a_silent_component_is_hung_after_hang_s_a_beating_one_never(clock: Clock) -> None:
    r, w = os.pipe()
    beat, pulse = heartbeat.Beat(w), heartbeat.Pulse(r)
    clock.now += heartbeat.GRACE_S  # its start-up grace is over
    for _ in range(20):
        clock.now += heartbeat.BEAT_S
        beat()
        assert pulse.silent_for() == 0.0
    clock.now += heartbeat.HANG_S + 0.1
    assert pulse.silent_for() > heartbeat.HANG_S
    beat()
    assert pulse.silent_for() == 0.0
    os.close(w)
    pulse.close()


def test_a_long_step_said_beforehand_is_not_a_hang_up_to_long_s(clock: Clock) -> None:
    r, w = os.pipe()
    beat, pulse = heartbeat.Beat(w), heartbeat.Pulse(r)
    clock.now += heartbeat.GRACE_S
    beat.long()
    assert pulse.silent_for() == 0.0  # (the supervisor reads as often as the component beats)
    clock.now += heartbeat.LONG_S - 0.1
    assert pulse.silent_for() <= heartbeat.HANG_S
    clock.now += 0.2
    assert pulse.silent_for() > heartbeat.HANG_S
    os.close(w)
    pulse.close()


def test_within_its_start_up_grace_a_component_is_never_hung(clock: Clock) -> None:
    r, w = os.pipe()
    pulse = heartbeat.Pulse(r)
    clock.now += heartbeat.GRACE_S - 0.01
    assert pulse.silent_for() == 0.0
    os.close(w)
    pulse.close()
