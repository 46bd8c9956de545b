// File: throttle/account_quota.h
// Submission quotas per account (issue #5 point 6, DESIGN.md §4 "per-account limits sit on the
// submission side") and runaway-account containment:
//  - messages per hour and per day, in fixed UTC windows (the clock hour, the UTC day), so that
//    a refusal can say exactly when sending resumes ("try again after 14:00 UTC"); a client
//    that fills an hour at its end and the next at its start is the anomaly detector's business;
//  - recipients per message;
//  - anomaly detection: each account's own history is an exponentially weighted mean of its
//    hourly message counts (bias-corrected, so that an account with one day of history is
//    compared with that day and not with a mean dragged toward zero). When the last `window`
//    (5 minutes) holds more than `min_messages` and, extrapolated to an hour, more than
//    `factor` times that mean, the account is suspended at once: a stolen password or a
//    runaway script is stopped within seconds, not at the end of the hour. An account stays
//    suspended until an administrator resumes it.
// Pure logic: times are passed in; no clock, no I/O. The state of each account can be taken out
// (for persistence by engine/policy/account_quotas.h) and put back.
// Thread contract: thread-safe. One mutex guards the table and its options; every call holds
// it for a hash lookup and a few arithmetic operations (no allocation but a new account's first
// entry), so that sessions of one account on several I/O shards see one count without blocking
// each other measurably. Reconfigure() swaps the options under that mutex (a reload).
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
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace facteur::throttle {

// The limits of one account. 0 = unlimited.
struct AccountLimits {
  // Messages accepted per clock hour (UTC). Default: 500.
  uint32_t messages_per_hour = 500;
  // Messages accepted per UTC day. Default: 5000.
  uint32_t messages_per_day = 5000;
  // Recipients of one message. RFC 5321 §4.5.3.1.10 makes refusing fewer than 100 a violation
  // for a relay; a submission server may be stricter with its own users. Default: 100.
  uint32_t recipients_per_message = 100;
  // Whether the anomaly detection may suspend this account (off for an account whose normal
  // traffic is bursty, a daily digest sent in one go). Default: true.
  bool detect_anomalies = true;

  friend bool operator==(const AccountLimits&, const AccountLimits&) = default;
};

struct AnomalyOptions {
  // Default: true.
  bool enabled = true;
  // The short window whose count, extrapolated to an hour, is compared with the history.
  // Default: 5m.
  absl::Duration window = absl::Minutes(5);
  // How many times the account's usual hourly rate the extrapolated rate must exceed.
  // Default: 10.
  double factor = 10.0;
  // The window must hold more than this many messages before the account can be suspended: the
  // absolute minimum, and the floor that lets a new account (no history) send its first 50
  // messages in a burst. Default: 50.
  uint32_t min_messages = 50;
  // Half-life of the history: an hour's count weighs half as much this much later. Default: 72h.
  absl::Duration half_life = absl::Hours(72);
};

struct AccountQuotaOptions {
  // Default: AccountLimits{} (500/hour, 5000/day, 100 recipients).
  AccountLimits defaults;
  // Per account name: limits that replace the defaults. Default: none.
  std::vector<std::pair<std::string, AccountLimits>> per_account;
  AnomalyOptions anomaly;
};

// What persists of one account (engine/policy/account_quotas.h stores it). The short window
// does not: after a restart it starts empty, which at worst delays a suspension by minutes.
struct AccountQuotaState {
  // The current clock hour and its count (the hourly quota and the history's next sample).
  absl::Time hour_start = absl::InfinitePast();  // InfinitePast: no message yet
  uint32_t hour_count = 0;
  // The current UTC day and its count.
  absl::Time day_start = absl::InfinitePast();
  uint32_t day_count = 0;
  // Exponentially weighted mean of the closed hours' counts since the first message, and the
  // sum of the weights (1 − (1−α)^hours), by which it is divided to remove the bias toward 0.
  double ewma = 0.0;
  double ewma_weight = 0.0;
  // Suspension for unusual volume, until Resume().
  bool suspended = false;
  absl::Time suspended_at = absl::InfinitePast();
  std::string suspension_detail;  // "1020 messages/hour over the last 5m, usual 21/hour"

  friend bool operator==(const AccountQuotaState&, const AccountQuotaState&) = default;
};

// Why a message or recipient is refused; the label of facteur_account_quota_refusals_total.
enum class QuotaReason { kHourly, kDaily, kRecipients, kSuspended };
// "hourly", "daily", "recipients", "suspended".
const char* QuotaReasonName(QuotaReason reason);

// An SMTP refusal, as the session sends it.
struct QuotaRefusal {
  QuotaReason reason = QuotaReason::kHourly;
  int code = 0;
  std::string enhanced;
  std::string text;
};

struct AdmitDecision {
  // Unset: the message is counted and may be queued.
  std::optional<QuotaRefusal> refusal;
  // This very call suspended the account (for the event and the metric, once).
  bool suspended_now = false;
  // The rates compared when suspended_now: the extrapolated short-window rate and the
  // account's usual rate, both per hour.
  double rate_per_hour = 0.0;
  double usual_per_hour = 0.0;
};

class AccountQuotaTable {
 public:
  explicit AccountQuotaTable(AccountQuotaOptions options);
  AccountQuotaTable(const AccountQuotaTable&) = delete;
  AccountQuotaTable& operator=(const AccountQuotaTable&) = delete;

  // New limits and anomaly settings (SIGHUP), for the next check of every account. Counts,
  // histories and suspensions are kept: an account already past a lowered limit is refused at
  // its next message, and a raised one lets it send again at once. A new anomaly window empties
  // the short windows (their buckets were cut to the old one), as a restart does; a new
  // half-life weighs the hours that close from now on.
  void Reconfigure(AccountQuotaOptions options);

  // The limits that apply to `account`.
  AccountLimits LimitsOf(std::string_view account) const;

  // At MAIL FROM and at DATA: a suspended account gets 550 5.7.1; an account whose hour or day
  // is full gets 450 4.7.1 with the time its window ends.
  std::optional<QuotaRefusal> CheckMessage(std::string_view account, absl::Time now);
  // At RCPT TO: `recipients` is the count the message would have with this recipient. Past the
  // limit 452 4.5.3: RFC 5321 §4.5.3.1.10 names it the reply for too many recipients and asks
  // clients to treat it as temporary and send the rest in another transaction (as Postfix
  // does), where a 5xx would make a client bounce those recipients. Each extra message counts
  // against the hourly and daily quotas, which bound the volume.
  std::optional<QuotaRefusal> CheckRecipients(std::string_view account, size_t recipients) const;
  // At the end of the data, before queueing: checks as CheckMessage, then counts the message
  // and runs the anomaly detection. When this message reveals the anomaly, the account is
  // suspended and the message itself refused (the containment starts now, not at the next one).
  AdmitDecision Admit(std::string_view account, absl::Time now);
  // An admitted message was not queued after all (a queue failure): takes it back from the
  // counts of the windows it was counted in, if they are still current.
  void Refund(std::string_view account, absl::Time admitted_at);

  // Clears the suspension (the history is kept, the short window emptied so that the burst
  // that caused it does not suspend the account again). False when it was not suspended.
  bool Resume(std::string_view account);
  // Suspends by hand (tests, an operator): true when it was not suspended already.
  bool Suspend(std::string_view account, absl::Time now, std::string detail);
  // Forgets the account (deleted).
  void Forget(std::string_view account);
  // Accounts suspended now (facteur_accounts_suspended); one pass over the accounts.
  size_t SuspendedCount() const;

  // Persistence: installs a stored state (at startup), and takes the states changed since the
  // last call. Counts are not rolled on Load: the next call with a time does it.
  void Load(std::string_view account, AccountQuotaState state);
  std::vector<std::pair<std::string, AccountQuotaState>> TakeDirty();
  // A copy of the account's state with its windows rolled to `now`; nullopt when unknown.
  std::optional<AccountQuotaState> Get(std::string_view account, absl::Time now);
  // The account's usual hourly rate (the bias-corrected mean); 0 without history.
  static double UsualRate(const AccountQuotaState& state);

 private:
  // The short window, in kBuckets buckets of window/kBuckets each.
  static constexpr size_t kBuckets = 30;
  struct Bucket {
    int64_t index = INT64_MIN;  // floor(time / bucket length); INT64_MIN: never used
    uint32_t count = 0;
  };
  struct Entry {
    AccountQuotaState state;
    std::array<Bucket, kBuckets> recent;
    bool dirty = false;
  };

  // The options and what is derived from them, replaced whole by Reconfigure().
  struct Settings {
    explicit Settings(AccountQuotaOptions options);
    AccountQuotaOptions options;
    absl::flat_hash_map<std::string, AccountLimits> per_account;
    double alpha;  // weight of each closed hour in the mean: 1 − 2^(−1h / half_life)
    absl::Duration bucket_length;
  };

  AccountLimits LimitsOfLocked(std::string_view account) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  Entry& EntryFor(std::string_view account) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  // Closes the hours and days that ended before `now`, folding each closed hour into the mean.
  void Roll(AccountQuotaState& state, absl::Time now) const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  int64_t BucketIndex(absl::Time t) const ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  uint32_t RecentCount(const Entry& entry, absl::Time now) const
      ABSL_SHARED_LOCKS_REQUIRED(mutex_);
  std::optional<QuotaRefusal> WindowRefusal(std::string_view account, const AccountLimits& limits,
                                            const AccountQuotaState& state, absl::Time now) const;
  static QuotaRefusal SuspendedRefusal(std::string_view account);

  mutable absl::Mutex mutex_;
  Settings settings_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace facteur::throttle
