// File: throttle/site_throttle.cc
// PairThrottle (admission, AIMD backoff, bounded suspensions), ChooseSource, GreylistRetryDelay.
#include "throttle/site_throttle.h"

#include <algorithm>
#include <cmath>

namespace facteur::throttle {
namespace {

constexpr double kMinutesPerHour = 60;
constexpr double kMinutesPerDay = 24 * 60;
// However options combine, a cut never takes a rate below one message a day: a rate of 0 would
// read as "no limit".
constexpr double kLowestRatePerMinute = 1.0 / kMinutesPerDay;

// A fraction from the options, forced into [0, 1] (NaN: 0).
double Fraction(double x) { return x > 0 ? std::min(x, 1.0) : 0.0; }

size_t Index(ResponseClass c) { return static_cast<size_t>(c); }

}  // namespace

std::string_view PairStateName(PairState state) {
  switch (state) {
    case PairState::kNormal:
      return "normal";
    case PairState::kBackoff:
      return "backoff";
    case PairState::kSuspended:
      return "suspended";
  }
  return "unknown";
}

PairOptions PairOptions::From(const SiteLimits& limits, const ShapingOptions& shaping,
                              const SiteOptions* site) {
  PairOptions options;
  options.limits = limits;
  options.backoff = shaping.backoff;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    options.actions[i] = site != nullptr && site->actions[i].has_value() ? *site->actions[i]
                                                                          : shaping.actions[i];
  }
  return options;
}

PairThrottle::PairThrottle(const PairOptions& options)
    : options_(options),
      messages_minute_(options.limits.messages_per_minute, absl::Minutes(1)),
      messages_hour_(options.limits.messages_per_hour, absl::Hours(1)),
      messages_day_(options.limits.messages_per_day, absl::Hours(24)),
      connections_minute_(options.limits.connections_per_minute, absl::Minutes(1)),
      connections_hour_(options.limits.connections_per_hour, absl::Hours(1)),
      nominal_connections_(options.limits.max_connections > 0 ? options.limits.max_connections
                                                              : kUnlimitedConnections),
      connection_target_(nominal_connections_),
      current_connections_(nominal_connections_) {
  // The strictest configured message rate, per minute.
  const SiteLimits& l = options.limits;
  for (const double rate : {static_cast<double>(l.messages_per_minute),
                            l.messages_per_hour / kMinutesPerHour,
                            l.messages_per_day / kMinutesPerDay}) {
    if (rate > 0 && (nominal_rate_ == 0 || rate < nominal_rate_)) nominal_rate_ = rate;
  }
  rate_target_ = nominal_rate_;
  current_rate_ = nominal_rate_;
}

void PairThrottle::SetOptions(const PairOptions& options, absl::Time now) {
  options_ = options;
  const SiteLimits& l = options_.limits;
  messages_hour_.SetRate(l.messages_per_hour, now);
  messages_day_.SetRate(l.messages_per_day, now);
  connections_minute_.SetRate(l.connections_per_minute, now);
  connections_hour_.SetRate(l.connections_per_hour, now);

  nominal_rate_ = 0;
  for (const double rate : {static_cast<double>(l.messages_per_minute),
                            l.messages_per_hour / kMinutesPerHour,
                            l.messages_per_day / kMinutesPerDay}) {
    if (rate > 0 && (nominal_rate_ == 0 || rate < nominal_rate_)) nominal_rate_ = rate;
  }
  if (!rate_cut_) {
    rate_target_ = nominal_rate_;
    current_rate_ = nominal_rate_;
    messages_minute_.SetRate(l.messages_per_minute, now);
  } else {
    // Still recovering: toward the new nominal (or the observed rate of an unlimited site),
    // never from above it.
    if (nominal_rate_ > 0) rate_target_ = nominal_rate_;
    current_rate_ = std::min(current_rate_, rate_target_);
    messages_minute_.SetRate(current_rate_, now);
  }

  const uint32_t nominal = l.max_connections > 0 ? l.max_connections : kUnlimitedConnections;
  const bool capped = current_connections_ < connection_target_ ||
                      connection_target_ != nominal_connections_;
  nominal_connections_ = nominal;
  if (!capped) {
    connection_target_ = nominal;
    current_connections_ = nominal;
  } else {
    if (nominal != kUnlimitedConnections) connection_target_ = nominal;
    current_connections_ = std::min(current_connections_, connection_target_);
  }
}

// --- Admission -----------------------------------------------------------------------------

absl::Time PairThrottle::ConnectionEligibleAt(absl::Time now) const {
  if (open_connections_ >= current_connections_) return absl::InfiniteFuture();
  return ConnectionRateEligibleAt(now);
}

absl::Time PairThrottle::ConnectionRateEligibleAt(absl::Time) const {
  return std::max({suspended_until_, connections_minute_.NextEligible(),
                   connections_hour_.NextEligible()});
}

absl::Time PairThrottle::MessageEligibleAt(absl::Time) const {
  return std::max({suspended_until_, messages_minute_.NextEligible(),
                   messages_hour_.NextEligible(), messages_day_.NextEligible()});
}

absl::Time PairThrottle::MayOpenConnection(absl::Time now) {
  const absl::Time at = ConnectionEligibleAt(now);
  NoteWaiting(now, at);
  return at;
}

absl::Time PairThrottle::MayStartMessage(absl::Time now) {
  const absl::Time at = MessageEligibleAt(now);
  NoteWaiting(now, at);
  return at;
}

// --- Events --------------------------------------------------------------------------------

void PairThrottle::OnConnectionOpened(absl::Time now) {
  ++open_connections_;
  ++counters_.connections_opened;
  connections_minute_.Acquire(now);
  connections_hour_.Acquire(now);
  CloseWait(now);
}

void PairThrottle::OnConnectionTakenOver(absl::Time now) {
  ++open_connections_;
  CloseWait(now);
}

void PairThrottle::OnConnectionClosed(absl::Time now) {
  if (open_connections_ > 0) --open_connections_;
  // A wait for a free connection slot ends here, or when the connection rates next allow one.
  if (wait_from_ != absl::InfinitePast() && wait_until_ == absl::InfiniteFuture()) {
    wait_until_ = std::max(now, ConnectionEligibleAt(now));
  }
}

void PairThrottle::OnMessageStarted(absl::Time now) {
  ++counters_.messages_started;
  messages_minute_.Acquire(now);
  messages_hour_.Acquire(now);
  messages_day_.Acquire(now);
  CloseWait(now);
  absl::Duration into_minute;
  const int64_t minute = absl::IDivDuration(now - absl::UnixEpoch(), absl::Minutes(1),
                                            &into_minute);
  if (minute != observed_minute_) {
    observed_previous_minute_ = minute == observed_minute_ + 1 ? observed_this_minute_ : 0;
    observed_this_minute_ = 0;
    observed_minute_ = minute;
  }
  ++observed_this_minute_;
}

void PairThrottle::OnReply(ResponseClass reply_class, absl::Time now,
                           std::optional<absl::Duration> announced) {
  if (reply_class == ResponseClass::kSuccess) {
    OnDelivered(now);
    return;
  }
  ++counters_.replies[Index(reply_class)];
  // Greylisting concerns one (IP, sender, recipient) triplet, not the pair: never a reason to
  // slow it (providers.md §3, point 4).
  if (reply_class == ResponseClass::kGreylist) return;
  const ClassAction& action = options_.actions[Index(reply_class)];
  if (action.reputation_hit) ++counters_.reputation_hits;
  const bool was_suspended = suspended(now);
  bool acted = false;
  if (action.suspend > absl::ZeroDuration()) {
    Suspend(reply_class, std::max(action.suspend, announced.value_or(absl::ZeroDuration())), now);
    acted = true;
  }
  if (action.rate_factor < 1) {
    // A reply during a pause answers a message sent before it, at the rate already cut for.
    if (!was_suspended) {
      LearnCeiling(now);
      CutRate(action.rate_factor, now);
      // The cut alone may leave the rate above what the site just said it takes.
      const double ceiling = Ceiling(now);
      if (rate_cut_ && ceiling > 0 && current_rate_ > ceiling) {
        current_rate_ = ceiling;
        messages_minute_.SetRate(current_rate_, now);
      }
    }
    acted = true;
  }
  if (action.max_connections > 0) {
    CapConnections(action.max_connections);
    acted = true;
  }
  if (action.prefer_other_source) {
    prefer_other_source_ = true;
    acted = true;
  }
  if (acted) {
    in_backoff_ = true;
    recovery_held_until_ = std::max(recovery_held_until_, now + action.hold);
  }
}

void PairThrottle::OnDelivered(absl::Time now) {
  ++counters_.deliveries;
  ++counters_.replies[Index(ResponseClass::kSuccess)];
  // A delivery during a pause answers a message sent before it: no evidence that the site
  // accepts more again.
  if (suspended(now)) return;
  prefer_other_source_ = false;
  if (now < recovery_held_until_) return;
  if (rate_cut_) {
    current_rate_ += options_.backoff.recovery_step * rate_target_;
    // Under a learned ceiling the climb stops there until the ceiling is forgotten (the
    // connections still come back: the ceiling is a rate).
    const double ceiling = Ceiling(now);
    if (ceiling > 0 && ceiling < rate_target_ && current_rate_ >= ceiling) {
      current_rate_ = ceiling;
      messages_minute_.SetRate(current_rate_, now);
    } else if (current_rate_ >= rate_target_ * (1 - 1e-9)) {
      // Relative tolerance: ten steps of 0.1 add up to 0.9999999999999999 in binary.
      rate_cut_ = false;
      // Back at nominal: the per-minute limiter returns to the configured rate (or to none).
      rate_target_ = nominal_rate_;
      current_rate_ = nominal_rate_;
      messages_minute_.SetRate(options_.limits.messages_per_minute, now);
    } else {
      messages_minute_.SetRate(current_rate_, now);
    }
  }
  if (current_connections_ < connection_target_) {
    ++current_connections_;
    if (current_connections_ >= connection_target_) {
      connection_target_ = nominal_connections_;
      current_connections_ = nominal_connections_;
    }
  }
  if (!rate_cut_ && current_connections_ == nominal_connections_) in_backoff_ = false;
}

void PairThrottle::Suspend(ResponseClass reply_class, absl::Duration duration, absl::Time now) {
  const absl::Duration longest = options_.backoff.max_suspension;
  if (suspended(now)) {
    // Extend, but never past the bound fixed when this suspension began: a site answering
    // every reply with "try later" must not keep the pair paused forever.
    const absl::Time until =
        std::min(std::max(suspended_until_, now + duration), suspension_began_ + longest);
    if (until > suspended_until_) {
      suspended_until_ = until;
      suspension_class_ = reply_class;
      ++counters_.suspension_extensions;
    }
    return;
  }
  const absl::Time until = now + std::min(duration, longest);
  if (until <= now) return;
  suspension_began_ = now;
  suspended_until_ = until;
  suspension_class_ = reply_class;
  manual_ = false;
  ++counters_.suspensions[Index(reply_class)];
}

void PairThrottle::SuspendManually(absl::Time now, absl::Time until) {
  if (until <= now) return;
  if (!suspended(now)) {
    suspension_began_ = now;
    suspension_class_.reset();
  }
  if (until > suspended_until_ || !suspended(now)) {
    suspended_until_ = until;
    manual_ = true;
  }
}

bool PairThrottle::Resume(absl::Time now) {
  if (!suspended(now)) return false;
  suspended_until_ = now;
  manual_ = false;
  CloseWait(now);
  return true;
}

void PairThrottle::RestoreSuspension(absl::Time began, absl::Time until, ResponseClass cause) {
  suspension_began_ = began;
  suspended_until_ = until;
  suspension_class_ = cause;
  manual_ = false;
  in_backoff_ = true;  // as after the reply itself: normal again with the first delivery
  if (options_.actions[Index(cause)].prefer_other_source) prefer_other_source_ = true;
}

std::optional<PairBackoff> PairThrottle::Backoff(absl::Time now) const {
  PairBackoff backoff;
  if (rate_cut_) {
    backoff.rate = current_rate_;
    backoff.rate_target = rate_target_;
  }
  if (current_connections_ < connection_target_) {
    backoff.connections = current_connections_;
    backoff.connection_target = connection_target_;
  }
  if (Ceiling(now) > 0) {
    backoff.ceiling = learned_ceiling_;
    backoff.ceiling_until = ceiling_until_;
  }
  if (recovery_held_until_ > now) backoff.hold_until = recovery_held_until_;
  if (backoff == PairBackoff()) return std::nullopt;
  return backoff;
}

void PairThrottle::RestoreBackoff(const PairBackoff& backoff, absl::Time now) {
  if (backoff.rate > 0) {
    // Recovery climbs back to today's nominal rate; a site with none climbs to the observed
    // rate the cut started from, as before the restart.
    const double target = nominal_rate_ > 0 ? nominal_rate_ : backoff.rate_target;
    if (backoff.rate < target) {
      rate_target_ = target;
      current_rate_ = backoff.rate;
      rate_cut_ = true;
      messages_minute_.SetRate(current_rate_, now);
    }
  }
  if (backoff.connections > 0 && backoff.connections < current_connections_) {
    if (nominal_connections_ == kUnlimitedConnections) {
      connection_target_ = std::max(backoff.connection_target, backoff.connections + 1);
    }
    current_connections_ = backoff.connections;
  }
  if (backoff.ceiling > 0 && backoff.ceiling_until > now) {
    learned_ceiling_ = backoff.ceiling;
    ceiling_until_ = backoff.ceiling_until;
  }
  recovery_held_until_ = std::max(recovery_held_until_, backoff.hold_until);
  if (rate_cut_ || current_connections_ < connection_target_) in_backoff_ = true;
}

void PairThrottle::CutRate(double factor, absl::Time now) {
  // The first cut of an episode starts from the nominal rate, or from what the pair was
  // actually sending when the site configures none (the cut must slow something down).
  const bool first = !rate_cut_;
  const double target =
      !first ? rate_target_ : nominal_rate_ > 0 ? nominal_rate_ : std::max(ObservedRate(now), 1.0);
  const double base = first ? target : current_rate_;
  const double floor = std::min(
      target, std::max(Fraction(options_.backoff.min_rate_fraction) * target, kLowestRatePerMinute));
  const double rate = std::max(base * Fraction(factor), floor);
  if (rate >= base) return;  // nothing to cut: already at the floor
  rate_target_ = target;
  current_rate_ = rate;
  rate_cut_ = true;
  messages_minute_.SetRate(current_rate_, now);
  ++counters_.rate_cuts;
}

void PairThrottle::CapConnections(uint32_t cap) {
  if (cap >= current_connections_) return;
  if (nominal_connections_ == kUnlimitedConnections &&
      connection_target_ == kUnlimitedConnections) {
    // An unlimited pair recovers up to what it had open when capped, then is unlimited again.
    connection_target_ = std::max(open_connections_, cap + 1);
  }
  current_connections_ = cap;
  ++counters_.connection_caps;
}

void PairThrottle::LearnCeiling(absl::Time now) {
  // Providers count per minute of their clock: what this calendar minute saw says best where
  // the limit was crossed; early in a minute the sliding estimate over the last 60 s stands in.
  const int64_t minute = absl::ToInt64Minutes(now - absl::UnixEpoch());
  const double this_minute = minute == observed_minute_ ? observed_this_minute_ : 0;
  const double observed = this_minute >= kMinCeilingSample ? this_minute : ObservedRate(now);
  // A handful of messages says nothing about the site's limit (the complaint may be about the
  // IP's traffic as a whole): nothing to learn from them.
  if (observed < kMinCeilingSample) return;
  const double ceiling = std::max(kCeilingShare * observed, kLowestRatePerMinute);
  learned_ceiling_ = Ceiling(now) > 0 ? std::min(learned_ceiling_, ceiling) : ceiling;
  ceiling_until_ = now + options_.backoff.rate_memory;
}

double PairThrottle::Ceiling(absl::Time now) const {
  return now < ceiling_until_ ? learned_ceiling_ : 0;
}

double PairThrottle::ObservedRate(absl::Time now) const {
  // Sliding window over two calendar minutes: this minute's count plus the previous minute's,
  // weighted by the part of it still inside the last 60 seconds.
  absl::Duration into_minute;
  const int64_t minute = absl::IDivDuration(now - absl::UnixEpoch(), absl::Minutes(1),
                                            &into_minute);
  const double remaining = 1.0 - absl::FDivDuration(into_minute, absl::Minutes(1));
  if (minute == observed_minute_) {
    return observed_this_minute_ + observed_previous_minute_ * remaining;
  }
  if (minute == observed_minute_ + 1) return observed_this_minute_ * remaining;
  return 0;
}

// --- Throttled time ------------------------------------------------------------------------

void PairThrottle::NoteWaiting(absl::Time now, absl::Time until) {
  if (until <= now) return;
  if (wait_from_ != absl::InfinitePast() && now <= wait_until_) {
    // The same wait goes on: work waits until every limit that holds it is lifted.
    wait_until_ = std::max(wait_until_, until);
    return;
  }
  CloseWait(now);
  wait_from_ = now;
  wait_until_ = until;
}

void PairThrottle::CloseWait(absl::Time now) {
  if (wait_from_ == absl::InfinitePast()) return;
  throttled_ += std::max(absl::ZeroDuration(), std::min(now, wait_until_) - wait_from_);
  wait_from_ = absl::InfinitePast();
  wait_until_ = absl::InfinitePast();
}

absl::Duration PairThrottle::throttled_time(absl::Time now) const {
  if (wait_from_ == absl::InfinitePast()) return throttled_;
  return throttled_ + std::max(absl::ZeroDuration(), std::min(now, wait_until_) - wait_from_);
}

PairState PairThrottle::state(absl::Time now) const {
  if (suspended(now)) return PairState::kSuspended;
  return in_backoff_ ? PairState::kBackoff : PairState::kNormal;
}

// --- Source choice -------------------------------------------------------------------------

namespace {

absl::Time UsableAt(const PairThrottle& pair, absl::Time now) {
  return std::max(pair.ConnectionEligibleAt(now), pair.MessageEligibleAt(now));
}

// Whether `a` is less loaded than `b`: open / max compared by cross-multiplication (both
// factors below 2^32, so the products fit), then fewer connections open.
bool LessLoaded(const PairThrottle& a, const PairThrottle& b) {
  const uint64_t lhs = uint64_t{a.open_connections()} * b.current_max_connections();
  const uint64_t rhs = uint64_t{b.open_connections()} * a.current_max_connections();
  if (lhs != rhs) return lhs < rhs;
  return a.open_connections() < b.open_connections();
}

}  // namespace

SourceChoice ChooseSource(std::span<const SourceCandidate> candidates, absl::Time now,
                          std::optional<std::string_view> pinned) {
  if (pinned.has_value()) {
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (candidates[i].name != *pinned || candidates[i].pair == nullptr) continue;
      PairThrottle& pair = *candidates[i].pair;
      const absl::Time at = UsableAt(pair, now);
      if (at <= now) return SourceChoice{.source = i, .eligible_at = now};
      pair.NoteWaiting(now, at);
      return SourceChoice{.source = std::nullopt, .eligible_at = at};
    }
  }
  // Sources asking to be avoided (blocklisted) stand aside while any other is not suspended.
  bool any_preferred = false;
  for (const SourceCandidate& c : candidates) {
    if (c.pair != nullptr && !c.pair->suspended(now) && !c.pair->prefers_other_source()) {
      any_preferred = true;
    }
  }
  auto considered = [&](const PairThrottle& pair) {
    return pair.suspended(now) || !any_preferred || !pair.prefers_other_source();
  };
  std::optional<size_t> best;
  absl::Time earliest = absl::InfiniteFuture();
  for (size_t i = 0; i < candidates.size(); ++i) {
    const PairThrottle* pair = candidates[i].pair;
    if (pair == nullptr || !considered(*pair)) continue;
    const absl::Time at = UsableAt(*pair, now);
    if (at > now) {
      earliest = std::min(earliest, at);
    } else if (!best.has_value() || LessLoaded(*pair, *candidates[*best].pair)) {
      best = i;
    }
  }
  if (best.has_value()) return SourceChoice{.source = best, .eligible_at = now};
  for (const SourceCandidate& c : candidates) {
    if (c.pair != nullptr && considered(*c.pair)) c.pair->NoteWaiting(now, earliest);
  }
  return SourceChoice{.source = std::nullopt, .eligible_at = earliest};
}

// --- Greylisting ---------------------------------------------------------------------------

absl::Duration GreylistRetryDelay(const GreylistOptions& options, uint32_t greylisted_times,
                                  std::optional<absl::Duration> announced) {
  if (announced.has_value()) {
    return std::min(std::max(*announced, absl::Minutes(1)), options.max_delay);
  }
  // In seconds as a double, as in RetryPolicy: backoff^(n-1) leaves every integer type after a
  // few dozen greylistings, a double only goes to infinity, which the cap catches.
  const double cap = std::max(0.0, absl::ToDoubleSeconds(options.max_delay));
  const uint32_t n = std::max<uint32_t>(greylisted_times, 1);
  double delay = absl::ToDoubleSeconds(options.first_delay) *
                 std::pow(options.backoff, static_cast<double>(n - 1));
  if (!(delay <= cap)) delay = cap;
  return absl::Seconds(std::max(0.0, delay));
}

}  // namespace facteur::throttle
