// File: engine/smtp/server/submission_service.h
// Connects SMTP sessions to the services behind them: password checks on the auth worker pool,
// DKIM signing on the signing pool, durable queueing on the spool writer, metrics. Work leaves
// the session's loop thread and its result comes back to that same thread by EventLoop::Post
// (DESIGN.md §2), so a Session only ever runs on its own shard.
// Thread contract: SubmissionServices is shared by every shard and thread-safe (each member is);
// a handler made by MakeSessionFactory is shard-confined like its stream.
#pragma once

#include <atomic>
#include <cstdint>

#include <functional>
#include <optional>
#include <string>

#include "absl/functional/any_invocable.h"
#include "engine/base/clock.h"
#include "engine/events/event_log.h"
#include "engine/io/event_loop.h"
#include "engine/mail/reply.h"
#include "engine/base/worker_pool.h"
#include "engine/dkim/signing_pool.h"
#include "engine/io/stream.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/account_quotas.h"
#include "engine/policy/account_store.h"
#include "engine/policy/auth_throttle.h"
#include "engine/smtp/server/session.h"
#include "queue/spool.h"
#include "queue/suppression.h"

namespace facteur::smtp {

struct SubmissionServices {
  queue::Spool& spool;
  policy::AccountStore& accounts;
  WorkerPool& auth_pool;  // argon2id takes a good part of a CPU second: never on a loop thread
  policy::AuthThrottle& auth_throttle;  // per client address, checked before the pool
  Clock& clock;
  metrics::Metrics& metrics;
  // Sessions open on every listener, against SmtpOptions::max_sessions.
  std::atomic<uint32_t> sessions{0};
  // The RCPT-time recipient domain check (SessionHost::CheckRecipientDomain), run on the
  // session's loop. Empty: every domain is accepted.
  std::function<void(io::EventLoop& loop, std::string domain,
                     absl::AnyInvocable<void(std::optional<mail::Reply>) &&> done)>
      check_recipient_domain = nullptr;
  // Reception events go here; null: no events log.
  events::EventLog* events = nullptr;
  // DKIM signing of every accepted message before it is queued; null: no signing. Atomic: a
  // reload that brings the first keys starts a pool (the main thread) while sessions run.
  std::atomic<dkim::SigningPool*> signer{nullptr};
  // Per-account quotas and suspension of authenticated submissions (issue #5); null: none.
  policy::AccountQuotas* quotas = nullptr;
  // Whether mail for an address literal may be accepted (Router::RoutesAddressLiteral); empty:
  // never, it is refused at RCPT TO.
  std::function<bool(std::string_view literal)> routes_address_literal = nullptr;
  // Recipients refused at RCPT TO (550 5.1.1) for every client; null: none.
  queue::SuppressionList* suppression = nullptr;
};

// The handler factory of one listener. `policy` and `services` outlive the listener.
io::StreamHandlerFactory MakeSessionFactory(const ListenerPolicy& policy,
                                            SubmissionServices& services);

}  // namespace facteur::smtp
