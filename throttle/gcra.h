// File: throttle/gcra.h
// One rate limit, "count per period", as the Generic Cell Rate Algorithm (ITU-T I.371): a token
// bucket written as one timestamp, the theoretical arrival time (TAT) of the next event. Each
// event pushes the TAT one emission interval (period / count) further; an event is allowed when
// now >= TAT - tolerance, the tolerance being (burst - 1) intervals. With burst 1 the events are
// evenly spaced, and — the interval being rounded *up* to the nanosecond — every half-open window
// of one period, a calendar minute for instance, holds at most `count` of them.
// Used by PairThrottle (throttle/site_throttle.h) for message and connection rates; the caller
// learns the next eligible time and arms a timer instead of polling (../shared/DESIGN.md §4).
// Pure logic: time is passed in, never read (STYLE.md rule 6).
// Thread contract: shard-confined (a plain value, no locking).
#pragma once

#include <cstdint>

#include "absl/time/time.h"

namespace facteur::throttle {

class Gcra {
 public:
  // `count` events per `period`, `burst` of them allowed back to back. count == 0 (or a period
  // that is not positive) means no limit; burst 0 is taken as 1.
  Gcra(uint32_t count, absl::Duration period, uint32_t burst = 1);

  // The earliest time at which an event conforms: absl::InfinitePast() when unlimited or before
  // the first event; may be <= the caller's `now`, which means "allowed now".
  absl::Time NextEligible() const;
  bool Eligible(absl::Time now) const { return NextEligible() <= now; }

  // Consumes one event if it conforms at `now`; returns whether it did.
  bool TryAcquire(absl::Time now);
  // Consumes one event whatever the state (the caller was told NextEligible and decided; an
  // event that happened anyway must still be paid for, or the limit would be exceeded later).
  void Acquire(absl::Time now);

  // Changes the rate to `count_per_period` events per period (fractional rates allowed: 0.5 per
  // minute is one every two minutes); not positive (or NaN) means no limit. The backlog already
  // consumed is kept in *events*, not in time: if the next event was due 3 intervals from now, it
  // stays due 3 new intervals from now. Going from unlimited to limited spaces the next event one
  // new interval after the last one.
  void SetRate(double count_per_period, absl::Time now);

  bool unlimited() const { return rate_ <= 0; }
  // Events per period; 0 when unlimited.
  double rate() const { return rate_; }
  absl::Duration period() const { return period_; }
  uint32_t burst() const { return burst_; }
  // period / rate, rounded up to the nanosecond; zero when unlimited.
  absl::Duration emission_interval() const { return interval_; }

 private:
  absl::Duration period_;
  uint32_t burst_;
  double rate_ = 0;
  absl::Duration interval_ = absl::ZeroDuration();
  absl::Duration tolerance_ = absl::ZeroDuration();
  // Theoretical arrival time of the next event; InfinitePast before the first one.
  absl::Time tat_ = absl::InfinitePast();
  // When the last event was consumed; InfinitePast before the first one.
  absl::Time last_ = absl::InfinitePast();
};

}  // namespace facteur::throttle
