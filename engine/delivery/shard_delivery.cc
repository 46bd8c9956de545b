// File: engine/delivery/shard_delivery.cc
#include "engine/delivery/shard_delivery.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/io/socket_address.h"

namespace facteur::delivery {
namespace {

// Connections of one destination being opened at the same time (slow start).
constexpr size_t kMaxConnectsInProgress = 2;
// How often a shutting-down shard checks whether its connections are gone.
constexpr absl::Duration kShutdownPoll = absl::Milliseconds(10);

mail::DeliveryOutcome LocalFailure(int code, std::string enhanced, std::string text,
                                   std::string remote = {}) {
  mail::DeliveryOutcome outcome;
  outcome.scope = mail::OutcomeScope::kSession;
  outcome.reply = mail::Reply{code, std::move(enhanced), std::move(text)};
  outcome.local = true;
  outcome.remote = std::move(remote);
  return outcome;
}

smtp::TlsPolicy ClientPolicy(config::DeliveryTlsPolicy policy) {
  switch (policy) {
    case config::DeliveryTlsPolicy::kNone: return smtp::TlsPolicy::kNone;
    case config::DeliveryTlsPolicy::kOpportunistic: return smtp::TlsPolicy::kOpportunistic;
    case config::DeliveryTlsPolicy::kRequired: return smtp::TlsPolicy::kRequired;
  }
  return smtp::TlsPolicy::kOpportunistic;
}

}  // namespace

// One SMTP client connection of a destination, from DNS to QUIT. Owned by its DestinationQueue;
// the ClientSession (owned by its io::Connection) borrows it as Owner, so a Link is deleted
// only once its session has ended (or never started).
class ShardDelivery::Link final : public smtp::ClientSession::Owner {
 public:
  Link(ShardDelivery& shard, DestinationQueue& queue, Source source)
      : shard_(shard), queue_(queue), source_(std::move(source)) {}

  ~Link() override {
    if (idle_timer_ != io::kNoTimer) shard_.loop_.Cancel(idle_timer_);
  }

  void Start() {
    const Destination& destination = queue_.destination;
    if (!destination.mx_lookup) {
      hosts_.push_back(destination.host);
      ConnectNext();
      return;
    }
    std::weak_ptr<bool> alive = alive_;
    shard_.resolver_.ResolveMx(destination.host, [this, alive](absl::StatusOr<dns::MxAnswer> answer) {
      if (alive.expired()) return;
      OnMx(std::move(answer));
    });
  }

  // Ready for a job: connected, greeted, not carrying one, not leaving.
  bool idle() const {
    return session_ != nullptr && session_->ready() && !current_.has_value() && !quitting_;
  }
  bool connecting() const { return !ever_ready_ && !finished_; }
  bool finished() const { return finished_; }

  // Takes the next waiting job, or quits when this connection has carried enough, or idles.
  void GiveWork() {
    if (!idle()) return;
    if (sent_ >= shard_.context_.max_messages_per_connection) {
      Quit();
      return;
    }
    if (queue_.waiting.empty()) {
      ArmIdleTimer();
      return;
    }
    CancelIdleTimer();
    current_ = std::move(queue_.waiting.front());
    queue_.waiting.pop_front();
    ++sent_;
    session_->Send(current_->job.message);
  }

  // smtp::ClientSession::Owner
  void OnReady(smtp::ClientSession&) override {
    ever_ready_ = true;
    shard_.Pump(queue_);
  }

  void OnTransactionDone(smtp::ClientSession& session, smtp::TransactionResult result) override {
    if (current_.has_value()) {
      PendingJob job = *std::move(current_);
      current_.reset();
      shard_.Report(std::move(job), queue_.destination, std::move(result.recipients), remote_,
                    source_.ip, session.tls_active());
    }
    if (!shard_.shutting_down_) shard_.Pump(queue_);
  }

  void OnSessionEnded(smtp::ClientSession&, const mail::DeliveryOutcome& why) override {
    session_ = nullptr;
    CancelIdleTimer();
    if (current_.has_value()) {
      // The session promises OnTransactionDone first; should it not, the job still comes back.
      PendingJob job = *std::move(current_);
      current_.reset();
      std::vector<mail::DeliveryOutcome> outcomes(job.job.message.recipients.size(), why);
      shard_.Report(std::move(job), queue_.destination, std::move(outcomes), remote_, source_.ip,
                    false);
    }
    if (!ever_ready_ && !quitting_ && !shard_.shutting_down_ && !plaintext_ &&
        queue_.destination.tls == config::DeliveryTlsPolicy::kOpportunistic &&
        absl::StartsWith(why.reply.text, "TLS handshake")) {
      // Opportunistic TLS whose handshake failed: the same host again, in plain text, as
      // Postfix does at its "may" level — otherwise a server with broken TLS would never get
      // its mail.
      plaintext_ = true;
      --next_target_;
      --tried_;
      ConnectNext();
      return;
    }
    if (!ever_ready_ && !quitting_ && !shard_.shutting_down_) {
      // Refused greeting, TLS policy not met, timeout before the first transaction: the next
      // address or MX host may do better (RFC 5321 §5.1).
      last_failure_ = why;
      if (last_failure_.remote.empty()) last_failure_.remote = remote_;
      if (!why.local && why.permanent()) {
        // A 5xx greeting or EHLO refuses this connection, not the recipients: like Postfix's
        // smtp_skip_5xx_greeting, it defers the mail instead of bouncing it.
        mail::Reply& reply = last_failure_.reply;
        reply.text = absl::StrCat("session refused by ", remote_, ": ", reply.code, " ",
                                  reply.text);
        reply.code = 451;
        reply.enhanced = reply.enhanced.size() > 1 ? "4" + reply.enhanced.substr(1) : "4.0.0";
      }
      ConnectNext();
      return;
    }
    Finish();
  }

  void Quit() {
    if (quitting_) return;
    quitting_ = true;
    CancelIdleTimer();
    if (session_ != nullptr) session_->Quit();
  }

 private:
  struct Target {
    std::string host;
    dns::IpAddress address;
  };

  void OnMx(absl::StatusOr<dns::MxAnswer> answer) {
    const std::string& domain = queue_.destination.host;
    if (!answer.ok()) {
      Fail(LocalFailure(451, "4.4.3",
                        absl::StrCat("DNS lookup of the MX hosts of ", domain,
                                     " failed: ", answer.status().message())));
      return;
    }
    switch (answer->kind) {
      case dns::MxKind::kNullMx:
        Fail(LocalFailure(556, "5.1.10",
                          absl::StrCat("domain ", domain, " does not accept mail (null MX)")));
        return;
      case dns::MxKind::kNxDomain:
        Fail(LocalFailure(550, "5.1.2", absl::StrCat("domain ", domain, " does not exist")));
        return;
      case dns::MxKind::kNoMailHost:
        Fail(LocalFailure(550, "5.1.2",
                          absl::StrCat("domain ", domain, " has no MX or address records")));
        return;
      case dns::MxKind::kHosts:
        break;
    }
    for (const dns::MxHost& host : answer->hosts) hosts_.push_back(host.name);
    ConnectNext();
  }

  // Tries the next address, resolving the next host when the known addresses are used up.
  void ConnectNext() {
    if (shard_.shutting_down_) {
      Finish();
      return;
    }
    const DeliveryContext& context = shard_.context_;
    while (next_target_ >= targets_.size()) {
      if (next_host_ >= hosts_.size() || tried_ >= context.max_addresses_per_connection) {
        if (last_failure_.reply.code == 0) {
          last_failure_ = LocalFailure(451, "4.4.1",
                                       absl::StrCat("no reachable host for ", queue_.destination.key));
        }
        Fail(last_failure_);
        return;
      }
      const std::string host = hosts_[next_host_++];
      if (std::optional<dns::IpAddress> literal = IpLiteral(host)) {
        targets_.push_back({host, *literal});
        continue;
      }
      std::weak_ptr<bool> alive = alive_;
      shard_.resolver_.ResolveAddresses(
          host, [this, alive, host](absl::StatusOr<std::vector<dns::IpAddress>> addresses) {
            if (alive.expired()) return;
            if (!addresses.ok()) {
              last_failure_ = LocalFailure(
                  absl::IsNotFound(addresses.status()) ? 450 : 451,
                  absl::IsNotFound(addresses.status()) ? "4.4.4" : "4.4.3",
                  absl::StrCat("cannot find the address of ", host, ": ",
                               addresses.status().message()));
            } else {
              for (const dns::IpAddress& address : *addresses) {
                if (FamilyMatches(address)) targets_.push_back({host, address});
              }
            }
            ConnectNext();
          });
      return;
    }
    const Target target = targets_[next_target_++];
    ++tried_;
    const uint16_t port = queue_.destination.port;
    absl::StatusOr<io::SocketAddress> remote = io::MakeSocketAddress(target.address.ToString(), port);
    remote_ = absl::StrCat(target.host, "[", target.address.ToString(), "]:", port);
    if (!remote.ok()) {
      last_failure_ = LocalFailure(451, "4.4.1", std::string(remote.status().message()), remote_);
      ConnectNext();
      return;
    }
    io::ConnectSpec spec;
    spec.remote = *remote;
    spec.source = source_.bind;
    spec.timeout = context.connect_timeout;
    spec.tls = context.tls;
    // SNI and the name checked (an IP-literal route checks the certificate's IP address).
    spec.tls_server_name = target.host;
    spec.verify_peer = queue_.destination.tls == config::DeliveryTlsPolicy::kRequired;

    smtp::ClientOptions options;
    options.ehlo_name = source_.ehlo_name;
    options.tls = ClientPolicy(queue_.destination.tls);
    if (context.tls == nullptr || plaintext_) options.tls = smtp::TlsPolicy::kNone;
    options.timeouts = context.timeouts;
    std::weak_ptr<bool> alive = alive_;
    shard_.connector_.Connect(
        spec,
        [this, alive, options](io::Stream& stream) -> std::unique_ptr<io::StreamHandler> {
          if (alive.expired()) return nullptr;
          auto session = std::make_unique<smtp::ClientSession>(stream, options, *this, remote_);
          session_ = session.get();
          return session;
        },
        [this, alive](absl::Status status) {
          if (alive.expired()) return;
          last_failure_ = LocalFailure(
              451, "4.4.1", absl::StrCat("connect to ", remote_, " failed: ", status.message()),
              remote_);
          ConnectNext();
        });
  }

  // Gives up this connection: the waiting jobs fail with `outcome` unless another connection
  // of the destination may still carry them.
  void Fail(const mail::DeliveryOutcome& outcome) {
    bool others = false;
    for (const auto& link : queue_.links) {
      if (link.get() != this && !link->finished()) others = true;
    }
    // A permanent DNS answer holds for every connection of the destination.
    if (!others || outcome.permanent()) shard_.FailWaiting(queue_, outcome, remote_);
    Finish();
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    alive_.reset();
    shard_.LinkFinished(queue_, this);
  }

  bool FamilyMatches(const dns::IpAddress& address) const {
    if (!source_.bind.has_value()) return true;
    return (source_.bind->family() == AF_INET6) == address.v6;
  }

  static std::optional<dns::IpAddress> IpLiteral(const std::string& host) {
    dns::IpAddress address;
    if (inet_pton(AF_INET, host.c_str(), address.bytes) == 1) return address;
    address.v6 = true;
    if (inet_pton(AF_INET6, host.c_str(), address.bytes) == 1) return address;
    return std::nullopt;
  }

  void ArmIdleTimer() {
    if (idle_timer_ != io::kNoTimer) return;
    idle_timer_ = shard_.loop_.RunAfter(shard_.context_.idle_timeout, [this] {
      idle_timer_ = io::kNoTimer;
      if (idle()) Quit();
    });
  }
  void CancelIdleTimer() {
    if (idle_timer_ == io::kNoTimer) return;
    shard_.loop_.Cancel(idle_timer_);
    idle_timer_ = io::kNoTimer;
  }

  ShardDelivery& shard_;
  DestinationQueue& queue_;
  const Source source_;
  // Asynchronous callbacks (DNS, connect) hold a weak_ptr to this: expired once the link is
  // finished, so a late answer finds nothing to touch.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::vector<std::string> hosts_;
  size_t next_host_ = 0;
  std::vector<Target> targets_;
  size_t next_target_ = 0;
  uint32_t tried_ = 0;
  std::string remote_;
  smtp::ClientSession* session_ = nullptr;  // owned by its io::Connection
  std::optional<PendingJob> current_;
  uint32_t sent_ = 0;
  io::TimerId idle_timer_ = io::kNoTimer;
  bool ever_ready_ = false;
  bool plaintext_ = false;  // an opportunistic handshake failed: no STARTTLS on this link
  bool quitting_ = false;
  bool finished_ = false;
  mail::DeliveryOutcome last_failure_;
};

ShardDelivery::ShardDelivery(io::EventLoop& loop, dns::Resolver& resolver,
                             const DeliveryContext& context)
    : loop_(loop), resolver_(resolver), context_(context), connector_(loop) {}

ShardDelivery::~ShardDelivery() = default;

size_t ShardDelivery::connections() const { return connector_.size(); }

void ShardDelivery::Submit(DeliveryJob job) {
  if (shutting_down_) return;  // its message stays queued, leased until the manager stops
  Destination destination = context_.router.Route(job.domain);
  std::unique_ptr<DestinationQueue>& queue = queues_[destination.key];
  if (queue == nullptr) {
    queue = std::make_unique<DestinationQueue>();
    queue->destination = std::move(destination);
  }
  queue->waiting.push_back(PendingJob{std::move(job), context_.clock.Now()});
  Pump(*queue);
}

void ShardDelivery::Pump(DestinationQueue& queue) {
  if (shutting_down_) return;
  for (auto& link : queue.links) {
    if (queue.waiting.empty()) break;
    link->GiveWork();
  }
  if (queue.waiting.empty()) {
    // Idle connections start their idle timers.
    for (auto& link : queue.links) link->GiveWork();
    return;
  }
  size_t connecting = 0;
  size_t live = 0;
  for (const auto& link : queue.links) {
    if (link->finished()) continue;
    ++live;
    if (link->connecting()) ++connecting;
  }
  const std::vector<Source>& sources = context_.router.Sources(queue.destination.pool);
  if (sources.empty()) {
    FailWaiting(queue,
                LocalFailure(451, "4.3.5",
                             absl::StrCat("no source in pool '", queue.destination.pool, "'")),
                "");
    return;
  }
  // Slow start, as Postfix's initial destination concurrency: a few connections are opened at
  // a time, and more only once those answered and the backlog still asks for them — a burst of
  // mail does not open every allowed connection to a destination at once.
  while (live < context_.max_connections_per_destination && connecting < queue.waiting.size() &&
         connecting < kMaxConnectsInProgress) {
    const Source& source = sources[next_source_++ % sources.size()];
    Link* link = queue.links.emplace_back(std::make_unique<Link>(*this, queue, source)).get();
    ++live;
    ++connecting;
    link->Start();
  }
}

void ShardDelivery::FailWaiting(DestinationQueue& queue, const mail::DeliveryOutcome& outcome,
                                const std::string& remote) {
  std::deque<PendingJob> waiting;
  waiting.swap(queue.waiting);
  for (PendingJob& job : waiting) {
    std::vector<mail::DeliveryOutcome> outcomes(job.job.message.recipients.size(), outcome);
    Report(std::move(job), queue.destination, std::move(outcomes), remote, "", false);
  }
}

void ShardDelivery::Report(PendingJob job, const Destination& destination,
                           std::vector<mail::DeliveryOutcome> outcomes, const std::string& mx,
                           const std::string& source_ip, bool tls) {
  JobResult result;
  result.id = job.job.id;
  result.domain = std::move(job.job.domain);
  result.recipient_indexes = std::move(job.job.recipient_indexes);
  result.outcomes = std::move(outcomes);
  result.destination = destination.key;
  result.mx = mx;
  result.source_ip = source_ip;
  result.tls = tls;
  result.elapsed = context_.clock.Now() - job.dispatched;
  context_.results.OnJobDone(std::move(result));
}

void ShardDelivery::LinkFinished(DestinationQueue& queue, Link* link) {
  // Deleted on the next turn: the link may be deep in its own callback (or its session's).
  const std::string key = queue.destination.key;
  std::weak_ptr<bool> alive = alive_;
  loop_.RunAfter(absl::ZeroDuration(), [this, alive, key, link] {
    if (alive.expired()) return;
    auto it = queues_.find(key);
    if (it == queues_.end()) return;
    DestinationQueue& owner = *it->second;
    owner.links.remove_if([link](const std::unique_ptr<Link>& l) { return l.get() == link; });
    if (!shutting_down_) Pump(owner);
    if (owner.links.empty() && owner.waiting.empty()) queues_.erase(it);
  });
}

void ShardDelivery::Shutdown(absl::AnyInvocable<void() &&> done) {
  shutting_down_ = true;
  shutdown_done_ = std::move(done);
  for (auto& [key, queue] : queues_) {
    queue->waiting.clear();
  }
  connector_.AbortAll();
  MaybeFinishShutdown();
}

void ShardDelivery::MaybeFinishShutdown() {
  if (connector_.size() > 0) {
    std::weak_ptr<bool> alive = alive_;
    loop_.RunAfter(kShutdownPoll, [this, alive] {
      if (!alive.expired()) MaybeFinishShutdown();
    });
    return;
  }
  // No connection is left to call a link back; links still resolving names are dropped (their
  // callbacks hold expired weak pointers).
  queues_.clear();
  // Moved out first: `done` may destroy this object.
  absl::AnyInvocable<void() &&> done = std::move(shutdown_done_);
  if (done) std::move(done)();
}

void ShardedDispatcher::Dispatch(DeliveryJob job) {
  if (shards_.empty()) return;
  const Destination destination = router_.Route(job.domain);
  const Shard& shard = shards_[std::hash<std::string>()(destination.key) % shards_.size()];
  ShardDelivery* delivery = shard.delivery;
  shard.loop->Post([delivery, job = std::move(job)]() mutable { delivery->Submit(std::move(job)); });
}

}  // namespace facteur::delivery
