// File: engine/delivery/job.h
// The unit of work between the queue manager and the delivery shards: one message's recipients
// at one destination domain (one SMTP transaction), and what became of each of them.
// Thread contract: value types, moved across threads (the manager thread ↔ a shard).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <optional>

#include "absl/time/time.h"
#include "engine/base/message_id.h"
#include "engine/mail/outcome.h"
#include "engine/smtp/client/client_session.h"
#include "throttle/response_class.h"

namespace facteur::delivery {

struct DeliveryJob {
  MessageId id;
  std::string domain;  // the recipients' domain, lower case
  uint32_t attempt = 1;  // 1 for the first attempt of the message
  // The transaction: sender, this domain's recipients (at most max_recipients_per_transaction),
  // the body shared with the message's other jobs.
  smtp::OutboundMessage message;
  // Position of each of message.recipients in the envelope's recipient list.
  std::vector<uint32_t> recipient_indexes;
  // The source these recipients were greylisted from: only it may carry them (a retry from
  // another IP is a new triplet, greylisted again). "" when none is pinned.
  std::string pinned_source;
};

// How the response classifier read one recipient's outcome (throttle/classifier.h).
struct RecipientVerdict {
  throttle::ResponseClass response_class = throttle::ResponseClass::kOtherTransient;
  // The delay the reply announced ("try again in 300 seconds"), if any.
  std::optional<absl::Duration> retry_after;
};

struct JobResult {
  MessageId id;
  std::string domain;
  std::vector<uint32_t> recipient_indexes;
  // One per recipient, in the job's order.
  std::vector<mail::DeliveryOutcome> outcomes;
  // One per recipient, in the job's order; empty when the job was not attempted.
  std::vector<RecipientVerdict> verdicts;
  // The job was not attempted: its site (or warmup cap) holds it until this time. Its
  // recipients stay pending, without an attempt counted. InfinitePast: it was attempted.
  absl::Time throttled_until = absl::InfinitePast();
  std::string destination;  // the destination key: "mx:example.org" or "route:[host]:port"
  std::string mx;           // "mx1.example.org[192.0.2.1]:25" that answered, "" when none did
  std::string source_ip;    // the source the connection was bound to, "" when unbound
  std::string source;       // the name of that source ([[source]] name), "" when none
  // One per recipient when the parts of a split job went from different sources (a greylisted
  // recipient goes back from its own); empty otherwise: `source` for all.
  std::vector<std::string> recipient_sources;
  std::string site;         // the site key (throttle/site_matcher.h), "" before it was known
  bool tls = false;
  absl::Duration elapsed = absl::ZeroDuration();  // from dispatch to result
};

// Where the queue manager sends jobs (the delivery shards). Thread-safe.
class JobDispatcher {
 public:
  virtual ~JobDispatcher() = default;
  virtual void Dispatch(DeliveryJob job) = 0;
};

// Where the shards send results (the queue manager). Thread-safe; never blocks for long.
class ResultSink {
 public:
  virtual ~ResultSink() = default;
  // The jobs that came back together (a shard's results of one loop turn), in their order.
  virtual void OnJobsDone(std::vector<JobResult> results) = 0;
};

}  // namespace facteur::delivery
