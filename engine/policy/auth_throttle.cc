#include "engine/policy/auth_throttle.h"

#include "engine/base/log.h"
#include "engine/base/status.h"

namespace facteur::policy {

AuthThrottle::AuthThrottle(Clock& clock, AuthThrottleOptions options)
    : clock_(clock), options_(options) {}

bool AuthThrottle::Allowed(std::string_view client) {
  if (options_.max_failures == 0) return true;
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(ToAbsl(client));
  if (it == entries_.end()) return true;
  if (now - it->second.first_failure >= options_.window) {
    entries_.erase(it);
    return true;
  }
  return it->second.failures < options_.max_failures;
}

void AuthThrottle::RecordFailure(std::string_view client) {
  if (options_.max_failures == 0) return;
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(ToAbsl(client));
  if (it != entries_.end() && now - it->second.first_failure >= options_.window) {
    entries_.erase(it);
    it = entries_.end();
  }
  if (it == entries_.end()) {
    if (entries_.size() >= options_.max_tracked) ForgetExpired(now);
    if (entries_.size() >= options_.max_tracked) {
      if (!warned_full_) {
        Log(LogLevel::kWarning, "auth throttle: %zu addresses tracked, not tracking more",
            entries_.size());
        warned_full_ = true;
      }
      return;
    }
    it = entries_.emplace(std::string(client), Entry{0, now}).first;
  }
  if (++it->second.failures == options_.max_failures) {
    Log(LogLevel::kWarning, "auth throttle: %s locked out after %u failed AUTH attempts",
        ToAbsl(client), it->second.failures);
  }
}

void AuthThrottle::RecordSuccess(std::string_view client) {
  absl::MutexLock lock(&mutex_);
  entries_.erase(ToAbsl(client));
}

void AuthThrottle::ForgetExpired(absl::Time now) {
  absl::erase_if(entries_, [&](const auto& entry) {
    return now - entry.second.first_failure >= options_.window;
  });
  warned_full_ = false;
}

}  // namespace facteur::policy
