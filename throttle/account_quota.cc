// File: throttle/account_quota.cc
// Fixed UTC windows, the bias-corrected hourly mean, and the short window in buckets.
#include "throttle/account_quota.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace facteur::throttle {
namespace {

constexpr int64_t kHourSeconds = 3600;
constexpr int64_t kDaySeconds = 86400;

// The start of the `period`-second window holding `t`. The Unix epoch is midnight UTC, so
// 86400-second windows are UTC days and 3600-second windows clock hours.
absl::Time FloorTo(absl::Time t, int64_t period) {
  int64_t seconds = absl::ToUnixSeconds(t);  // rounds toward the past
  int64_t floored = seconds / period * period;
  if (floored > seconds) floored -= period;  // negative times: division rounds toward zero
  return absl::FromUnixSeconds(floored);
}

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

// Debian's abseil has its own string_view: the one conversion point of this file.
absl::string_view Absl(std::string_view text) {
  return absl::string_view(text.data(), text.size());
}

std::string Utc(absl::Time t, const char* format) {
  return absl::FormatTime(format, t, absl::UTCTimeZone());
}

}  // namespace

const char* QuotaReasonName(QuotaReason reason) {
  switch (reason) {
    case QuotaReason::kHourly: return "hourly";
    case QuotaReason::kDaily: return "daily";
    case QuotaReason::kRecipients: return "recipients";
    case QuotaReason::kSuspended: return "suspended";
  }
  return "hourly";
}

AccountQuotaTable::Settings::Settings(AccountQuotaOptions options_in)
    : options(std::move(options_in)),
      per_account(options.per_account.begin(), options.per_account.end()),
      alpha(options.anomaly.half_life > absl::ZeroDuration()
                ? 1.0 - std::exp2(-absl::FDivDuration(absl::Hours(1), options.anomaly.half_life))
                : 1.0),
      bucket_length(std::max(options.anomaly.window / static_cast<int64_t>(kBuckets),
                             absl::Milliseconds(1))) {}

AccountQuotaTable::AccountQuotaTable(AccountQuotaOptions options) : settings_(std::move(options)) {}

void AccountQuotaTable::Reconfigure(AccountQuotaOptions options) {
  Settings next(std::move(options));  // built before the lock: the sessions wait for a swap only
  absl::MutexLock lock(&mutex_);
  if (next.bucket_length != settings_.bucket_length) {
    for (auto& [name, entry] : entries_) entry.recent = {};
  }
  settings_ = std::move(next);
}

AccountLimits AccountQuotaTable::LimitsOf(std::string_view account) const {
  absl::MutexLock lock(&mutex_);
  return LimitsOfLocked(account);
}

AccountLimits AccountQuotaTable::LimitsOfLocked(std::string_view account) const {
  auto it = settings_.per_account.find(Absl(account));
  return it != settings_.per_account.end() ? it->second : settings_.options.defaults;
}

double AccountQuotaTable::UsualRate(const AccountQuotaState& state) {
  return state.ewma_weight > 0 ? state.ewma / state.ewma_weight : 0.0;
}

AccountQuotaTable::Entry& AccountQuotaTable::EntryFor(std::string_view account) {
  auto it = entries_.find(Absl(account));
  if (it == entries_.end()) it = entries_.emplace(std::string(account), Entry{}).first;
  return it->second;
}

void AccountQuotaTable::Roll(AccountQuotaState& state, absl::Time now) const {
  if (state.hour_start == absl::InfinitePast()) return;  // no message yet: nothing to close
  const absl::Time hour = FloorTo(now, kHourSeconds);
  if (hour > state.hour_start) {
    // The hour that just closed is one sample of the mean; each idle hour after it is a zero.
    const double alpha = settings_.alpha;
    const double keep = 1.0 - alpha;
    state.ewma = keep * state.ewma + alpha * state.hour_count;
    state.ewma_weight = keep * state.ewma_weight + alpha;
    const int64_t idle = (absl::ToUnixSeconds(hour) - absl::ToUnixSeconds(state.hour_start)) /
                             kHourSeconds - 1;
    if (idle > 0) {
      const double decay = std::pow(keep, static_cast<double>(idle));
      state.ewma *= decay;
      state.ewma_weight = 1.0 - (1.0 - state.ewma_weight) * decay;
    }
    state.hour_start = hour;
    state.hour_count = 0;
  }
  const absl::Time day = FloorTo(now, kDaySeconds);
  if (day > state.day_start) {
    state.day_start = day;
    state.day_count = 0;
  }
}

int64_t AccountQuotaTable::BucketIndex(absl::Time t) const {
  return FloorDiv(absl::ToUnixMillis(t), absl::ToInt64Milliseconds(settings_.bucket_length));
}

uint32_t AccountQuotaTable::RecentCount(const Entry& entry, absl::Time now) const {
  const int64_t current = BucketIndex(now);
  uint32_t total = 0;
  for (const Bucket& bucket : entry.recent) {
    if (bucket.index <= current && bucket.index > current - static_cast<int64_t>(kBuckets)) {
      total += bucket.count;
    }
  }
  return total;
}

QuotaRefusal AccountQuotaTable::SuspendedRefusal(std::string_view account) {
  // 550, not 450: the client (a mail program, a script) must stop and tell a person, rather
  // than keep the messages and retry them for days; if the burst was a stolen password, those
  // retries are the spam. Once resumed, the person sends again.
  return QuotaRefusal{QuotaReason::kSuspended, 550, "5.7.1",
                      absl::StrCat("Account ", Absl(account),
                                   " is suspended for unusual sending volume; contact the "
                                   "administrator")};
}

std::optional<QuotaRefusal> AccountQuotaTable::WindowRefusal(std::string_view account,
                                                             const AccountLimits& limits,
                                                             const AccountQuotaState& state,
                                                             absl::Time now) const {
  // 450 4.7.1 (RFC 3463 "delivery not authorized"; 4xx: the same message succeeds once the
  // window ends, so the client keeps it and retries). The day first: when both are full it is
  // the later of the two times.
  if (limits.messages_per_day > 0 && state.day_count >= limits.messages_per_day &&
      state.day_start != absl::InfinitePast()) {
    const absl::Time reset = state.day_start + absl::Hours(24);
    return QuotaRefusal{
        QuotaReason::kDaily, 450, "4.7.1",
        absl::StrCat("Daily sending quota of ", limits.messages_per_day,
                     " messages reached for account ", Absl(account), ", try again after ",
                     Utc(reset, "%Y-%m-%d %H:%M"), " UTC")};
  }
  if (limits.messages_per_hour > 0 && state.hour_count >= limits.messages_per_hour &&
      state.hour_start != absl::InfinitePast()) {
    const absl::Time reset = state.hour_start + absl::Hours(1);
    // The date too when the hour ends on another day than `now` (just before midnight).
    const bool same_day = FloorTo(reset, kDaySeconds) == FloorTo(now, kDaySeconds);
    return QuotaRefusal{
        QuotaReason::kHourly, 450, "4.7.1",
        absl::StrCat("Hourly sending quota of ", limits.messages_per_hour,
                     " messages reached for account ", Absl(account), ", try again after ",
                     Utc(reset, same_day ? "%H:%M" : "%Y-%m-%d %H:%M"), " UTC")};
  }
  return std::nullopt;
}

std::optional<QuotaRefusal> AccountQuotaTable::CheckMessage(std::string_view account,
                                                            absl::Time now) {
  absl::MutexLock lock(&mutex_);
  const AccountLimits limits = LimitsOfLocked(account);
  auto it = entries_.find(Absl(account));
  if (it == entries_.end()) return std::nullopt;  // nothing sent yet: nothing to refuse
  Entry& entry = it->second;
  const AccountQuotaState before = entry.state;
  Roll(entry.state, now);
  if (!(entry.state == before)) entry.dirty = true;
  if (entry.state.suspended) return SuspendedRefusal(account);
  return WindowRefusal(account, limits, entry.state, now);
}

std::optional<QuotaRefusal> AccountQuotaTable::CheckRecipients(std::string_view account,
                                                               size_t recipients) const {
  const AccountLimits limits = LimitsOf(account);
  if (limits.recipients_per_message == 0 || recipients <= limits.recipients_per_message) {
    return std::nullopt;
  }
  return QuotaRefusal{QuotaReason::kRecipients, 452, "4.5.3",
                      absl::StrCat("Too many recipients: account ", Absl(account), " may send one "
                                   "message to at most ", limits.recipients_per_message,
                                   " recipients; send the others in another message")};
}

AdmitDecision AccountQuotaTable::Admit(std::string_view account, absl::Time now) {
  AdmitDecision decision;
  absl::MutexLock lock(&mutex_);
  const AccountLimits limits = LimitsOfLocked(account);
  Entry& entry = EntryFor(account);
  AccountQuotaState& state = entry.state;
  Roll(state, now);
  entry.dirty = true;
  if (state.hour_start == absl::InfinitePast()) {  // the account's first message
    state.hour_start = FloorTo(now, kHourSeconds);
    state.day_start = FloorTo(now, kDaySeconds);
  }
  if (state.suspended) {
    decision.refusal = SuspendedRefusal(account);
    return decision;
  }
  if (auto refusal = WindowRefusal(account, limits, state, now)) {
    decision.refusal = std::move(refusal);
    return decision;
  }
  ++state.hour_count;
  ++state.day_count;
  const int64_t index = BucketIndex(now);
  Bucket& bucket = entry.recent[static_cast<size_t>(
      ((index % static_cast<int64_t>(kBuckets)) + kBuckets) % kBuckets)];
  if (bucket.index != index) bucket = Bucket{index, 0};
  ++bucket.count;

  const AnomalyOptions& anomaly = settings_.options.anomaly;
  if (!anomaly.enabled || !limits.detect_anomalies) return decision;
  const uint32_t recent = RecentCount(entry, now);
  if (recent <= anomaly.min_messages) return decision;
  const double rate = recent * absl::FDivDuration(absl::Hours(1), anomaly.window);
  const double usual = UsualRate(state);
  if (!(rate > anomaly.factor * usual)) return decision;

  // This message is the one too many: it is not counted, and not sent.
  --state.hour_count;
  --state.day_count;
  --bucket.count;
  state.suspended = true;
  state.suspended_at = now;
  state.suspension_detail =
      absl::StrFormat("%d messages in the last %s (%.0f/hour), usual rate %.1f/hour", recent,
                      absl::FormatDuration(anomaly.window), rate, usual);
  decision.refusal = SuspendedRefusal(account);
  decision.suspended_now = true;
  decision.rate_per_hour = rate;
  decision.usual_per_hour = usual;
  return decision;
}

void AccountQuotaTable::Refund(std::string_view account, absl::Time admitted_at) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(Absl(account));
  if (it == entries_.end()) return;
  Entry& entry = it->second;
  AccountQuotaState& state = entry.state;
  if (state.hour_start == FloorTo(admitted_at, kHourSeconds) && state.hour_count > 0) {
    --state.hour_count;
  }
  if (state.day_start == FloorTo(admitted_at, kDaySeconds) && state.day_count > 0) {
    --state.day_count;
  }
  const int64_t index = BucketIndex(admitted_at);
  for (Bucket& bucket : entry.recent) {
    if (bucket.index == index && bucket.count > 0) --bucket.count;
  }
  entry.dirty = true;
}

bool AccountQuotaTable::Resume(std::string_view account) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(Absl(account));
  if (it == entries_.end() || !it->second.state.suspended) return false;
  Entry& entry = it->second;
  entry.state.suspended = false;
  entry.state.suspended_at = absl::InfinitePast();
  entry.state.suspension_detail.clear();
  entry.recent = {};
  entry.dirty = true;
  return true;
}

bool AccountQuotaTable::Suspend(std::string_view account, absl::Time now, std::string detail) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = EntryFor(account);
  if (entry.state.suspended) return false;
  entry.state.suspended = true;
  entry.state.suspended_at = now;
  entry.state.suspension_detail = std::move(detail);
  entry.dirty = true;
  return true;
}

size_t AccountQuotaTable::SuspendedCount() const {
  absl::MutexLock lock(&mutex_);
  size_t count = 0;
  for (const auto& [name, entry] : entries_) count += entry.state.suspended ? 1 : 0;
  return count;
}

void AccountQuotaTable::Forget(std::string_view account) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(Absl(account));
  if (it != entries_.end()) entries_.erase(it);
}

void AccountQuotaTable::Load(std::string_view account, AccountQuotaState state) {
  absl::MutexLock lock(&mutex_);
  Entry& entry = EntryFor(account);
  entry.state = std::move(state);
  entry.recent = {};
  entry.dirty = false;
}

std::vector<std::pair<std::string, AccountQuotaState>> AccountQuotaTable::TakeDirty() {
  std::vector<std::pair<std::string, AccountQuotaState>> dirty;
  absl::MutexLock lock(&mutex_);
  for (auto& [name, entry] : entries_) {
    if (!entry.dirty) continue;
    dirty.emplace_back(name, entry.state);
    entry.dirty = false;
  }
  return dirty;
}

std::optional<AccountQuotaState> AccountQuotaTable::Get(std::string_view account, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  auto it = entries_.find(Absl(account));
  if (it == entries_.end()) return std::nullopt;
  const AccountQuotaState before = it->second.state;
  Roll(it->second.state, now);
  if (!(it->second.state == before)) it->second.dirty = true;
  return it->second.state;
}

}  // namespace facteur::throttle
