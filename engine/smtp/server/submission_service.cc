#include "engine/smtp/server/submission_service.h"

#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/io/event_loop.h"

namespace facteur::smtp {
namespace {

// The SessionHost of one connection: knows the loop to come back to.
class ConnectionHost final : public SessionHost {
 public:
  ConnectionHost(io::Stream& stream, SubmissionServices& services,
                 metrics::ListenerMetrics& metrics)
      : loop_(stream.loop()),
        services_(services),
        metrics_(metrics),
        client_(stream.peer().is_unix ? "unix" : stream.peer().ip_text) {}

  void Authenticate(std::string account, std::string password,
                    absl::AnyInvocable<void(absl::StatusOr<AuthenticatedAccount>) &&> done)
      override {
    // Shared by this function and the pool task: whichever runs last frees it. It lets a
    // refused submission answer without having moved `done` into the lost task.
    auto pending = std::make_shared<decltype(done)>(std::move(done));
    const policy::AuthThrottle::Admission admission = services_.auth_throttle.Begin(client_);
    if (admission == policy::AuthThrottle::Admission::kRefused) {
      // Refused before any hashing: this address failed too often (454 4.7.0).
      policy::WipeSecret(password);
      loop_.Post([pending]() mutable {
        std::move (*pending)(
            absl::ResourceExhaustedError("too many failed authentications from this address"));
      });
      return;
    }
    io::EventLoop* loop = &loop_;
    policy::AccountStore* accounts = &services_.accounts;
    policy::AuthThrottle* throttle = &services_.auth_throttle;
    bool submitted = services_.auth_pool.TrySubmit(
        [loop, accounts, throttle, admission, client = client_, pending, account = std::move(account),
         password = std::move(password)]() mutable {
          // Read before the credentials: a change made during the check makes the session's
          // account stale at once rather than go unnoticed.
          const uint64_t change_count = accounts->ChangeCount(account);
          absl::StatusOr<policy::Account> result = accounts->Authenticate(account, password);
          policy::WipeSecret(password);
          throttle->Finish(client, admission,
                           result.ok() ? policy::AuthThrottle::Outcome::kSuccess
                                   : absl::IsUnauthenticated(result.status())
                                       ? policy::AuthThrottle::Outcome::kFailure
                                       : policy::AuthThrottle::Outcome::kNone);
          absl::StatusOr<AuthenticatedAccount> answer =
              result.ok() ? absl::StatusOr<AuthenticatedAccount>(
                                AuthenticatedAccount{result->name, std::move(result->grants),
                                                     change_count})
                          : absl::StatusOr<AuthenticatedAccount>(result.status());
          loop->Post([pending, answer = std::move(answer)]() mutable {
            std::move (*pending)(std::move(answer));
          });
        });
    if (!submitted) {
      // Back-pressure: every verifier is busy; the client may try again (454 4.7.0).
      services_.auth_throttle.Finish(client_, admission, policy::AuthThrottle::Outcome::kNone);
      loop_.Post([pending]() mutable {
        std::move (*pending)(absl::UnavailableError("authentication pool is full"));
      });
    }
  }

  void Enqueue(queue::Envelope envelope, std::string message,
               absl::AnyInvocable<void(absl::Status) &&> done) override {
    io::EventLoop* loop = &loop_;
    // A message admitted against its account's quota (AdmitAccountMessage) but not queued is
    // given back, whether or not the session is still there to hear the answer.
    std::string refund_account =
        services_.quotas != nullptr ? envelope.account : std::string();
    const absl::Time received_at = envelope.received_at;
    std::optional<events::Event> reception;
    if (services_.events != nullptr) {
      reception.emplace();
      reception->type = events::EventType::kReception;
      reception->queue_id = envelope.id.ToString();
      reception->sender = envelope.sender;
      reception->listener = envelope.listener;
      reception->client = envelope.client;
      reception->account = envelope.account;
      reception->size = message.size();
      reception->recipients = static_cast<uint32_t>(envelope.recipients.size());
    }
    // `reply` runs on the spool writer or a signing thread: hand the result back to our loop.
    absl::AnyInvocable<void(absl::Status) &&> reply =
        [loop, done = std::move(done), log = services_.events, clock = &services_.clock,
         reception = std::move(reception), quotas = services_.quotas,
         refund_account = std::move(refund_account), received_at](absl::Status status) mutable {
          if (status.ok() && reception.has_value()) {
            reception->time = clock->Now();
            log->Record(*reception);
          }
          if (!status.ok() && !refund_account.empty()) {
            quotas->table().Refund(refund_account, received_at);
          }
          loop->Post([done = std::move(done), status]() mutable { std::move(done)(status); });
        };
    dkim::SigningPool* const signer = services_.signer.load(std::memory_order_acquire);
    if (signer == nullptr) {
      services_.spool.Enqueue(std::move(envelope), std::move(message), std::move(reply));
      return;
    }
    // DKIM first, on the signing pool (DESIGN.md §2). The signing thread prepends the fields and
    // hands the message to the spool itself: the loop neither waits nor copies the message.
    struct Pending {
      queue::Envelope envelope;
      std::string message;
      absl::AnyInvocable<void(absl::Status) &&> reply;
      // Tells the spool, from the moment a signer takes the message, that it is on its way:
      // a commit then waits for it (bounded) instead of every signed message paying an fsync
      // of its own. Taken when signing starts, not when queued, so that a backlog of messages
      // not yet being signed holds no commit.
      queue::Spool::ExpectedEnqueue expected;
    };
    queue::Spool* spool = &services_.spool;
    // Shared by this function and the pool task: a refused submission still answers.
    auto pending = std::make_shared<Pending>(
        Pending{std::move(envelope), std::move(message), std::move(reply), {}});
    bool submitted = signer->Sign(
        pending->message, pending->envelope.account,
        [pending, spool](absl::StatusOr<std::string> fields) {
          if (!fields.ok()) {
            // Unsigned mail from a domain that signs may be refused downstream (DMARC):
            // better a 451 and a retry by the client.
            Log(LogLevel::kError, "DKIM signing failed: %s", fields.status().ToString());
            pending->expected.Withdraw();
            std::move(pending->reply)(absl::UnavailableError("DKIM signing failed"));
            return;
          }
          std::string signed_message =
              fields->empty() ? std::move(pending->message) : *fields + pending->message;
          spool->Enqueue(std::move(pending->envelope), std::move(signed_message),
                         std::move(pending->reply), std::move(pending->expected));
        },
        [pending, spool] { pending->expected = spool->ExpectEnqueue(); });
    if (!submitted) {
      // Back-pressure: every signer is busy and the queue is full (451 4.3.0).
      std::move(pending->reply)(absl::UnavailableError("DKIM signing queue is full"));
    }
  }

  Clock& clock() override { return services_.clock; }

  void CheckRecipientDomain(std::string domain,
                            absl::AnyInvocable<void(std::optional<mail::Reply>) &&> done) override {
    if (!services_.check_recipient_domain) {
      std::move(done)(std::nullopt);
      return;
    }
    services_.check_recipient_domain(loop_, std::move(domain), std::move(done));
  }

  bool AccountChanged(const AuthenticatedAccount& account) override {
    return services_.accounts.ChangeCount(account.name) != account.change_count;
  }

  std::optional<mail::Reply> CheckAccountMessage(std::string_view account) override {
    if (services_.quotas == nullptr) return std::nullopt;
    return Counted(services_.quotas->table().CheckMessage(account, services_.clock.Now()));
  }

  std::optional<mail::Reply> CheckAccountRecipients(std::string_view account,
                                                    size_t recipients) override {
    if (services_.quotas == nullptr) return std::nullopt;
    return Counted(services_.quotas->table().CheckRecipients(account, recipients));
  }

  std::optional<mail::Reply> AdmitAccountMessage(std::string_view account,
                                                 absl::Time now) override {
    if (services_.quotas == nullptr) return std::nullopt;
    throttle::AdmitDecision decision = services_.quotas->table().Admit(account, now);
    if (decision.suspended_now) OnSuspended(account, now);
    return Counted(std::move(decision.refusal));
  }

  std::optional<mail::Reply> CheckRecipient(std::string_view canonical) override {
    const std::string_view domain = canonical.substr(canonical.rfind('@') + 1);
    if (!domain.empty() && domain.front() == '[' &&
        !(services_.routes_address_literal && services_.routes_address_literal(domain))) {
      // RFC 5321 §4.1.3 allows an address literal for a domain; without a route that takes
      // it, no lookup can answer for it: refused now rather than retried until it expires.
      return mail::Reply{550, "5.7.1",
                         absl::StrCat("<", ToAbsl(canonical),
                                      ">: this relay has no route for an address literal; "
                                      "give a domain name")};
    }
    if (services_.suppression == nullptr) return std::nullopt;
    std::optional<queue::SuppressionList::Hit> hit = services_.suppression->Find(canonical);
    if (!hit.has_value()) return std::nullopt;
    services_.metrics.quota().suppressed_rcpt_total.Increment();
    const std::string date = absl::FormatTime("%Y-%m-%d", hit->added_at, absl::UTCTimeZone());
    // 5.1.1 "bad destination mailbox address" (RFC 3463): what the recipient's own server said.
    std::string text =
        hit->reason == queue::kSuppressedUserUnknown
            ? absl::StrCat("<", ToAbsl(canonical),
                           ">: recipient previously rejected as unknown by its mail server on ",
                           date, "; not sent again")
            : absl::StrCat("<", ToAbsl(canonical), ">: recipient on the suppression list since ",
                           date, " (", hit->reason, "); not sent again");
    return mail::Reply{550, "5.1.1", std::move(text)};
  }

  void OnReplySent(int code) override { metrics_.CountReply(code); }
  void OnMessageRefused() override { metrics_.messages_rejected.Increment(); }
  void OnMessageAccepted(size_t /*bytes*/, absl::Duration time_to_reply) override {
    metrics_.messages_accepted.Increment();
    metrics_.accept_seconds.Observe(absl::ToDoubleSeconds(time_to_reply));
    services_.metrics.smtp_accept_seconds().Observe(absl::ToDoubleSeconds(time_to_reply));
  }
  void OnMessageReceived(metrics::AccountClass account_class) override {
    metrics_.Received(account_class).Increment();
  }
  void OnSessionEnded(absl::Duration lifetime) override {
    metrics_.session_seconds.Observe(absl::ToDoubleSeconds(lifetime));
  }
  void OnAuthFailure() override { metrics_.auth_failures.Increment(); }

 private:
  // A quota refusal as the session sends it, counted by reason.
  std::optional<mail::Reply> Counted(std::optional<throttle::QuotaRefusal> refusal) {
    if (!refusal.has_value()) return std::nullopt;
    services_.metrics.quota().Refusals(throttle::QuotaReasonName(refusal->reason)).Increment();
    return mail::Reply{refusal->code, std::move(refusal->enhanced), std::move(refusal->text)};
  }

  // Once per suspension: the metric, the log, the event, and a prompt write to the store.
  void OnSuspended(std::string_view account, absl::Time now) {
    services_.metrics.quota().suspensions_total.Increment();
    std::optional<throttle::AccountQuotaState> state =
        services_.quotas->table().Get(account, now);
    const std::string detail = state.has_value() ? state->suspension_detail : "";
    Log(LogLevel::kWarning, "account '%s' suspended for unusual sending volume (%s), from %s",
        ToAbsl(account), detail, client_);
    services_.quotas->PersistSoon();
    if (services_.events == nullptr) return;
    events::Event event;
    event.type = events::EventType::kAccountSuspended;
    event.time = now;
    event.account = std::string(account);
    event.client = client_;
    event.detail = detail;
    services_.events->Record(event);
  }

  io::EventLoop& loop_;
  SubmissionServices& services_;
  metrics::ListenerMetrics& metrics_;
  const std::string client_;  // the throttle's key: the peer's IP address, or "unix"
};

// Owns one connection's host and session; counts the session while it lives.
class SessionHandler final : public io::StreamHandler {
 public:
  SessionHandler(io::Stream& stream, const ListenerPolicy& policy, SubmissionServices& services,
                 metrics::ListenerMetrics& metrics)
      : services_(services),
        metrics_(metrics),
        host_(stream, services, metrics),
        session_(stream, policy, host_),
        admitted_(services.sessions.fetch_add(1) < policy.limits.max_sessions) {
    metrics_.sessions.Increment();
    metrics_.sessions_active.Increment();
  }
  ~SessionHandler() override {
    services_.sessions.fetch_sub(1);
    metrics_.sessions_active.Decrement();
  }

  void OnStart(const io::TlsInfo* implicit_tls) override {
    if (!admitted_) {
      session_.RefuseAndClose(mail::Reply{421, "4.7.0", "Too many sessions, try again later"});
      return;
    }
    session_.OnStart(implicit_tls);
  }
  void OnData(std::string_view bytes) override { session_.OnData(bytes); }
  void OnTlsStarted(const io::TlsInfo& tls) override { session_.OnTlsStarted(tls); }
  void OnTlsFailed(std::string_view reason) override { session_.OnTlsFailed(reason); }
  void OnIdleTimeout() override { session_.OnIdleTimeout(); }
  void OnClosed() override { session_.OnClosed(); }

 private:
  SubmissionServices& services_;
  metrics::ListenerMetrics& metrics_;
  ConnectionHost host_;  // declared before session_: the session borrows it
  Session session_;
  const bool admitted_;
};

}  // namespace

io::StreamHandlerFactory MakeSessionFactory(const ListenerPolicy& policy,
                                            SubmissionServices& services) {
  metrics::ListenerMetrics* metrics = &services.metrics.ForListener(policy.listener_name);
  return [&policy, &services, metrics](io::Stream& stream) -> std::unique_ptr<io::StreamHandler> {
    return std::make_unique<SessionHandler>(stream, policy, services, *metrics);
  };
}

}  // namespace facteur::smtp
