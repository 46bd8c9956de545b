// File: throttle/retry_policy.h
// When a message that met a transient failure is tried again, and when it expires: exponential
// backoff with jitter (so that a thousand messages deferred together do not come back together),
// capped, and a queue lifetime after which what is still undelivered bounces (RFC 5321
// §4.5.4.1: "give up" after 4-5 days). Pure logic: the caller passes the time and the
// randomness (STYLE.md rule 6).
// Thread contract: immutable; thread-safe.
#pragma once

#include <cstdint>

#include "absl/random/bit_gen_ref.h"
#include "absl/time/time.h"

namespace facteur::throttle {

struct RetryOptions {
  // Delay before the second attempt. Default: 5m.
  absl::Duration first_retry = absl::Minutes(5);
  // Each further delay is the previous one times this. Default: 2.
  double backoff = 2.0;
  // Longest delay between attempts. Default: 4h.
  absl::Duration max_retry_interval = absl::Hours(4);
  // Random spread of each delay, as a fraction (0.2: ±20%). Default: 0.2.
  double jitter = 0.2;
  // Time after reception when undelivered recipients bounce. Default: 5d.
  absl::Duration queue_lifetime = absl::Hours(24 * 5);
};

class RetryPolicy {
 public:
  explicit RetryPolicy(const RetryOptions& options);

  // The time of the next attempt after `failed_attempts` (>= 1) attempts of a message received
  // at `received_at`, the last one ending at `now`: now + first_retry × backoff^(n-1), capped at
  // max_retry_interval, spread by ±jitter, and never later than the expiry (so that the message
  // is bounced on time).
  absl::Time NextAttempt(uint32_t failed_attempts, absl::Time received_at, absl::Time now,
                         absl::BitGenRef random) const;
  absl::Time ExpiresAt(absl::Time received_at) const { return received_at + options_.queue_lifetime; }
  bool Expired(absl::Time received_at, absl::Time now) const { return now >= ExpiresAt(received_at); }
  const RetryOptions& options() const { return options_; }

 private:
  RetryOptions options_;
};

}  // namespace facteur::throttle
