// File: engine/delivery/shard_delivery.h
// The delivery side of one I/O shard. A job arrives on the shard of its recipient domain, which
// finds its MX hosts (or its route's host) and from them its site (throttle/site_matcher.h: every
// Google-hosted domain is the "google" site), then hands it to the shard that owns the site
// (DESIGN.md §2: a hash of the site key), where the site's state is single-threaded:
//  - per destination (an MX set or a route), the jobs waiting and a pool of SMTP client
//    connections that try the hosts' addresses in order (falling through on a connect failure
//    or a refused greeting, RFC 5321 §5.1) and carry one job after another;
//  - per (source, site), a PairThrottle (throttle/site_throttle.h) that admits each connection
//    and each message under the site's limits, and reacts to every classified reply (rate
//    limit, too many connections, blocklist: backoff, suspension, recovery). A throttled site
//    arms a timer for its next eligible time; nothing polls, and no site waits for another.
//  - greylisted recipients come back pinned to their source and leave from it alone; a warmup
//    plan caps a new source's messages per site per day.
// Jobs a site cannot carry soon (suspended, or far down a rate-limited queue) go back to the
// queue manager unattempted, with the time to try them again, so that a slow or suspended site
// never holds the leases other sites need. Every attempted job comes back with one outcome and
// one classified verdict per recipient.
// Thread contract: ShardDelivery is shard-confined (constructed, used and shut down on its loop
// thread; peers reach it only through its loop); ShardedDispatcher is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/delivery/job.h"
#include "engine/delivery/router.h"
#include "engine/delivery/shaping.h"
#include "engine/dns/resolver.h"
#include "engine/events/event_log.h"
#include "engine/io/connector.h"
#include "engine/io/event_loop.h"
#include "engine/metrics/metrics.h"
#include "engine/smtp/client/client_session.h"
#include "engine/tls/tls_client_context.h"
#include "throttle/reputation.h"
#include "throttle/site_throttle.h"

namespace facteur::delivery {

class ShardDelivery;

// What every shard shares. Immutable; outlives the shards.
struct DeliveryContext {
  const Router& router;
  ResultSink& results;
  Clock& clock;
  const Shaping& shaping;
  // Reputation and warmup caps; null: none kept.
  throttle::Reputation* reputation = nullptr;
  // Per (site, source) series; null: none exported.
  metrics::ShapingMetrics* metrics = nullptr;
  // Where a pair's suspension is told (a "suspension" event); null: nowhere.
  events::EventLog* events = nullptr;
  const tls::TlsClientContext* tls = nullptr;  // null: no STARTTLS
  smtp::ClientTimeouts timeouts;
  absl::Duration connect_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Seconds(10);
  // Caps over every site's limits; a static route (a smarthost, not a provider) takes these
  // as its limits.
  uint32_t max_connections_per_destination = 10;
  uint32_t max_messages_per_connection = 100;
  uint32_t max_recipients_per_transaction = 100;
  // Addresses tried for one connection, over all MX hosts (Postfix: smtp_mx_address_limit).
  uint32_t max_addresses_per_connection = 5;
  // Longest (clock) time a job waits in a shard for its site; a longer wait sends it back to
  // the queue manager, to be leased again when the site can take it.
  absl::Duration max_hold = absl::Minutes(2);
};

// A shard as its peers and the dispatcher reach it.
struct ShardHandle {
  io::EventLoop* loop = nullptr;
  ShardDelivery* delivery = nullptr;
};

class ShardDelivery {
 public:
  // `resolver` outlives the ShardDelivery (or at least its Shutdown()).
  ShardDelivery(io::EventLoop& loop, dns::Resolver& resolver, const DeliveryContext& context);
  ~ShardDelivery();

  // Every shard, this one included, in the same order on every shard. Set before the first job.
  void SetShards(std::vector<ShardHandle> shards) { shards_ = std::move(shards); }

  // A job for a recipient domain this shard resolves (ShardedDispatcher's choice).
  void Submit(DeliveryJob job);
  // Aborts every session (jobs in progress come back with a transient outcome; jobs still
  // waiting are dropped: their messages stay queued and are tried at the next start) and calls
  // `done` on the loop thread once every connection is gone.
  void Shutdown(absl::AnyInvocable<void() &&> done);

  size_t connections() const;

 private:
  class Link;
  struct SiteQueue;
  struct SplitJob;
  struct PendingJob {
    DeliveryJob job;
    absl::Time dispatched;
    // A part of a job split by the site's max_recipients_per_message: where its recipients
    // start in the whole, whose result the parts fill in together.
    std::shared_ptr<SplitJob> split;
    size_t split_offset = 0;
  };
  // A job on its way to the shard that owns its site.
  struct RoutedJob {
    PendingJob pending;
    Destination destination;
    std::vector<std::string> hosts;  // MX hosts in preference order, or the route's host
    throttle::SiteMatcher::Match site;
  };
  struct DestinationQueue {
    Destination destination;
    std::vector<std::string> hosts;
    SiteQueue* site = nullptr;
    std::deque<PendingJob> waiting;
    std::list<std::unique_ptr<Link>> links;
  };
  struct SiteQueue {
    std::string key;
    const throttle::SiteOptions* site = nullptr;  // null: an unknown MX set, or a route
    std::string pool;  // of the first destination: whose warmup plan the metrics show
    throttle::PairOptions pair_options;
    // By source name; kept while the shard lives, so that a suspension outlasts a quiet spell.
    absl::flat_hash_map<std::string, std::unique_ptr<throttle::PairThrottle>> pairs;
    absl::flat_hash_map<std::string, std::unique_ptr<DestinationQueue>> destinations;
    io::TimerId wake_timer = io::kNoTimer;
    absl::Time wake_at = absl::InfiniteFuture();
    // What the metrics were last told of each pair, by source: counters advance by the
    // difference.
    struct Reported {
      std::array<uint64_t, throttle::kResponseClassCount> replies = {};
      std::array<uint64_t, throttle::kResponseClassCount> suspensions = {};
      absl::Duration throttled = absl::ZeroDuration();
    };
    absl::flat_hash_map<std::string, Reported> reported;

    std::string_view name() const { return site == nullptr ? std::string_view() : site->name; }
    throttle::PairThrottle& Pair(const std::string& source);
  };

  void Route(PendingJob pending, Destination destination, std::vector<std::string> hosts);
  void Accept(RoutedJob routed);
  void Pump(SiteQueue& site);
  void PumpDestination(SiteQueue& site, DestinationQueue& queue, absl::Time now);
  // Returns the jobs of `queue` past the first `keep` to the manager, unattempted, to be tried
  // again from `first` on, `spacing` apart (parts of split jobs stay).
  void HoldBack(DestinationQueue& queue, size_t keep, absl::Time first, absl::Duration spacing);
  void WakeAt(SiteQueue& site, absl::Time at);
  // The recipients' verdicts, the pair's reaction and the reputation record of one attempt.
  std::vector<RecipientVerdict> Judge(SiteQueue& site, const std::string& source,
                                      const std::vector<mail::DeliveryOutcome>& outcomes);
  // The "suspension" event of a pair that a reply (`outcome`, of `reply_class`) just paused.
  void RecordSuspension(const SiteQueue& site, const std::string& source,
                        const mail::DeliveryOutcome& outcome, throttle::ResponseClass reply_class,
                        absl::Time until);
  // A reply that ended a session before any transaction (greeting, EHLO, STARTTLS).
  void JudgeSession(SiteQueue& site, const std::string& source,
                    const mail::DeliveryOutcome& outcome);
  void FailWaiting(DestinationQueue& queue, const mail::DeliveryOutcome& outcome,
                   const std::string& remote);
  void Fail(PendingJob job, const Destination& destination, const mail::DeliveryOutcome& outcome,
            const std::string& site);
  void Report(PendingJob job, const DestinationQueue& queue,
              std::vector<mail::DeliveryOutcome> outcomes, std::vector<RecipientVerdict> verdicts,
              const std::string& mx, const Source* source, bool tls);
  // The result of `job` (its id, domain and recipients moved out) with nothing else said yet.
  JobResult ResultOf(PendingJob& job, const std::string& destination,
                     const std::string& site) const;
  void LinkFinished(DestinationQueue& queue, Link* link);
  void MaybeFinishShutdown();
  // Every few seconds: the pairs' counters and gauges into ShapingMetrics.
  void ReportMetrics();
  void ScheduleMetrics();
  const ShardHandle* OwnerOf(const std::string& site_key) const;

  io::EventLoop& loop_;
  dns::Resolver& resolver_;
  const DeliveryContext& context_;
  io::Connector connector_;
  std::vector<ShardHandle> shards_;
  absl::flat_hash_map<std::string, std::unique_ptr<SiteQueue>> sites_;
  bool shutting_down_ = false;
  io::TimerId metrics_timer_ = io::kNoTimer;
  absl::AnyInvocable<void() &&> shutdown_done_;
  // Timers and DNS callbacks of this object hold a weak_ptr to it: they find it expired once it
  // is destroyed.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Spreads jobs over the shards, a recipient domain always to the same shard, by posting to its
// loop; that shard then hands each job to the shard of its site.
class ShardedDispatcher final : public JobDispatcher {
 public:
  explicit ShardedDispatcher(std::vector<ShardHandle> shards) : shards_(std::move(shards)) {}
  void Dispatch(DeliveryJob job) override;

 private:
  std::vector<ShardHandle> shards_;
};

}  // namespace facteur::delivery
