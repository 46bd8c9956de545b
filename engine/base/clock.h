// File: engine/base/clock.h
// The one source of wall-clock time (STYLE.md rule 6). Production code takes a `Clock&`; unit
// tests pass a SimulatedClock and move time forward by hand instead of sleeping.
// Thread contract: RealClock is stateless and thread-safe; SimulatedClock is thread-safe.
#pragma once

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace facteur {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
};

class RealClock final : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  // A process-wide instance for code that has no reason to take another.
  static RealClock& Get();
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
