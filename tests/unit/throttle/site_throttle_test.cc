// PairThrottle, ChooseSource, GreylistRetryDelay: exact next-eligible times (an event-driven
// caller never polls), hour and day caps, rate-limit → suspension, cut and additive recovery
// back to nominal, too-many-connections → one connection then recovery, blocklist → the source
// stands aside for hours and the selector routes around it, bounded suspensions, greylisting
// leaving the pair untouched, pinned sources, throttled-time accounting.
#include "throttle/site_throttle.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

// A calendar hour (hence minute) boundary: 1'800'000'000 = 500'000 × 3600.
const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

constexpr size_t Idx(ResponseClass c) { return static_cast<size_t>(c); }

int64_t Calendar(absl::Time t, absl::Duration unit) {
  absl::Duration remainder;
  return absl::IDivDuration(t - absl::UnixEpoch(), unit, &remainder);
}

PairOptions Options(const SiteLimits& limits) {
  PairOptions options;
  options.limits = limits;
  ClassAction& rate_limit = options.actions[Idx(ResponseClass::kRateLimit)];
  rate_limit.suspend = absl::Minutes(15);
  rate_limit.rate_factor = 0.5;
  options.actions[Idx(ResponseClass::kTooManyConnections)].max_connections = 1;
  ClassAction& blocklist = options.actions[Idx(ResponseClass::kBlocklist)];
  blocklist.suspend = absl::Hours(4);
  blocklist.prefer_other_source = true;
  // Configured to do everything: greylisting must still do nothing to the pair.
  ClassAction& greylist = options.actions[Idx(ResponseClass::kGreylist)];
  greylist.suspend = absl::Hours(1);
  greylist.rate_factor = 0.5;
  greylist.max_connections = 1;
  greylist.prefer_other_source = true;
  greylist.reputation_hit = false;
  return options;
}

SiteLimits Limits(uint32_t messages_per_minute, uint32_t max_connections = 2) {
  SiteLimits limits;
  limits.messages_per_minute = messages_per_minute;
  limits.max_connections = max_connections;
  return limits;
}

// Starts a message at every time the pair allows, jumping straight to the time it names (as a
// timer would), and checks that the named time is honoured: allowed then.
std::vector<absl::Time> SendGreedily(PairThrottle& pair, absl::Time from, absl::Time to) {
  std::vector<absl::Time> starts;
  absl::Time now = from;
  while (true) {
    now = std::max(now, pair.MayStartMessage(now));
    if (now >= to) break;
    EXPECT_LE(pair.MayStartMessage(now), now);
    pair.OnMessageStarted(now);
    starts.push_back(now);
  }
  return starts;
}

// Starts `count` messages from `from`, each as soon as the pair allows; the last start's time.
absl::Time StartAtItsPace(PairThrottle& pair, absl::Time from, int count) {
  absl::Time now = from;
  for (int i = 0; i < count; ++i) {
    now = std::max(now, pair.MayStartMessage(now));
    pair.OnMessageStarted(now);
  }
  return now;
}

std::map<int64_t, int> CountPer(const std::vector<absl::Time>& times, absl::Duration unit) {
  std::map<int64_t, int> counts;
  for (const absl::Time t : times) ++counts[Calendar(t, unit)];
  return counts;
}

TEST(PairThrottleTest, NextEligibleTimesAreExactAndTheMinuteRateHolds) {
  PairThrottle pair(Options(Limits(60)));
  EXPECT_LE(pair.MayStartMessage(kT0), kT0);
  pair.OnMessageStarted(kT0);
  EXPECT_EQ(pair.MayStartMessage(kT0), kT0 + absl::Seconds(1));
  EXPECT_EQ(pair.MayStartMessage(kT0 + absl::Milliseconds(999)), kT0 + absl::Seconds(1));
  EXPECT_LE(pair.MayStartMessage(kT0 + absl::Seconds(1)), kT0 + absl::Seconds(1));

  PairThrottle greedy(Options(Limits(7)));
  const absl::Time from = kT0 + absl::Seconds(13);
  const std::vector<absl::Time> starts = SendGreedily(greedy, from, from + absl::Hours(1));
  EXPECT_EQ(starts.size(), 7u * 60);
  for (const auto& [minute, n] : CountPer(starts, absl::Minutes(1))) {
    ASSERT_LE(n, 7) << "minute " << minute;
  }
  EXPECT_EQ(greedy.state(from), PairState::kNormal);
  EXPECT_EQ(greedy.current_message_rate(), 7);
}

TEST(PairThrottleTest, HourAndDayCapsHoldInEveryCalendarHourAndDay) {
  SiteLimits hourly = Limits(0);
  hourly.messages_per_hour = 120;
  PairThrottle per_hour(Options(hourly));
  EXPECT_DOUBLE_EQ(per_hour.current_message_rate(), 2);  // per minute
  const absl::Time from = kT0 + absl::Minutes(7);
  const std::vector<absl::Time> hour_starts = SendGreedily(per_hour, from, from + absl::Hours(5));
  EXPECT_EQ(hour_starts.size(), 5u * 120);
  for (const auto& [hour, n] : CountPer(hour_starts, absl::Hours(1))) {
    ASSERT_LE(n, 120) << "hour " << hour;
  }
  EXPECT_EQ(hour_starts[1] - hour_starts[0], absl::Seconds(30));

  SiteLimits daily = Limits(0);
  daily.messages_per_day = 100;
  PairThrottle per_day(Options(daily));
  const std::vector<absl::Time> day_starts =
      SendGreedily(per_day, from, from + absl::Hours(24 * 3));
  EXPECT_EQ(day_starts.size(), 300u);
  for (const auto& [day, n] : CountPer(day_starts, absl::Hours(24))) {
    ASSERT_LE(n, 100) << "day " << day;
  }

  // Several rates: the strictest rules (1000 an hour is 16.7 a minute, under 100 a minute).
  SiteLimits both = Limits(100);
  both.messages_per_hour = 1000;
  PairThrottle strictest(Options(both));
  EXPECT_NEAR(strictest.current_message_rate(), 1000.0 / 60, 1e-9);
  const std::vector<absl::Time> starts = SendGreedily(strictest, kT0, kT0 + absl::Hours(2));
  EXPECT_EQ(starts.size(), 2000u);
  for (const auto& [minute, n] : CountPer(starts, absl::Minutes(1))) {
    ASSERT_LE(n, 17) << "minute " << minute;
  }
  for (const auto& [hour, n] : CountPer(starts, absl::Hours(1))) {
    ASSERT_LE(n, 1000) << "hour " << hour;
  }
}

TEST(PairThrottleTest, ATakenOverConnectionCountsAsOpenButCostsNoConnectionRate) {
  SiteLimits limits = Limits(0, 2);
  limits.connections_per_minute = 6;
  PairThrottle pair(Options(limits));
  // Another destination's idle connection: open for this pair, yet no new connection reached
  // the server, so the next new one may open at once.
  pair.OnConnectionTakenOver(kT0);
  EXPECT_EQ(pair.open_connections(), 1u);
  EXPECT_LE(pair.MayOpenConnection(kT0), kT0);
  EXPECT_EQ(pair.counters().connections_opened, 0u);
  pair.OnConnectionOpened(kT0);
  EXPECT_EQ(pair.open_connections(), 2u);
  // The concurrency limit counts both.
  EXPECT_EQ(pair.MayOpenConnection(kT0 + absl::Minutes(5)), absl::InfiniteFuture());
  pair.OnConnectionClosed(kT0 + absl::Minutes(5));
  EXPECT_EQ(pair.open_connections(), 1u);
}

TEST(PairThrottleTest, ConnectionsAreLimitedByConcurrencyAndRate) {
  SiteLimits limits = Limits(0, 2);
  limits.connections_per_minute = 6;
  PairThrottle pair(Options(limits));
  EXPECT_LE(pair.MayOpenConnection(kT0), kT0);
  pair.OnConnectionOpened(kT0);
  EXPECT_EQ(pair.MayOpenConnection(kT0), kT0 + absl::Seconds(10));
  pair.OnConnectionOpened(kT0 + absl::Seconds(10));
  EXPECT_EQ(pair.open_connections(), 2u);
  // Both open: only a close can allow a third, which the rate would allow 10 s after the
  // second.
  EXPECT_EQ(pair.MayOpenConnection(kT0 + absl::Minutes(5)), absl::InfiniteFuture());
  EXPECT_EQ(pair.ConnectionRateEligibleAt(kT0 + absl::Seconds(15)), kT0 + absl::Seconds(20));
  pair.OnConnectionClosed(kT0 + absl::Minutes(5));
  EXPECT_LE(pair.MayOpenConnection(kT0 + absl::Minutes(5)), kT0 + absl::Minutes(5));
  EXPECT_EQ(pair.max_messages_per_connection(), 50u);
  EXPECT_EQ(pair.max_recipients_per_message(), 50u);

  SiteLimits hourly = Limits(0, 100);
  hourly.connections_per_hour = 4;
  PairThrottle per_hour(Options(hourly));
  for (int i = 0; i < 4; ++i) {
    const absl::Time at = per_hour.MayOpenConnection(kT0 + absl::Minutes(15 * i));
    EXPECT_EQ(std::max(at, kT0), kT0 + absl::Minutes(15 * i)) << i;
    per_hour.OnConnectionOpened(kT0 + absl::Minutes(15 * i));
  }
  EXPECT_EQ(per_hour.MayOpenConnection(kT0 + absl::Minutes(46)), kT0 + absl::Minutes(60));
}

TEST(PairThrottleTest, ManualSuspensionHoldsUntilItsEndAndResumeLiftsAnySuspension) {
  PairThrottle pair(Options(Limits(60)));
  const absl::Time until = kT0 + absl::Hours(10);  // past max_suspension: an operator's choice
  pair.SuspendManually(kT0, until);
  EXPECT_EQ(pair.state(kT0), PairState::kSuspended);
  EXPECT_TRUE(pair.manually_suspended(kT0));
  EXPECT_EQ(pair.suspension_class(), std::nullopt);
  EXPECT_EQ(pair.MayStartMessage(kT0), until);
  EXPECT_EQ(pair.MayOpenConnection(kT0), until);
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kRateLimit)], 0u);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);  // no cut
  EXPECT_FALSE(pair.manually_suspended(until));

  const absl::Time later = kT0 + absl::Minutes(5);
  EXPECT_TRUE(pair.Resume(later));
  EXPECT_FALSE(pair.suspended(later));
  EXPECT_FALSE(pair.manually_suspended(later));
  EXPECT_LE(pair.MayStartMessage(later), later);
  EXPECT_FALSE(pair.Resume(later));  // nothing left to lift

  // A reply's suspension is lifted too; a manual one shorter than it does not shorten it.
  pair.OnConnectionOpened(later);
  pair.OnMessageStarted(later);
  pair.OnReply(ResponseClass::kBlocklist, later);
  pair.SuspendManually(later, later + absl::Minutes(1));
  EXPECT_EQ(pair.suspended_until(), later + absl::Hours(4));
  EXPECT_FALSE(pair.manually_suspended(later));
  EXPECT_TRUE(pair.Resume(later + absl::Minutes(2)));
  EXPECT_EQ(pair.state(later + absl::Minutes(2)), PairState::kBackoff);
}

TEST(PairThrottleTest, RateLimitSuspendsCutsAndRecoversAdditivelyToNominal) {
  PairThrottle pair(Options(Limits(60)));
  pair.OnConnectionOpened(kT0);
  pair.OnMessageStarted(kT0);
  const absl::Time reply = kT0 + absl::Seconds(1);
  pair.OnReply(ResponseClass::kRateLimit, reply);
  const absl::Time resume = reply + absl::Minutes(15);
  EXPECT_EQ(pair.state(reply), PairState::kSuspended);
  EXPECT_EQ(pair.suspended_until(), resume);
  EXPECT_EQ(pair.suspension_class(), ResponseClass::kRateLimit);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 30);
  EXPECT_DOUBLE_EQ(pair.nominal_message_rate(), 60);
  EXPECT_EQ(pair.MayStartMessage(reply), resume);
  EXPECT_EQ(pair.MayOpenConnection(reply), resume);
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kRateLimit)], 1u);
  EXPECT_EQ(pair.counters().rate_cuts, 1u);
  EXPECT_EQ(pair.counters().reputation_hits, 1u);

  // The pause is over: backing off, at half the rate (one message every 2 s).
  EXPECT_EQ(pair.state(resume), PairState::kBackoff);
  EXPECT_LE(pair.MayStartMessage(resume), resume);
  pair.OnMessageStarted(resume);
  EXPECT_EQ(pair.MayStartMessage(resume), resume + absl::Seconds(2));

  // Additive increase: +6 per minute (0.1 × 60) per delivery, five deliveries to nominal.
  absl::Time now = resume + absl::Seconds(2);
  for (const double expected : {36.0, 42.0, 48.0, 54.0}) {
    pair.OnDelivered(now);
    EXPECT_NEAR(pair.current_message_rate(), expected, 1e-9);
    EXPECT_EQ(pair.state(now), PairState::kBackoff);
    now += absl::Seconds(2);
  }
  pair.OnReply(ResponseClass::kSuccess, now);  // same as OnDelivered
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);
  EXPECT_EQ(pair.state(now), PairState::kNormal);
  EXPECT_EQ(pair.counters().deliveries, 5u);
  // Back to one per second.
  EXPECT_LE(pair.MayStartMessage(now), now);
  pair.OnMessageStarted(now);
  EXPECT_EQ(pair.MayStartMessage(now), now + absl::Seconds(1));
}

// A site whose real limit (10 a minute) is under the configured one (30): it complains when
// the pair has sent 11 in the last minute. The cut (to 15) is not enough by itself; the
// ceiling learned from the complaint (90% of 11) is where the pair resumes and where recovery
// stops, so the site does not have to complain again — until the ceiling is forgotten.
TEST(PairThrottleTest, ARateLimitReplyTeachesACeilingThatRecoveryRespects) {
  PairThrottle pair(Options(Limits(30)));
  absl::Time now = kT0;
  now = StartAtItsPace(pair, now, 11);
  pair.OnReply(ResponseClass::kRateLimit, now);
  EXPECT_NEAR(pair.current_message_rate(), 9.9, 1e-9);
  now = pair.suspended_until();
  for (int i = 0; i < 20; ++i) pair.OnDelivered(now);
  EXPECT_NEAR(pair.current_message_rate(), 9.9, 1e-9);
  EXPECT_EQ(pair.state(now), PairState::kBackoff);
  // One message every 60/9.9 s.
  pair.OnMessageStarted(now);
  EXPECT_NEAR(absl::ToDoubleSeconds(pair.MayStartMessage(now) - now), 60 / 9.9, 1e-6);

  // An hour after the complaint the ceiling is gone and recovery reaches the configured rate.
  now = kT0 + absl::Hours(2);
  for (int i = 0; i < 7; ++i) pair.OnDelivered(now);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 30);
  EXPECT_EQ(pair.state(now), PairState::kNormal);
}

// The ceiling holds the rate, not the connections: they come back one per delivery.
TEST(PairThrottleTest, ConnectionsComeBackWhileTheRateStaysAtALearnedCeiling) {
  SiteLimits limits = Limits(30, 3);
  PairOptions options = Options(limits);
  options.actions[Idx(ResponseClass::kRateLimit)].max_connections = 1;
  PairThrottle pair(options);
  absl::Time now = kT0;
  now = StartAtItsPace(pair, now, 11);
  pair.OnReply(ResponseClass::kRateLimit, now);
  EXPECT_EQ(pair.current_max_connections(), 1u);
  now = pair.suspended_until();
  pair.OnDelivered(now);
  pair.OnDelivered(now);
  EXPECT_NEAR(pair.current_message_rate(), 9.9, 1e-9);
  EXPECT_EQ(pair.current_max_connections(), 3u);
  EXPECT_EQ(pair.state(now), PairState::kBackoff);  // the rate is still under its nominal
}

// Microsoft's throttling (providers.md §1.3, §6): one connection at a tenth of the rate for
// 90 minutes after the reply, whatever is delivered meanwhile; recovery on success after that.
TEST(PairThrottleTest, AHoldKeepsTheCutAndTheCapUntilItEnds) {
  PairOptions options = Options(Limits(60, 5));
  ClassAction& rate_limit = options.actions[Idx(ResponseClass::kRateLimit)];
  rate_limit.rate_factor = 0.1;
  rate_limit.max_connections = 1;
  rate_limit.hold = absl::Minutes(90);
  PairThrottle pair(options);
  pair.OnMessageStarted(kT0);
  pair.OnReply(ResponseClass::kRateLimit, kT0);
  EXPECT_EQ(pair.suspended_until(), kT0 + absl::Minutes(15));
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 6);
  EXPECT_EQ(pair.current_max_connections(), 1u);
  // After the pause and until 90 minutes after the reply: deliveries change nothing.
  for (absl::Time now = kT0 + absl::Minutes(15); now < kT0 + absl::Minutes(90);
       now += absl::Seconds(10)) {
    pair.OnDelivered(now);
    EXPECT_DOUBLE_EQ(pair.current_message_rate(), 6);
    EXPECT_EQ(pair.current_max_connections(), 1u);
    EXPECT_EQ(pair.state(now), PairState::kBackoff);
  }
  // From then on, each delivery brings back a step and a connection.
  absl::Time now = kT0 + absl::Minutes(90);
  pair.OnDelivered(now);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 12);
  EXPECT_EQ(pair.current_max_connections(), 2u);
  for (int i = 0; i < 8; ++i) pair.OnDelivered(now);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);
  EXPECT_EQ(pair.current_max_connections(), 5u);
  EXPECT_EQ(pair.state(now), PairState::kNormal);
}

// A second reply during the hold starts another from its own time.
TEST(PairThrottleTest, AnotherReplyDuringAHoldLengthensIt) {
  PairOptions options = Options(Limits(60, 5));
  ClassAction& too_many = options.actions[Idx(ResponseClass::kTooManyConnections)];
  too_many.hold = absl::Hours(1);
  PairThrottle pair(options);
  pair.OnReply(ResponseClass::kTooManyConnections, kT0);
  pair.OnReply(ResponseClass::kTooManyConnections, kT0 + absl::Minutes(30));
  pair.OnDelivered(kT0 + absl::Minutes(80));
  EXPECT_EQ(pair.current_max_connections(), 1u);
  pair.OnDelivered(kT0 + absl::Minutes(90));
  EXPECT_EQ(pair.current_max_connections(), 2u);
}

TEST(PairThrottleTest, RepliesAndDeliveriesDuringASuspensionNeitherCutNorRecover) {
  PairThrottle pair(Options(Limits(60)));
  pair.OnReply(ResponseClass::kRateLimit, kT0);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 30);
  // Answers to messages sent before the pause.
  pair.OnReply(ResponseClass::kRateLimit, kT0 + absl::Seconds(1));
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 30);
  pair.OnDelivered(kT0 + absl::Seconds(2));
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 30);
  EXPECT_EQ(pair.state(kT0 + absl::Seconds(2)), PairState::kSuspended);
  EXPECT_EQ(pair.counters().rate_cuts, 1u);
  EXPECT_EQ(pair.counters().deliveries, 1u);
}

TEST(PairThrottleTest, CutsStopAtTheMinimumRateFraction) {
  PairOptions options = Options(Limits(60));
  options.actions[Idx(ResponseClass::kRateLimit)].suspend = absl::ZeroDuration();
  PairThrottle pair(options);
  absl::Time now = kT0;
  for (const double expected : {30.0, 15.0, 7.5, 3.75, 3.0, 3.0, 3.0}) {
    pair.OnReply(ResponseClass::kRateLimit, now);
    EXPECT_DOUBLE_EQ(pair.current_message_rate(), expected);
    EXPECT_EQ(pair.state(now), PairState::kBackoff);
    now += absl::Seconds(1);
  }
  EXPECT_EQ(pair.counters().rate_cuts, 5u);
  // 3 a minute: one every 20 s.
  pair.OnMessageStarted(now);
  EXPECT_EQ(pair.MayStartMessage(now), now + absl::Seconds(20));
  // Recovery is relative to nominal: ten deliveries from 3 back to 60.
  for (int i = 0; i < 9; ++i) pair.OnDelivered(now);
  EXPECT_EQ(pair.state(now), PairState::kBackoff);
  EXPECT_NEAR(pair.current_message_rate(), 57, 1e-9);
  pair.OnDelivered(now);
  EXPECT_EQ(pair.state(now), PairState::kNormal);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);
}

TEST(PairThrottleTest, WithoutAConfiguredRateACutStartsFromTheObservedRate) {
  PairThrottle pair(Options(Limits(0)));
  EXPECT_EQ(pair.current_message_rate(), 0);
  // 20 messages in the first 20 s of a calendar minute, unthrottled.
  for (int i = 0; i < 20; ++i) {
    const absl::Time now = kT0 + absl::Seconds(i);
    EXPECT_EQ(pair.MayStartMessage(now), absl::InfinitePast());
    pair.OnMessageStarted(now);
  }
  const absl::Time reply = kT0 + absl::Seconds(20);
  pair.OnReply(ResponseClass::kRateLimit, reply);
  EXPECT_DOUBLE_EQ(pair.nominal_message_rate(), 20);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 10);
  // After the pause: one message every 6 s.
  const absl::Time resume = reply + absl::Minutes(15);
  EXPECT_EQ(pair.MayStartMessage(resume), resume);
  pair.OnMessageStarted(resume);
  EXPECT_EQ(pair.MayStartMessage(resume), resume + absl::Seconds(6));
  // Recovery (+2 a minute per delivery) stops at the ceiling the complaint taught: 90% of the
  // 20 a minute the site complained at ...
  for (int i = 0; i < 5; ++i) pair.OnDelivered(resume);
  EXPECT_EQ(pair.state(resume), PairState::kBackoff);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 18);
  // ... until it is forgotten (rate_memory, 1 h after the complaint); then it ends unlimited.
  const absl::Time later = reply + absl::Hours(1);
  pair.OnDelivered(later);
  EXPECT_EQ(pair.state(later), PairState::kNormal);
  EXPECT_EQ(pair.current_message_rate(), 0);
  EXPECT_LE(pair.MayStartMessage(later), later);

  // The observed rate slides over two calendar minutes: 30 in the previous minute, half of it
  // still inside the last 60 s.
  PairThrottle sliding(Options(Limits(0)));
  for (int i = 0; i < 30; ++i) sliding.OnMessageStarted(kT0 + absl::Seconds(i));
  sliding.OnReply(ResponseClass::kRateLimit, kT0 + absl::Seconds(90));
  EXPECT_DOUBLE_EQ(sliding.nominal_message_rate(), 15);
  EXPECT_DOUBLE_EQ(sliding.current_message_rate(), 7.5);

  // Nothing sent lately: from one a minute, so that the cut still slows.
  PairThrottle idle(Options(Limits(0)));
  idle.OnReply(ResponseClass::kRateLimit, kT0);
  EXPECT_DOUBLE_EQ(idle.current_message_rate(), 0.5);
}

TEST(PairThrottleTest, TooManyConnectionsCapsToOneThenRecovers) {
  PairThrottle pair(Options(Limits(0, 3)));
  for (int i = 0; i < 3; ++i) pair.OnConnectionOpened(kT0);
  pair.OnReply(ResponseClass::kTooManyConnections, kT0);
  EXPECT_EQ(pair.current_max_connections(), 1u);
  EXPECT_EQ(pair.state(kT0), PairState::kBackoff);
  EXPECT_TRUE(pair.OverConnectionLimit());
  EXPECT_EQ(pair.counters().connection_caps, 1u);
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kTooManyConnections)], 0u);
  // Messages are not slowed, and the open connections are not cut under the caller's feet.
  EXPECT_LE(pair.MayStartMessage(kT0), kT0);
  EXPECT_EQ(pair.MayOpenConnection(kT0), absl::InfiniteFuture());
  pair.OnConnectionClosed(kT0);
  pair.OnConnectionClosed(kT0);
  EXPECT_FALSE(pair.OverConnectionLimit());
  EXPECT_EQ(pair.MayOpenConnection(kT0), absl::InfiniteFuture());
  pair.OnConnectionClosed(kT0);
  EXPECT_LE(pair.MayOpenConnection(kT0), kT0);
  // One connection back per delivery.
  pair.OnDelivered(kT0 + absl::Seconds(1));
  EXPECT_EQ(pair.current_max_connections(), 2u);
  EXPECT_EQ(pair.state(kT0 + absl::Seconds(1)), PairState::kBackoff);
  pair.OnDelivered(kT0 + absl::Seconds(2));
  EXPECT_EQ(pair.current_max_connections(), 3u);
  EXPECT_EQ(pair.state(kT0 + absl::Seconds(2)), PairState::kNormal);
  pair.OnDelivered(kT0 + absl::Seconds(3));
  EXPECT_EQ(pair.current_max_connections(), 3u);
}

TEST(PairThrottleTest, NewOptionsApplyAtNominalAndKeepWhatThePairLearned) {
  PairThrottle pair(Options(Limits(60, 2)));
  pair.OnConnectionOpened(kT0);
  pair.OnMessageStarted(kT0);
  pair.OnDelivered(kT0);
  // A reload at nominal: the new limits at once, the counters and open connections kept.
  pair.SetOptions(Options(Limits(120, 5)), kT0);
  EXPECT_EQ(pair.current_max_connections(), 5u);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 120);
  EXPECT_EQ(pair.open_connections(), 1u);
  EXPECT_EQ(pair.counters().deliveries, 1u);
  EXPECT_EQ(pair.counters().messages_started, 1u);
  EXPECT_EQ(pair.state(kT0), PairState::kNormal);
  // The event already paid for stays paid for: the next one half a second later (120/min).
  EXPECT_EQ(pair.MessageEligibleAt(kT0), kT0 + absl::Milliseconds(500));

  // A reload while suspended and cut: the suspension and the cut stay; recovery aims at the
  // new nominal.
  const absl::Time t1 = kT0 + absl::Minutes(1);
  pair.OnReply(ResponseClass::kRateLimit, t1);
  ASSERT_TRUE(pair.suspended(t1));
  const absl::Time until = pair.suspended_until();
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);
  pair.SetOptions(Options(Limits(40, 5)), t1);
  EXPECT_EQ(pair.suspended_until(), until);
  EXPECT_EQ(pair.state(t1), PairState::kSuspended);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 40);  // never above the new nominal
  EXPECT_DOUBLE_EQ(pair.nominal_message_rate(), 40);
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kRateLimit)], 1u);
}

TEST(PairThrottleTest, NewOptionsKeepAConnectionCapBelowTheNewNominal) {
  PairThrottle pair(Options(Limits(0, 3)));
  for (int i = 0; i < 3; ++i) pair.OnConnectionOpened(kT0);
  pair.OnReply(ResponseClass::kTooManyConnections, kT0);
  ASSERT_EQ(pair.current_max_connections(), 1u);
  pair.SetOptions(Options(Limits(0, 6)), kT0);
  EXPECT_EQ(pair.current_max_connections(), 1u);  // still capped, recovering toward 6
  EXPECT_EQ(pair.state(kT0), PairState::kBackoff);
  for (int i = 0; i < 5; ++i) pair.OnDelivered(kT0 + absl::Seconds(i + 1));
  EXPECT_EQ(pair.current_max_connections(), 6u);
  EXPECT_EQ(pair.state(kT0 + absl::Seconds(6)), PairState::kNormal);
}

TEST(PairThrottleTest, AnUnlimitedConnectionCountIsCappedThenUnlimitedAgain) {
  PairThrottle pair(Options(Limits(0, 0)));
  EXPECT_EQ(pair.current_max_connections(), PairThrottle::kUnlimitedConnections);
  for (int i = 0; i < 3; ++i) pair.OnConnectionOpened(kT0);
  pair.OnReply(ResponseClass::kTooManyConnections, kT0);
  EXPECT_EQ(pair.current_max_connections(), 1u);
  pair.OnDelivered(kT0);
  EXPECT_EQ(pair.current_max_connections(), 2u);
  pair.OnDelivered(kT0);  // back to the 3 it had open: unlimited again
  EXPECT_EQ(pair.current_max_connections(), PairThrottle::kUnlimitedConnections);
  EXPECT_EQ(pair.state(kT0), PairState::kNormal);
}

TEST(PairThrottleTest, SuspensionsCannotBeExtendedForever) {
  PairOptions options = Options(Limits(60));
  options.backoff.max_suspension = absl::Hours(1);
  PairThrottle pair(options);
  pair.OnReply(ResponseClass::kRateLimit, kT0);
  EXPECT_EQ(pair.suspended_until(), kT0 + absl::Minutes(15));
  // A site answering "slow down" to every reply: each one pushes the end later, up to 1 h
  // after the beginning and no further.
  for (int m = 10; m <= 55; m += 5) {
    pair.OnReply(ResponseClass::kRateLimit, kT0 + absl::Minutes(m));
    EXPECT_EQ(pair.suspended_until(),
              std::min(kT0 + absl::Minutes(m + 15), kT0 + absl::Hours(1))) << m;
  }
  EXPECT_EQ(pair.suspension_began(), kT0);
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kRateLimit)], 1u);
  EXPECT_EQ(pair.counters().suspension_extensions, 8u);  // the one at 45 min reaches the bound
  EXPECT_EQ(pair.state(kT0 + absl::Hours(1) - absl::Nanoseconds(1)), PairState::kSuspended);
  EXPECT_EQ(pair.state(kT0 + absl::Hours(1)), PairState::kBackoff);
  EXPECT_LE(pair.MayStartMessage(kT0 + absl::Hours(1)), kT0 + absl::Hours(1));
  // A new suspension after the pause is a new one, bounded the same way however long the
  // announced delay.
  const absl::Time later = kT0 + absl::Hours(2);
  pair.OnReply(ResponseClass::kRateLimit, later, absl::Hours(48));
  EXPECT_EQ(pair.suspension_began(), later);
  EXPECT_EQ(pair.suspended_until(), later + absl::Hours(1));
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kRateLimit)], 2u);
}

TEST(PairThrottleTest, AnAnnouncedDelayLengthensASuspensionButNeverShortensIt) {
  PairThrottle longer(Options(Limits(60)));
  longer.OnReply(ResponseClass::kRateLimit, kT0, absl::Minutes(30));
  EXPECT_EQ(longer.suspended_until(), kT0 + absl::Minutes(30));
  PairThrottle shorter(Options(Limits(60)));
  shorter.OnReply(ResponseClass::kRateLimit, kT0, absl::Minutes(5));
  EXPECT_EQ(shorter.suspended_until(), kT0 + absl::Minutes(15));
  // A class whose action does not suspend is not suspended by an announced delay.
  PairThrottle no_pause(Options(Limits(60)));
  no_pause.OnReply(ResponseClass::kTooManyConnections, kT0, absl::Hours(1));
  EXPECT_FALSE(no_pause.suspended(kT0));
  EXPECT_EQ(no_pause.suspended_until(), absl::InfinitePast());
}

TEST(PairThrottleTest, GreylistingLeavesThePairUntouched) {
  PairThrottle pair(Options(Limits(60, 2)));
  pair.OnConnectionOpened(kT0);
  for (int i = 0; i < 5; ++i) {
    pair.OnReply(ResponseClass::kGreylist, kT0 + absl::Seconds(i), absl::Minutes(5));
  }
  const absl::Time now = kT0 + absl::Seconds(5);
  EXPECT_EQ(pair.state(now), PairState::kNormal);
  EXPECT_FALSE(pair.suspended(now));
  EXPECT_EQ(pair.suspended_until(), absl::InfinitePast());
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);
  EXPECT_EQ(pair.current_max_connections(), 2u);
  EXPECT_FALSE(pair.prefers_other_source());
  EXPECT_LE(pair.MayOpenConnection(now), now);
  EXPECT_LE(pair.MayStartMessage(now), now);
  EXPECT_EQ(pair.counters().replies[Idx(ResponseClass::kGreylist)], 5u);
  EXPECT_EQ(pair.counters().reputation_hits, 0u);
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kGreylist)], 0u);
  EXPECT_EQ(pair.counters().rate_cuts, 0u);
}

TEST(PairThrottleTest, ABlocklistSuspensionLeavesThePairInBackoffUntilADelivery) {
  PairThrottle pair(Options(Limits(60)));
  pair.OnReply(ResponseClass::kBlocklist, kT0);
  EXPECT_EQ(pair.suspended_until(), kT0 + absl::Hours(4));
  EXPECT_TRUE(pair.prefers_other_source());
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);  // not cut, paused
  const absl::Time after = kT0 + absl::Hours(4);
  EXPECT_EQ(pair.state(after), PairState::kBackoff);
  pair.OnDelivered(after);
  EXPECT_EQ(pair.state(after), PairState::kNormal);
  EXPECT_FALSE(pair.prefers_other_source());
  // Classes without an action do nothing.
  pair.OnReply(ResponseClass::kUserUnknown, after);
  EXPECT_EQ(pair.state(after), PairState::kNormal);
  EXPECT_EQ(pair.counters().replies[Idx(ResponseClass::kUserUnknown)], 1u);
}

// A blocklist pause read back after a restart holds the pair as the reply did — until its end,
// standing aside afterwards, extended no further than max_suspension from its beginning — and
// counts nothing again.
TEST(PairThrottleTest, ARestoredSuspensionHoldsAsTheReplyDid) {
  PairOptions options = Options(Limits(60));
  options.backoff.max_suspension = absl::Hours(6);
  PairThrottle pair(options);
  const absl::Time restart = kT0 + absl::Hours(1);
  pair.RestoreSuspension(kT0, kT0 + absl::Hours(4), ResponseClass::kBlocklist);
  EXPECT_EQ(pair.state(restart), PairState::kSuspended);
  EXPECT_EQ(pair.suspension_began(), kT0);
  EXPECT_EQ(pair.suspended_until(), kT0 + absl::Hours(4));
  EXPECT_EQ(pair.suspension_class(), ResponseClass::kBlocklist);
  EXPECT_FALSE(pair.manually_suspended(restart));
  EXPECT_TRUE(pair.prefers_other_source());
  EXPECT_EQ(pair.MayStartMessage(restart), kT0 + absl::Hours(4));
  EXPECT_EQ(pair.MayOpenConnection(restart), kT0 + absl::Hours(4));
  EXPECT_EQ(pair.counters().suspensions[Idx(ResponseClass::kBlocklist)], 0u);
  EXPECT_DOUBLE_EQ(pair.current_message_rate(), 60);
  // Bounded from its original beginning, not from the restart.
  pair.OnReply(ResponseClass::kBlocklist, kT0 + absl::Hours(3));
  EXPECT_EQ(pair.suspended_until(), kT0 + absl::Hours(6));
  EXPECT_EQ(pair.state(kT0 + absl::Hours(6)), PairState::kBackoff);
  EXPECT_TRUE(pair.Resume(kT0 + absl::Hours(5)));
  EXPECT_FALSE(pair.suspended(kT0 + absl::Hours(5)));
}

// What a restart keeps (throttle/pause_ledger.h): a pair rebuilt from the stored pause and
// back-off holds, cuts, caps and climbs as the original would have (the operator's test drive:
// a restart during Gmail's 421 pause came back at the full rate and got a second 421).
TEST(PairThrottleTest, ARestoredBackoffCutsCapsAndHoldsAsBeforeTheRestart) {
  PairOptions options = Options(Limits(30, 5));
  ClassAction& rate_limit = options.actions[Idx(ResponseClass::kRateLimit)];
  rate_limit.max_connections = 1;
  rate_limit.hold = absl::Minutes(30);
  PairThrottle before(options);
  absl::Time now = kT0;
  now = StartAtItsPace(before, now, 11);
  before.OnReply(ResponseClass::kRateLimit, now);
  const absl::Time reply = now;
  std::optional<PairBackoff> kept = before.Backoff(reply);
  ASSERT_TRUE(kept.has_value());
  EXPECT_NEAR(kept->rate, 9.9, 1e-9);  // the ceiling the complaint taught (90% of 11)
  EXPECT_EQ(kept->connections, 1u);
  EXPECT_EQ(kept->connection_target, 5u);
  EXPECT_EQ(kept->hold_until, reply + absl::Minutes(30));
  EXPECT_EQ(kept->ceiling_until, reply + absl::Hours(1));

  // Restarted within the pause.
  PairThrottle after(options);
  after.RestoreSuspension(before.suspension_began(), before.suspended_until(),
                          ResponseClass::kRateLimit);
  after.RestoreBackoff(*kept, reply + absl::Minutes(1));
  EXPECT_EQ(after.Backoff(reply + absl::Minutes(1)), kept);
  EXPECT_EQ(after.counters().rate_cuts, 0u);  // nothing counted twice
  for (PairThrottle* pair : {&before, &after}) {
    const absl::Time resume = pair->suspended_until();
    EXPECT_EQ(pair->state(resume), PairState::kBackoff);
    EXPECT_NEAR(pair->current_message_rate(), 9.9, 1e-9);
    EXPECT_EQ(pair->current_max_connections(), 1u);
    pair->OnDelivered(reply + absl::Minutes(20));  // held: no step
    EXPECT_EQ(pair->current_max_connections(), 1u);
    pair->OnDelivered(reply + absl::Minutes(30));  // the hold is over; the ceiling holds the rate
    EXPECT_EQ(pair->current_max_connections(), 2u);
    EXPECT_NEAR(pair->current_message_rate(), 9.9, 1e-9);
  }

  // Restarted after the pause and the hold, before the ceiling is forgotten: no pause, the cut
  // and the ceiling only.
  PairThrottle late(options);
  late.RestoreBackoff(*kept, reply + absl::Minutes(40));
  EXPECT_EQ(late.state(reply + absl::Minutes(40)), PairState::kBackoff);
  EXPECT_LE(late.MayStartMessage(reply + absl::Minutes(40)), reply + absl::Minutes(40));
  EXPECT_NEAR(late.current_message_rate(), 9.9, 1e-9);
  for (int i = 0; i < 10; ++i) late.OnDelivered(reply + absl::Minutes(41));
  EXPECT_NEAR(late.current_message_rate(), 9.9, 1e-9);
  EXPECT_EQ(late.current_max_connections(), 5u);

  // A lower nominal rate configured since bounds the restored one.
  PairThrottle reconfigured(Options(Limits(6, 5)));
  reconfigured.RestoreBackoff(*kept, reply + absl::Minutes(40));
  EXPECT_DOUBLE_EQ(reconfigured.current_message_rate(), 6);
  // Back at its limits, a pair has nothing to keep.
  EXPECT_EQ(PairThrottle(options).Backoff(kT0), std::nullopt);
}

TEST(PairThrottleTest, ThrottledTimeCountsEachWaitOnceAndEndsWhenTheLimitLifts) {
  PairThrottle pair(Options(Limits(6, 1)));
  pair.OnMessageStarted(kT0);
  EXPECT_EQ(pair.MayStartMessage(kT0), kT0 + absl::Seconds(10));
  EXPECT_EQ(pair.throttled_time(kT0 + absl::Seconds(4)), absl::Seconds(4));
  // Asking again during the same wait does not count twice.
  EXPECT_EQ(pair.MayStartMessage(kT0 + absl::Seconds(3)), kT0 + absl::Seconds(10));
  pair.OnMessageStarted(kT0 + absl::Seconds(10));
  EXPECT_EQ(pair.throttled_time(kT0 + absl::Minutes(1)), absl::Seconds(10));
  // A caller that goes elsewhere and never comes back: the wait ends when the limit lifts.
  EXPECT_EQ(pair.MayStartMessage(kT0 + absl::Seconds(15)), kT0 + absl::Seconds(20));
  EXPECT_EQ(pair.throttled_time(kT0 + absl::Hours(1)), absl::Seconds(15));
  // Waiting for a connection slot ends when one closes.
  pair.OnConnectionOpened(kT0 + absl::Minutes(1));
  EXPECT_EQ(pair.MayOpenConnection(kT0 + absl::Minutes(1)), absl::InfiniteFuture());
  EXPECT_EQ(pair.throttled_time(kT0 + absl::Minutes(2)), absl::Seconds(75));
  pair.OnConnectionClosed(kT0 + absl::Minutes(3));
  EXPECT_EQ(pair.throttled_time(kT0 + absl::Hours(1)), absl::Seconds(135));
}

TEST(PairOptionsTest, SiteActionsOverrideTheDefaults) {
  ShapingOptions shaping;
  shaping.actions[Idx(ResponseClass::kRateLimit)].suspend = absl::Minutes(10);
  shaping.actions[Idx(ResponseClass::kBlocklist)].suspend = absl::Hours(2);
  shaping.backoff.recovery_step = 0.25;
  SiteOptions site;
  site.name = "orange";
  ClassAction orange_rate_limit;
  orange_rate_limit.suspend = absl::Hours(1);
  site.actions[Idx(ResponseClass::kRateLimit)] = orange_rate_limit;
  SiteLimits limits = Limits(30);
  const PairOptions merged = PairOptions::From(limits, shaping, &site);
  EXPECT_EQ(merged.actions[Idx(ResponseClass::kRateLimit)].suspend, absl::Hours(1));
  EXPECT_EQ(merged.actions[Idx(ResponseClass::kBlocklist)].suspend, absl::Hours(2));
  EXPECT_EQ(merged.backoff.recovery_step, 0.25);
  EXPECT_EQ(merged.limits.messages_per_minute, 30u);
  const PairOptions unknown_site = PairOptions::From(limits, shaping, nullptr);
  EXPECT_EQ(unknown_site.actions[Idx(ResponseClass::kRateLimit)].suspend, absl::Minutes(10));
}

// --- ChooseSource --------------------------------------------------------------------------

TEST(ChooseSourceTest, TheLeastLoadedEligibleSourceWins) {
  PairThrottle a(Options(Limits(0, 4)));
  PairThrottle b(Options(Limits(0, 2)));
  PairThrottle c(Options(Limits(60, 2)));
  const std::vector<SourceCandidate> pool = {{"a", &a}, {"b", &b}, {"c", &c}};
  // All idle: the first listed.
  EXPECT_EQ(ChooseSource(pool, kT0).source, 0u);
  a.OnConnectionOpened(kT0);  // a: 1/4
  b.OnConnectionOpened(kT0);  // b: 1/2
  EXPECT_EQ(ChooseSource(pool, kT0).source, 2u);  // c: 0/2
  c.OnConnectionOpened(kT0);
  c.OnMessageStarted(kT0);  // c: 1/2, and rate-limited for a second
  EXPECT_EQ(ChooseSource(pool, kT0).source, 0u);  // a: 1/4 is the lightest
  a.OnConnectionOpened(kT0);
  a.OnConnectionOpened(kT0);  // a: 3/4 > b, c: 1/2; c not eligible until +1 s
  const SourceChoice choice = ChooseSource(pool, kT0);
  EXPECT_EQ(choice.source, 1u);
  EXPECT_EQ(choice.eligible_at, kT0);
  // Load is relative to each source's maximum: 3 of 10 is lighter than 1 of 2.
  PairThrottle small(Options(Limits(0, 2)));
  PairThrottle large(Options(Limits(0, 10)));
  small.OnConnectionOpened(kT0);
  for (int i = 0; i < 3; ++i) large.OnConnectionOpened(kT0);
  const std::vector<SourceCandidate> mixed = {{"small", &small}, {"large", &large}};
  EXPECT_EQ(ChooseSource(mixed, kT0).source, 1u);
}

TEST(ChooseSourceTest, ABlocklistedSourceStandsAsideWhileAnotherIsHealthy) {
  PairThrottle a(Options(Limits(0, 2)));
  PairThrottle b(Options(Limits(0, 2)));
  const std::vector<SourceCandidate> pool = {{"a", &a}, {"b", &b}};
  a.OnConnectionOpened(kT0);
  a.OnReply(ResponseClass::kBlocklist, kT0);
  EXPECT_EQ(a.state(kT0), PairState::kSuspended);
  EXPECT_EQ(ChooseSource(pool, kT0).source, 1u);
  b.OnConnectionOpened(kT0);
  b.OnConnectionOpened(kT0);
  // b is full: nothing now; the next look is when a's suspension ends.
  SourceChoice choice = ChooseSource(pool, kT0 + absl::Minutes(1));
  EXPECT_FALSE(choice.source.has_value());
  EXPECT_EQ(choice.eligible_at, kT0 + absl::Hours(4));
  // a's suspension is over but it still prefers another source while b is healthy: wait for b.
  const absl::Time later = kT0 + absl::Hours(5);
  EXPECT_EQ(a.state(later), PairState::kBackoff);
  choice = ChooseSource(pool, later);
  EXPECT_FALSE(choice.source.has_value());
  EXPECT_EQ(choice.eligible_at, absl::InfiniteFuture());
  b.OnConnectionClosed(later);
  EXPECT_EQ(ChooseSource(pool, later).source, 1u);
  // b rate-limited in turn: a is the only source not suspended, so it is used.
  b.OnReply(ResponseClass::kRateLimit, later);
  EXPECT_EQ(ChooseSource(pool, later).source, 0u);
  a.OnDelivered(later);
  EXPECT_FALSE(a.prefers_other_source());
}

TEST(ChooseSourceTest, WhenAllAreSuspendedTheEarliestEndIsNamed) {
  PairThrottle a(Options(Limits(0, 2)));
  PairThrottle b(Options(Limits(0, 2)));
  const std::vector<SourceCandidate> pool = {{"a", &a}, {"b", &b}};
  a.OnReply(ResponseClass::kBlocklist, kT0);                     // until +4 h
  b.OnReply(ResponseClass::kRateLimit, kT0 + absl::Minutes(1));  // until +16 min
  const SourceChoice choice = ChooseSource(pool, kT0 + absl::Minutes(2));
  EXPECT_FALSE(choice.source.has_value());
  EXPECT_EQ(choice.eligible_at, kT0 + absl::Minutes(16));
  EXPECT_EQ(ChooseSource(pool, kT0 + absl::Minutes(16)).source, 1u);
  // Work waited on both until b came back.
  EXPECT_EQ(a.throttled_time(kT0 + absl::Hours(1)), absl::Minutes(14));
  EXPECT_EQ(b.throttled_time(kT0 + absl::Hours(1)), absl::Minutes(14));
  EXPECT_FALSE(ChooseSource({}, kT0).source.has_value());
}

TEST(ChooseSourceTest, APinnedSourceIsWaitedForNeverRotated) {
  PairThrottle a(Options(Limits(60, 2)));
  PairThrottle b(Options(Limits(60, 2)));
  const std::vector<SourceCandidate> pool = {{"a", &a}, {"b", &b}};
  a.OnMessageStarted(kT0);  // a: next message at +1 s; b free
  SourceChoice choice = ChooseSource(pool, kT0, "a");
  EXPECT_FALSE(choice.source.has_value());
  EXPECT_EQ(choice.eligible_at, kT0 + absl::Seconds(1));
  EXPECT_EQ(ChooseSource(pool, kT0 + absl::Seconds(1), "a").source, 0u);
  // Suspended for hours: still a, at the end of its suspension.
  a.OnReply(ResponseClass::kBlocklist, kT0 + absl::Seconds(2));
  choice = ChooseSource(pool, kT0 + absl::Seconds(3), "a");
  EXPECT_FALSE(choice.source.has_value());
  EXPECT_EQ(choice.eligible_at, kT0 + absl::Seconds(2) + absl::Hours(4));
  // Unpinned work goes to b meanwhile; a pin naming a source no longer in the pool is ignored.
  EXPECT_EQ(ChooseSource(pool, kT0 + absl::Seconds(3)).source, 1u);
  EXPECT_EQ(ChooseSource(pool, kT0 + absl::Seconds(3), "gone").source, 1u);
}

// --- Greylisting ---------------------------------------------------------------------------

TEST(GreylistRetryDelayTest, TheLadderGrowsToTheCap) {
  const GreylistOptions options;  // 5 min, ×2, at most 1 h
  EXPECT_EQ(GreylistRetryDelay(options, 0), absl::Minutes(5));
  EXPECT_EQ(GreylistRetryDelay(options, 1), absl::Minutes(5));
  EXPECT_EQ(GreylistRetryDelay(options, 2), absl::Minutes(10));
  EXPECT_EQ(GreylistRetryDelay(options, 3), absl::Minutes(20));
  EXPECT_EQ(GreylistRetryDelay(options, 4), absl::Minutes(40));
  EXPECT_EQ(GreylistRetryDelay(options, 5), absl::Hours(1));
  EXPECT_EQ(GreylistRetryDelay(options, UINT32_MAX), absl::Hours(1));
}

TEST(GreylistRetryDelayTest, AnAnnouncedDelayWinsWithinBounds) {
  const GreylistOptions options;
  EXPECT_EQ(GreylistRetryDelay(options, 3, absl::Seconds(300)), absl::Minutes(5));
  EXPECT_EQ(GreylistRetryDelay(options, 1, absl::Minutes(30)), absl::Minutes(30));
  EXPECT_EQ(GreylistRetryDelay(options, 1, absl::Seconds(10)), absl::Minutes(1));
  EXPECT_EQ(GreylistRetryDelay(options, 1, absl::ZeroDuration()), absl::Minutes(1));
  EXPECT_EQ(GreylistRetryDelay(options, 1, absl::Hours(30)), absl::Hours(1));
}

}  // namespace
}  // namespace facteur::throttle
