// File: throttle/reputation.h
// What each (source IP, site) pair has earned (DESIGN.md §5): rolling counters of the replies it
// got (delivered, deferred by class, bounced, blocked) over the last 24 hours, today, yesterday
// and since its first use; a health score drawn from them; and the warmup cap a new source obeys
// per site and per UTC day (WarmupPlan, throttle/shaping.h). Pure logic: every call takes the
// time (STYLE.md rule 6). Persistence is queue/reputation_store.h's; this file only encodes the
// state of one pair or one source to bytes and back.
// Thread contract: ReputationCounters and PairReputation are plain values (confined to their owner);
// Reputation is thread-safe (one mutex): delivery shards record and query it, the flusher thread
// takes its dirty state.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/string_view.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "throttle/response_class.h"
#include "throttle/shaping.h"

namespace facteur::throttle {

// Where a capped source stands with a site today (Reputation::Warmup).
struct WarmupStanding {
  uint32_t day = 1;         // of the source's warmup (Reputation::WarmupDay; 1 when never used)
  uint32_t cap = 0;         // final answers the source may get from the site today
  uint32_t sent_today = 0;  // final answers it got today (UTC)

  bool spent() const { return sent_today >= cap; }
  // Whether one more message may start with `in_flight` recipients of the pair already started
  // and not yet answered, which sent_today cannot see yet (without them, N connections could
  // overshoot the cap by N).
  bool Allows(uint32_t in_flight) const { return uint64_t{sent_today} + in_flight < cap; }
  // Whether this one has used a larger share of its cap than `other` (a cap of 0 is used up).
  bool NearerItsCapThan(const WarmupStanding& other) const {
    // sent/cap > other.sent/other.cap, without dividing: 64-bit products of 32-bit counts.
    if (cap == 0 || other.cap == 0) return cap == 0 && other.cap != 0;
    return uint64_t{sent_today} * other.cap > uint64_t{other.sent_today} * cap;
  }
};

// Replies a pair received over some span. The three kinds are disjoint: a success is
// `delivered`; a blocklist reply, transient or permanent, is `blocked` (it says the source is
// distrusted, whatever its code); any other transient reply is a deferral and any other permanent
// one a bounce, both counted by class.
struct ReputationCounters {
  uint64_t delivered = 0;
  std::array<uint64_t, kResponseClassCount> deferred = {};  // transient, by class
  std::array<uint64_t, kResponseClassCount> bounced = {};   // permanent, by class
  uint64_t blocked = 0;
  // Messages the site gave a final answer to: delivered, bounced, or blocked for good. What a
  // warmup cap counts (a deferred message is counted when its retry ends).
  uint64_t final_answers = 0;

  uint64_t TotalDeferred() const;
  uint64_t TotalBounced() const;
  void Add(ResponseClass response_class, bool permanent);
  void Merge(const ReputationCounters& other);
  bool empty() const;
  friend bool operator==(const ReputationCounters&, const ReputationCounters&) = default;
};

// How much each kind of reply weighs against a pair's health.
struct ReputationOptions {
  // Weight of a transient reply, by class. Default: rate_limit 1, too_many_connections 0.5,
  // content 1, authentication 1, other_transient 0.5 (timeouts and lost connections are often
  // the network's fault), the rest 0: greylisting is routine (providers.md §3) and a full
  // mailbox or an unknown user is the recipient's state, not the sender's standing. blocklist
  // counts through block_weight.
  std::array<double, kResponseClassCount> deferral_weight = {
      0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.0};
  // Weight of a permanent reply, by class. Default: content, authentication and other_permanent
  // 1; user_unknown, mailbox_full and domain_not_found 0 (the suppression list deals with bad
  // addresses).
  std::array<double, kResponseClassCount> bounce_weight = {
      0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0};
  // Weight of a blocklist reply (transient or permanent): a listing is the worst news a pair can
  // get. Default: 3.
  double block_weight = 3.0;
};

// The default weights with those of classes whose action says `reputation_hit = false` in the
// shaping file set to 0, so that an operator can take a class out of the score.
ReputationOptions ReputationOptionsFrom(const ShapingOptions& shaping);

// Health in [0, 1]:
//   delivered / (delivered + Σ deferral_weight[c]·deferred[c] + Σ bounce_weight[c]·bounced[c]
//                + block_weight·blocked)
// 1.0 when the denominator is 0 (no data, or only replies that weigh nothing: neutral).
// E.g. 90 delivered, 10 rate limits, 1 block: 90 / (90 + 10 + 3) = 0.874.
double HealthScore(const ReputationCounters& counters, const ReputationOptions& options);

// UTC day and hour numbers since the Unix epoch (floor division: correct before 1970 too).
int64_t UtcDay(absl::Time t);
int64_t UtcHour(absl::Time t);
// Start of the UTC day after the one `t` falls in: when a warmup cap resets.
absl::Time NextUtcMidnight(absl::Time t);

// The state of one (source, site) pair.
class PairReputation {
 public:
  // Hourly buckets of the rolling window: the current hour and the 23 before it.
  static constexpr int kWindowHours = 24;

  // Counts one reply at `now`. A reply older than the window of the newest one still counts in
  // the lifetime totals (a clock that stepped back must not lose data, nor corrupt the window).
  void Record(ResponseClass response_class, bool permanent, absl::Time now);

  // Replies in the hours [hour(now) - 23, hour(now)].
  ReputationCounters LastDay(absl::Time now) const;
  // Replies of the UTC day of `now`, and of the day before.
  ReputationCounters Today(absl::Time now) const;
  ReputationCounters Yesterday(absl::Time now) const;
  const ReputationCounters& lifetime() const { return lifetime_; }
  // Time of the latest Record(); InfinitePast when none.
  absl::Time last_record() const { return last_record_; }

  // Compact, versioned binary form (see reputation.cc for the layout): buckets that have left
  // the window of the newest reply are dropped. Deserialize returns DataLoss on anything
  // malformed: truncation, unknown version, trailing bytes.
  std::string Serialize() const;
  static absl::StatusOr<PairReputation> Deserialize(std::string_view bytes);

 private:
  struct HourBucket {
    int64_t hour;  // UtcHour of its replies
    ReputationCounters counters;
  };
  // The hours that had replies, oldest first, all within the window of the newest: most pairs
  // see replies in a few hours of the day, and a relay meeting many sites keeps one pair per
  // site and source, so 24 fixed buckets (over 5 KB) per pair would be mostly empty.
  std::vector<HourBucket> hours_;
  int64_t day_ = INT64_MIN;                      // UtcDay of today_
  ReputationCounters today_;
  ReputationCounters yesterday_;                 // of day_ - 1
  ReputationCounters lifetime_;
  absl::Time last_record_ = absl::InfinitePast();
};

// What a source keeps: the time it first sent (the start of its warmup).
struct SourceState {
  absl::Time first_use = absl::InfinitePast();  // InfinitePast: never used
  std::string Serialize() const;
  static absl::StatusOr<SourceState> Deserialize(std::string_view bytes);
};

// The plan of `pool` (ShapingOptions::pool_warmup → warmup_plans), or null when the pool has
// none (or names a plan that does not exist: the shaping parser refuses that).
const WarmupPlan* FindWarmupPlan(const ShapingOptions& shaping, std::string_view pool);

// One line of `facteur reputation`.
struct PairReport {
  std::string source;
  std::string site;
  ReputationCounters last_day;
  ReputationCounters today;
  ReputationCounters lifetime;
  double health = 1.0;  // HealthScore(last_day)
  // The source's warmup day (1 = its first UTC day), or none when it never sent.
  std::optional<uint32_t> warmup_day;
  absl::Time last_record = absl::InfinitePast();
};

// Persisted records changed since the last TakeDirty(): serialized values, keyed by name.
struct ReputationDelta {
  struct Pair {
    std::string source;
    std::string site;
    std::string value;  // PairReputation::Serialize()
  };
  struct Source {
    std::string source;
    std::string value;  // SourceState::Serialize()
  };
  std::vector<Pair> pairs;
  std::vector<Source> sources;
  bool empty() const { return pairs.empty() && sources.empty(); }
};

class Reputation {
 public:
  explicit Reputation(ReputationOptions options = ReputationOptions());
  Reputation(const Reputation&) = delete;
  Reputation& operator=(const Reputation&) = delete;

  // Counts one classified reply from `source` to `site` at `now` (one call per reply of the
  // grain the caller chose: a transaction, usually). The source's first use, the start of its
  // warmup, is the earliest `now` it was recorded with.
  void Record(std::string_view source, std::string_view site, ResponseClass response_class,
              bool permanent, absl::Time now);

  // HealthScore() over the pair's last 24 hours; 1.0 for a pair never seen.
  double Health(std::string_view source, std::string_view site, absl::Time now) const;

  // --- Warmup ---
  // Day d of a source is the d-th UTC day since its first use (1 = the day of its first
  // reply; a source never used is on day 1 now). With `plan` (the plan of the source's pool,
  // FindWarmupPlan; null: none) the source may send plan->daily_caps[d - 1] messages to each
  // site on day d; past the end of the plan, or without a plan, there is no cap (nullopt).
  std::optional<uint32_t> WarmupCap(std::string_view source, const WarmupPlan* plan,
                                    std::string_view site, absl::Time now) const;
  // Final answers (ReputationCounters::final_answers) the site gave the source today (UTC).
  uint32_t SentToday(std::string_view source, std::string_view site, absl::Time now) const;
  // WarmupDay, WarmupCap and SentToday read together (one lock: the delivery side asks before
  // each message it starts while a cap applies); nullopt when no cap applies.
  std::optional<WarmupStanding> Warmup(std::string_view source, const WarmupPlan* plan,
                                       std::string_view site, absl::Time now) const;
  // Where each capped source stands with each site it has had a reply from: the pairs whose
  // source has a cap today under plan_of(source) (null: no plan), unsorted. `plan_of` runs
  // under the reputation's lock: it must not call back into it. For the metrics.
  struct WarmupReport {
    std::string source;
    std::string site;
    WarmupStanding standing;
  };
  std::vector<WarmupReport> WarmupReports(
      absl::FunctionRef<const WarmupPlan*(const std::string& source)> plan_of,
      absl::Time now) const;
  // When a cap reached at `now` lifts: the next UTC midnight, so that the caller schedules the
  // pair's wake-up instead of polling.
  static absl::Time WarmupResetsAt(absl::Time now) { return NextUtcMidnight(now); }
  // The source's warmup day as above, or nullopt when it never sent.
  std::optional<uint32_t> WarmupDay(std::string_view source, absl::Time now) const;
  // Declares when a source started (an address already warm elsewhere: a date far back).
  void SetFirstUse(std::string_view source, absl::Time first_use);
  std::optional<absl::Time> FirstUse(std::string_view source) const;

  // Every pair, sorted by source then site.
  std::vector<PairReport> Report(absl::Time now) const;
  size_t pair_count() const;

  // --- Persistence (queue/reputation_store.h) ---
  // The records changed since the last call, serialized; clears the dirty marks.
  ReputationDelta TakeDirty();
  // Marks the records of a delta that could not be written dirty again: the next TakeDirty()
  // serializes their current state.
  void Redirty(const ReputationDelta& delta);
  // Installs stored state (start-up); not marked dirty. DataLoss when `value` does not decode.
  absl::Status RestorePair(std::string_view source, std::string_view site, std::string_view value);
  absl::Status RestoreSource(std::string_view source, std::string_view value);
  // The state of one pair, or nullopt (tests, the CLI).
  std::optional<PairReputation> Pair(std::string_view source, std::string_view site) const;

 private:
  using PairKey = std::pair<std::string, std::string>;
  // A (source, site) looked up without building the strings: Record() runs per transaction.
  using PairView = std::pair<absl::string_view, absl::string_view>;
  struct PairHash {
    using is_transparent = void;
    size_t operator()(const PairView& pair) const { return absl::Hash<PairView>()(pair); }
    size_t operator()(const PairKey& pair) const {
      return (*this)(PairView(pair.first, pair.second));
    }
  };
  struct PairEq {
    using is_transparent = void;
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      return absl::string_view(a.first) == absl::string_view(b.first) &&
             absl::string_view(a.second) == absl::string_view(b.second);
    }
  };
  static PairView ViewOf(std::string_view source, std::string_view site) {
    return PairView(absl::string_view(source.data(), source.size()),
                    absl::string_view(site.data(), site.size()));
  }
  std::optional<uint32_t> WarmupDayLocked(std::string_view source, absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  uint32_t SentTodayLocked(std::string_view source, std::string_view site, absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  // The source's day under `plan` and that day's cap, or nullopt (no plan, or past its end).
  std::optional<std::pair<uint32_t, uint32_t>> DayAndCapLocked(std::string_view source,
                                                               const WarmupPlan* plan,
                                                               absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);

  const ReputationOptions options_;
  mutable absl::Mutex mutex_;
  // Nodes: a PairReputation is some 700 bytes (its day and lifetime counters) besides its hourly
  // buckets, which a flat map would move at every growth; with 24 buckets inline (6 KB then),
  // a row of 1,000 new sites showed those moves and their page faults in perf.
  absl::node_hash_map<PairKey, PairReputation, PairHash, PairEq> pairs_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, SourceState> sources_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_set<PairKey, PairHash, PairEq> dirty_pairs_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_set<std::string> dirty_sources_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace facteur::throttle
