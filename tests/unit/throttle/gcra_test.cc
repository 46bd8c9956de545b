// Gcra: even spacing with burst 1 and at most `count` per calendar minute over an hour of
// simulated sends (greedy and random senders), bursts, unlimited, forced acquisitions, and rate
// changes that keep the backlog.
#include "throttle/gcra.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

// A calendar minute boundary (1'800'000'000 is a multiple of 60), and a start inside a minute.
const absl::Time kMinute0 = absl::FromUnixSeconds(1'800'000'000);
const absl::Time kStart = kMinute0 + absl::Seconds(17) + absl::Milliseconds(300);

int64_t CalendarMinute(absl::Time t) { return absl::ToUnixSeconds(t) / 60; }

// A sender with unbounded demand: every event at the first instant the limiter allows.
std::vector<absl::Time> GreedySends(Gcra& gcra, absl::Time from, absl::Duration during) {
  std::vector<absl::Time> sends;
  absl::Time now = from;
  while (true) {
    now = std::max(now, gcra.NextEligible());
    if (now >= from + during) break;
    EXPECT_TRUE(gcra.TryAcquire(now)) << now;
    sends.push_back(now);
  }
  return sends;
}

TEST(GcraTest, BurstOneSpacesEventsEvenly) {
  Gcra gcra(6, absl::Minutes(1));
  EXPECT_EQ(gcra.emission_interval(), absl::Seconds(10));
  EXPECT_EQ(gcra.NextEligible(), absl::InfinitePast());
  EXPECT_TRUE(gcra.TryAcquire(kStart));
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Seconds(10));
  EXPECT_FALSE(gcra.TryAcquire(kStart));
  EXPECT_FALSE(gcra.TryAcquire(kStart + absl::Seconds(10) - absl::Nanoseconds(1)));
  EXPECT_TRUE(gcra.TryAcquire(kStart + absl::Seconds(10)));
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Seconds(20));
  // Idle time does not accumulate credit beyond the burst: after a long pause, one event, then
  // the spacing again.
  const absl::Time later = kStart + absl::Hours(1);
  EXPECT_TRUE(gcra.TryAcquire(later));
  EXPECT_FALSE(gcra.TryAcquire(later + absl::Seconds(9)));
  EXPECT_EQ(gcra.NextEligible(), later + absl::Seconds(10));
}

TEST(GcraTest, IntervalIsRoundedUpSoThatCountFitsInAPeriodAndNoMore) {
  // 60 s / 7 = 8.571428571428... s: rounded up to the nanosecond, 7 intervals are >= 60 s.
  Gcra gcra(7, absl::Minutes(1));
  EXPECT_EQ(gcra.emission_interval(), absl::Nanoseconds(8'571'428'572));
  EXPECT_GE(gcra.emission_interval() * 7, absl::Minutes(1));
  Gcra fractional(1, absl::Minutes(1));
  fractional.SetRate(7.0 / 3.0, kStart);  // 25.714285714285... s
  EXPECT_EQ(fractional.emission_interval(), absl::Nanoseconds(25'714'285'715));
}

// Over an hour, every calendar minute (and every half-open 60 s window) holds at most `count`,
// and a greedy sender gets the full rate.
TEST(GcraTest, GreedySenderGetsAtMostCountInEveryCalendarMinuteOverAnHour) {
  for (const uint32_t count : {1u, 7u, 13u, 60u, 100u, 997u}) {
    SCOPED_TRACE(count);
    Gcra gcra(count, absl::Minutes(1));
    const std::vector<absl::Time> sends = GreedySends(gcra, kStart, absl::Hours(1));
    std::map<int64_t, uint32_t> per_minute;
    for (const absl::Time t : sends) ++per_minute[CalendarMinute(t)];
    for (const auto& [minute, n] : per_minute) {
      ASSERT_LE(n, count) << "minute " << minute;
    }
    // Every full calendar minute is (nearly) full: rounding up costs at most one event.
    for (int64_t m = CalendarMinute(kStart) + 1; m < CalendarMinute(kStart + absl::Hours(1));
         ++m) {
      ASSERT_GE(per_minute[m] + 1, count) << "minute " << m;
    }
    EXPECT_GE(sends.size(), 60u * count - count / 100 - 1);
    EXPECT_LE(sends.size(), 60u * count);
    // Any half-open 60 s window: event i and event i + count are at least a minute apart.
    for (size_t i = 0; i + count < sends.size(); ++i) {
      ASSERT_GE(sends[i + count] - sends[i], absl::Minutes(1)) << "event " << i;
    }
  }
}

TEST(GcraTest, RandomSenderNeverExceedsCountPerCalendarMinute) {
  std::mt19937 random(42);
  for (const uint32_t count : {3u, 30u, 250u}) {
    SCOPED_TRACE(count);
    Gcra gcra(count, absl::Minutes(1));
    // Attempts at random instants, on average ten times as often as allowed.
    std::exponential_distribution<double> gap(10.0 * count / 60.0);
    std::map<int64_t, uint32_t> per_minute;
    uint32_t accepted = 0;
    for (absl::Time now = kStart; now < kStart + absl::Hours(1);
         now += absl::Seconds(gap(random))) {
      if (gcra.TryAcquire(now)) {
        ++per_minute[CalendarMinute(now)];
        ++accepted;
      }
    }
    for (const auto& [minute, n] : per_minute) ASSERT_LE(n, count) << "minute " << minute;
    // With demand well above the rate, most of the allowance is used (an attempt comes on
    // average a tenth of an interval after each eligible time: ~91%).
    EXPECT_GT(accepted, 60u * count * 85 / 100);
  }
}

TEST(GcraTest, BurstAllowsThatManyBackToBackThenTheRate) {
  Gcra gcra(60, absl::Minutes(1), 5);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(gcra.TryAcquire(kStart)) << i;
  EXPECT_FALSE(gcra.TryAcquire(kStart));
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Seconds(1));
  const std::vector<absl::Time> sends = GreedySends(gcra, kStart, absl::Minutes(10));
  ASSERT_GE(sends.size(), 3u);
  EXPECT_EQ(sends[0], kStart + absl::Seconds(1));
  EXPECT_EQ(sends[1] - sends[0], absl::Seconds(1));
  // In any minute-long window: at most count + burst - 1.
  std::vector<absl::Time> all(5, kStart);
  all.insert(all.end(), sends.begin(), sends.end());
  for (size_t i = 0; i + 64 < all.size(); ++i) {
    ASSERT_GE(all[i + 64] - all[i], absl::Minutes(1)) << i;
  }
  // After an idle period the burst is available again, no more.
  const absl::Time later = kStart + absl::Hours(1);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(gcra.TryAcquire(later)) << i;
  EXPECT_FALSE(gcra.TryAcquire(later));
}

TEST(GcraTest, ZeroCountIsUnlimited) {
  Gcra gcra(0, absl::Minutes(1));
  EXPECT_TRUE(gcra.unlimited());
  EXPECT_EQ(gcra.rate(), 0);
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(gcra.TryAcquire(kStart));
  EXPECT_EQ(gcra.NextEligible(), absl::InfinitePast());
  EXPECT_TRUE(Gcra(5, absl::ZeroDuration()).unlimited());
}

TEST(GcraTest, ForcedAcquisitionsArePaidFor) {
  Gcra gcra(60, absl::Minutes(1));
  for (int i = 0; i < 3; ++i) gcra.Acquire(kStart);
  // Three events at once at 1 per second: the next one is due three seconds later.
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Seconds(3));
  EXPECT_FALSE(gcra.Eligible(kStart + absl::Seconds(2)));
  EXPECT_TRUE(gcra.Eligible(kStart + absl::Seconds(3)));
}

TEST(GcraTest, SetRateKeepsTheBacklogInEvents) {
  Gcra gcra(60, absl::Minutes(1));
  for (int i = 0; i < 4; ++i) gcra.Acquire(kStart);  // next due in 4 intervals of 1 s
  gcra.SetRate(30, kStart + absl::Seconds(1));       // 3 intervals left, now 2 s each
  EXPECT_EQ(gcra.emission_interval(), absl::Seconds(2));
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Seconds(7));
  gcra.SetRate(120, kStart + absl::Seconds(1));  // 3 events left at 0.5 s
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Seconds(2) + absl::Milliseconds(500));
  // No backlog: a rate change does not move an eligible time that is already past.
  gcra.SetRate(1, kStart + absl::Minutes(5));
  EXPECT_TRUE(gcra.Eligible(kStart + absl::Minutes(5)));
  EXPECT_EQ(gcra.emission_interval(), absl::Minutes(1));
}

TEST(GcraTest, FractionalRatesAndUnlimitedTransitions) {
  Gcra gcra(0, absl::Minutes(1));
  gcra.Acquire(kStart);
  gcra.SetRate(0.5, kStart + absl::Seconds(10));  // one every two minutes, from the last event
  EXPECT_FALSE(gcra.unlimited());
  EXPECT_EQ(gcra.emission_interval(), absl::Minutes(2));
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Minutes(2));
  EXPECT_TRUE(gcra.TryAcquire(kStart + absl::Minutes(2)));
  EXPECT_EQ(gcra.NextEligible(), kStart + absl::Minutes(4));
  gcra.SetRate(0, kStart + absl::Minutes(2));
  EXPECT_TRUE(gcra.unlimited());
  EXPECT_TRUE(gcra.TryAcquire(kStart + absl::Minutes(2)));
  // Never used, then limited: nothing to pay yet.
  Gcra fresh(0, absl::Minutes(1));
  fresh.SetRate(10, kStart);
  EXPECT_TRUE(fresh.Eligible(kStart));
}

}  // namespace
}  // namespace facteur::throttle
