// File: throttle/gcra.cc
// GCRA: a theoretical arrival time pushed one emission interval per event.
#include "throttle/gcra.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace facteur::throttle {
namespace {

// period / rate rounded up to the whole nanosecond, at least 1 ns. Rounding up is what makes
// count × interval >= period, hence "at most count events in any window of one period" with
// burst 1; rounding down by even a quarter nanosecond would let count + 1 fit.
absl::Duration EmissionInterval(absl::Duration period, double rate) {
  const int64_t period_ns = absl::ToInt64Nanoseconds(period);
  int64_t ns;
  if (rate == std::floor(rate) && rate <= static_cast<double>(UINT32_MAX)) {
    // Integral rates (every configured one): exact integer ceiling.
    const auto count = static_cast<int64_t>(rate);
    ns = (period_ns + count - 1) / count;
  } else {
    // Fractional rates (adaptive ones): the double quotient of two integers is within half an
    // ulp of the true one, far less than the 1/count gap to the next integer for any period
    // below a hundred days, so the ceiling is exact too.
    const double q = std::ceil(static_cast<double>(period_ns) / rate);
    ns = q >= static_cast<double>(INT64_MAX / 2) ? INT64_MAX / 2 : static_cast<int64_t>(q);
  }
  return absl::Nanoseconds(std::max<int64_t>(ns, 1));
}

}  // namespace

Gcra::Gcra(uint32_t count, absl::Duration period, uint32_t burst)
    : period_(period), burst_(std::max<uint32_t>(burst, 1)) {
  if (count > 0 && period > absl::ZeroDuration()) {
    rate_ = count;
    interval_ = EmissionInterval(period_, rate_);
    tolerance_ = interval_ * static_cast<int64_t>(burst_ - 1);
  }
}

absl::Time Gcra::NextEligible() const {
  if (unlimited() || tat_ == absl::InfinitePast()) return absl::InfinitePast();
  return tat_ - tolerance_;
}

bool Gcra::TryAcquire(absl::Time now) {
  if (!Eligible(now)) return false;
  Acquire(now);
  return true;
}

void Gcra::Acquire(absl::Time now) {
  last_ = now;
  if (unlimited()) return;
  tat_ = std::max(tat_, now) + interval_;
}

void Gcra::SetRate(double count_per_period, absl::Time now) {
  const bool was_unlimited = unlimited();
  const absl::Duration old_interval = interval_;
  if (!(count_per_period > 0) || period_ <= absl::ZeroDuration()) {
    rate_ = 0;
    interval_ = absl::ZeroDuration();
    tolerance_ = absl::ZeroDuration();
    tat_ = absl::InfinitePast();
    return;
  }
  rate_ = count_per_period;
  interval_ = EmissionInterval(period_, rate_);
  tolerance_ = interval_ * static_cast<int64_t>(burst_ - 1);
  if (was_unlimited) {
    // No backlog was kept while unlimited: assume the last event just paid one new interval.
    tat_ = last_ == absl::InfinitePast() ? absl::InfinitePast() : last_ + interval_;
  } else if (tat_ != absl::InfinitePast() && tat_ > now) {
    // Keep the backlog as a number of events, so that a cut slows what is already queued.
    const double events = absl::FDivDuration(tat_ - now, old_interval);
    tat_ = now + interval_ * events;
  }
}

}  // namespace facteur::throttle
