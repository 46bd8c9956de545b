#include "engine/policy/auth_throttle.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"

namespace facteur::policy {

AuthThrottle::AuthThrottle(Clock& clock, AuthThrottleOptions options)
    : clock_(clock), options_(options) {}

std::string AuthThrottle::KeyOf(std::string_view client) {
  if (client.find(':') == std::string_view::npos) return std::string(client);
  in6_addr address;
  if (inet_pton(AF_INET6, std::string(client).c_str(), &address) != 1) return std::string(client);
  char text[INET6_ADDRSTRLEN];
  if (IN6_IS_ADDR_V4MAPPED(&address)) {
    return inet_ntop(AF_INET, &address.s6_addr[12], text, sizeof(text)) != nullptr
               ? std::string(text)
               : std::string(client);
  }
  std::memset(&address.s6_addr[8], 0, 8);
  if (inet_ntop(AF_INET6, &address, text, sizeof(text)) == nullptr) return std::string(client);
  return absl::StrCat(text, "/64");
}

bool AuthThrottle::Expire(Entry& entry, absl::Time now) const {
  if (entry.failures > 0 && now - entry.first_failure >= options_.window) {
    entry.failures = 0;
    entry.first_failure = absl::InfiniteFuture();
  }
  return entry.failures == 0 && entry.running == 0;
}

AuthThrottle::Admission AuthThrottle::Begin(std::string_view client) {
  if (options_.max_failures == 0) return Admission::kUncounted;
  const absl::Time now = clock_.Now();
  const std::string key = KeyOf(client);
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= options_.max_tracked) ForgetExpired(now);
    if (entries_.size() >= options_.max_tracked) {
      if (!warned_full_) {
        Log(LogLevel::kWarning, "auth throttle: %zu addresses tracked, not tracking more",
            entries_.size());
        warned_full_ = true;
      }
      return Admission::kUncounted;
    }
    it = entries_.emplace(key, Entry{}).first;
  }
  Entry& entry = it->second;
  Expire(entry, now);
  const uint32_t limit = entry.failures == 0 ? std::max(options_.max_failures, kChecksAtOnce)
                                             : options_.max_failures;
  if (entry.failures + entry.running >= limit) {
    if (entry.failures == 0 && entry.running == 0) entries_.erase(it);
    return Admission::kRefused;
  }
  ++entry.running;
  return Admission::kCounted;
}

void AuthThrottle::Finish(std::string_view client, Admission admission, Outcome outcome) {
  if (admission != Admission::kCounted) return;
  const absl::Time now = clock_.Now();
  const std::string key = KeyOf(client);
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  Entry& entry = it->second;
  if (entry.running > 0) --entry.running;
  Expire(entry, now);
  if (outcome == Outcome::kSuccess) {
    entry.failures = 0;
    entry.first_failure = absl::InfiniteFuture();
  } else if (outcome == Outcome::kFailure) {
    if (entry.failures == 0) entry.first_failure = now;
    if (++entry.failures == options_.max_failures) {
      Log(LogLevel::kWarning, "auth throttle: %s locked out after %u failed AUTH attempts", key,
          entry.failures);
    }
  }
  if (entry.failures == 0 && entry.running == 0) entries_.erase(it);
}

void AuthThrottle::ForgetExpired(absl::Time now) {
  absl::erase_if(entries_, [&](auto& entry) { return Expire(entry.second, now); });
  warned_full_ = false;
}

}  // namespace facteur::policy
