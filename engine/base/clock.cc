#include "engine/base/clock.h"

namespace facteur {

RealClock& RealClock::Get() {
  static RealClock clock;
  return clock;
}

absl::Time SimulatedClock::Now() const {
  absl::MutexLock lock(&mutex_);
  return now_;
}

void SimulatedClock::Advance(absl::Duration d) {
  absl::MutexLock lock(&mutex_);
  now_ += d;
}

void SimulatedClock::Set(absl::Time t) {
  absl::MutexLock lock(&mutex_);
  now_ = t;
}

}  // namespace facteur
