// File: throttle/retry_policy.cc
// Exponential backoff with jitter, capped, never past a message's expiry.
#include "throttle/retry_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/random/distributions.h"

namespace facteur::throttle {

RetryPolicy::RetryPolicy(const RetryOptions& options) : options_(options) {}

absl::Time RetryPolicy::NextAttempt(uint32_t failed_attempts, absl::Time received_at,
                                    absl::Time now, absl::BitGenRef random) const {
  // In seconds as a double: after a few dozen attempts backoff^(n-1) leaves every integer
  // type, and a double only goes to infinity, which the cap below catches (NaN too, from
  // options no validation should let through).
  const double cap = std::max(0.0, absl::ToDoubleSeconds(options_.max_retry_interval));
  const uint32_t n = std::max<uint32_t>(failed_attempts, 1);
  double delay = absl::ToDoubleSeconds(options_.first_retry) *
                 std::pow(options_.backoff, static_cast<double>(n - 1));
  if (!(delay <= cap)) delay = cap;
  delay = std::max(0.0, delay);
  // Spread so that messages deferred together (one greylisting or rate-limited site) do not
  // all come back in the same second.
  const double jitter = std::min(options_.jitter, 1.0);
  if (jitter > 0) {
    delay *= absl::Uniform(absl::IntervalClosed, random, 1.0 - jitter, 1.0 + jitter);
  }
  // Never later than the expiry, so that what is still undelivered then bounces on time
  // (RFC 5321 §4.5.4.1) rather than at the next retry after it.
  return std::min(now + absl::Seconds(delay), ExpiresAt(received_at));
}

}  // namespace facteur::throttle
