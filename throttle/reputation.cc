// File: throttle/reputation.cc
// Rolling reply counters per (source, site), the health score, warmup caps, and the binary form
// of a pair's and a source's state.
#include "throttle/reputation.h"

#include <algorithm>
#include <limits>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/varint_codec.h"

namespace facteur::throttle {
namespace {

constexpr int64_t kSecondsPerHour = 3600;
constexpr int64_t kSecondsPerDay = 86400;

int64_t FloorDiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

uint32_t ClampToU32(uint64_t value) {
  return static_cast<uint32_t>(std::min<uint64_t>(value, std::numeric_limits<uint32_t>::max()));
}

// Encoding primitives: engine/base/varint_codec.h.
using Reader = VarintReader;

constexpr uint8_t kPairVersion = 1;
constexpr uint8_t kSourceVersion = 1;
constexpr uint64_t kClassMask = (uint64_t{1} << kResponseClassCount) - 1;

// Sparse array: a bit mask of the classes with a non-zero count, then those counts.
void PutClassArray(std::string& out, const std::array<uint64_t, kResponseClassCount>& values) {
  uint64_t mask = 0;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    if (values[i] != 0) mask |= uint64_t{1} << i;
  }
  PutVarint(out, mask);
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    if (values[i] != 0) PutVarint(out, values[i]);
  }
}

bool ReadClassArray(Reader& reader, std::array<uint64_t, kResponseClassCount>& values) {
  uint64_t mask;
  if (!reader.Varint(mask) || (mask & ~kClassMask) != 0) return false;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    values[i] = 0;
    if ((mask & (uint64_t{1} << i)) != 0 && (!reader.Varint(values[i]) || values[i] == 0)) {
      return false;
    }
  }
  return true;
}

// Counters: delivered, blocked, final_answers, deferred (sparse), bounced (sparse).
void PutCounters(std::string& out, const ReputationCounters& c) {
  PutVarint(out, c.delivered);
  PutVarint(out, c.blocked);
  PutVarint(out, c.final_answers);
  PutClassArray(out, c.deferred);
  PutClassArray(out, c.bounced);
}

bool ReadCounters(Reader& reader, ReputationCounters& c) {
  return reader.Varint(c.delivered) && reader.Varint(c.blocked) &&
         reader.Varint(c.final_answers) && ReadClassArray(reader, c.deferred) &&
         ReadClassArray(reader, c.bounced);
}

absl::Status Malformed(const std::string& what) {
  return absl::DataLossError(absl::StrCat("malformed reputation record: ", what));
}

}  // namespace

// --- ReputationCounters ---

uint64_t ReputationCounters::TotalDeferred() const {
  uint64_t total = 0;
  for (uint64_t n : deferred) total += n;
  return total;
}

uint64_t ReputationCounters::TotalBounced() const {
  uint64_t total = 0;
  for (uint64_t n : bounced) total += n;
  return total;
}

void ReputationCounters::Add(ResponseClass response_class, bool permanent) {
  const size_t index = static_cast<size_t>(response_class);
  if (index >= kResponseClassCount) return;  // not a class: nothing to count
  if (response_class == ResponseClass::kSuccess) {
    ++delivered;
    ++final_answers;
    return;
  }
  if (permanent) ++final_answers;
  if (response_class == ResponseClass::kBlocklist) {
    ++blocked;
  } else if (permanent) {
    ++bounced[index];
  } else {
    ++deferred[index];
  }
}

void ReputationCounters::Merge(const ReputationCounters& other) {
  delivered += other.delivered;
  blocked += other.blocked;
  final_answers += other.final_answers;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    deferred[i] += other.deferred[i];
    bounced[i] += other.bounced[i];
  }
}

bool ReputationCounters::empty() const { return *this == ReputationCounters(); }

// --- Score and options ---

ReputationOptions ReputationOptionsFrom(const ShapingOptions& shaping) {
  ReputationOptions options;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    if (shaping.actions[i].reputation_hit) continue;
    options.deferral_weight[i] = 0;
    options.bounce_weight[i] = 0;
    if (static_cast<ResponseClass>(i) == ResponseClass::kBlocklist) options.block_weight = 0;
  }
  return options;
}

double HealthScore(const ReputationCounters& counters, const ReputationOptions& options) {
  double penalty = options.block_weight * static_cast<double>(counters.blocked);
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    penalty += options.deferral_weight[i] * static_cast<double>(counters.deferred[i]);
    penalty += options.bounce_weight[i] * static_cast<double>(counters.bounced[i]);
  }
  const double delivered = static_cast<double>(counters.delivered);
  const double denominator = delivered + penalty;
  if (denominator <= 0) return 1.0;
  return std::clamp(delivered / denominator, 0.0, 1.0);
}

// --- Calendar ---

int64_t UtcDay(absl::Time t) { return FloorDiv(absl::ToUnixSeconds(t), kSecondsPerDay); }
int64_t UtcHour(absl::Time t) { return FloorDiv(absl::ToUnixSeconds(t), kSecondsPerHour); }
absl::Time NextUtcMidnight(absl::Time t) {
  return absl::FromUnixSeconds((UtcDay(t) + 1) * kSecondsPerDay);
}

// --- PairReputation ---

void PairReputation::Record(ResponseClass response_class, bool permanent, absl::Time now) {
  lifetime_.Add(response_class, permanent);
  last_record_ = std::max(last_record_, now);

  const int64_t hour = UtcHour(now);
  if (hours_.empty() || hour > hours_.back().hour) {
    // A new newest hour: the hours that leave its window go.
    std::erase_if(hours_, [hour](const HourBucket& b) { return b.hour <= hour - kWindowHours; });
    hours_.push_back(HourBucket{.hour = hour, .counters = {}});
    hours_.back().counters.Add(response_class, permanent);
  } else if (hour > hours_.back().hour - kWindowHours) {
    // A late reply within the window: its hour's bucket, made in order if it had none.
    auto at = std::lower_bound(hours_.begin(), hours_.end(), hour,
                               [](const HourBucket& b, int64_t h) { return b.hour < h; });
    if (at == hours_.end() || at->hour != hour) at = hours_.insert(at, HourBucket{.hour = hour, .counters = {}});
    at->counters.Add(response_class, permanent);
  }
  // Otherwise older than the window of the newest reply: lifetime only.

  const int64_t day = UtcDay(now);
  if (day_ == INT64_MIN || day > day_) {
    yesterday_ = (day_ != INT64_MIN && day == day_ + 1) ? today_ : ReputationCounters();
    today_ = ReputationCounters();
    day_ = day;
  }
  if (day == day_) {
    today_.Add(response_class, permanent);
  } else if (day == day_ - 1) {
    yesterday_.Add(response_class, permanent);
  }
}

ReputationCounters PairReputation::LastDay(absl::Time now) const {
  const int64_t hour = UtcHour(now);
  ReputationCounters total;
  for (const HourBucket& bucket : hours_) {
    if (bucket.hour <= hour && bucket.hour > hour - kWindowHours) {
      total.Merge(bucket.counters);
    }
  }
  return total;
}

ReputationCounters PairReputation::Today(absl::Time now) const {
  return day_ != INT64_MIN && UtcDay(now) == day_ ? today_ : ReputationCounters();
}

ReputationCounters PairReputation::Yesterday(absl::Time now) const {
  if (day_ == INT64_MIN) return ReputationCounters();
  const int64_t day = UtcDay(now);
  if (day == day_) return yesterday_;
  if (day == day_ + 1) return today_;
  return ReputationCounters();
}

// Layout (version 1):
//   u8 version = 1
//   varint flags: bit 0 a reply was recorded (last_record and the day follow), others 0
//   [flags & 1] zigzag last_record (Unix µs), zigzag day, counters today, counters yesterday
//   counters lifetime
//   varint n, then n × (zigzag hour, counters): the non-empty buckets within 24 h of the newest
// counters: varint delivered, blocked, final_answers; deferred and bounced as a varint class
// mask followed by the non-zero counts in class order.
std::string PairReputation::Serialize() const {
  std::string out;
  out.push_back(static_cast<char>(kPairVersion));
  const bool recorded = day_ != INT64_MIN;
  PutVarint(out, recorded ? 1 : 0);
  if (recorded) {
    PutVarint(out, ZigZag(absl::ToUnixMicros(last_record_)));
    PutVarint(out, ZigZag(day_));
    PutCounters(out, today_);
    PutCounters(out, yesterday_);
  }
  PutCounters(out, lifetime_);
  // hours_ is in order and within the window of its newest hour already.
  const auto filled = [](const HourBucket& bucket) { return !bucket.counters.empty(); };
  PutVarint(out, static_cast<uint64_t>(std::count_if(hours_.begin(), hours_.end(), filled)));
  for (const HourBucket& bucket : hours_) {
    if (!filled(bucket)) continue;
    PutVarint(out, ZigZag(bucket.hour));
    PutCounters(out, bucket.counters);
  }
  return out;
}

absl::StatusOr<PairReputation> PairReputation::Deserialize(std::string_view bytes) {
  Reader reader(bytes);
  PairReputation state;
  uint8_t version;
  if (!reader.Byte(version)) return Malformed("empty");
  if (version != kPairVersion) return Malformed(absl::StrCat("unknown version ", version));
  uint64_t flags;
  if (!reader.Varint(flags) || (flags & ~uint64_t{1}) != 0) return Malformed("flags");
  if ((flags & 1) != 0) {
    int64_t micros, day;
    if (!reader.Signed(micros) || !reader.Signed(day) || day == INT64_MIN ||
        !ReadCounters(reader, state.today_) || !ReadCounters(reader, state.yesterday_)) {
      return Malformed("day counters");
    }
    state.last_record_ = absl::FromUnixMicros(micros);
    state.day_ = day;
  }
  if (!ReadCounters(reader, state.lifetime_)) return Malformed("lifetime counters");
  uint64_t count;
  if (!reader.Varint(count) || count > kWindowHours) return Malformed("bucket count");
  for (uint64_t i = 0; i < count; ++i) {
    int64_t hour;
    if (!reader.Signed(hour) || hour == INT64_MIN) return Malformed("bucket hour");
    if (!state.hours_.empty() && hour <= state.hours_.back().hour) {
      return Malformed("bucket hours not in increasing order");
    }
    HourBucket& bucket = state.hours_.emplace_back(HourBucket{.hour = hour, .counters = {}});
    if (!ReadCounters(reader, bucket.counters)) return Malformed("bucket counters");
  }
  if (!state.hours_.empty() &&
      state.hours_.front().hour <= state.hours_.back().hour - kWindowHours) {
    return Malformed("buckets span more than the window");
  }
  if (!reader.done()) return Malformed("trailing bytes");
  return state;
}

// Layout (version 1): u8 version = 1, varint flags (bit 0: first_use follows), zigzag first_use
// (Unix µs).
std::string SourceState::Serialize() const {
  std::string out;
  out.push_back(static_cast<char>(kSourceVersion));
  const bool used = first_use != absl::InfinitePast();
  PutVarint(out, used ? 1 : 0);
  if (used) PutVarint(out, ZigZag(absl::ToUnixMicros(first_use)));
  return out;
}

absl::StatusOr<SourceState> SourceState::Deserialize(std::string_view bytes) {
  Reader reader(bytes);
  SourceState state;
  uint8_t version;
  if (!reader.Byte(version)) return Malformed("empty");
  if (version != kSourceVersion) return Malformed(absl::StrCat("unknown version ", version));
  uint64_t flags;
  if (!reader.Varint(flags) || (flags & ~uint64_t{1}) != 0) return Malformed("flags");
  if ((flags & 1) != 0) {
    int64_t micros;
    if (!reader.Signed(micros)) return Malformed("first use");
    state.first_use = absl::FromUnixMicros(micros);
  }
  if (!reader.done()) return Malformed("trailing bytes");
  return state;
}

const WarmupPlan* FindWarmupPlan(const ShapingOptions& shaping, std::string_view pool) {
  for (const auto& [pool_name, plan_name] : shaping.pool_warmup) {
    if (pool_name != pool) continue;
    for (const WarmupPlan& plan : shaping.warmup_plans) {
      if (plan.name == plan_name) return &plan;
    }
    return nullptr;
  }
  return nullptr;
}

// --- Reputation ---

Reputation::Reputation(ReputationOptions options) : options_(std::move(options)) {}

void Reputation::Record(std::string_view source, std::string_view site,
                        ResponseClass response_class, bool permanent, absl::Time now) {
  absl::MutexLock lock(&mutex_);
  const PairView view = ViewOf(source, site);
  auto pair = pairs_.find(view);
  if (pair == pairs_.end()) pair = pairs_.try_emplace(PairKey(source, site)).first;
  pair->second.Record(response_class, permanent, now);
  if (!dirty_pairs_.contains(view)) dirty_pairs_.insert(pair->first);
  auto state = sources_.find(view.first);
  if (state == sources_.end()) state = sources_.try_emplace(std::string(source)).first;
  // The earliest reply seen (replies of one moment may be recorded out of order).
  if (state->second.first_use == absl::InfinitePast() || now < state->second.first_use) {
    state->second.first_use = now;
    dirty_sources_.insert(state->first);
  }
}

double Reputation::Health(std::string_view source, std::string_view site, absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  auto it = pairs_.find(ViewOf(source, site));
  if (it == pairs_.end()) return 1.0;
  return HealthScore(it->second.LastDay(now), options_);
}

std::optional<uint32_t> Reputation::WarmupDayLocked(std::string_view source,
                                                    absl::Time now) const {
  auto it = sources_.find(absl::string_view(source.data(), source.size()));
  if (it == sources_.end() || it->second.first_use == absl::InfinitePast()) return std::nullopt;
  const int64_t day = UtcDay(now) - UtcDay(it->second.first_use) + 1;
  // A first use "in the future" (the clock stepped back) is still day 1.
  return static_cast<uint32_t>(
      std::clamp<int64_t>(day, 1, std::numeric_limits<uint32_t>::max()));
}

std::optional<uint32_t> Reputation::WarmupDay(std::string_view source, absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  return WarmupDayLocked(source, now);
}

std::optional<uint32_t> Reputation::WarmupCap(std::string_view source, const WarmupPlan* plan,
                                              std::string_view site, absl::Time now) const {
  const std::optional<WarmupStanding> standing = Warmup(source, plan, site, now);
  if (!standing.has_value()) return std::nullopt;
  return standing->cap;
}

uint32_t Reputation::SentTodayLocked(std::string_view source, std::string_view site,
                                     absl::Time now) const {
  auto it = pairs_.find(ViewOf(source, site));
  if (it == pairs_.end()) return 0;
  return ClampToU32(it->second.Today(now).final_answers);
}

uint32_t Reputation::SentToday(std::string_view source, std::string_view site,
                               absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  return SentTodayLocked(source, site, now);
}

std::optional<std::pair<uint32_t, uint32_t>> Reputation::DayAndCapLocked(
    std::string_view source, const WarmupPlan* plan, absl::Time now) const {
  // The cap is the same for every site of the source (the plan is per pool); what it limits is
  // the traffic of one (source, site) pair.
  if (plan == nullptr) return std::nullopt;
  const uint32_t day = WarmupDayLocked(source, now).value_or(1);
  if (day > plan->daily_caps.size()) return std::nullopt;
  return std::make_pair(day, plan->daily_caps[day - 1]);
}

std::optional<WarmupStanding> Reputation::Warmup(std::string_view source, const WarmupPlan* plan,
                                                 std::string_view site, absl::Time now) const {
  if (plan == nullptr) return std::nullopt;
  absl::ReaderMutexLock lock(&mutex_);
  const std::optional<std::pair<uint32_t, uint32_t>> capped = DayAndCapLocked(source, plan, now);
  if (!capped.has_value()) return std::nullopt;
  return WarmupStanding{capped->first, capped->second, SentTodayLocked(source, site, now)};
}

std::vector<Reputation::WarmupReport> Reputation::WarmupReports(
    absl::FunctionRef<const WarmupPlan*(const std::string& source)> plan_of,
    absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  std::vector<WarmupReport> reports;
  for (const auto& [key, state] : pairs_) {
    const std::optional<std::pair<uint32_t, uint32_t>> capped =
        DayAndCapLocked(key.first, plan_of(key.first), now);
    if (!capped.has_value()) continue;
    reports.push_back({key.first, key.second,
                       {capped->first, capped->second,
                        ClampToU32(state.Today(now).final_answers)}});
  }
  return reports;
}

void Reputation::SetFirstUse(std::string_view source, absl::Time first_use) {
  absl::MutexLock lock(&mutex_);
  sources_[std::string(source)].first_use = first_use;
  dirty_sources_.insert(std::string(source));
}

std::optional<absl::Time> Reputation::FirstUse(std::string_view source) const {
  absl::ReaderMutexLock lock(&mutex_);
  auto it = sources_.find(absl::string_view(source.data(), source.size()));
  if (it == sources_.end() || it->second.first_use == absl::InfinitePast()) return std::nullopt;
  return it->second.first_use;
}

std::vector<PairReport> Reputation::Report(absl::Time now) const {
  absl::ReaderMutexLock lock(&mutex_);
  std::vector<PairReport> reports;
  reports.reserve(pairs_.size());
  for (const auto& [key, state] : pairs_) {
    PairReport report;
    report.source = key.first;
    report.site = key.second;
    report.last_day = state.LastDay(now);
    report.today = state.Today(now);
    report.lifetime = state.lifetime();
    report.health = HealthScore(report.last_day, options_);
    report.warmup_day = WarmupDayLocked(key.first, now);
    report.last_record = state.last_record();
    reports.push_back(std::move(report));
  }
  std::sort(reports.begin(), reports.end(), [](const PairReport& a, const PairReport& b) {
    return std::tie(a.source, a.site) < std::tie(b.source, b.site);
  });
  return reports;
}

size_t Reputation::pair_count() const {
  absl::ReaderMutexLock lock(&mutex_);
  return pairs_.size();
}

ReputationDelta Reputation::TakeDirty() {
  absl::MutexLock lock(&mutex_);
  ReputationDelta delta;
  delta.pairs.reserve(dirty_pairs_.size());
  for (const PairKey& key : dirty_pairs_) {
    auto it = pairs_.find(key);
    if (it == pairs_.end()) continue;
    delta.pairs.push_back({key.first, key.second, it->second.Serialize()});
  }
  for (const std::string& source : dirty_sources_) {
    auto it = sources_.find(source);
    if (it == sources_.end()) continue;
    delta.sources.push_back({source, it->second.Serialize()});
  }
  dirty_pairs_.clear();
  dirty_sources_.clear();
  return delta;
}

void Reputation::Redirty(const ReputationDelta& delta) {
  absl::MutexLock lock(&mutex_);
  for (const ReputationDelta::Pair& pair : delta.pairs) {
    dirty_pairs_.insert(PairKey(pair.source, pair.site));
  }
  for (const ReputationDelta::Source& source : delta.sources) dirty_sources_.insert(source.source);
}

absl::Status Reputation::RestorePair(std::string_view source, std::string_view site,
                                     std::string_view value) {
  absl::StatusOr<PairReputation> state = PairReputation::Deserialize(value);
  if (!state.ok()) return state.status();
  absl::MutexLock lock(&mutex_);
  pairs_[PairKey(source, site)] = *std::move(state);
  return absl::OkStatus();
}

absl::Status Reputation::RestoreSource(std::string_view source, std::string_view value) {
  absl::StatusOr<SourceState> state = SourceState::Deserialize(value);
  if (!state.ok()) return state.status();
  absl::MutexLock lock(&mutex_);
  sources_[std::string(source)] = *std::move(state);
  return absl::OkStatus();
}

std::optional<PairReputation> Reputation::Pair(std::string_view source, std::string_view site) const {
  absl::ReaderMutexLock lock(&mutex_);
  auto it = pairs_.find(ViewOf(source, site));
  if (it == pairs_.end()) return std::nullopt;
  return it->second;
}

}  // namespace facteur::throttle
