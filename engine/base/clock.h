// File: engine/base/clock.h
// The one source of wall-clock time (STYLE.md rule 6). Production code takes a `Clock&`; unit
// tests pass a SimulatedClock and move time forward by hand instead of sleeping; scenarios that
// run the real binary through hours of provider limits give it a ScaledClock ([clock] speed).
// Code that waits until a clock time converts the wait with ToRealDuration().
// Thread contract: RealClock and ScaledClock are immutable and thread-safe; SimulatedClock is
// thread-safe.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace facteur {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // How long to wait in real time for `clock_time` to pass on this clock.
  virtual absl::Duration ToRealDuration(absl::Duration clock_time) const { return clock_time; }
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  // A process-wide instance for code that has no reason to take another.
  static RealClock& Get();
};

// Time running `speed` times faster than the real clock from `anchor` on: Now() is
// anchor + (real now - anchor) × speed. A scenario and its test servers compute the same time
// from the same anchor and speed, so "300 s of greylisting" or "an hour of rate limits" pass in
// a fraction of a real second while every component reads one consistent clock.
class ScaledClock final : public Clock {
 public:
  ScaledClock(absl::Time anchor, double speed) : anchor_(anchor), speed_(speed) {}
  absl::Time Now() const override { return anchor_ + (absl::Now() - anchor_) * speed_; }
  absl::Duration ToRealDuration(absl::Duration clock_time) const override {
    return clock_time / speed_;
  }
  double speed() const { return speed_; }

 private:
  const absl::Time anchor_;
  const double speed_;
};

class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(absl::Time start = absl::FromUnixSeconds(1'800'000'000)) : now_(start) {}
  absl::Time Now() const override;
  void Advance(absl::Duration d);
  void Set(absl::Time t);

 private:
  mutable absl::Mutex mutex_;
  absl::Time now_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace facteur
