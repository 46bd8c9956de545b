// File: engine/delivery/shard_delivery.h
// The delivery side of one I/O shard. A job arrives on the shard of its recipient domain, which
// finds its MX hosts (or its route's host) and from them its site (throttle/site_matcher.h: every
// Google-hosted domain is the "google" site), then hands it to the shard that owns the site
// (DESIGN.md §2: a hash of the site key), where the site's state is single-threaded:
//  - per destination (an MX set or a route), the jobs waiting and a pool of SMTP client
//    connections that try the hosts' addresses in order (falling through on a connect failure
//    or a refused greeting, RFC 5321 §5.1) and carry one job after another;
//  - an idle connection whose destination has nothing for it is offered to the shard's other
//    destinations, of any site: one whose first host has the same address (same source, port
//    and TLS policy) takes it over instead of opening a connection and greeting again, as
//    Postfix's connection cache by address does — a thousand domains on one provider's servers
//    under a thousand MX names cost a few connections, not a thousand. It is counted by the
//    pair it serves at the time;
//  - the destinations of a site take turns (SiteQueue::turns): one with jobs and nothing of
//    its own under way gets the site's next connection or message slot before a busy
//    destination's next job;
//  - per (source, site), a PairThrottle (throttle/site_throttle.h) that admits each connection
//    and each message under the site's limits, and reacts to every classified reply (rate
//    limit, too many connections, blocklist: backoff, suspension, recovery). A throttled site
//    arms a timer for its next eligible time; nothing polls, and no site waits for another.
//  - greylisted recipients come back pinned to their source and leave from it alone; a warmup
//    plan caps a new source's messages per site per day.
// Jobs a site cannot carry soon (suspended, or far down a rate-limited queue) go back to the
// queue manager unattempted, with the time to try them again, so that a slow or suspended site
// never holds the leases other sites need. Every attempted job comes back with one outcome and
// one classified verdict per recipient. An operator sees the sites (Sites()) and pauses or
// resumes their pairs (Suspend()) through SiteControl, which posts to each shard's loop. Every
// pause that begins, moves or is lifted goes to the pause ledger (DeliveryContext::pauses), and
// the pauses of before a restart come back through RestorePauses().
// Thread contract: ShardDelivery is shard-confined (constructed, used and shut down on its loop
// thread; peers reach it only through its loop); ShardedDispatcher is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/delivery/job.h"
#include "engine/delivery/router.h"
#include "engine/delivery/shaping.h"
#include "engine/delivery/site_labeler.h"
#include "engine/dns/resolver.h"
#include "engine/events/event_log.h"
#include "engine/io/connector.h"
#include "engine/io/event_loop.h"
#include "engine/metrics/metrics.h"
#include "engine/smtp/client/client_session.h"
#include "engine/tls/tls_client_context.h"
#include "throttle/pause_ledger.h"
#include "throttle/reputation.h"
#include "throttle/site_throttle.h"

namespace facteur::delivery {

class ShardDelivery;

// What every shard shares. Immutable; outlives the shards.
struct DeliveryContext {
  const Router& router;
  ResultSink& results;
  Clock& clock;
  // The shaping snapshot at start, shared by the Relay and every shard; a reload gives each
  // shard a new one (ShardDelivery::SetShaping) and this one is freed with the last holder.
  std::shared_ptr<const Shaping> shaping;
  // Reputation and warmup caps; null: none kept.
  throttle::Reputation* reputation = nullptr;
  // Per (site, source) series; null: none exported.
  metrics::ShapingMetrics* metrics = nullptr;
  // The `site` label of those series (shared with the queue manager); null: SiteLabel().
  SiteLabeler* site_labels = nullptr;
  // Where a pair's suspension is told (a "suspension" event); null: nowhere.
  events::EventLog* events = nullptr;
  // Where every pause that begins, moves or is lifted is recorded, to be written to the spool
  // off the loops and restored after a restart (throttle/pause_ledger.h); null: not kept.
  throttle::PauseLedger* pauses = nullptr;
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

// One (source, site) pair as an operator sees it (the admin API's GET /api/sites).
struct PairSnapshot {
  std::string source;
  throttle::PairState state = throttle::PairState::kNormal;
  // While suspended: until when, and by what: "manual" (an operator) or the class of the reply
  // that began or last extended it ("rate_limit", "blocklist", ...). Else InfinitePast and "".
  absl::Time suspended_until = absl::InfinitePast();
  std::string suspended_by;
  double message_rate = 0;       // messages per minute now allowed; 0: no limit
  uint32_t max_connections = 0;  // connections allowed at once now; 0: no limit
  uint32_t open_connections = 0;
  uint32_t in_flight = 0;       // messages this source is carrying to the site now
  uint32_t pinned_waiting = 0;  // jobs waiting for this source alone (greylisted)
  double health = 1.0;          // throttle::Reputation::Health; 1 without reputation data
};

// One site as the shard that owns it holds it.
struct SiteSnapshot {
  std::string key;    // "google", "google/example.com", "mx:...", "route:..."
  std::string label;  // its metric label (SiteLabel)
  std::string name;   // the shipped site's name; "" for an unknown MX set or a route
  std::string pool;
  // Jobs (and their recipients) waiting in the shard for a connection, and being carried.
  uint64_t ready_jobs = 0;
  uint64_t ready_recipients = 0;
  uint64_t in_flight_jobs = 0;
  // Jobs handed back to the queue manager unattempted (suspended or far down a rate-limited
  // queue) since the shard started: they wait in the spool for the time the site named.
  uint64_t held_back_jobs = 0;
  // A suspension of every source (SiteSuspension without a source) that also pauses the pairs
  // created while it runs; InfinitePast when none.
  absl::Time suspended_until = absl::InfinitePast();
  std::vector<PairSnapshot> sources;
};

// An operator's suspension (until > now) or resumption (until = InfinitePast) of a site: every
// site whose key or shipped name is `site`, for one source or all.
struct SiteSuspension {
  std::string site;
  std::string source;  // "" = every source of the site
  absl::Time until = absl::InfinitePast();
};
struct SiteSuspensionResult {
  std::string site;                // the site asked for, as the server spells it ("google")
  std::vector<std::string> sites;  // keys of the sites matched
  uint32_t pairs = 0;              // pairs whose state changed
  bool unknown_source = false;     // `source` is not one of the site's pool
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
  // Stops taking jobs (jobs still waiting are dropped: their messages stay queued and are
  // tried at the next start), closes idle connections, lets the transactions in progress end
  // for at most `grace` (real time) — their outcomes are reported as usual — then aborts the
  // rest: their jobs are abandoned, neither reported nor held against any pair, so their
  // messages stay queued as they were (the manager releases their leases when it stops).
  // Calls `done` on the loop thread once every connection is gone.
  void Shutdown(absl::AnyInvocable<void() &&> done,
                absl::Duration grace = absl::ZeroDuration());

  // A new shaping snapshot (SIGHUP): the sites this shard knows take their new limits and
  // reactions, their pairs keeping what they learned (PairThrottle::SetOptions); the next
  // replies are classified by its classifier. Loop thread.
  void SetShaping(std::shared_ptr<const Shaping> shaping);

  size_t connections() const;

  // The sites this shard owns (loop thread; SiteControl asks from other threads).
  std::vector<SiteSnapshot> Sites() const;
  // Applies an operator's suspension or resumption to the matching sites this shard owns and
  // writes a "suspension" event per pair changed. With `create`, a shipped site this shard
  // does not hold yet is created (mail for it then finds it paused).
  SiteSuspensionResult Suspend(const SiteSuspension& request, bool create);
  // `name` as this shard spells it, whatever its case: a key of a site it holds, or a site's
  // (shipped) name; "" when it knows none.
  std::string CanonicalSiteName(std::string_view name) const;
  // The pauses of before a restart that are still running (given to every shard): the shard
  // that owns a pause's site creates the site if need be and pauses the pair (or every source)
  // as it was, so that Sites() lists it as before the restart; every shard remembers an
  // operator's pause of a shipped site's name, for that name's domain overrides created later.
  // Returns how many pauses this shard applied to sites it owns.
  size_t RestorePauses(const std::vector<throttle::PairPause>& pauses);

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
    // The snapshot `site` points into, kept alive while the job travels between shards.
    std::shared_ptr<const Shaping> shaping;
  };
  struct DestinationQueue {
    Destination destination;
    std::vector<std::string> hosts;
    SiteQueue* site = nullptr;
    std::deque<PendingJob> waiting;
    std::list<std::unique_ptr<Link>> links;
    // Its ticket in the site's turns (SiteQueue::turns) while it waits for one; 0: none.
    uint64_t turn = 0;
    // The site's `started` when it began to wait its turn.
    uint64_t started_at_turn = 0;
    // The site's pump that last visited it (SiteQueue::pumps): each is visited once a pump.
    uint64_t pumped = 0;
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
    // The destinations with jobs and nothing of their own carrying or connecting for them, by
    // key and ticket, in the order they began to wait: the site's next connection or message
    // slot is the first one's, before a busy destination's next job — round-robin, as
    // Postfix's queue manager serves its destinations, so that a newsletter to one of a
    // provider's domains does not hold a password reset to another back until it is out. An
    // entry whose destination went, or carries again (its ticket changed), is dropped when it
    // comes first.
    struct Turn {
      std::string key;
      uint64_t ticket = 0;
    };
    std::deque<Turn> turns;
    uint64_t tickets = 0;
    uint64_t pumps = 0;
    // Messages started by the site's connections, for DestinationQueue::started_at_turn.
    uint64_t started = 0;
    // Idle connections of other destinations closing so that a waiting one gets their slot.
    int closing_for_a_slot = 0;
    // What the metrics were last told of each pair, by source: counters advance by the
    // difference.
    struct Reported {
      std::array<uint64_t, throttle::kResponseClassCount> replies = {};
      std::array<uint64_t, throttle::kResponseClassCount> suspensions = {};
      absl::Duration throttled = absl::ZeroDuration();
    };
    absl::flat_hash_map<std::string, Reported> reported;
    // Jobs returned unattempted by HoldBack, for Sites().
    uint64_t held_back = 0;
    // By source: the UTC midnight that lifts the spent warmup cap last recorded as an event.
    absl::flat_hash_map<std::string, absl::Time> warmup_cap_recorded;
    // An operator paused every source from manual_since until manual_until: pairs created
    // meanwhile start paused too.
    absl::Time manual_since = absl::InfinitePast();
    absl::Time manual_until = absl::InfinitePast();

    std::string_view name() const { return site == nullptr ? std::string_view() : site->name; }
    throttle::PairThrottle& Pair(const std::string& source);
    // The destination `turn` stands for, or null when it went or carried since (the ticket
    // changed).
    DestinationQueue* Holder(const Turn& turn);
  };

  void Route(PendingJob pending, Destination destination, std::vector<std::string> hosts);
  void Accept(RoutedJob routed);
  // The site's provider options and pair options from `match` (pointing into shaping_).
  void Configure(SiteQueue& site, const throttle::SiteMatcher::Match& match) const;
  void Pump(SiteQueue& site);
  // True when a destination of `site` without connections of its own cannot start a job now:
  // every pair of its sources is at its connection limit, and no idle connection the site
  // counts is offered.
  bool CannotStartAny(const SiteQueue& site, const DestinationQueue& queue);
  // An idle connection offered to other destinations (idle_links_) for which `wanted` holds,
  // or nullptr.
  Link* OfferedLink(absl::FunctionRef<bool(const Link&)> wanted);
  void PumpDestination(SiteQueue& site, DestinationQueue& queue, absl::Time now);
  enum class Employment {
    kIdle,     // idle, or just answered: gives way to a destination waiting its turn (TurnFor)
    kOwnTurn,  // taken over for the destination, or the destination's turn: takes its job
    // At the end of data of the job it carries: takes a job only, none while another
    // destination waits its turn, and is otherwise left as it is (it comes back as kIdle
    // when its job ends).
    kNext,
  };
  // An idle `link` of `queue` takes the first job its pair and the warmup cap admit now; or
  // goes to another destination of the site that waits its turn (GiveWay); or waits (arming
  // `wake`), offered to other destinations when no job is for its source; or leaves (its pair
  // paused, over its limits, or the connection used up).
  void Employ(SiteQueue& site, DestinationQueue& queue, Link& link, absl::Time now,
              const throttle::WarmupPlan* plan, absl::Time& wake,
              Employment employment = Employment::kIdle);
  // True when `queue` has jobs and none of its connections carries one or is connecting.
  static bool WaitsItsTurn(const DestinationQueue& queue);
  // `queue` waits its turn (SiteQueue::turns), behind those already waiting.
  void AwaitTurn(SiteQueue& site, DestinationQueue& queue);
  // The first destination of the site still waiting its turn, or null (drops the entries of
  // those no longer waiting from the front).
  DestinationQueue* NextTurn(SiteQueue& site);
  // What `link` can do for `to`, a destination of its site waiting its turn.
  enum class Way {
    kNone,   // nothing: `to` waits for another source, or may open a connection of its own
    kMove,   // go to `to`: its first host has this connection's address (ReuseKey)
    kClose,  // close, so that `to` gets the slot of the pair, full (once the site has
             // started kStartedBeforeClosingForATurn messages since `to` began to wait)
  };
  Way WayFor(const SiteQueue& site, const Link& link, const DestinationQueue& to,
             absl::Time now);
  // The first destination waiting its turn ahead of `queue` that `link` can serve (WayFor),
  // among the first kTurnsLooked waiting; null when none, or when `queue` comes first.
  DestinationQueue* TurnFor(SiteQueue& site, const DestinationQueue& queue, const Link& link,
                            absl::Time now);
  // `link`, about to take a job of `from`, serves `to` (TurnFor) instead: `to`'s own idle
  // connections are employed first; then `link` moves to `to`, or closes for it (its Finish
  // pumps the site, `to` first). When `to` needs neither any more, `link` serves `from`.
  void GiveWay(SiteQueue& site, DestinationQueue& from, Link& link, DestinationQueue& to,
               absl::Time now, const throttle::WarmupPlan* plan, absl::Time& wake);
  // Employ for a link just connected and greeted (its session's OnReady) or just answered
  // (OnTransactionDone), before its site is pumped.
  void EmployReady(Link& link);
  // Employ(kNext) for a link at the end of data (its session's OnReadyForNext): the next
  // message follows the end of data in the same write (RFC 2920 §3.1).
  void EmployNext(Link& link);
  // The warmup plan of the destination's pool, or null (none, or no reputation tracking).
  const throttle::WarmupPlan* WarmupPlanOf(const DestinationQueue& queue) const;
  // Where `source` stands against its warmup cap for `site` (`plan`, from WarmupPlanOf; null:
  // no cap).
  enum class WarmupRoom {
    kOpen,      // no cap, or room for one more message
    kInFlight,  // full with what it is carrying: deferrals among those free room again
    kSpent,     // the day's cap is used up: room again at the next UTC midnight
  };
  WarmupRoom WarmupRoomFor(SiteQueue& site, const std::string& source,
                           const throttle::WarmupPlan* plan, absl::Time now);
  // The "warmup_cap" event of a source whose cap for `site` is spent: once per (site, source)
  // and UTC day, when a message first waits for it (a restart may record it again that day).
  void RecordWarmupCapReached(SiteQueue& site, const std::string& source,
                              const throttle::WarmupStanding& standing, absl::Time now);
  // When a pump refused by the cap looks again: the next UTC midnight for kSpent; for kInFlight
  // within kWarmupRecheck (the answers of the messages in flight pump the site sooner), so
  // that the refused jobs are not handed back until midnight for room a deferral may free.
  // They stay in the shard past max_hold while the answers take that long (at most the data
  // timeout of the messages in flight).
  static absl::Time WarmupWake(WarmupRoom room, absl::Time now);
  // Employ's refusal of `link` by the cap: a spent cap closes it, one full with what is in
  // flight keeps it for when answers come.
  static void IdleForWarmup(Link& link, WarmupRoom room);
  // The address a new link from `source` would try first for `host` (its first of the source's
  // family): the host itself when it is an IP literal, else from the resolver's cache; nullopt
  // when not known yet.
  std::optional<dns::IpAddress> FirstAddress(const std::string& host, const Source& source);
  // An idle connection of another destination that a new link of `queue` from `source` may
  // reuse, known at once (its first host's address cached or literal), or nullptr. With
  // `of_pair`, only one that pair counts.
  Link* ReusableLink(const DestinationQueue& queue, const Source& source,
                     const throttle::PairThrottle* of_pair = nullptr);
  // The same, once the first host's address (FirstAddress) is known to be `first`.
  Link* ReusableLinkAt(const DestinationQueue& queue, const Source& source,
                       const dns::IpAddress& first, const throttle::PairThrottle* of_pair);
  // When no pair of `candidates` admits a new connection for `queue`: an idle connection one of
  // them already counts (another destination's, to the same address) moves to `queue`; its pair's
  // count stays. nullptr when there is none: then one of their idle connections to another
  // address is closed, so that the site, pumped when it has, opens one for `queue`; when the
  // destination's address is not known yet, it is looked up and the site pumped again once it
  // is. A pair waiting for its next message slot arms `wake` for it.
  Link* TakeOverIdleLinkOfPair(DestinationQueue& queue,
                               std::span<const throttle::SourceCandidate> candidates,
                               const std::vector<Source>& sources, absl::Time now,
                               absl::Time& wake);
  // An idle connection of `pair` that another destination offers, to be closed for a
  // destination of `site` that waits for a slot of `pair`; nullptr when there is none, or when
  // one of the site's is closing for a slot already.
  Link* IdleLinkToClose(const SiteQueue& site, const throttle::PairThrottle& pair);
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
  // The address of the [[source]] named `source`; "" for an unbound one.
  std::string SourceIp(const std::string& source) const;
  // A reply that ended a session before any transaction (greeting, EHLO, STARTTLS).
  void JudgeSession(SiteQueue& site, const std::string& source,
                    const mail::DeliveryOutcome& outcome);
  void FailWaiting(DestinationQueue& queue, const mail::DeliveryOutcome& outcome,
                   const std::string& remote);
  void Fail(PendingJob job, const Destination& destination, const mail::DeliveryOutcome& outcome,
            const std::string& site);
  // A job the shard stops without a known outcome (a shutdown: still waiting, sent behind an
  // end of data that was never answered, or abandoned): its message stays queued as it was,
  // to be tried at the next start. A part of a split job whose other parts were tried reports
  // with them instead, its recipients given a local transient outcome, so that what those
  // parts delivered is recorded and not sent again after the restart.
  void LeaveQueued(PendingJob job);
  void Report(PendingJob job, const DestinationQueue& queue,
              std::vector<mail::DeliveryOutcome> outcomes, std::vector<RecipientVerdict> verdicts,
              const std::string& mx, const Source* source, bool tls);
  // Hands `result` to the manager at the end of this loop turn, with the turn's other results
  // (FlushResults): one lock and at most one wake-up of the manager's thread per turn, not per
  // job. A wake-up is the dearest thing a result costs the I/O thread.
  void Done(JobResult result);
  void FlushResults();
  // The result of `job` (its id, domain and recipients moved out) with nothing else said yet.
  JobResult ResultOf(PendingJob& job, const std::string& destination,
                     const std::string& site) const;
  // On the next loop turn: deletes `finished` (a link of `queue` that ended; may be null),
  // pumps the site, and forgets the queue if it has no link and no job left.
  void TidyLater(DestinationQueue& queue, Link* finished);
  // An idle connection of any destination of this shard offered under `reuse_key` (source,
  // address, port, TLS policy) — with `of_pair`, one that pair counts — or nullptr.
  Link* TakeIdleLink(const std::string& reuse_key,
                     const throttle::PairThrottle* of_pair = nullptr);
  void MaybeFinishShutdown();
  // Aborts every connection; the jobs they carry are abandoned (see Shutdown).
  void AbandonAll();
  // Every few seconds: the pairs' counters and gauges into ShapingMetrics, and by site label
  // the pairs suspended and the recipients waiting (summed over the shards).
  void ReportMetrics();
  void ScheduleMetrics();
  const ShardHandle* OwnerOf(const std::string& site_key) const;
  // The "suspension" event of an operator's pause (until > now) or resumption of a pair.
  void RecordManual(const SiteQueue& site, const std::string& source, absl::Time until);
  // Keeps (or, resumed, forgets) an operator's pause of a shipped site by name, so that the
  // sites of that name this shard creates later (domain overrides, "google/example.com",
  // owned by any shard) start paused too.
  void RememberPause(const SiteSuspension& request, absl::Time now);
  // Applies the remembered pauses of `site`'s name to it (a site just created).
  void ApplyRememberedPauses(SiteQueue& site, absl::Time now);
  // The site `key` this shard owns, created (configured, remembered pauses applied) when absent.
  SiteQueue& SiteFor(const std::string& key);
  // Tells the pause ledger the pause of `source`'s pair and the back-off that outlives it, or
  // the pause of every source (NoteSitePause), as they stand at `now`: recorded, or lifted when
  // nothing is left to keep. `by_operator`: an operator's command (`site suspend`/`resume`)
  // made the change, which is then written synced before the command answers.
  void NotePause(const SiteQueue& site, const std::string& source,
                 const throttle::PairThrottle& pair, absl::Time now, bool by_operator = false);
  void NoteSitePause(const SiteQueue& site, absl::Time now, bool by_operator = false);

  io::EventLoop& loop_;
  dns::Resolver& resolver_;
  const DeliveryContext& context_;
  // This shard's shaping snapshot, shared with the Relay and the other shards (SetShaping).
  std::shared_ptr<const Shaping> shaping_;
  io::Connector connector_;
  std::vector<ShardHandle> shards_;
  // Idle connections whose destination has nothing for them, by reuse key, oldest first: a
  // connection to the same address may carry another destination's mail (Link::Adopt). Declared
  // before sites_, which owns the links: the links leave it when destroyed.
  absl::node_hash_map<std::string, std::list<Link*>> idle_links_;
  absl::flat_hash_map<std::string, std::unique_ptr<SiteQueue>> sites_;
  // Operators' pauses by shipped site name, then source ("" = every source): their start and
  // end. Bounded by the shipped names and sources; ended ones are dropped at the next change.
  struct RememberedPause {
    absl::Time since;
    absl::Time until;
  };
  std::map<std::pair<std::string, std::string>, RememberedPause> remembered_pauses_;
  bool shutting_down_ = false;
  // The shutdown grace ran out: the sessions still open are aborted and their jobs abandoned.
  bool abandoning_ = false;
  io::TimerId grace_timer_ = io::kNoTimer;
  io::TimerId metrics_timer_ = io::kNoTimer;
  // What this shard last added to the per-label gauges shared by every shard (suspended pairs,
  // waiting recipients): the next sweep adds the difference.
  absl::flat_hash_map<std::string, std::array<double, 2>> reported_by_label_;
  absl::AnyInvocable<void() &&> shutdown_done_;
  // Results of this loop turn, not yet handed to the manager (Done): the first one sets the
  // timer that hands them over.
  std::vector<JobResult> finished_;
  // Timers and DNS callbacks of this object hold a weak_ptr to it: they find it expired once it
  // is destroyed.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The admin API's way to the shards' sites: each call posts a request to every shard's loop
// and waits (at most `timeout`) for the answers. Thread-safe; blocking, so for the admin
// server's threads, never a loop thread. The shards outlive it (or at least its calls).
class SiteControl {
 public:
  explicit SiteControl(std::vector<ShardHandle> shards) : shards_(std::move(shards)) {}
  // Every shard's sites, sorted by key. Unavailable when a shard did not answer in time.
  absl::StatusOr<std::vector<SiteSnapshot>> Sites(absl::Duration timeout) const;
  // NotFound when no shard knows the site and it is no shipped site name; InvalidArgument for
  // a source not in the site's pool. The site's name may be typed in any case.
  absl::StatusOr<SiteSuspensionResult> Suspend(const SiteSuspension& request,
                                               absl::Duration timeout) const;
  // ShardDelivery::RestorePauses on every shard; how many pauses were applied.
  absl::StatusOr<size_t> RestorePauses(const std::vector<throttle::PairPause>& pauses,
                                       absl::Duration timeout) const;

 private:
  std::vector<ShardHandle> shards_;
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
