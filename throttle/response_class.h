// File: throttle/response_class.h
// The classes a remote reply falls into (../shared/DESIGN.md §5), shared by the classifier that
// assigns them and the throttle that acts on them.
// Thread contract: value types and constant tables; thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace facteur::throttle {

enum class ResponseClass : uint8_t {
  kSuccess,             // 2xx
  kGreylist,            // "450 4.2.0 Greylisted, try again in 300 seconds"
  kRateLimit,           // "421 4.7.28 ... unusual rate", "421 4.7.0 [TSS04]", "451 4.7.650"
  kTooManyConnections,  // "421 ... Too many connections, slow down. OFR005_104"
  kBlocklist,           // "550 5.7.1 ... blocked using ...", "OFR006_102", "S3150"
  kContent,             // "550 5.7.1 message content rejected due to spam"
  kAuthentication,      // SPF / DKIM / DMARC: "550 5.7.26", "550 5.7.515"
  kUserUnknown,         // "550 5.1.1 ... does not exist"
  kMailboxFull,         // "452 4.2.2 ... out of storage"
  kDomainNotFound,      // "550 5.1.2", null MX "556 5.1.10"
  kOtherTransient,      // any other 4xx (timeouts and lost connections too)
  kOtherPermanent,      // any other 5xx
};

inline constexpr size_t kResponseClassCount = 12;

// Lower-case, snake_case names used in config files, metric labels and events
// ("greylist", "rate_limit", "too_many_connections", ...).
inline constexpr std::array<std::string_view, kResponseClassCount> kResponseClassNames = {
    "success",        "greylist",        "rate_limit",      "too_many_connections",
    "blocklist",      "content",         "authentication",  "user_unknown",
    "mailbox_full",   "domain_not_found", "other_transient", "other_permanent",
};

constexpr std::string_view ResponseClassName(ResponseClass c) {
  return kResponseClassNames[static_cast<size_t>(c)];
}

// Classes whose permanent (5xx) reply does not end the recipient, who is kept and tried again:
// replies about our IP or our pace (greylist, rate limit, too many connections, blocklist), a
// full mailbox its owner may empty within the queue's lifetime (DESIGN.md §5), and replies a
// classifier rule calls transient whatever their code (Gmail's "550 5.2.1 ... receiving mail
// too quickly"). Such a reply is no final answer either: warmup caps count final answers.
constexpr bool KeepsRecipient(ResponseClass c) {
  return c == ResponseClass::kGreylist || c == ResponseClass::kRateLimit ||
         c == ResponseClass::kTooManyConnections || c == ResponseClass::kBlocklist ||
         c == ResponseClass::kMailboxFull || c == ResponseClass::kOtherTransient;
}

constexpr std::optional<ResponseClass> ParseResponseClass(std::string_view name) {
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    if (kResponseClassNames[i] == name) return static_cast<ResponseClass>(i);
  }
  return std::nullopt;
}

}  // namespace facteur::throttle
