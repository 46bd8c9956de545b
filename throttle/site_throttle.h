// File: throttle/site_throttle.h
// The state of one (source IP, site) pair (../shared/DESIGN.md §4–5) and the choices made from
// it, PowerMTA style:
//  - PairThrottle: admission of connections and messages under the site's limits (concurrency,
//    GCRA rates), and the reaction to each class of reply: normal → backoff (rate cut
//    multiplicatively, connections capped) → suspended while paused; additive recovery on each
//    delivery back to the nominal limits, and then to normal.
//  - ChooseSource: which source of a pool opens the next connection to a site, or when one may.
//  - GreylistRetryDelay: when a greylisted triplet is tried again.
// Every admission answer is a *time* (the next eligible one), so the caller arms a timer rather
// than polling. Pure logic: time is passed in, never read (STYLE.md rule 6).
// Thread contract: shard-confined; a PairThrottle belongs to the shard that owns its site.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "absl/time/time.h"
#include "throttle/gcra.h"
#include "throttle/pause_ledger.h"
#include "throttle/response_class.h"
#include "throttle/shaping.h"

namespace facteur::throttle {

enum class PairState : uint8_t {
  kNormal,     // nominal limits
  kBackoff,    // a reply cut the rate, capped connections or asked for a pause: recovering
  kSuspended,  // paused until suspended_until()
};

std::string_view PairStateName(PairState state);  // "normal", "backoff", "suspended"

// Everything a pair needs from the shaping file, copied so that a pair outlives a reload.
struct PairOptions {
  // The nominal limits: the site's, or a domain override's. Default: SiteLimits{}.
  SiteLimits limits;
  // Reaction per class, site overrides already merged (see From). Default: no reaction at all.
  std::array<ClassAction, kResponseClassCount> actions = {};
  // Recovery and the bound on suspensions. Default: BackoffOptions{}.
  BackoffOptions backoff;

  // The options of a pair of `site` (nullptr for a site formed by an unknown MX set) with
  // `limits` (the site's, or a domain override's): each class takes site->actions[class] when
  // set, else shaping.actions[class]. PairThrottle does not merge again.
  static PairOptions From(const SiteLimits& limits, const ShapingOptions& shaping,
                          const SiteOptions* site);
};

// Monotonic counters for metrics (labels: site, source, class).
struct PairCounters {
  uint64_t connections_opened = 0;
  uint64_t messages_started = 0;
  uint64_t deliveries = 0;
  // Replies received, by class (success included).
  std::array<uint64_t, kResponseClassCount> replies = {};
  // Suspensions begun, by the class of the reply that began them (an extension is not counted).
  std::array<uint64_t, kResponseClassCount> suspensions = {};
  // Replies that pushed the end of a running suspension later.
  uint64_t suspension_extensions = 0;
  // Cuts that lowered the rate, caps that lowered max connections (no-ops are not counted).
  uint64_t rate_cuts = 0;
  uint64_t connection_caps = 0;
  // Replies of a class whose action has reputation_hit.
  uint64_t reputation_hits = 0;
};

// Admission and reaction for one (source, site) pair.
//
// Message rate. The nominal rate is the strictest configured one, as messages per minute
// (min of messages_per_minute, messages_per_hour / 60, messages_per_day / 1440). Each configured
// rate is a GCRA with burst 1: N per hour means one every 3600/N s, so every hour-long window
// holds at most N; the strictest rules. A cut multiplies the current rate (the nominal one when
// the pair is at nominal) by the class's rate_factor, not below min_rate_fraction × nominal; the
// per-minute GCRA then runs at the current rate. When the site configures no message rate at
// all, the first cut starts from the *observed* rate — messages started in the last minute,
// estimated from two calendar-minute counters (Cloudflare's sliding window), at least 1 per
// minute — which becomes the nominal for that episode of backoff; back at it, the pair is
// unlimited again.
// Connections. max_connections at once (0 in the limits: no limit), lowered by a class's
// max_connections while backing off; connections_per_minute / _hour GCRAs with burst 1. A cap
// below the connections already open does not close them: OverConnectionLimit() tells the
// caller to close one after its current transaction.
// Recovery (additive increase). Each delivery outside a suspension, and after the hold of the
// last reply that acted (ClassAction::hold), adds recovery_step × nominal to the rate and one
// connection to the cap; when both are back at nominal the pair is normal.
// A pair suspended without a cut (blocklist) also stays in backoff until its first delivery.
// Suspensions. A reply whose action suspends pauses the pair until now + max(suspend, announced
// delay); a reply during a running suspension may push its end later, never past its beginning
// + max_suspension. Replies arriving while suspended answer messages sent before the pause: they
// may extend it but do not cut the rate again, and deliveries then do not count for recovery.
// Greylist replies never suspend, cut or cap (they concern one triplet: GreylistRetryDelay).
class PairThrottle {
 public:
  // max_connections of an unlimited pair.
  static constexpr uint32_t kUnlimitedConnections = UINT32_MAX;

  explicit PairThrottle(const PairOptions& options);

  // New nominal limits and reactions (a reload of the shaping file), keeping what the pair has
  // learned: its counters, suspension, learned ceiling, throttled time and the events already
  // paid for in each rate (Gcra::SetRate keeps the backlog). A pair at nominal moves to the new
  // nominal; a pair backing off keeps recovering, toward the new nominal, from its current rate
  // and connection cap (lowered to the new nominal if above it).
  void SetOptions(const PairOptions& options, absl::Time now);

  // --- Admission. Each returns the time from which the action is allowed: <= now (possibly
  // absl::InfinitePast()) when allowed now; absl::InfiniteFuture() when only a connection
  // closing can allow it (all max_connections are open). The May* forms also record that work
  // waits on this pair (throttled_time); the *EligibleAt forms only look.
  absl::Time ConnectionEligibleAt(absl::Time now) const;
  // ConnectionEligibleAt but for the count of open connections: when a connection closed now
  // could be replaced (the connection rates and a suspension allow one).
  absl::Time ConnectionRateEligibleAt(absl::Time now) const;
  absl::Time MessageEligibleAt(absl::Time now) const;
  absl::Time MayOpenConnection(absl::Time now);
  absl::Time MayStartMessage(absl::Time now);

  // --- Events. The caller reports what it did (whether or not it was allowed: an event that
  // happened is paid for in the rate limits all the same).
  void OnConnectionOpened(absl::Time now);
  // A connection already open to the site's server, taken over from another destination (a
  // reused idle connection): it counts as open, but no new connection reached the server, so
  // it costs nothing in the connection rates.
  void OnConnectionTakenOver(absl::Time now);
  void OnConnectionClosed(absl::Time now);
  // A transaction (MAIL FROM) begins; messages are counted per transaction, not per recipient.
  void OnMessageStarted(absl::Time now);
  // A reply of class `reply_class` to this pair; `announced` is the delay the reply names
  // ("try again in 300 seconds"), if any: it lengthens a suspension the class's action asks
  // for, and is otherwise ignored here. kSuccess is the same as OnDelivered(now): call one of
  // them per delivered message, not both.
  void OnReply(ResponseClass reply_class, absl::Time now,
               std::optional<absl::Duration> announced = std::nullopt);
  // One message was accepted: additive recovery (not while suspended).
  void OnDelivered(absl::Time now);
  // Work waits on this pair from `now` until `until` (May* call it; so does ChooseSource when
  // it chooses nothing). Overlapping waits are counted once.
  void NoteWaiting(absl::Time now, absl::Time until);
  // An operator pauses the pair until `until` (the admin API's site suspend): no bound by
  // max_suspension, no rate cut, no suspension counted by class. A running automatic suspension
  // that ends later keeps its end. Replies during it may still extend it, as in any suspension.
  void SuspendManually(absl::Time now, absl::Time until);
  // An operator lifts the pair's suspension, whatever began it (a manual pause or a reply):
  // the operator who asks knows better than the last reply. Rate cuts and connection caps stay
  // (recovery goes on as usual). Returns whether the pair was suspended.
  bool Resume(absl::Time now);
  // A suspension a reply began before a restart, read back (throttle/pause_ledger.h): the pair
  // is paused from `began` until `until` by `cause`, as it was — bounded by max_suspension from
  // `began` if replies extend it, standing aside for other sources if the class's action says
  // so — but nothing is counted again and no rate is cut (RestoreBackoff brings back the cut
  // and the cap that were kept with it). An operator's pause is restored with SuspendManually.
  void RestoreSuspension(absl::Time began, absl::Time until, ResponseClass cause);
  // The back-off in force at `now` besides a pause: a cut rate, a connection cap, a learned
  // ceiling or a hold still running. None when the pair is at its nominal limits with nothing
  // learned; a restart keeps it with the pause (throttle/pause_ledger.h).
  std::optional<PairBackoff> Backoff(absl::Time now) const;
  // At start-up, after RestoreSuspension if the pause still runs: the back-off a record kept.
  // The rates are bounded by today's configuration (a nominal rate lowered since stays lower).
  // Nothing is counted.
  void RestoreBackoff(const PairBackoff& backoff, absl::Time now);

  // --- State.
  PairState state(absl::Time now) const;
  bool suspended(absl::Time now) const { return now < suspended_until_; }
  // End of the last suspension; absl::InfinitePast() if never suspended.
  absl::Time suspended_until() const { return suspended_until_; }
  absl::Time suspension_began() const { return suspension_began_; }
  // Class of the reply that began or last extended the last suspension.
  std::optional<ResponseClass> suspension_class() const { return suspension_class_; }
  // The running suspension was set by an operator (SuspendManually), not by a reply.
  bool manually_suspended(absl::Time now) const { return suspended(now) && manual_; }
  // A reply asked to prefer another source (blocklist); cleared by the next delivery.
  bool prefers_other_source() const { return prefer_other_source_; }

  // Messages per minute now allowed (the strictest rate, cut while backing off); 0: no limit.
  double current_message_rate() const { return current_rate_; }
  // What recovery aims for, messages per minute; 0: no limit.
  double nominal_message_rate() const { return rate_target_; }
  // Connections allowed at once now; kUnlimitedConnections when unlimited.
  uint32_t current_max_connections() const { return current_connections_; }
  uint32_t open_connections() const { return open_connections_; }
  bool OverConnectionLimit() const { return open_connections_ > current_connections_; }
  uint32_t max_messages_per_connection() const {
    return options_.limits.max_messages_per_connection;
  }
  uint32_t max_recipients_per_message() const {
    return options_.limits.max_recipients_per_message;
  }

  const PairCounters& counters() const { return counters_; }
  // Total time work waited because of this pair's limits or suspension, up to `now`.
  absl::Duration throttled_time(absl::Time now) const;
  const PairOptions& options() const { return options_; }

 private:
  void Suspend(ResponseClass reply_class, absl::Duration duration, absl::Time now);
  void CutRate(double factor, absl::Time now);
  void CapConnections(uint32_t cap);
  double ObservedRate(absl::Time now) const;
  // After a rate cut: remember kCeilingShare of the rate the site complained at.
  void LearnCeiling(absl::Time now);
  // The learned ceiling in force at `now`, messages per minute; 0: none.
  double Ceiling(absl::Time now) const;
  static constexpr double kCeilingShare = 0.9;
  static constexpr double kMinCeilingSample = 5;  // messages in the last minute
  void CloseWait(absl::Time now);

  PairOptions options_;
  // Message rates: minute (adaptive), hour, day. Connection rates: minute, hour.
  Gcra messages_minute_;
  Gcra messages_hour_;
  Gcra messages_day_;
  Gcra connections_minute_;
  Gcra connections_hour_;

  // Per minute. nominal_rate_: strictest configured (0: none). rate_target_: what recovery aims
  // for (nominal_rate_, or the observed rate of an unconfigured site being cut). current_rate_:
  // in force; below rate_target_ exactly while rate_cut_.
  double nominal_rate_ = 0;
  double rate_target_ = 0;
  double current_rate_ = 0;
  bool rate_cut_ = false;
  // The ceiling a rate-limit reply taught (see BackoffOptions::rate_memory), until when.
  double learned_ceiling_ = 0;
  absl::Time ceiling_until_ = absl::InfinitePast();

  // nominal_connections_: from the limits (kUnlimitedConnections for 0). connection_target_:
  // what recovery aims for (nominal, or the connections open when an unlimited pair was capped).
  uint32_t nominal_connections_;
  uint32_t connection_target_;
  uint32_t current_connections_;
  uint32_t open_connections_ = 0;

  bool in_backoff_ = false;
  // Deliveries before this time do not count for recovery (ClassAction::hold).
  absl::Time recovery_held_until_ = absl::InfinitePast();
  bool prefer_other_source_ = false;
  absl::Time suspended_until_ = absl::InfinitePast();
  absl::Time suspension_began_ = absl::InfinitePast();
  std::optional<ResponseClass> suspension_class_;
  bool manual_ = false;  // the last suspension was SuspendManually's

  // Messages started in the calendar minute observed_minute_ and the one before it.
  int64_t observed_minute_ = INT64_MIN;
  uint32_t observed_this_minute_ = 0;
  uint32_t observed_previous_minute_ = 0;

  // The wait in progress, [wait_from_, wait_until_); none when wait_from_ is InfinitePast.
  absl::Time wait_from_ = absl::InfinitePast();
  absl::Time wait_until_ = absl::InfinitePast();
  absl::Duration throttled_ = absl::ZeroDuration();

  PairCounters counters_;
};

// One source of a pool, as offered to ChooseSource.
struct SourceCandidate {
  // The source's name (as in the pool). Default: "".
  std::string_view name;
  // Its pair with the site; null: out of the running (ChooseSource passes over it). Default:
  // nullptr.
  PairThrottle* pair = nullptr;
};

struct SourceChoice {
  // Index in the candidates of the source to use now; nullopt when none may be used now.
  std::optional<size_t> source;
  // Now when a source is chosen; else the earliest time one may be (absl::InfiniteFuture():
  // only when a connection closes, or no candidates).
  absl::Time eligible_at = absl::InfiniteFuture();
};

// The source from which to open the next connection to a site, among a pool's `candidates`: a
// source is usable now when both its connection and message admission allow it
// (ConnectionEligibleAt and MessageEligibleAt <= now). Suspended sources are skipped; sources
// that prefer_other_source are used only when every other source is suspended; among the usable
// ones the least loaded (open connections / current_max_connections, then fewest open, then
// first listed) wins. With `pinned` (a greylisted triplet goes back to the source that was
// greylisted, providers.md §3) that source alone is considered — waited for, never rotated
// away from; a pinned name absent from the candidates (the source left the pool) is ignored,
// since waiting for it would strand the mail. When nothing is chosen, the pairs that made the
// work wait record it (NoteWaiting) until eligible_at.
SourceChoice ChooseSource(std::span<const SourceCandidate> candidates, absl::Time now,
                          std::optional<std::string_view> pinned = std::nullopt);

// Delay before retrying a triplet greylisted `greylisted_times` times (this time included; 0 is
// taken as 1). A delay the reply announces wins, bounded to [1 min, max_delay]: never sooner
// than a minute (a server announcing "0 seconds" is not to be hammered), never later than
// max_delay (a server announcing days would strand the mail; retried sooner, it is greylisted
// again and announces what remains). Else first_delay × backoff^(n-1), capped at max_delay.
absl::Duration GreylistRetryDelay(const GreylistOptions& options, uint32_t greylisted_times,
                                  std::optional<absl::Duration> announced = std::nullopt);

}  // namespace facteur::throttle
