"""The replica's throughput meter: tokens per busy hour, where overlapping requests share their time."""

import pytest

from deployments.model.throughput import ThroughputMeter


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_nothing_served_has_no_rate():
    assert ThroughputMeter(Clock()).tokens_per_hour() is None


def test_idle_time_does_not_dilute_the_rate():
    clock = Clock()
    meter = ThroughputMeter(clock)
    meter.started()
    clock.now += 2
    meter.finished(100)
    clock.now += 600  # idle
    meter.started()
    clock.now += 2
    meter.finished(100)
    assert meter.tokens_per_hour() == pytest.approx(200 / 4 * 3600)


def test_overlapping_requests_share_their_busy_time():
    clock = Clock()
    meter = ThroughputMeter(clock)
    meter.started()
    meter.started()  # two decode together for one second, then one more second for the longer
    clock.now += 1
    meter.finished(50)
    clock.now += 1
    meter.finished(150)
    assert meter.tokens_per_hour() == pytest.approx(200 / 2 * 3600)


def test_a_request_in_flight_counts_its_time_so_far():
    clock = Clock()
    meter = ThroughputMeter(clock)
    meter.started()
    clock.now += 1
    meter.finished(100)
    meter.started()
    clock.now += 3
    assert meter.tokens_per_hour() == pytest.approx(100 / 4 * 3600)
