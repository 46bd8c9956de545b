// File: engine/policy/auth_throttle.h
// Failed AUTH attempts per client address. An address whose failures within the window reach
// the limit is refused further attempts, before any password is hashed, until the window that
// began with its first failure ends. argon2id costs a noticeable fraction of a CPU second per
// check by design: without this, one client guessing passwords would keep the verifier pool
// busy and make every real user wait (Dovecot's auth penalty and fail2ban play this role
// beside Postfix).
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

  // False while `client` (an IP address, or "unix") is locked out.
  bool Allowed(std::string_view client);
  void RecordFailure(std::string_view client);
  // A success forgets the address's failures.
  void RecordSuccess(std::string_view client);

 private:
  struct Entry {
    uint32_t failures = 0;
    absl::Time first_failure;
  };
  // Drops entries whose window has ended.
  void ForgetExpired(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  Clock& clock_;
  const AuthThrottleOptions options_;
  absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
  bool warned_full_ ABSL_GUARDED_BY(mutex_) = false;
};

}  // namespace facteur::policy
