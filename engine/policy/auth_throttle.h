// File: engine/policy/auth_throttle.h
// Failed AUTH attempts per client address. An address whose failures within the window reach
// the limit is refused further attempts, before any password is hashed, until the window that
// began with its first failure ends. argon2id costs a noticeable fraction of a CPU second per
// check by design: without this, one client guessing passwords would keep the verifier pool
// busy and make every real user wait (Dovecot's auth penalty and fail2ban play this role
// beside Postfix). Checks still running count as failures to come, so that many connections
// guessing at once cannot all get in before the first failure is counted; while an address has
// no failure, up to kChecksAtOnce may run (a NAT or a webmail host logging users in together).
// IPv6 clients count by /64, the block one host or one customer usually holds.
// Thread contract: thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"

namespace facteur::policy {

struct AuthThrottleOptions {
  // Failures within `window` that lock the address out. 0 disables the throttle. Default: 5.
  uint32_t max_failures = 5;
  // Default: 10 minutes, counted from the first failure.
  absl::Duration window = absl::Minutes(10);
  // Addresses tracked at most; past it new addresses are not tracked (logged once), so that a
  // flood of addresses cannot grow memory. Default: 100000.
  size_t max_tracked = 100000;
};

class AuthThrottle {
 public:
  AuthThrottle(Clock& clock, AuthThrottleOptions options);

  // How a password check ended.
  enum class Outcome : uint8_t {
    kSuccess,  // forgets the address's failures
    kFailure,  // a wrong name or password
    kNone,     // no verdict on the password (no capacity to check it; an error)
  };

  // Checks an address with no failure may have running at once, when max_failures is lower.
  static constexpr uint32_t kChecksAtOnce = 8;

  // What Begin() decided.
  enum class Admission : uint8_t {
    kRefused,    // locked out: no check
    kCounted,    // a check to end with Finish()
    kUncounted,  // a check, not tracked (the table is full); Finish() does nothing with it
  };
  // Starts a password check for `client` (an IP address, or "unix"): refused while its failures
  // in the window and the checks it has running reach the limit. Each admission but kRefused is
  // ended by exactly one Finish() with it.
  Admission Begin(std::string_view client);
  void Finish(std::string_view client, Admission admission, Outcome outcome);

  // The address whose failures `client` counts toward: itself, or for IPv6 its /64
  // ("2001:db8:1:2::/64"; an IPv4-mapped address as the IPv4 address).
  static std::string KeyOf(std::string_view client);

 private:
  struct Entry {
    uint32_t failures = 0;
    absl::Time first_failure = absl::InfiniteFuture();  // of the window; none while no failure
    uint32_t running = 0;  // checks begun and not finished
  };
  // Clears `entry`'s failures once their window has ended; true when nothing is left of it.
  bool Expire(Entry& entry, absl::Time now) const;
  // Drops entries with nothing left.
  void ForgetExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  Clock& clock_;
  const AuthThrottleOptions options_;
  absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
  bool warned_full_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace facteur::policy
