"""The test clock shared by facteur and the test servers in time-compressed scenarios.

An acceptance scenario that must show hours of provider behaviour (per-minute and per-hour rate
limits, 300-second greylisting, back-off ladders) in a minute of real time runs facteur and the
simulated providers on one scaled clock:

    test_time = anchor + (real_time - anchor) * speed

anchor is a Unix time in seconds (a float), normally "now" when the scenario starts, so test
time and real time agree at the anchor and test time then runs `speed` times faster: with
speed=600 one real second is ten test minutes. Real time is the wall clock (time.time), which is
what the facteur process reads too, so both sides compute the same test time from the same
anchor and speed.

Everything here is a plain callable returning seconds, the `clock` argument the test servers
take (default time.time).

    clock = ScaledClock(speed=600)
    sim = ProviderSim(clock=clock, greylist_delay=300)   # 0.5 real seconds
    clock.sleep(300)                                      # sleeps 0.5 s
"""

import math
import time


class ScaledClock:
    """test_time = anchor + (real_time - anchor) * speed. Thread-safe (immutable).

    anchor: the Unix time (seconds, float) where test time equals real time. Default: now.
    speed: test seconds per real second; must be > 0. Default: 1.0 (the real clock).
    real_clock: the real time source. Default: time.time (what facteur reads).
    """

    def __init__(self, anchor=None, speed=1.0, real_clock=time.time):
        if not speed > 0:
            raise ValueError("speed must be > 0, got %r" % (speed,))
        self.real_clock = real_clock
        self.anchor = float(real_clock() if anchor is None else anchor)
        self.speed = float(speed)

    def __call__(self):
        """The test time now, in seconds since the epoch."""
        return self.anchor + (self.real_clock() - self.anchor) * self.speed

    def __repr__(self):
        return "ScaledClock(anchor=%r, speed=%r)" % (self.anchor, self.speed)

    def real_seconds(self, test_seconds):
        """How long `test_seconds` of test time last in real time."""
        return test_seconds / self.speed

    def real_time_at(self, test_time):
        """The real Unix time at which the test clock reads `test_time`."""
        return self.anchor + (test_time - self.anchor) / self.speed

    def sleep(self, test_seconds):
        """Sleeps (in real time) while `test_seconds` of test time pass."""
        if test_seconds > 0:
            time.sleep(test_seconds / self.speed)

    def sleep_until(self, test_time):
        """Sleeps until the test clock reads at least `test_time`."""
        while True:
            remaining = test_time - self()
            if remaining <= 0:
                return
            time.sleep(remaining / self.speed)

    def next_boundary(self, period):
        """The next test time that is a multiple of `period` (60: the next calendar minute)."""
        return (math.floor(self() / period) + 1) * period


def minute_of(test_time):
    """The calendar minute a test time falls in, as minutes since the epoch."""
    return int(test_time // 60)


def hour_of(test_time):
    """The calendar hour a test time falls in, as hours since the epoch."""
    return int(test_time // 3600)
