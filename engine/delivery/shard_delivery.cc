// File: engine/delivery/shard_delivery.cc
#include "engine/delivery/shard_delivery.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/io/socket_address.h"

namespace facteur::delivery {
namespace {

// Connections of one destination being opened at the same time (slow start).
constexpr size_t kMaxConnectsInProgress = 2;
// Longest a destination refused by a warmup cap full with what is in flight waits before its
// site is pumped again (answers to those messages pump it sooner).
constexpr absl::Duration kWarmupRecheck = absl::Seconds(10);
// A connection about to take its destination's next job looks this far down its site's
// turns for a destination it can serve (ShardDelivery::TurnFor).
constexpr size_t kTurnsLooked = 8;
// Messages a site starts while a destination at another address waits its turn before one of
// its connections closes for it (ShardDelivery::WayFor): where taking turns costs a new
// connection each time, at most one per so many messages.
constexpr uint64_t kStartedBeforeClosingForATurn = 10;
// How often a shutting-down shard checks whether its connections are gone.
constexpr absl::Duration kShutdownPoll = absl::Milliseconds(10);
// How often the pairs' state reaches the metrics (real time: a scrape sees it this fresh).
constexpr absl::Duration kMetricsInterval = absl::Seconds(5);

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

std::optional<dns::IpAddress> IpLiteral(const std::string& host) {
  dns::IpAddress address;
  if (inet_pton(AF_INET, host.c_str(), address.bytes) == 1) return address;
  address.v6 = true;
  if (inet_pton(AF_INET6, host.c_str(), address.bytes) == 1) return address;
  return std::nullopt;
}

// A source bound to one family reaches only addresses of that family.
bool FamilyMatches(const Source& source, const dns::IpAddress& address) {
  if (!source.bind.has_value()) return true;
  return (source.bind->family() == AF_INET6) == address.v6;
}

// The TLS policy of a session for `destination` (kNone without a client context, or once an
// opportunistic handshake failed with that host).
smtp::TlsPolicy SessionTlsPolicy(const Destination& destination,
                                 const tls::TlsClientContext* context, bool plaintext) {
  if (context == nullptr || plaintext) return smtp::TlsPolicy::kNone;
  return ClientPolicy(destination.tls);
}

// Which destinations may reuse an idle connection (ShardDelivery::idle_links_), as Postfix's
// connection cache by address: the same source, address, port and TLS policy. A verified
// session (kRequired) checked the certificate for its own host name only, so it serves that
// host alone.
std::string ReuseKey(const Source& source, const dns::IpAddress& address, uint16_t port,
                     smtp::TlsPolicy tls, const Destination& destination,
                     const std::string& host) {
  const bool verified = destination.tls == config::DeliveryTlsPolicy::kRequired;
  return absl::StrCat(source.name, " ", address.ToString(), " ", port, " ",
                      static_cast<int>(tls), " ", verified ? host : std::string());
}

// A job greylisted from one source goes back from that source alone; the others from any.
bool MayLeaveFrom(const DeliveryJob& job, std::string_view source) {
  return job.pinned_source.empty() || job.pinned_source == source;
}

bool IsRoute(const Destination& destination) {
  return absl::StartsWith(destination.key, "route:");
}

// A site limit of 0 means "no limit of this kind"; the [delivery] caps bound every site.
uint32_t Capped(uint32_t site_limit, uint32_t cap) {
  return site_limit == 0 ? cap : std::min(site_limit, cap);
}

}  // namespace

// Recipients beyond a site's max_recipients_per_message go in several transactions; the parts
// report once, together, as the one job the manager dispatched.
struct ShardDelivery::SplitJob {
  JobResult merged;
  size_t parts_left = 0;
  bool attempted = false;  // a part was reported (Report): the whole is, once every part is
};

throttle::PairThrottle& ShardDelivery::SiteQueue::Pair(const std::string& source) {
  std::unique_ptr<throttle::PairThrottle>& pair = pairs[source];
  if (pair == nullptr) {
    pair = std::make_unique<throttle::PairThrottle>(pair_options);
    // A source the operator paused the whole site for starts paused (it ends by itself).
    if (manual_until != absl::InfinitePast()) pair->SuspendManually(manual_since, manual_until);
  }
  return *pair;
}

ShardDelivery::DestinationQueue* ShardDelivery::SiteQueue::Holder(const Turn& turn) {
  auto it = destinations.find(turn.key);
  if (it == destinations.end() || it->second->turn != turn.ticket) return nullptr;
  return it->second.get();
}

// One SMTP client connection of a destination, from connect to QUIT, counted by its (source,
// site) pair while it lives. Owned by its DestinationQueue; the ClientSession (owned by its
// io::Connection) borrows it as Owner, so a Link is deleted only once its session has ended (or
// never started).
class ShardDelivery::Link final : public smtp::ClientSession::Owner {
 public:
  Link(ShardDelivery& shard, DestinationQueue& queue, Source source,
       throttle::PairThrottle& pair)
      : shard_(shard), queue_(&queue), source_(std::move(source)), pair_(&pair) {}

  ~Link() override { CancelIdleTimer(); }

  void Start() {
    hosts_ = queue_->hosts;
    ConnectNext();
  }

  // Ready for a job: connected, greeted, not carrying one, not leaving.
  bool idle() const {
    return session_ != nullptr && session_->ready() && carried_.empty() && !quitting_;
  }
  bool connecting() const { return !ever_ready_ && !finished_; }
  bool carrying() const { return !carried_.empty(); }
  // Jobs sent and not yet answered: two once the next one follows an end of data.
  size_t in_flight() const { return carried_.size(); }
  size_t recipients_in_flight() const {
    size_t n = 0;
    for (const PendingJob& pending : carried_) n += pending.job.message.recipients.size();
    return n;
  }
  DestinationQueue& queue() { return *queue_; }
  bool finished() const { return finished_; }
  // Idle and offered to other destinations: its own has nothing for it.
  bool offered() const { return offered_.has_value(); }
  const SiteQueue& site() const { return *queue_->site; }

  // Closes this idle connection so that its slot goes to a destination of its site that waits
  // for one (ShardDelivery::TakeOverIdleLinkOfPair); the site counts it until it is finished.
  void CloseForASlot() {
    if (quitting_ || finished_) return;
    closing_for_a_slot_ = true;
    ++queue_->site->closing_for_a_slot;
    Quit();
  }
  uint32_t sent() const { return sent_; }
  // Jobs taken for its present destination: a connection that gives way (GiveWay) carries
  // one first, so that two destinations waiting for one slot cannot hand it back and forth
  // without either being served.
  uint32_t sent_here() const { return sent_here_; }
  const Source& source() const { return source_; }
  // Which destinations may take this connection (ReuseKey); "" before its first address.
  const std::string& reuse_key() const { return reuse_key_; }
  throttle::PairThrottle& pair() { return *pair_; }
  const throttle::PairThrottle& pair() const { return *pair_; }

  // Idle, or at the end of data of the job it carries (OnReadyForNext).
  void Carry(PendingJob job) {
    CancelIdleTimer();
    carried_.push_back(std::move(job));
    ++sent_;
    ++sent_here_;
    session_->Send(carried_.back().job.message);
  }

  // No job for this connection now: it waits for one until the idle timeout. With `offer`
  // (its destination has nothing for its source), another destination of the shard whose host
  // has the same address may take the connection meanwhile (ShardDelivery::idle_links_).
  void Idle(bool offer) {
    if (!idle()) return;
    if (!offer) {
      Withdraw();  // its destination has work for it, once its pair allows
    } else if (!reuse_key_.empty() && !offered_.has_value()) {
      std::list<Link*>& offered = shard_.idle_links_[reuse_key_];
      offered_ = offered.insert(offered.end(), this);
    }
    if (idle_timer_ != io::kNoTimer) return;
    idle_timer_ = shard_.loop_.RunAfter(shard_.context_.idle_timeout, [this] {
      idle_timer_ = io::kNoTimer;
      Withdraw();
      if (idle()) Quit();
    });
  }

  // This idle, offered connection goes to `to` (a destination whose host `host` has this
  // connection's address), counted from now on by `pair` (which the caller told of it) instead
  // of its old pair. Ready for `to`'s jobs at once.
  void MoveTo(DestinationQueue& to, throttle::PairThrottle& pair, const std::string& host) {
    CancelIdleTimer();
    pair_->OnConnectionClosed(shard_.context_.clock.Now());
    DestinationQueue& from = *queue_;
    auto self = std::find_if(from.links.begin(), from.links.end(),
                             [this](const std::unique_ptr<Link>& l) { return l.get() == this; });
    to.links.splice(to.links.end(), from.links, self);
    queue_ = &to;
    pair_ = &pair;
    sent_here_ = 0;
    remote_ = absl::StrCat(host, remote_address_);
    session_->set_remote_name(remote_);
    // The old destination may have nothing left; its site may have jobs waiting for a slot of
    // the old pair.
    shard_.TidyLater(from, nullptr);
  }

  // smtp::ClientSession::Owner
  void OnReady(smtp::ClientSession&) override {
    ever_ready_ = true;
    if (shard_.shutting_down_) {
      Quit();  // connected after the shutdown began: nothing to carry
      return;
    }
    // Its own destination's job first: pumped next, the site's other destinations count it as
    // carrying, not as a connection that could take one of theirs.
    shard_.EmployReady(*this);
    shard_.Pump(*queue_->site);
  }

  // The message carried is written up to its end of data: the next job of the destination
  // that may start now follows it in the same write (RFC 2920 §3.1).
  void OnReadyForNext(smtp::ClientSession&) override {
    if (shard_.shutting_down_ || quitting_ || queue_->waiting.empty()) return;
    shard_.EmployNext(*this);
  }

  void OnTransactionDone(smtp::ClientSession& session, smtp::TransactionResult result) override {
    // The session ends transactions in the order they were sent.
    if (!carried_.empty() && shard_.abandoning_) {
      // Abandoned by the shutdown: its message stays queued as it was.
      shard_.LeaveQueued(std::move(carried_.front()));
      carried_.pop_front();
    } else if (!carried_.empty() && result.unanswered) {
      // Sent behind the end of data of a message whose session then ended: never delivered,
      // and not its failure. It goes first on the destination's next connection, no attempt
      // counted; during a shutdown it stays queued, as the jobs still waiting do.
      if (shard_.shutting_down_) {
        shard_.LeaveQueued(std::move(carried_.front()));
      } else {
        queue_->waiting.push_front(std::move(carried_.front()));
      }
      carried_.pop_front();
    } else if (!carried_.empty()) {
      PendingJob job = std::move(carried_.front());
      carried_.pop_front();
      std::vector<RecipientVerdict> verdicts =
          shard_.Judge(*queue_->site, source_.name, result.recipients);
      shard_.Report(std::move(job), *queue_, std::move(result.recipients), std::move(verdicts),
                    remote_, &source_, session.tls_active());
    }
    if (!carried_.empty() && !shard_.abandoning_ &&
        pair_->suspended(shard_.context_.clock.Now())) {
      // The reply just judged paused the pair (a rate limit, a block) while the next message
      // was already pipelined behind it: closing now keeps that one out of the pause. The
      // server has answered nothing of it (its replies follow this one), so it comes back
      // unanswered and waits in the queue, untried.
      Quit();
    }
    if (!shard_.shutting_down_) {
      // As in OnReady: its own destination's job first, or offered to the site's others before
      // they are pumped. Pumped before it, they would see neither a connection they may take
      // nor room for one (a pair at its limit) and skip their turn, with nothing to pump the
      // site again until this connection's idle timeout.
      shard_.EmployReady(*this);
      shard_.Pump(*queue_->site);
    } else if (carried_.empty()) {
      Quit();  // the shutdown waited for the transactions in progress only
    }
  }

  void OnSessionEnded(smtp::ClientSession& session, const mail::DeliveryOutcome& why) override {
    session_ = nullptr;
    if (shard_.context_.metrics != nullptr) {
      shard_.context_.metrics->delivery_session_seconds.Observe(
          absl::ToDoubleSeconds(shard_.context_.clock.Now() - session_opened_));
    }
    CancelIdleTimer();
    if (shard_.abandoning_) {
      // Aborted when the shutdown grace ran out: no outcome is known, none is reported (but
      // for the other parts of a split job: LeaveQueued). The messages keep their queued
      // state and are tried again at the next start.
      for (PendingJob& job : carried_) shard_.LeaveQueued(std::move(job));
      carried_.clear();
    }
    // The session promises OnTransactionDone first; should it not, the jobs still come back.
    while (!carried_.empty()) {
      PendingJob job = std::move(carried_.front());
      carried_.pop_front();
      std::vector<mail::DeliveryOutcome> outcomes(job.job.message.recipients.size(), why);
      std::vector<RecipientVerdict> verdicts = shard_.Judge(*queue_->site, source_.name, outcomes);
      shard_.Report(std::move(job), *queue_, std::move(outcomes), std::move(verdicts), remote_,
                    &source_, false);
    }
    if (!ever_ready_ && !quitting_ && !shard_.shutting_down_ && !plaintext_ &&
        queue_->destination.tls == config::DeliveryTlsPolicy::kOpportunistic &&
        session.tls_broke()) {
      // Opportunistic TLS that broke (a failed handshake, a reset, a stall): the same host
      // again, in plain text, as Postfix does at its "may" level — otherwise a server with
      // broken TLS would never get its mail. That address only: the next hosts get STARTTLS.
      plaintext_target_ = --next_target_;
      --tried_;
      ConnectNext();
      return;
    }
    if (!ever_ready_ && !quitting_ && !shard_.shutting_down_) {
      // Refused greeting, TLS policy not met, timeout before the first transaction: the next
      // address or MX host may do better (RFC 5321 §5.1). What the server said still tells the
      // pair something ("421 Too many connections", "554 blocked using ...").
      shard_.JudgeSession(*queue_->site, source_.name, why);
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
      if (pair_->suspended(shard_.context_.clock.Now())) {
        // The pair is paused (a rate limit or a block said so): no other host either.
        Fail(last_failure_);
        return;
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
                                       absl::StrCat("no reachable host for ", queue_->destination.key));
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
                if (FamilyMatches(source_, address)) targets_.push_back({host, address});
              }
            }
            ConnectNext();
          });
      return;
    }
    plaintext_ = next_target_ == plaintext_target_;
    const Target target = targets_[next_target_++];
    ++tried_;
    const uint16_t port = queue_->destination.port;
    absl::StatusOr<io::SocketAddress> remote = io::MakeSocketAddress(target.address.ToString(), port);
    remote_address_ = absl::StrCat("[", target.address.ToString(), "]:", port);
    remote_ = absl::StrCat(target.host, remote_address_);
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
    spec.verify_peer = queue_->destination.tls == config::DeliveryTlsPolicy::kRequired;

    smtp::ClientOptions options;
    options.ehlo_name = source_.ehlo_name;
    options.tls = SessionTlsPolicy(queue_->destination, context.tls, plaintext_);
    options.timeouts = context.timeouts;

    // An idle session to this address from this source under the same TLS policy carries this
    // destination's mail too, instead of a new connection and handshake.
    reuse_key_ =
        ReuseKey(source_, target.address, port, options.tls, queue_->destination, target.host);
    if (Link* donor = shard_.TakeIdleLink(reuse_key_)) {
      // The donor takes this link's place (and its count in pair_); this one never connected.
      pair_->OnConnectionTakenOver(shard_.context_.clock.Now());
      donor->MoveTo(*queue_, *pair_, target.host);
      Finish();
      return;
    }
    std::weak_ptr<bool> alive = alive_;
    shard_.connector_.Connect(
        spec,
        [this, alive, options](io::Stream& stream) -> std::unique_ptr<io::StreamHandler> {
          if (alive.expired()) return nullptr;
          auto session = std::make_unique<smtp::ClientSession>(stream, options, *this, remote_);
          session_ = session.get();
          session_opened_ = shard_.context_.clock.Now();
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
  // of the destination may still carry them, or the pair is only paused (they then wait, or go
  // back to the manager, for the pause to end).
  void Fail(const mail::DeliveryOutcome& outcome) {
    bool others = false;
    for (const auto& link : queue_->links) {
      if (link.get() != this && !link->finished()) others = true;
    }
    const bool paused = pair_->suspended(shard_.context_.clock.Now());
    if (!paused && (!others || outcome.permanent())) {
      shard_.FailWaiting(*queue_, outcome, remote_);
    }
    Finish();
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    if (closing_for_a_slot_) --queue_->site->closing_for_a_slot;
    alive_.reset();
    pair_->OnConnectionClosed(shard_.context_.clock.Now());
    shard_.TidyLater(*queue_, this);
  }

  void CancelIdleTimer() {
    Withdraw();
    if (idle_timer_ == io::kNoTimer) return;
    shard_.loop_.Cancel(idle_timer_);
    idle_timer_ = io::kNoTimer;
  }

  // No longer offered to other destinations.
  void Withdraw() {
    if (!offered_.has_value()) return;
    auto it = shard_.idle_links_.find(reuse_key_);
    it->second.erase(*offered_);
    if (it->second.empty()) shard_.idle_links_.erase(it);
    offered_.reset();
  }

  ShardDelivery& shard_;
  DestinationQueue* queue_;  // never null; changes when another destination takes the link
  const Source source_;
  throttle::PairThrottle* pair_;  // never null; owned by the site, which outlives its links
  // Asynchronous callbacks (DNS, connect) hold a weak_ptr to this: expired once the link is
  // finished, so a late answer finds nothing to touch.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  std::vector<std::string> hosts_;
  size_t next_host_ = 0;
  std::vector<Target> targets_;
  size_t next_target_ = 0;
  uint32_t tried_ = 0;
  std::string remote_;          // "mx1.example.net[192.0.2.1]:25"
  std::string remote_address_;  // "[192.0.2.1]:25"
  // Source, address, port and TLS policy of the connection: which destinations may reuse it.
  std::string reuse_key_;
  // Where this link is in shard_.idle_links_ while offered.
  std::optional<std::list<Link*>::iterator> offered_;
  smtp::ClientSession* session_ = nullptr;  // owned by its io::Connection
  absl::Time session_opened_;  // when session_ was made (connected): its lifetime metric
  std::deque<PendingJob> carried_;  // sent, oldest first; at most two (OnReadyForNext)
  uint32_t sent_ = 0;
  uint32_t sent_here_ = 0;
  io::TimerId idle_timer_ = io::kNoTimer;
  bool ever_ready_ = false;
  bool plaintext_ = false;  // this attempt goes without STARTTLS (its TLS broke before)
  // The target tried again in plain text after its opportunistic TLS broke; none: SIZE_MAX.
  size_t plaintext_target_ = SIZE_MAX;
  bool quitting_ = false;
  bool closing_for_a_slot_ = false;
  bool finished_ = false;
  mail::DeliveryOutcome last_failure_;
};

ShardDelivery::ShardDelivery(io::EventLoop& loop, dns::Resolver& resolver,
                             const DeliveryContext& context)
    : loop_(loop),
      resolver_(resolver),
      context_(context),
      shaping_(context.shaping),
      connector_(loop) {}

// Destroyed on its loop, before the manager (serve.cc): what the last turn finished still goes.
ShardDelivery::~ShardDelivery() { FlushResults(); }

void ShardDelivery::Done(JobResult result) {
  const bool first_of_turn = finished_.empty();
  finished_.push_back(std::move(result));
  if (!first_of_turn) return;
  // Zero-delay timers run after every completion of the turn (EventLoop::Run).
  std::weak_ptr<bool> alive = alive_;
  loop_.RunAfter(absl::ZeroDuration(), [this, alive] {
    if (!alive.expired()) FlushResults();
  });
}

void ShardDelivery::FlushResults() {
  if (finished_.empty()) return;
  context_.results.OnJobsDone(std::exchange(finished_, {}));
}

size_t ShardDelivery::connections() const { return connector_.size(); }

void ShardDelivery::Submit(DeliveryJob job) {
  if (shutting_down_) return;  // its message stays queued, leased until the manager stops
  Destination destination = context_.router.Route(job.domain);
  PendingJob pending{std::move(job), context_.clock.Now(), nullptr, 0};
  if (!destination.mx_lookup) {
    std::vector<std::string> hosts{destination.host};
    Route(std::move(pending), std::move(destination), std::move(hosts));
    return;
  }
  const std::string name = destination.host;
  std::weak_ptr<bool> alive = alive_;
  resolver_.ResolveMx(name, [this, alive, pending = std::move(pending),
                             destination = std::move(destination)](
                                absl::StatusOr<dns::MxAnswer> answer) mutable {
    if (alive.expired() || shutting_down_) return;
    const std::string& domain = destination.host;
    if (!answer.ok() && absl::IsInvalidArgument(answer.status())) {
      // No DNS answer can ever come for a name that is not one (a U-label that is no IDN).
      Fail(std::move(pending), destination,
           LocalFailure(550, "5.1.2", absl::StrCat("bad domain name: ", answer.status().message())),
           "");
      return;
    }
    if (!answer.ok()) {
      Fail(std::move(pending), destination,
           LocalFailure(451, "4.4.3",
                        absl::StrCat("DNS lookup of the MX hosts of ", domain,
                                     " failed: ", answer.status().message())),
           "");
      return;
    }
    switch (answer->kind) {
      case dns::MxKind::kNullMx:
        Fail(std::move(pending), destination,
             LocalFailure(556, "5.1.10",
                          absl::StrCat("domain ", domain, " does not accept mail (null MX)")),
             "");
        return;
      case dns::MxKind::kNxDomain:
        Fail(std::move(pending), destination,
             LocalFailure(550, "5.1.2", absl::StrCat("domain ", domain, " does not exist")), "");
        return;
      case dns::MxKind::kNoMailHost:
        Fail(std::move(pending), destination,
             LocalFailure(550, "5.1.2",
                          absl::StrCat("domain ", domain, " has no MX or address records")),
             "");
        return;
      case dns::MxKind::kHosts:
        break;
    }
    std::vector<std::string> hosts;
    for (const dns::MxHost& host : answer->hosts) hosts.push_back(host.name);
    Route(std::move(pending), std::move(destination), std::move(hosts));
  });
}

const ShardHandle* ShardDelivery::OwnerOf(const std::string& site_key) const {
  if (shards_.empty()) return nullptr;
  return &shards_[std::hash<std::string>()(site_key) % shards_.size()];
}

void ShardDelivery::Route(PendingJob pending, Destination destination,
                          std::vector<std::string> hosts) {
  RoutedJob routed{std::move(pending), std::move(destination), std::move(hosts), {}, nullptr};
  if (IsRoute(routed.destination)) {
    // A static route (a smarthost, an internal relay) is a site of its own, with the
    // [delivery] limits: it is not a provider to be paced.
    routed.site.key = routed.destination.key;
  } else {
    routed.site = shaping_->matcher().ForDomain(routed.pending.job.domain, routed.hosts);
    routed.shaping = shaping_;
  }
  const ShardHandle* owner = OwnerOf(routed.site.key);
  if (owner == nullptr || owner->delivery == this) {
    Accept(std::move(routed));
    return;
  }
  ShardDelivery* delivery = owner->delivery;
  owner->loop->Post([delivery, routed = std::move(routed)]() mutable {
    delivery->Accept(std::move(routed));
  });
}

void ShardDelivery::Accept(RoutedJob routed) {
  if (shutting_down_) return;
  ScheduleMetrics();
  std::unique_ptr<SiteQueue>& site = sites_[routed.site.key];
  if (site == nullptr) {
    site = std::make_unique<SiteQueue>();
    site->key = routed.site.key;
    // Matched on another shard before this one took a newer snapshot: matched again here.
    Configure(*site, routed.shaping == nullptr || routed.shaping == shaping_
                         ? routed.site
                         : shaping_->ForKey(routed.site.key));
    ApplyRememberedPauses(*site, context_.clock.Now());
  }
  if (site->pool.empty()) {
    site->pool = routed.destination.pool;
    // A pause of every source set before any mail came: its record learns the pool, so that
    // after a restart the site lists its sources paused as now.
    NoteSitePause(*site, context_.clock.Now());
  }
  std::unique_ptr<DestinationQueue>& queue = site->destinations[routed.destination.key];
  if (queue == nullptr) {
    queue = std::make_unique<DestinationQueue>();
    queue->destination = std::move(routed.destination);
    queue->site = site.get();
  }
  queue->hosts = std::move(routed.hosts);  // the latest answer

  DeliveryJob& job = routed.pending.job;
  // Greylisted from a source that has left the pool since (removed or renamed, and a restart):
  // nothing could carry the job any more, so it goes from any source, as ChooseSource ignores
  // such a pin too (site_throttle.h).
  if (!job.pinned_source.empty()) {
    const std::vector<Source>& sources = context_.router.Sources(queue->destination.pool);
    if (std::none_of(sources.begin(), sources.end(),
                     [&job](const Source& source) { return source.name == job.pinned_source; })) {
      job.pinned_source.clear();
    }
  }
  // More recipients than the site takes in one transaction: several transactions, one report.
  const uint32_t per_message = Capped(site->pair_options.limits.max_recipients_per_message,
                                      context_.max_recipients_per_transaction);
  if (job.message.recipients.size() <= per_message) {
    queue->waiting.push_back(std::move(routed.pending));
  } else {
    auto split = std::make_shared<SplitJob>();
    split->merged.id = job.id;
    split->merged.domain = job.domain;
    split->merged.recipient_indexes = job.recipient_indexes;
    split->merged.outcomes.resize(job.message.recipients.size());
    split->merged.verdicts.resize(job.message.recipients.size());
    for (size_t start = 0; start < job.message.recipients.size(); start += per_message) {
      const size_t end = std::min(job.message.recipients.size(), start + per_message);
      PendingJob part{job, routed.pending.dispatched, nullptr, 0};
      part.job.message.recipients.assign(job.message.recipients.begin() + start,
                                         job.message.recipients.begin() + end);
      part.job.recipient_indexes.assign(job.recipient_indexes.begin() + start,
                                        job.recipient_indexes.begin() + end);
      part.split = split;
      part.split_offset = start;
      ++split->parts_left;
      queue->waiting.push_back(std::move(part));
    }
  }
  Pump(*site);
}

void ShardDelivery::Configure(SiteQueue& site, const throttle::SiteMatcher::Match& match) const {
  site.site = match.site;
  if (match.limits == nullptr) {
    throttle::SiteLimits limits;
    limits.max_connections = context_.max_connections_per_destination;
    limits.max_messages_per_connection = context_.max_messages_per_connection;
    limits.max_recipients_per_message = context_.max_recipients_per_transaction;
    site.pair_options = throttle::PairOptions::From(limits, shaping_->options(), nullptr);
  } else {
    site.pair_options =
        throttle::PairOptions::From(*match.limits, shaping_->options(), match.site);
  }
}

void ShardDelivery::SetShaping(std::shared_ptr<const Shaping> shaping) {
  if (shaping == nullptr) return;
  shaping_ = std::move(shaping);
  const absl::Time now = context_.clock.Now();
  for (auto& [key, site] : sites_) {
    Configure(*site, shaping_->ForKey(key));
    for (auto& [source, pair] : site->pairs) pair->SetOptions(site->pair_options, now);
  }
  if (shutting_down_) return;
  // Higher limits may let waiting work start now.
  for (auto& [key, site] : sites_) Pump(*site);
}

void ShardDelivery::Pump(SiteQueue& site) {
  if (shutting_down_) return;
  const absl::Time now = context_.clock.Now();
  // Those waiting their turn first, in the order they began to wait; then the others.
  const uint64_t pump = ++site.pumps;
  std::vector<DestinationQueue*> queues;
  queues.reserve(site.destinations.size());
  auto visit = [pump, &queues](DestinationQueue& queue) {
    if (queue.pumped == pump) return;
    queue.pumped = pump;
    queues.push_back(&queue);
  };
  // Entries of destinations gone, or carrying since (their ticket changed), are dropped here:
  // NextTurn drops them only from the front, behind which a destination that carries and
  // waits again and again would leave one each time.
  std::erase_if(site.turns, [&site, &visit](const SiteQueue::Turn& turn) {
    DestinationQueue* holder = site.Holder(turn);
    if (holder == nullptr) return true;
    visit(*holder);
    return false;
  });
  for (auto& [key, queue] : site.destinations) visit(*queue);
  for (DestinationQueue* queue : queues) {
    // Thousands of domains may share a site (one provider's MX hosts) and wait for its few
    // connections: those without a connection of their own are skipped while none can start,
    // so that each finished transaction costs a pump of the connections, not of every domain.
    if (queue->links.empty() && CannotStartAny(site, *queue)) {
      if (!queue->waiting.empty()) AwaitTurn(site, *queue);
      continue;
    }
    PumpDestination(site, *queue, now);
  }
}

bool ShardDelivery::WaitsItsTurn(const DestinationQueue& queue) {
  return !queue.waiting.empty() &&
         std::none_of(queue.links.begin(), queue.links.end(), [](const auto& link) {
           return link->carrying() || link->connecting();
         });
}

void ShardDelivery::AwaitTurn(SiteQueue& site, DestinationQueue& queue) {
  // Waiting already (it keeps its place), or alone in its site: nobody to take turns with
  // (a destination coming later finds it skipped by the next pump, which enters it).
  if (queue.turn != 0 || site.destinations.size() < 2) return;
  queue.turn = ++site.tickets;
  queue.started_at_turn = site.started;
  site.turns.push_back({queue.destination.key, queue.turn});
  // A connection of the site at the same address moves to it when its turn comes (WayFor):
  // its first host's address must be known by then. Cached for that; nothing to pump.
  if (!queue.hosts.empty() && !IpLiteral(queue.hosts.front()).has_value() &&
      !resolver_.CachedAddresses(queue.hosts.front()).has_value()) {
    resolver_.ResolveAddresses(queue.hosts.front(),
                               [](absl::StatusOr<std::vector<dns::IpAddress>>) {});
  }
}

ShardDelivery::DestinationQueue* ShardDelivery::NextTurn(SiteQueue& site) {
  while (!site.turns.empty()) {
    if (DestinationQueue* holder = site.Holder(site.turns.front())) {
      if (WaitsItsTurn(*holder)) return holder;
      holder->turn = 0;  // its jobs went back to the manager, or failed
    }
    site.turns.pop_front();
  }
  return nullptr;
}

ShardDelivery::DestinationQueue* ShardDelivery::TurnFor(SiteQueue& site,
                                                       const DestinationQueue& queue,
                                                       const Link& link, absl::Time now) {
  if (NextTurn(site) == nullptr) return nullptr;
  size_t looked = 0;
  for (const SiteQueue::Turn& turn : site.turns) {
    DestinationQueue* holder = site.Holder(turn);
    if (holder == nullptr || !WaitsItsTurn(*holder)) continue;
    DestinationQueue& waiting = *holder;
    if (&waiting == &queue) return nullptr;  // its own destination's turn comes first
    if (WayFor(site, link, waiting, now) != Way::kNone) return &waiting;
    if (++looked == kTurnsLooked) break;
  }
  return nullptr;
}

ShardDelivery::Way ShardDelivery::WayFor(const SiteQueue& site, const Link& link,
                                         const DestinationQueue& to, absl::Time now) {
  const Source& source = link.source();
  const std::vector<Source>& sources = context_.router.Sources(to.destination.pool);
  if (std::none_of(sources.begin(), sources.end(),
                   [&source](const Source& s) { return s.name == source.name; }) ||
      std::none_of(to.waiting.begin(), to.waiting.end(),
                   [&source](const PendingJob& p) { return MayLeaveFrom(p.job, source.name); })) {
    return Way::kNone;  // another source's turn, which this connection cannot give
  }
  const std::optional<dns::IpAddress> first =
      to.hosts.empty() ? std::nullopt : FirstAddress(to.hosts.front(), source);
  if (first.has_value() &&
      link.reuse_key() == ReuseKey(source, *first, to.destination.port,
                                   SessionTlsPolicy(to.destination, context_.tls, false),
                                   to.destination, to.hosts.front())) {
    return Way::kMove;
  }
  // Another address (or one not known): `to` needs a connection of its own. A pair with room
  // lets it open one (it is pumped first), one closing already frees a slot for it, and a
  // connection closed while the pair's connection rate allows no new one would leave the slot
  // empty. Counted in the site's messages, not this connection's: connections moving between
  // two busy destinations at one address would never reach the count.
  const throttle::PairThrottle& pair = link.pair();
  if (site.started - to.started_at_turn < kStartedBeforeClosingForATurn ||
      pair.open_connections() < pair.current_max_connections() || site.closing_for_a_slot > 0 ||
      pair.ConnectionRateEligibleAt(now) > now) {
    return Way::kNone;
  }
  return Way::kClose;
}

void ShardDelivery::GiveWay(SiteQueue& site, DestinationQueue& from, Link& link,
                            DestinationQueue& to, absl::Time now,
                            const throttle::WarmupPlan* plan, absl::Time& wake) {
  // Its own idle connections first: their pair (or the warmup cap) refused them a moment ago
  // and may admit one now. (Advanced before Employ, which may move the link elsewhere.)
  for (auto it = to.links.begin(); it != to.links.end();) {
    Link& own = **it++;
    if (own.idle()) Employ(site, to, own, now, WarmupPlanOf(to), wake, Employment::kOwnTurn);
  }
  const Way way = WaitsItsTurn(to) ? WayFor(site, link, to, now) : Way::kNone;
  if (way == Way::kNone) {
    // Served meanwhile: `link` serves its own, its pair looked at again (a slot may be gone).
    Employ(site, from, link, now, plan, wake, Employment::kOwnTurn);
    return;
  }
  if (way == Way::kMove) {
    // Closed and taken over by the same pair: its count stays.
    throttle::PairThrottle& pair = link.pair();
    pair.OnConnectionTakenOver(now);
    link.MoveTo(to, pair, to.hosts.front());
  } else {
    link.CloseForASlot();  // its Finish pumps the site, `to` first
  }
  if (WaitsItsTurn(from)) AwaitTurn(site, from);
  if (way == Way::kMove) Employ(site, to, link, now, WarmupPlanOf(to), wake, Employment::kOwnTurn);
}

bool ShardDelivery::CannotStartAny(const SiteQueue& site, const DestinationQueue& queue) {
  // PumpDestination could start a job only through a pair with room for a connection, or an
  // idle connection a pair of the site counts (taken over, or closed for its slot). A pair
  // with room but a spent warmup cap is not skipped: PumpDestination hands its jobs back, due
  // when the cap lifts.
  const std::vector<Source>& sources = context_.router.Sources(queue.destination.pool);
  if (sources.empty()) return false;  // PumpDestination fails its jobs
  for (const Source& source : sources) {
    auto pair = site.pairs.find(source.name);
    if (pair == site.pairs.end()) return false;  // a pair not made yet has room
    if (pair->second->open_connections() < pair->second->current_max_connections()) return false;
  }
  return OfferedLink([&site](const Link& link) { return &link.site() == &site; }) == nullptr;
}

ShardDelivery::Link* ShardDelivery::OfferedLink(absl::FunctionRef<bool(const Link&)> wanted) {
  for (const auto& [key, offered] : idle_links_) {
    for (Link* link : offered) {
      if (link->idle() && wanted(*link)) return link;
    }
  }
  return nullptr;
}

// The cap is per (source, site), in recipients (Reputation counts a final answer per
// recipient): what the source is carrying to the site counts against it whichever destination
// of the site it goes to (gmail.com and googlemail.com are one Google), or N busy destinations
// could overshoot it N times. A connection still connecting counts as the message it will
// carry (a ready one takes its job before the site's other destinations are pumped:
// Link::OnReady), so that no connection opens only to quit. The site is this shard's alone, so
// its links are all here. Counted only while a cap applies: a site can have thousands of
// destinations.
ShardDelivery::WarmupRoom ShardDelivery::WarmupRoomFor(SiteQueue& site, const std::string& source,
                                                       const throttle::WarmupPlan* plan,
                                                       absl::Time now) {
  if (plan == nullptr) return WarmupRoom::kOpen;
  const std::optional<throttle::WarmupStanding> standing =
      context_.reputation->Warmup(source, plan, site.key, now);
  if (!standing.has_value()) return WarmupRoom::kOpen;
  if (standing->spent()) {
    RecordWarmupCapReached(site, source, *standing, now);
    return WarmupRoom::kSpent;
  }
  uint32_t in_flight = 0;
  for (const auto& [name, queue] : site.destinations) {
    for (const auto& link : queue->links) {
      if (link->source().name != source || link->finished()) continue;
      in_flight += link->connecting() ? 1 : static_cast<uint32_t>(link->recipients_in_flight());
    }
  }
  return standing->Allows(in_flight) ? WarmupRoom::kOpen : WarmupRoom::kInFlight;
}

void ShardDelivery::RecordWarmupCapReached(SiteQueue& site, const std::string& source,
                                           const throttle::WarmupStanding& standing,
                                           absl::Time now) {
  const absl::Time lifts_at = throttle::Reputation::WarmupResetsAt(now);
  absl::Time& recorded = site.warmup_cap_recorded[source];
  if (recorded == lifts_at) return;  // once a day
  recorded = lifts_at;
  if (context_.events == nullptr) return;
  events::Event event;
  event.type = events::EventType::kWarmupCap;
  event.time = now;
  event.site = site.key;
  event.source_ip = SourceIp(source);
  event.source = source;
  event.next_attempt = lifts_at;
  event.detail = absl::StrCat("source ", source, " reached its warmup cap for site ", site.key,
                              ": ", standing.sent_today, " of ", standing.cap, " on day ",
                              standing.day, "; it sends the site no more until UTC midnight");
  context_.events->Record(event);
}

absl::Time ShardDelivery::WarmupWake(WarmupRoom room, absl::Time now) {
  return room == WarmupRoom::kSpent ? throttle::Reputation::WarmupResetsAt(now)
                                    : now + kWarmupRecheck;
}

void ShardDelivery::IdleForWarmup(Link& link, WarmupRoom room) {
  if (room == WarmupRoom::kSpent) {
    link.Quit();
  } else {
    link.Idle(/*offer=*/false);
  }
}

const throttle::WarmupPlan* ShardDelivery::WarmupPlanOf(const DestinationQueue& queue) const {
  if (context_.reputation == nullptr) return nullptr;
  return throttle::FindWarmupPlan(shaping_->options(), queue.destination.pool);
}

void ShardDelivery::EmployReady(Link& link) {
  if (!link.idle()) return;
  DestinationQueue& queue = link.queue();
  absl::Time wake = absl::InfiniteFuture();  // not needed: Pump, right after, sets the site's
  Employ(*queue.site, queue, link, context_.clock.Now(), WarmupPlanOf(queue), wake);
}

void ShardDelivery::EmployNext(Link& link) {
  DestinationQueue& queue = link.queue();
  absl::Time wake = absl::InfiniteFuture();  // not needed: the link pumps when its job ends
  Employ(*queue.site, queue, link, context_.clock.Now(), WarmupPlanOf(queue), wake,
         Employment::kNext);
}

void ShardDelivery::Employ(SiteQueue& site, DestinationQueue& queue, Link& link, absl::Time now,
                           const throttle::WarmupPlan* plan, absl::Time& wake,
                           Employment employment) {
  const bool next = employment == Employment::kNext;
  throttle::PairThrottle& pair = link.pair();
  const uint32_t per_connection =
      Capped(pair.max_messages_per_connection(), context_.max_messages_per_connection);
  if (pair.suspended(now) || pair.OverConnectionLimit() || link.sent() >= per_connection) {
    if (!next) link.Quit();
    return;
  }
  const std::string& source = link.source().name;
  auto job = std::find_if(queue.waiting.begin(), queue.waiting.end(),
                          [&source](const PendingJob& p) { return MayLeaveFrom(p.job, source); });
  if (job == queue.waiting.end()) {
    if (!next) link.Idle(/*offer=*/true);
    return;
  }
  if (const WarmupRoom room = WarmupRoomFor(site, source, plan, now); room != WarmupRoom::kOpen) {
    wake = std::min(wake, WarmupWake(room, now));
    if (!next) IdleForWarmup(link, room);
    return;
  }
  const absl::Time eligible = pair.MayStartMessage(now);
  if (eligible > now) {
    wake = std::min(wake, eligible);
    if (!next) link.Idle(/*offer=*/false);
    return;
  }
  // About to start a message: a destination of the site waiting its turn, which this
  // connection can serve, goes first (a connection carries one job for its destination
  // first, or two waiting for one slot could hand it back and forth, neither served).
  if (employment != Employment::kOwnTurn && link.sent_here() > 0 &&
      site.destinations.size() > 1) {
    if (DestinationQueue* turn = TurnFor(site, queue, link, now)) {
      if (!next) GiveWay(site, queue, link, *turn, now, plan, wake);
      return;  // when `next`, not pipelined: it gives way once its job is answered
    }
  }
  pair.OnMessageStarted(now);
  ++site.started;
  PendingJob carried = std::move(*job);
  queue.waiting.erase(job);
  queue.turn = 0;  // carrying: it waits its turn again, at the end, when it next waits
  link.Carry(std::move(carried));
}

ShardDelivery::Link* ShardDelivery::TakeOverIdleLinkOfPair(
    DestinationQueue& queue, std::span<const throttle::SourceCandidate> candidates,
    const std::vector<Source>& sources, absl::Time now, absl::Time& wake) {
  if (queue.hosts.empty()) return nullptr;
  Link* elsewhere = nullptr;  // an idle connection of a full pair, to another address
  for (size_t i = 0; i < sources.size() && i < candidates.size(); ++i) {
    if (candidates[i].pair == nullptr) continue;  // out of the running (PumpDestination)
    throttle::PairThrottle& pair = *candidates[i].pair;
    if (pair.suspended(now)) continue;
    const std::string& name = sources[i].name;
    if (std::none_of(queue.waiting.begin(), queue.waiting.end(),
                     [&name](const PendingJob& p) { return MayLeaveFrom(p.job, name); })) {
      continue;
    }
    if (const absl::Time eligible = pair.MessageEligibleAt(now); eligible > now) {
      // An idle connection of the pair may be taken over at its next message slot: the site
      // is pumped then (ChooseSource's time for a full pair is "when one closes").
      if (OfferedLink([&pair](const Link& l) { return &l.pair() == &pair; }) != nullptr) {
        wake = std::min(wake, eligible);
      }
      continue;
    }
    const std::optional<dns::IpAddress> first = FirstAddress(queue.hosts.front(), sources[i]);
    if (!first.has_value()) {
      // Not known yet: once it is, the site is pumped again and may find one.
      std::weak_ptr<bool> alive = alive_;
      resolver_.ResolveAddresses(
          queue.hosts.front(), [this, alive, site_key = queue.site->key](
                                   absl::StatusOr<std::vector<dns::IpAddress>> addresses) {
            if (alive.expired() || shutting_down_ || !addresses.ok()) return;
            if (auto site = sites_.find(site_key); site != sites_.end()) Pump(*site->second);
          });
      return nullptr;
    }
    Link* link = ReusableLinkAt(queue, sources[i], *first, &pair);
    if (link == nullptr) {
      // Only a pair full by its connection count gains a slot by closing one.
      if (elsewhere == nullptr && pair.open_connections() >= pair.current_max_connections()) {
        elsewhere = IdleLinkToClose(*queue.site, pair);
      }
      continue;
    }
    // Closed and taken over by the same pair: its count stays.
    pair.OnConnectionTakenOver(now);
    link->MoveTo(queue, pair, queue.hosts.front());
    return link;
  }
  // None goes to this destination's address: one goes away instead, and its slot is this
  // destination's once it has closed (its Finish pumps the site), not at its idle timeout.
  if (elsewhere != nullptr) elsewhere->CloseForASlot();
  return nullptr;
}

ShardDelivery::Link* ShardDelivery::IdleLinkToClose(const SiteQueue& site,
                                                    const throttle::PairThrottle& pair) {
  // One closing already frees a slot: closing another would cost a connection for nothing.
  // Called for each waiting destination of a full site on every pump: it reads the offered
  // links of the shard (a few per address), never the site's destinations.
  if (site.closing_for_a_slot > 0) return nullptr;
  return OfferedLink([&pair](const Link& link) { return &link.pair() == &pair; });
}

std::optional<dns::IpAddress> ShardDelivery::FirstAddress(const std::string& host,
                                                          const Source& source) {
  if (std::optional<dns::IpAddress> literal = IpLiteral(host)) return literal;
  std::optional<std::vector<dns::IpAddress>> cached = resolver_.CachedAddresses(host);
  if (!cached.has_value()) return std::nullopt;
  for (const dns::IpAddress& address : *cached) {
    if (FamilyMatches(source, address)) return address;
  }
  return std::nullopt;
}

ShardDelivery::Link* ShardDelivery::ReusableLink(const DestinationQueue& queue,
                                                 const Source& source,
                                                 const throttle::PairThrottle* of_pair) {
  if (queue.hosts.empty()) return nullptr;
  // The address a new link would try first, if already known; else the new link finds out
  // (Link::ConnectNext).
  std::optional<dns::IpAddress> first = FirstAddress(queue.hosts.front(), source);
  if (!first.has_value()) return nullptr;
  return ReusableLinkAt(queue, source, *first, of_pair);
}

ShardDelivery::Link* ShardDelivery::ReusableLinkAt(const DestinationQueue& queue,
                                                   const Source& source,
                                                   const dns::IpAddress& first,
                                                   const throttle::PairThrottle* of_pair) {
  return TakeIdleLink(ReuseKey(source, first, queue.destination.port,
                               SessionTlsPolicy(queue.destination, context_.tls, false),
                               queue.destination, queue.hosts.front()),
                      of_pair);
}

void ShardDelivery::PumpDestination(SiteQueue& site, DestinationQueue& queue, absl::Time now) {
  const throttle::WarmupPlan* plan = WarmupPlanOf(queue);
  absl::Time wake = absl::InfiniteFuture();

  // 1. Connections ready for work take the jobs their pair admits now, or give way to a
  // destination waiting its turn. (Advanced before Employ, which may move the link.)
  for (auto it = queue.links.begin(); it != queue.links.end();) {
    Link& link = **it++;
    if (link.idle()) Employ(site, queue, link, now, plan, wake);
  }
  if (queue.waiting.empty()) {
    if (wake != absl::InfiniteFuture()) WakeAt(site, wake);
    return;
  }

  // 2. More connections, as the pairs admit them: a few at a time (slow start, as Postfix's
  // initial destination concurrency), from the source ChooseSource picks — the greylisted
  // jobs' own source when the first job waiting is pinned.
  const std::vector<Source>& sources = context_.router.Sources(queue.destination.pool);
  if (sources.empty()) {
    FailWaiting(queue,
                LocalFailure(451, "4.3.5",
                             absl::StrCat("no source in pool '", queue.destination.pool, "'")),
                "");
    return;
  }
  size_t live = 0;
  size_t connecting = 0;
  for (const auto& link : queue.links) {
    if (link->finished()) continue;
    ++live;
    if (link->connecting()) ++connecting;
  }
  std::vector<throttle::SourceCandidate> candidates;
  candidates.reserve(sources.size());
  for (const Source& source : sources) {
    candidates.push_back({source.name, &site.Pair(source.name)});
  }
  // A job some candidate may carry: pinned to none, or to a candidate still in the running (a
  // job greylisted from an address goes back from that address only).
  auto carriable = [&candidates](const PendingJob& p) {
    return p.job.pinned_source.empty() ||
           std::any_of(candidates.begin(), candidates.end(),
                       [&p](const throttle::SourceCandidate& c) {
                         return c.pair != nullptr && c.name == p.job.pinned_source;
                       });
  };
  while (live < context_.max_connections_per_destination &&
         connecting < std::min(queue.waiting.size(), kMaxConnectsInProgress)) {
    auto first = std::find_if(queue.waiting.begin(), queue.waiting.end(), carriable);
    if (first == queue.waiting.end()) break;
    std::optional<std::string_view> pinned;
    if (!first->job.pinned_source.empty()) pinned = first->job.pinned_source;
    throttle::SourceChoice choice = throttle::ChooseSource(candidates, now, pinned);
    if (!choice.source.has_value() && pinned.has_value() &&
        std::any_of(queue.waiting.begin(), queue.waiting.end(),
                    [](const PendingJob& p) { return p.job.pinned_source.empty(); })) {
      // The pinned source must wait; jobs pinned to nothing need not.
      wake = std::min(wake, choice.eligible_at);
      choice = throttle::ChooseSource(candidates, now);
    }
    if (!choice.source.has_value()) {
      // The pairs' connections may all be other destinations' idle ones (a site of many
      // domains: every Google-hosted domain is one); one to this destination's address serves
      // it now rather than at its idle timeout.
      if (Link* taken = TakeOverIdleLinkOfPair(queue, candidates, sources, now, wake)) {
        ++live;
        Employ(site, queue, *taken, now, plan, wake, Employment::kOwnTurn);
        if (queue.waiting.empty() || !taken->carrying()) break;
        continue;
      }
      wake = std::min(wake, choice.eligible_at);
      break;
    }
    const Source& source = sources[*choice.source];
    if (const WarmupRoom room = WarmupRoomFor(site, source.name, plan, now);
        room != WarmupRoom::kOpen) {
      wake = std::min(wake, WarmupWake(room, now));
      // Another source of the pool (a warm address beside the new one) may carry the jobs not
      // pinned to this one. A candidate without a pair is one ChooseSource,
      // TakeOverIdleLinkOfPair and `carriable` pass over.
      candidates[*choice.source].pair = nullptr;
      continue;
    }
    throttle::PairThrottle& pair = *candidates[*choice.source].pair;
    Link* reused = ReusableLink(queue, source);
    if (reused != nullptr && &reused->queue() == &queue) {
      // An idle connection of this destination was just offered every job (step 1) and took
      // none it may carry: neither would a new one from its source.
      candidates[*choice.source].pair = nullptr;
      continue;
    }
    if (reused != nullptr) {
      // Another destination's idle connection to the same address: no new connection.
      pair.OnConnectionTakenOver(now);
      reused->MoveTo(queue, pair, queue.hosts.front());
      ++live;
      Employ(site, queue, *reused, now, plan, wake, Employment::kOwnTurn);
      // Not carrying: its pair must wait, and so would another.
      if (queue.waiting.empty() || !reused->carrying()) break;
      continue;
    }
    pair.OnConnectionOpened(now);
    Link* link = queue.links.emplace_back(std::make_unique<Link>(*this, queue, source, pair)).get();
    queue.turn = 0;  // connecting: no longer waiting its turn
    ++live;
    ++connecting;
    link->Start();
  }
  if (queue.waiting.empty()) return;
  if (wake != absl::InfiniteFuture()) WakeAt(site, wake);

  // 3. What cannot start soon goes back to the manager, unattempted, so that a slow or paused
  // site does not hold leases other sites need.
  // Only a connection carrying a job or still connecting moves the queue: an idle one was just
  // refused work by its pair (or the warmup cap).
  const bool moving = std::any_of(queue.links.begin(), queue.links.end(), [](const auto& link) {
    return link->carrying() || link->connecting();
  });
  if (!moving) {
    AwaitTurn(site, queue);
    if (wake != absl::InfiniteFuture() && wake - now > context_.max_hold) {
      HoldBack(queue, 0, wake, absl::ZeroDuration());
    }
    return;
  }
  // A rate-limited site drains at its rate: jobs further down than max_hold of it come back
  // when their turn nears.
  double per_minute = 0;
  for (const throttle::SourceCandidate& candidate : candidates) {
    if (candidate.pair == nullptr) continue;  // out of the running: carries none now
    const double rate = candidate.pair->current_message_rate();
    if (rate <= 0) return;  // a source without a rate limit: no estimate, keep everything
    if (!candidate.pair->suspended(now)) per_minute += rate;
  }
  if (per_minute <= 0) return;
  const size_t keep = static_cast<size_t>(per_minute * (context_.max_hold / absl::Minutes(1))) + 1;
  if (queue.waiting.size() > keep) {
    const absl::Duration spacing = absl::Minutes(1) / per_minute;
    HoldBack(queue, keep, now + spacing * static_cast<double>(keep), spacing);
  }
}

void ShardDelivery::HoldBack(DestinationQueue& queue, size_t keep, absl::Time first,
                             absl::Duration spacing) {
  std::deque<PendingJob> kept;
  size_t position = 0;
  size_t returned = 0;
  while (!queue.waiting.empty()) {
    PendingJob job = std::move(queue.waiting.front());
    queue.waiting.pop_front();
    // Parts of a split job wait for their siblings here: their report is one.
    if (position++ < keep || job.split != nullptr) {
      kept.push_back(std::move(job));
      continue;
    }
    JobResult result = ResultOf(job, queue.destination.key, queue.site->key);
    result.throttled_until = first + spacing * static_cast<double>(returned++);
    ++queue.site->held_back;
    Done(std::move(result));
  }
  queue.waiting = std::move(kept);
}

void ShardDelivery::WakeAt(SiteQueue& site, absl::Time at) {
  if (at == absl::InfiniteFuture()) return;
  if (site.wake_timer != io::kNoTimer) {
    if (site.wake_at <= at) return;
    loop_.Cancel(site.wake_timer);
  }
  site.wake_at = at;
  const absl::Duration delay = std::max(absl::ZeroDuration(), at - context_.clock.Now());
  std::weak_ptr<bool> alive = alive_;
  const std::string key = site.key;
  site.wake_timer = loop_.RunAfter(context_.clock.ToRealDuration(delay), [this, alive, key] {
    if (alive.expired()) return;
    auto it = sites_.find(key);
    if (it == sites_.end()) return;
    it->second->wake_timer = io::kNoTimer;
    it->second->wake_at = absl::InfiniteFuture();
    Pump(*it->second);
  });
}

std::vector<RecipientVerdict> ShardDelivery::Judge(
    SiteQueue& site, const std::string& source, const std::vector<mail::DeliveryOutcome>& outcomes) {
  const absl::Time now = context_.clock.Now();
  throttle::PairThrottle& pair = site.Pair(source);
  std::vector<RecipientVerdict> verdicts;
  verdicts.reserve(outcomes.size());
  bool delivered = false;
  // The pair reacts once per class per transaction, however many recipients got the reply.
  std::array<std::optional<std::optional<absl::Duration>>, throttle::kResponseClassCount> replies;
  std::array<const mail::DeliveryOutcome*, throttle::kResponseClassCount> examples = {};
  for (const mail::DeliveryOutcome& outcome : outcomes) {
    throttle::Classification c = shaping_->classifier().Classify(
        outcome.reply.code, outcome.reply.enhanced, outcome.reply.text, site.name());
    verdicts.push_back(RecipientVerdict{c.response_class, c.retry_after});
    // A failure of our own side (timeout, lost connection) says nothing of the site's mood.
    if (outcome.local) continue;
    if (context_.reputation != nullptr) {
      // A 5xx that keeps the recipient (a full mailbox, a rate limit) is no final answer: the
      // recipient is tried again, and a warmup cap must not count it at every try.
      const bool final_refusal =
          outcome.permanent() && !throttle::KeepsRecipient(c.response_class);
      context_.reputation->Record(source, site.key, c.response_class, final_refusal, now);
    }
    if (c.response_class == throttle::ResponseClass::kSuccess) {
      delivered = true;
    } else {
      replies[static_cast<size_t>(c.response_class)] = c.retry_after;
      examples[static_cast<size_t>(c.response_class)] = &outcome;
    }
  }
  if (delivered) {
    const bool was_backing_off = pair.state(now) == throttle::PairState::kBackoff;
    pair.OnDelivered(now);
    // Back at its limits: a restart has nothing of this back-off to keep. (The steps of the
    // climb are not written: a restart meanwhile resumes from the cut, on the safe side.)
    if (was_backing_off && pair.state(now) == throttle::PairState::kNormal) {
      NotePause(site, source, pair, now);
    }
  }
  for (size_t i = 0; i < replies.size(); ++i) {
    if (!replies[i].has_value()) continue;
    const absl::Time until_before = pair.suspended_until();
    const std::optional<throttle::PairBackoff> backoff_before = pair.Backoff(now);
    const auto reply_class = static_cast<throttle::ResponseClass>(i);
    pair.OnReply(reply_class, now, *replies[i]);
    // The pause, and the cut, cap, ceiling and hold that outlive it, when the reply changed
    // them (most replies do not: greylisting, unknown users).
    if (pair.suspended_until() != until_before || pair.Backoff(now) != backoff_before) {
      NotePause(site, source, pair, now);
    }
    if (pair.suspended_until() > std::max(until_before, now) && until_before <= now) {
      RecordSuspension(site, source, *examples[i], reply_class, pair.suspended_until());
    }
  }
  return verdicts;
}

void ShardDelivery::RecordSuspension(const SiteQueue& site, const std::string& source,
                                     const mail::DeliveryOutcome& outcome,
                                     throttle::ResponseClass reply_class, absl::Time until) {
  if (context_.events == nullptr) return;
  events::Event event;
  event.type = events::EventType::kSuspension;
  event.time = context_.clock.Now();
  event.site = site.key;
  event.mx = outcome.remote;
  event.source_ip = SourceIp(source);
  event.source = source;
  event.code = outcome.reply.code;
  event.enhanced = outcome.reply.enhanced;
  event.response = outcome.reply.text;
  event.next_attempt = until;
  event.detail = absl::StrCat("source ", source, " paused for site ", site.key, " (",
                              ToAbsl(throttle::ResponseClassName(reply_class)), ")");
  context_.events->Record(event);
}

std::string ShardDelivery::SourceIp(const std::string& source) const {
  const Source* named = context_.router.SourceNamed(source);
  return named == nullptr ? "" : named->ip;
}

void ShardDelivery::JudgeSession(SiteQueue& site, const std::string& source,
                                 const mail::DeliveryOutcome& outcome) {
  if (outcome.local || outcome.reply.code == 0) return;
  Judge(site, source, {outcome});
}

void ShardDelivery::FailWaiting(DestinationQueue& queue, const mail::DeliveryOutcome& outcome,
                                const std::string& remote) {
  std::deque<PendingJob> waiting;
  waiting.swap(queue.waiting);
  for (PendingJob& job : waiting) {
    std::vector<mail::DeliveryOutcome> outcomes(job.job.message.recipients.size(), outcome);
    Report(std::move(job), queue, std::move(outcomes), {}, remote, nullptr, false);
  }
}

void ShardDelivery::Fail(PendingJob job, const Destination& destination,
                         const mail::DeliveryOutcome& outcome, const std::string& site) {
  JobResult result = ResultOf(job, destination.key, site);
  result.outcomes.assign(result.recipient_indexes.size(), outcome);
  Done(std::move(result));
}

JobResult ShardDelivery::ResultOf(PendingJob& job, const std::string& destination,
                                  const std::string& site) const {
  JobResult result;
  result.id = job.job.id;
  result.domain = std::move(job.job.domain);
  result.recipient_indexes = std::move(job.job.recipient_indexes);
  result.destination = destination;
  result.site = site;
  result.elapsed = context_.clock.Now() - job.dispatched;
  return result;
}

void ShardDelivery::Report(PendingJob job, const DestinationQueue& queue,
                           std::vector<mail::DeliveryOutcome> outcomes,
                           std::vector<RecipientVerdict> verdicts, const std::string& mx,
                           const Source* source, bool tls) {
  if (verdicts.empty()) {
    // Failed here, never sent: classified for the manager, not held against any pair.
    for (const mail::DeliveryOutcome& outcome : outcomes) {
      throttle::Classification c = shaping_->classifier().Classify(
          outcome.reply.code, outcome.reply.enhanced, outcome.reply.text, queue.site->name());
      verdicts.push_back(RecipientVerdict{c.response_class, c.retry_after});
    }
  }
  if (job.split != nullptr) {
    SplitJob& split = *job.split;
    for (size_t k = 0; k < outcomes.size(); ++k) {
      const size_t at = job.split_offset + k;
      if (at >= split.merged.outcomes.size()) break;
      split.merged.outcomes[at] = std::move(outcomes[k]);
      if (k < verdicts.size()) split.merged.verdicts[at] = verdicts[k];
      if (source != nullptr) {
        split.merged.recipient_sources.resize(split.merged.outcomes.size());
        split.merged.recipient_sources[at] = source->name;
      }
    }
    JobResult& merged = split.merged;
    merged.destination = queue.destination.key;
    merged.site = queue.site->key;
    if (!mx.empty()) merged.mx = mx;
    if (source != nullptr) {
      merged.source = source->name;
      merged.source_ip = source->ip;
    }
    merged.tls = merged.tls || tls;
    merged.elapsed = context_.clock.Now() - job.dispatched;
    split.attempted = true;
    if (--split.parts_left == 0) Done(std::move(merged));
    return;
  }
  JobResult result = ResultOf(job, queue.destination.key, queue.site->key);
  result.outcomes = std::move(outcomes);
  result.verdicts = std::move(verdicts);
  result.mx = mx;
  if (source != nullptr) {
    result.source = source->name;
    result.source_ip = source->ip;
  }
  result.tls = tls;
  Done(std::move(result));
}

void ShardDelivery::LeaveQueued(PendingJob job) {
  if (job.split == nullptr) return;
  SplitJob& split = *job.split;
  const mail::DeliveryOutcome stopped =
      LocalFailure(451, "4.3.0", "the delivery stopped before this part's outcome was known");
  for (size_t k = 0; k < job.job.message.recipients.size(); ++k) {
    const size_t at = job.split_offset + k;
    if (at >= split.merged.outcomes.size()) break;
    split.merged.outcomes[at] = stopped;
    split.merged.verdicts[at] = RecipientVerdict{throttle::ResponseClass::kOtherTransient, {}};
  }
  if (--split.parts_left == 0 && split.attempted) Done(std::move(split.merged));
}

ShardDelivery::Link* ShardDelivery::TakeIdleLink(const std::string& reuse_key,
                                                 const throttle::PairThrottle* of_pair) {
  auto it = idle_links_.find(reuse_key);
  if (it == idle_links_.end()) return nullptr;
  // The most recently idle first: the older ones are left to reach their idle timeout.
  for (auto link = it->second.rbegin(); link != it->second.rend(); ++link) {
    if ((*link)->idle() && (of_pair == nullptr || &(*link)->pair() == of_pair)) return *link;
  }
  return nullptr;
}

void ShardDelivery::TidyLater(DestinationQueue& queue, Link* finished) {
  // On the next turn: the link may be deep in its own callback (or its session's), and the
  // queue in a Pump.
  const std::string site_key = queue.site->key;
  const std::string key = queue.destination.key;
  std::weak_ptr<bool> alive = alive_;
  loop_.RunAfter(absl::ZeroDuration(), [this, alive, site_key, key, finished] {
    if (alive.expired()) return;
    auto site = sites_.find(site_key);
    if (site == sites_.end()) return;
    auto it = site->second->destinations.find(key);
    if (it == site->second->destinations.end()) return;
    DestinationQueue& owner = *it->second;
    if (finished != nullptr) {
      owner.links.remove_if(
          [finished](const std::unique_ptr<Link>& l) { return l.get() == finished; });
    }
    if (!shutting_down_) Pump(*site->second);
    if (owner.links.empty() && owner.waiting.empty()) site->second->destinations.erase(key);
  });
}

void ShardDelivery::ScheduleMetrics() {
  if (context_.metrics == nullptr || metrics_timer_ != io::kNoTimer || shutting_down_) return;
  std::weak_ptr<bool> alive = alive_;
  metrics_timer_ = loop_.RunAfter(kMetricsInterval, [this, alive] {
    if (alive.expired()) return;
    metrics_timer_ = io::kNoTimer;
    ReportMetrics();
    ScheduleMetrics();
  });
}

void ShardDelivery::ReportMetrics() {
  metrics::ShapingMetrics& m = *context_.metrics;
  const absl::Time now = context_.clock.Now();
  // By label: pairs suspended now, recipients waiting in this shard.
  absl::flat_hash_map<std::string, std::array<double, 2>> by_label;
  for (auto& [key, site] : sites_) {
    const std::string label = LabelOf(context_.site_labels, key);
    // Pair gauges only for a label of one site: "other" and "route" would mix unrelated ones.
    // A [[domain]] override with limits of its own ("google/example.com") is a second throttle
    // under its site's label, maybe on another shard: its gauges would overwrite the site's, a
    // different value each sweep. Its counters add to the site's; `facteur site list` shows it.
    const bool named = (site->site != nullptr || (label != "other" && label != "route")) &&
                       key.find('/') == std::string::npos;
    std::array<double, 2>& totals = by_label[label];
    for (const auto& [destination, queue] : site->destinations) {
      for (const PendingJob& waiting : queue->waiting) {
        totals[1] += static_cast<double>(waiting.job.message.recipients.size());
      }
    }
    for (auto& [source, pair] : site->pairs) {
      if (pair->state(now) == throttle::PairState::kSuspended) totals[0] += 1;
      SiteQueue::Reported& last = site->reported[source];
      const throttle::PairCounters& counters = pair->counters();
      for (size_t c = 0; c < throttle::kResponseClassCount; ++c) {
        const std::string name(throttle::kResponseClassNames[c]);
        if (counters.replies[c] > last.replies[c]) {
          m.replies_total.Add({{"site", label}, {"source", source}, {"class", name}})
              .Increment(static_cast<double>(counters.replies[c] - last.replies[c]));
        }
        if (counters.suspensions[c] > last.suspensions[c]) {
          m.suspensions_total.Add({{"site", label}, {"source", source}, {"class", name}})
              .Increment(static_cast<double>(counters.suspensions[c] - last.suspensions[c]));
        }
      }
      last.replies = counters.replies;
      last.suspensions = counters.suspensions;
      const absl::Duration throttled = pair->throttled_time(now);
      if (throttled > last.throttled) {
        m.throttled_seconds_total.Add({{"site", label}, {"source", source}})
            .Increment(absl::ToDoubleSeconds(throttled - last.throttled));
        last.throttled = throttled;
      }
      if (!named) continue;
      const std::map<std::string, std::string> labels = {{"site", label}, {"source", source}};
      m.state.Add(labels).Set(static_cast<double>(pair->state(now)));
      m.message_rate.Add(labels).Set(pair->current_message_rate());
      const uint32_t connections = pair->current_max_connections();
      m.max_connections.Add(labels).Set(
          connections == throttle::PairThrottle::kUnlimitedConnections ? 0 : connections);
      m.open_connections.Add(labels).Set(pair->open_connections());
      if (context_.reputation != nullptr) {
        m.health.Add(labels).Set(context_.reputation->Health(source, key, now));
      }
    }
  }
  // The shards share each label's gauge: each adds what changed since its last sweep.
  for (auto& [label, totals] : by_label) reported_by_label_.try_emplace(label);
  for (auto& [label, last] : reported_by_label_) {
    auto it = by_label.find(label);
    const std::array<double, 2> current =
        it == by_label.end() ? std::array<double, 2>{0, 0} : it->second;
    // Added even unchanged: a label seen has its series, at 0 when nothing waits.
    m.pairs_suspended.Add({{"site", label}}).Increment(current[0] - last[0]);
    m.ready_recipients.Add({{"site", label}}).Increment(current[1] - last[1]);
    last = current;
  }
}

void ShardDelivery::Shutdown(absl::AnyInvocable<void() &&> done, absl::Duration grace) {
  shutting_down_ = true;
  shutdown_done_ = std::move(done);
  if (metrics_timer_ != io::kNoTimer) loop_.Cancel(metrics_timer_);
  metrics_timer_ = io::kNoTimer;
  std::vector<Link*> idle;
  for (auto& [key, site] : sites_) {
    if (site->wake_timer != io::kNoTimer) loop_.Cancel(site->wake_timer);
    site->wake_timer = io::kNoTimer;
    for (auto& [destination, queue] : site->destinations) {
      for (PendingJob& job : queue->waiting) LeaveQueued(std::move(job));
      queue->waiting.clear();
      for (auto& link : queue->links) {
        if (link->idle()) idle.push_back(link.get());
      }
    }
  }
  if (grace <= absl::ZeroDuration()) {
    AbandonAll();
  } else {
    // Idle connections leave now (QUIT); connections still opening leave once ready
    // (OnReady); transactions in progress have `grace` to end.
    for (Link* link : idle) link->Quit();
    std::weak_ptr<bool> alive = alive_;
    grace_timer_ = loop_.RunAfter(grace, [this, alive] {
      if (alive.expired()) return;
      grace_timer_ = io::kNoTimer;
      if (connector_.size() > 0) {
        Log(LogLevel::kWarning,
            "delivery: shutdown grace over: %d connections aborted, their messages stay queued",
            static_cast<int>(connector_.size()));
      }
      AbandonAll();
    });
  }
  MaybeFinishShutdown();  // polls until every connection is gone
}

void ShardDelivery::AbandonAll() {
  abandoning_ = true;
  connector_.AbortAll();
}

void ShardDelivery::MaybeFinishShutdown() {
  if (connector_.size() > 0) {
    std::weak_ptr<bool> alive = alive_;
    loop_.RunAfter(kShutdownPoll, [this, alive] {
      if (!alive.expired()) MaybeFinishShutdown();
    });
    return;
  }
  if (grace_timer_ != io::kNoTimer) loop_.Cancel(grace_timer_);
  grace_timer_ = io::kNoTimer;
  // No connection is left to call a link back; links still resolving names are dropped (their
  // callbacks hold expired weak pointers).
  sites_.clear();
  FlushResults();  // the outcomes of the last transactions, before the shutdown is done
  // Moved out first: `done` may destroy this object.
  absl::AnyInvocable<void() &&> done = std::move(shutdown_done_);
  if (done) std::move(done)();
}

// ---- The operator's view and hand (SiteControl posts these to each shard) ----

std::vector<SiteSnapshot> ShardDelivery::Sites() const {
  const absl::Time now = context_.clock.Now();
  std::vector<SiteSnapshot> sites;
  sites.reserve(sites_.size());
  for (const auto& [key, site] : sites_) {
    SiteSnapshot& snapshot = sites.emplace_back();
    snapshot.key = key;
    snapshot.label = LabelOf(context_.site_labels, key);
    snapshot.name = std::string(site->name());
    snapshot.pool = site->pool;
    snapshot.held_back_jobs = site->held_back;
    if (site->manual_until > now) snapshot.suspended_until = site->manual_until;
    std::map<std::string, PairSnapshot> by_source;
    for (const auto& [source, pair] : site->pairs) {
      PairSnapshot& p = by_source[source];
      p.source = source;
      p.state = pair->state(now);
      if (pair->suspended(now)) {
        p.suspended_until = pair->suspended_until();
        p.suspended_by = pair->manually_suspended(now) ? "manual"
                         : pair->suspension_class().has_value()
                             ? std::string(throttle::ResponseClassName(*pair->suspension_class()))
                             : "manual";
      }
      p.message_rate = pair->current_message_rate();
      const uint32_t connections = pair->current_max_connections();
      p.max_connections =
          connections == throttle::PairThrottle::kUnlimitedConnections ? 0 : connections;
      p.open_connections = pair->open_connections();
      if (context_.reputation != nullptr) p.health = context_.reputation->Health(source, key, now);
    }
    for (const auto& [destination, queue] : site->destinations) {
      for (const PendingJob& job : queue->waiting) {
        ++snapshot.ready_jobs;
        snapshot.ready_recipients += job.job.message.recipients.size();
        if (!job.job.pinned_source.empty()) {
          auto it = by_source.find(job.job.pinned_source);
          if (it != by_source.end()) ++it->second.pinned_waiting;
        }
      }
      for (const auto& link : queue->links) {
        if (!link->carrying()) continue;
        snapshot.in_flight_jobs += link->in_flight();
        auto it = by_source.find(link->source().name);
        if (it != by_source.end()) it->second.in_flight += link->in_flight();
      }
    }
    for (auto& [source, p] : by_source) snapshot.sources.push_back(std::move(p));
  }
  return sites;
}

std::string ShardDelivery::CanonicalSiteName(std::string_view name) const {
  for (const auto& [key, site] : sites_) {
    if (absl::EqualsIgnoreCase(ToAbsl(key), ToAbsl(name))) return key;
    if (site->site != nullptr && absl::EqualsIgnoreCase(ToAbsl(site->name()), ToAbsl(name))) {
      return std::string(site->name());
    }
  }
  const throttle::SiteOptions* shipped = shaping_->matcher().SiteByNameIgnoringCase(name);
  return shipped == nullptr ? std::string() : shipped->name;
}

SiteSuspensionResult ShardDelivery::Suspend(const SiteSuspension& request, bool create) {
  SiteSuspensionResult result;
  if (shutting_down_) return result;
  const absl::Time now = context_.clock.Now();
  const bool suspend = request.until > now;
  if (!create) RememberPause(request, now);  // every shard hears the first round
  std::vector<SiteQueue*> matched;
  for (auto& [key, site] : sites_) {
    if (key == request.site || (site->site != nullptr && site->name() == request.site)) {
      matched.push_back(site.get());
    }
  }
  if (matched.empty() && create) {
    const throttle::SiteOptions* options = shaping_->matcher().SiteByName(request.site);
    if (options == nullptr) return result;
    matched.push_back(&SiteFor(options->name));
  }
  for (SiteQueue* site : matched) {
    result.sites.push_back(site->key);
    // The sources concerned: those the site has met, and its pool's (a pool unknown yet: the
    // site was created by an operator before any mail; pairs created later follow manual_*).
    std::vector<std::string> sources;
    for (const auto& [source, pair] : site->pairs) sources.push_back(source);
    if (!site->pool.empty()) {
      for (const Source& source : context_.router.Sources(site->pool)) {
        if (!site->pairs.contains(source.name)) sources.push_back(source.name);
      }
    }
    if (!request.source.empty()) {
      const bool known = std::find(sources.begin(), sources.end(), request.source) != sources.end();
      if (!known && !site->pool.empty()) {
        result.unknown_source = true;
        continue;
      }
      sources = {request.source};
    } else {
      site->manual_since = suspend ? now : absl::InfinitePast();
      site->manual_until = suspend ? request.until : absl::InfinitePast();
      NoteSitePause(*site, now, /*by_operator=*/true);
    }
    for (const std::string& source : sources) {
      throttle::PairThrottle& pair = site->Pair(source);
      bool changed = false;
      if (suspend) {
        const absl::Time before = pair.suspended_until();
        pair.SuspendManually(now, request.until);
        changed = pair.manually_suspended(now) || pair.suspended_until() != before;
      } else {
        changed = pair.Resume(now);
      }
      if (!changed) continue;
      ++result.pairs;
      NotePause(*site, source, pair, now, /*by_operator=*/true);
      RecordManual(*site, source, suspend ? pair.suspended_until() : absl::InfinitePast());
    }
    // A pause sends the waiting jobs back and lets idle connections go; a resumption starts
    // what waits.
    Pump(*site);
  }
  return result;
}

ShardDelivery::SiteQueue& ShardDelivery::SiteFor(const std::string& key) {
  std::unique_ptr<SiteQueue>& site = sites_[key];
  if (site == nullptr) {
    ScheduleMetrics();
    site = std::make_unique<SiteQueue>();
    site->key = key;
    Configure(*site, shaping_->ForKey(key));
    ApplyRememberedPauses(*site, context_.clock.Now());
  }
  return *site;
}

void ShardDelivery::NotePause(const SiteQueue& site, const std::string& source,
                              const throttle::PairThrottle& pair, absl::Time now,
                              bool by_operator) {
  if (context_.pauses == nullptr) return;
  std::optional<throttle::PairBackoff> backoff = pair.Backoff(now);
  if (!pair.suspended(now) && !backoff.has_value()) {
    context_.pauses->Lift(site.key, source, by_operator);
    return;
  }
  const bool manual = pair.manually_suspended(now);
  context_.pauses->Record(throttle::PairPause{
      .site = site.key,
      .source = source,
      .pool = site.pool,
      .since = pair.suspension_began(),
      .until = pair.suspended_until(),
      .manual = manual,
      .cause = manual ? std::nullopt : pair.suspension_class(),
      .backoff = std::move(backoff)}, by_operator);
}

void ShardDelivery::NoteSitePause(const SiteQueue& site, absl::Time now, bool by_operator) {
  if (context_.pauses == nullptr) return;
  if (site.manual_until <= now) {
    context_.pauses->Lift(site.key, "", by_operator);
    return;
  }
  context_.pauses->Record(throttle::PairPause{.site = site.key,
                                              .source = "",
                                              .pool = site.pool,
                                              .since = site.manual_since,
                                              .until = site.manual_until,
                                              .manual = true,
                                              .cause = std::nullopt,
                                              .backoff = std::nullopt},
                          by_operator);
}

size_t ShardDelivery::RestorePauses(const std::vector<throttle::PairPause>& pauses) {
  if (shutting_down_) return 0;
  const absl::Time now = context_.clock.Now();
  size_t applied = 0;
  for (const throttle::PairPause& pause : pauses) {
    if (throttle::KeptUntil(pause) <= now) continue;
    const bool paused = pause.until > now;  // else only its back-off is kept
    // As the operator's command left it (RememberPause): for the sites of that name created
    // later, on whichever shard.
    if (paused && pause.manual && shaping_->matcher().SiteByName(pause.site) != nullptr) {
      remembered_pauses_[{pause.site, pause.source}] = RememberedPause{pause.since, pause.until};
    }
    const ShardHandle* owner = OwnerOf(pause.site);
    if (owner != nullptr && owner->delivery != this) continue;
    SiteQueue& site = SiteFor(pause.site);
    if (site.pool.empty()) site.pool = pause.pool;
    if (!paused) {
      // Only the back-off is kept (below).
    } else if (pause.source.empty()) {
      site.manual_since = pause.since;
      site.manual_until = pause.until;
      for (auto& [source, pair] : site.pairs) pair->SuspendManually(pause.since, pause.until);
      // The pool's sources, as the site listed them before the restart (Pair applies the pause).
      if (!site.pool.empty()) {
        for (const Source& source : context_.router.Sources(site.pool)) site.Pair(source.name);
      }
    } else if (pause.manual || !pause.cause.has_value()) {
      site.Pair(pause.source).SuspendManually(pause.since, pause.until);
    } else {
      site.Pair(pause.source).RestoreSuspension(pause.since, pause.until, *pause.cause);
    }
    if (!pause.source.empty() && pause.backoff.has_value()) {
      site.Pair(pause.source).RestoreBackoff(*pause.backoff, now);
    }
    ++applied;
  }
  return applied;
}

void ShardDelivery::RememberPause(const SiteSuspension& request, absl::Time now) {
  std::erase_if(remembered_pauses_, [now](const auto& entry) { return entry.second.until <= now; });
  if (shaping_->matcher().SiteByName(request.site) == nullptr) return;  // not a shipped name
  if (request.until > now) {
    remembered_pauses_[{request.site, request.source}] = RememberedPause{now, request.until};
    return;
  }
  // A resumption of the whole site ends its pauses of single sources too.
  std::erase_if(remembered_pauses_, [&request](const auto& entry) {
    return entry.first.first == request.site &&
           (request.source.empty() || entry.first.second == request.source);
  });
}

void ShardDelivery::ApplyRememberedPauses(SiteQueue& site, absl::Time now) {
  if (site.site == nullptr) return;  // a route or an unknown MX set: paused by key only
  for (const auto& [name_and_source, pause] : remembered_pauses_) {
    const auto& [name, source] = name_and_source;
    if (name != site.name() || pause.until <= now) continue;
    if (source.empty()) {
      site.manual_since = pause.since;
      site.manual_until = pause.until;
      for (auto& [pair_source, pair] : site.pairs) pair->SuspendManually(pause.since, pause.until);
    } else {
      site.Pair(source).SuspendManually(pause.since, pause.until);
    }
  }
}

void ShardDelivery::RecordManual(const SiteQueue& site, const std::string& source,
                                 absl::Time until) {
  if (context_.events == nullptr) return;
  events::Event event;
  event.type = events::EventType::kSuspension;
  event.time = context_.clock.Now();
  event.site = site.key;
  if (!site.pool.empty()) {
    for (const Source& s : context_.router.Sources(site.pool)) {
      if (s.name == source) event.source_ip = s.ip;
    }
  }
  if (until > event.time) {
    event.next_attempt = until;
    event.detail = absl::StrCat("source ", source, " paused for site ", site.key,
                                " by the administrator (manual)");
  } else {
    event.detail = absl::StrCat("source ", source, " resumed for site ", site.key,
                                " by the administrator");
  }
  context_.events->Record(event);
}

namespace {

// Asks every shard (`ask` runs on each shard's loop) and waits for all the answers.
template <typename T>
absl::StatusOr<std::vector<T>> AskShards(const std::vector<ShardHandle>& shards,
                                         std::function<T(ShardDelivery&)> ask,
                                         absl::Duration timeout) {
  // Shared with the posted tasks: a shard answering after the timeout still finds it.
  struct Gathering {
    absl::Mutex mutex;
    std::vector<T> answers ABSL_GUARDED_BY(mutex);
    size_t left ABSL_GUARDED_BY(mutex) = 0;
  };
  auto gathering = std::make_shared<Gathering>();
  {
    absl::MutexLock lock(&gathering->mutex);
    gathering->answers.resize(shards.size());
    gathering->left = shards.size();
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    ShardDelivery* delivery = shards[i].delivery;
    shards[i].loop->Post([gathering, ask, delivery, i] {
      T answer = ask(*delivery);
      absl::MutexLock lock(&gathering->mutex);
      gathering->answers[i] = std::move(answer);
      --gathering->left;
    });
  }
  absl::MutexLock lock(&gathering->mutex);
  bool (*all_in)(Gathering*) = [](Gathering* g) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return g->left == 0;
  };
  if (!gathering->mutex.AwaitWithTimeout(absl::Condition(all_in, gathering.get()), timeout)) {
    return absl::UnavailableError("a delivery shard did not answer in time");
  }
  return std::move(gathering->answers);
}

}  // namespace

absl::StatusOr<std::vector<SiteSnapshot>> SiteControl::Sites(absl::Duration timeout) const {
  absl::StatusOr<std::vector<std::vector<SiteSnapshot>>> answers = AskShards<std::vector<SiteSnapshot>>(
      shards_, [](ShardDelivery& shard) { return shard.Sites(); }, timeout);
  if (!answers.ok()) return answers.status();
  std::vector<SiteSnapshot> sites;
  for (std::vector<SiteSnapshot>& shard : *answers) {
    for (SiteSnapshot& site : shard) sites.push_back(std::move(site));
  }
  std::sort(sites.begin(), sites.end(),
            [](const SiteSnapshot& a, const SiteSnapshot& b) { return a.key < b.key; });
  return sites;
}

absl::StatusOr<SiteSuspensionResult> SiteControl::Suspend(const SiteSuspension& asked_for,
                                                          absl::Duration timeout) const {
  if (asked_for.site.empty()) return absl::InvalidArgumentError("no site named");
  // The site as the server spells it, before any shard matches it (or hashes it to its owner).
  absl::StatusOr<std::vector<std::string>> spellings = AskShards<std::string>(
      shards_, [name = asked_for.site](ShardDelivery& shard) {
        return shard.CanonicalSiteName(name);
      }, timeout);
  if (!spellings.ok()) return spellings.status();
  SiteSuspension request = asked_for;
  for (const std::string& spelling : *spellings) {
    if (spelling.empty()) continue;
    request.site = spelling;
    if (spelling == asked_for.site) break;  // the name as typed wins over another spelling
  }
  for (bool create : {false, true}) {
    std::vector<ShardHandle> asked = shards_;
    if (create) {
      if (request.until == absl::InfinitePast()) break;  // nothing to resume there
      // A shipped site no shard holds yet: its owner (by the hash of its key, its name)
      // creates it.
      if (shards_.empty()) break;
      asked = {shards_[std::hash<std::string>()(request.site) % shards_.size()]};
    }
    absl::StatusOr<std::vector<SiteSuspensionResult>> answers =
        AskShards<SiteSuspensionResult>(
            asked, [request, create](ShardDelivery& shard) { return shard.Suspend(request, create); },
            timeout);
    if (!answers.ok()) return answers.status();
    SiteSuspensionResult result;
    for (SiteSuspensionResult& answer : *answers) {
      for (std::string& key : answer.sites) result.sites.push_back(std::move(key));
      result.pairs += answer.pairs;
      result.unknown_source = result.unknown_source || answer.unknown_source;
    }
    if (result.sites.empty()) continue;
    result.site = request.site;
    std::sort(result.sites.begin(), result.sites.end());
    if (result.unknown_source && result.pairs == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("no source '", request.source, "' sends to site ", request.site));
    }
    return result;
  }
  if (request.until == absl::InfinitePast()) {
    // A resume: only a site some shard holds can be suspended, a shipped one included.
    return absl::NotFoundError(absl::StrCat("no suspended site '", request.site,
                                            "' (a site is held once mail goes to it: `facteur "
                                            "site list` shows those)"));
  }
  return absl::NotFoundError(absl::StrCat("no site '", request.site,
                                          "' (neither a site with mail nor a shipped site name)"));
}

absl::StatusOr<size_t> SiteControl::RestorePauses(const std::vector<throttle::PairPause>& pauses,
                                                  absl::Duration timeout) const {
  if (pauses.empty()) return 0;
  // Shared with the posted tasks: a shard answering after the timeout still reads them.
  auto shared = std::make_shared<const std::vector<throttle::PairPause>>(pauses);
  FACTEUR_ASSIGN_OR_RETURN(
      std::vector<size_t> answers,
      AskShards<size_t>(
          shards_, [shared](ShardDelivery& shard) { return shard.RestorePauses(*shared); },
          timeout));
  size_t applied = 0;
  for (size_t answer : answers) applied += answer;
  return applied;
}

void ShardedDispatcher::Dispatch(DeliveryJob job) {
  if (shards_.empty()) return;
  const ShardHandle& shard = shards_[std::hash<std::string>()(job.domain) % shards_.size()];
  ShardDelivery* delivery = shard.delivery;
  shard.loop->Post([delivery, job = std::move(job)]() mutable { delivery->Submit(std::move(job)); });
}

}  // namespace facteur::delivery
