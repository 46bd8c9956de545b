// File: engine/delivery/recipient_check.h
// RCPT-time validation of recipient domains (issue #3 point 2): a domain that does not exist
// (NXDOMAIN, or no MX and no address) gets 550 5.1.2, a null MX (RFC 7505 §4.2) 556 5.1.10, and
// a DNS failure 451 4.4.3 — so that a client never gets a 250 for mail that can never leave.
// Domains with a static route are not looked up (the route decides where they go), nor are
// address literals and UTF-8 domains (left to delivery).
// Thread contract: immutable; Check() runs on the loop thread of `loop` and answers there.
#pragma once

#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "engine/delivery/router.h"
#include "engine/dns/shard_resolvers.h"
#include "engine/io/event_loop.h"
#include "engine/mail/reply.h"

namespace facteur::delivery {

class RecipientDomainCheck {
 public:
  RecipientDomainCheck(const Router& router, dns::ShardResolvers& resolvers)
      : router_(router), resolvers_(resolvers) {}

  // `done` gets nullopt (accept) or the refusal; it may run inside this call.
  void Check(io::EventLoop& loop, std::string domain,
             absl::AnyInvocable<void(std::optional<mail::Reply>) &&> done) const;

 private:
  const Router& router_;
  dns::ShardResolvers& resolvers_;
};

}  // namespace facteur::delivery
