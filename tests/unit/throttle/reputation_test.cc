// Reputation: how replies are counted, the rolling 24-hour window and the UTC day counters, the
// health score, warmup caps by day and their reset at UTC midnight, dirty tracking, and the
// binary form of a pair's and a source's state. Every time is explicit.
#include "throttle/reputation.h"

#include <algorithm>
#include <array>
#include <initializer_list>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

using RC = ResponseClass;

absl::Time At(int year, int month, int day, int hour, int minute = 0, int second = 0) {
  return absl::FromCivil(absl::CivilSecond(year, month, day, hour, minute, second),
                         absl::UTCTimeZone());
}

// 2027-03-10 10:15 UTC: an ordinary day.
const absl::Time kT0 = At(2027, 3, 10, 10, 15);

void RecordN(PairReputation& state, int n, RC c, bool permanent, absl::Time now) {
  for (int i = 0; i < n; ++i) state.Record(c, permanent, now);
}
void RecordN(Reputation& r, std::string_view source, std::string_view site, int n, RC c,
             bool permanent, absl::Time now) {
  for (int i = 0; i < n; ++i) r.Record(source, site, c, permanent, now);
}

// --- Counting ---

TEST(ReputationCountersTest, RepliesFallIntoDisjointKinds) {
  ReputationCounters c;
  c.Add(RC::kSuccess, false);
  c.Add(RC::kSuccess, true);  // "permanent" means nothing for a success
  c.Add(RC::kGreylist, false);
  c.Add(RC::kRateLimit, false);
  c.Add(RC::kBlocklist, false);
  c.Add(RC::kBlocklist, true);
  c.Add(RC::kUserUnknown, true);
  c.Add(RC::kContent, true);
  EXPECT_EQ(c.delivered, 2u);
  EXPECT_EQ(c.deferred[static_cast<size_t>(RC::kGreylist)], 1u);
  EXPECT_EQ(c.deferred[static_cast<size_t>(RC::kRateLimit)], 1u);
  EXPECT_EQ(c.TotalDeferred(), 2u);  // the transient blocklist reply is `blocked`, not deferred
  EXPECT_EQ(c.blocked, 2u);
  EXPECT_EQ(c.bounced[static_cast<size_t>(RC::kUserUnknown)], 1u);
  EXPECT_EQ(c.bounced[static_cast<size_t>(RC::kContent)], 1u);
  EXPECT_EQ(c.TotalBounced(), 2u);
  // Final answers: 2 delivered, the permanent block, 2 bounces; deferrals wait for their retry.
  EXPECT_EQ(c.final_answers, 5u);
}

// --- Rolling window ---

TEST(PairStateTest, LastDayCoversTheCurrentHourAndThe23Before) {
  PairReputation state;
  RecordN(state, 5, RC::kSuccess, false, kT0);                      // hour 10 of day 1
  RecordN(state, 3, RC::kSuccess, false, kT0 + absl::Minutes(75));  // 11:30
  EXPECT_EQ(state.LastDay(kT0 + absl::Minutes(100)).delivered, 8u);
  // 09:59 the next day: hour 10 of day 1 is the oldest of the 24 and still in.
  EXPECT_EQ(state.LastDay(At(2027, 3, 11, 9, 59, 59)).delivered, 8u);
  // 10:00 the next day: it has left.
  EXPECT_EQ(state.LastDay(At(2027, 3, 11, 10, 0)).delivered, 3u);
  EXPECT_EQ(state.LastDay(At(2027, 3, 11, 11, 0)).delivered, 0u);
  // A query "before" the replies (a clock that stepped back) does not see them.
  EXPECT_EQ(state.LastDay(kT0 - absl::Hours(2)).delivered, 0u);
  EXPECT_EQ(state.lifetime().delivered, 8u);
}

TEST(PairStateTest, ARecycledHourSlotStartsEmpty) {
  PairReputation state;
  RecordN(state, 5, RC::kRateLimit, false, kT0);
  // Same slot (hour 10), 24 hours later: the old hour is dropped, not added to.
  state.Record(RC::kRateLimit, false, kT0 + absl::Hours(24));
  const ReputationCounters day = state.LastDay(kT0 + absl::Hours(24));
  EXPECT_EQ(day.deferred[static_cast<size_t>(RC::kRateLimit)], 1u);
  EXPECT_EQ(state.lifetime().deferred[static_cast<size_t>(RC::kRateLimit)], 6u);
  // Gaps of days in between do not matter.
  state.Record(RC::kSuccess, false, kT0 + absl::Hours(24 * 9 + 3));
  EXPECT_EQ(state.LastDay(kT0 + absl::Hours(24 * 9 + 3)).delivered, 1u);
  EXPECT_EQ(state.LastDay(kT0 + absl::Hours(24 * 9 + 3)).TotalDeferred(), 0u);
}

TEST(PairStateTest, AReplyOlderThanTheWindowCountsOnlyForLifetime) {
  PairReputation state;
  state.Record(RC::kSuccess, false, kT0);
  // 30 hours earlier (the clock stepped back): its slot (hour 4) is free, but it is outside the
  // window of the newest reply either way.
  state.Record(RC::kBlocklist, true, kT0 - absl::Hours(30));
  // 24 hours earlier: its slot holds hour 10 of today, newer; must not be added into it.
  state.Record(RC::kBlocklist, true, kT0 - absl::Hours(24));
  EXPECT_EQ(state.LastDay(kT0).blocked, 0u);
  EXPECT_EQ(state.LastDay(kT0).delivered, 1u);
  EXPECT_EQ(state.lifetime().blocked, 2u);
  EXPECT_EQ(state.last_record(), kT0);
  EXPECT_EQ(state.Today(kT0).blocked, 0u);
}

TEST(PairStateTest, ALateReplyWithinTheWindowGetsItsOwnHour) {
  PairReputation state;
  state.Record(RC::kSuccess, false, kT0);                      // hour 10
  state.Record(RC::kRateLimit, false, kT0 - absl::Hours(5));   // hour 5, which had no reply
  state.Record(RC::kSuccess, false, kT0 - absl::Hours(2));     // hour 8, between the two
  state.Record(RC::kSuccess, false, kT0 - absl::Hours(5));     // hour 5 again
  EXPECT_EQ(state.LastDay(kT0).delivered, 3u);
  EXPECT_EQ(state.LastDay(kT0).TotalDeferred(), 1u);
  // Seen from hour 5, only hour 5 counts; from 05:00 the next day, only hour 8 and hour 10.
  EXPECT_EQ(state.LastDay(kT0 - absl::Hours(5)).delivered, 1u);
  EXPECT_EQ(state.LastDay(kT0 + absl::Hours(18)).TotalDeferred(), 1u);  // 04:15: hour 5 is in
  EXPECT_EQ(state.LastDay(kT0 + absl::Hours(19)).delivered, 2u);
  EXPECT_EQ(state.LastDay(kT0 + absl::Hours(19)).TotalDeferred(), 0u);
  // A newer hour pushes out the hours that leave its window, and only those.
  state.Record(RC::kSuccess, false, kT0 + absl::Hours(19));  // hour 5 the next day
  EXPECT_EQ(state.LastDay(kT0 + absl::Hours(19)).delivered, 3u);
  absl::StatusOr<PairReputation> back = PairReputation::Deserialize(state.Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->Serialize(), state.Serialize());
  EXPECT_EQ(back->LastDay(kT0 + absl::Hours(19)).delivered, 3u);
}

// --- UTC days ---

TEST(PairStateTest, TodayAndYesterdayRollOverAtUtcMidnight) {
  PairReputation state;
  RecordN(state, 4, RC::kSuccess, false, At(2027, 3, 10, 23, 59, 59));
  EXPECT_EQ(state.Today(At(2027, 3, 10, 23, 59, 59)).delivered, 4u);
  EXPECT_EQ(state.Today(At(2027, 3, 11, 0, 0, 0)).delivered, 0u);
  EXPECT_EQ(state.Yesterday(At(2027, 3, 11, 0, 0, 0)).delivered, 4u);
  RecordN(state, 2, RC::kSuccess, false, At(2027, 3, 11, 0, 0, 1));
  EXPECT_EQ(state.Today(At(2027, 3, 11, 12, 0)).delivered, 2u);
  EXPECT_EQ(state.Yesterday(At(2027, 3, 11, 12, 0)).delivered, 4u);
  // A late reply stamped yesterday goes to yesterday.
  state.Record(RC::kSuccess, false, At(2027, 3, 10, 22, 0));
  EXPECT_EQ(state.Yesterday(At(2027, 3, 11, 12, 0)).delivered, 5u);
  // Two days later, nothing is "today" or "yesterday".
  EXPECT_EQ(state.Yesterday(At(2027, 3, 13, 0, 0)).delivered, 0u);
  // A skipped day: the day before the new reply had none.
  state.Record(RC::kSuccess, false, At(2027, 3, 13, 8, 0));
  EXPECT_EQ(state.Today(At(2027, 3, 13, 9, 0)).delivered, 1u);
  EXPECT_EQ(state.Yesterday(At(2027, 3, 13, 9, 0)).delivered, 0u);
}

TEST(CalendarTest, DaysHoursAndMidnightsAreUtcAndFloorBeforeTheEpoch) {
  EXPECT_EQ(UtcDay(absl::UnixEpoch()), 0);
  EXPECT_EQ(UtcDay(absl::UnixEpoch() - absl::Seconds(1)), -1);
  EXPECT_EQ(UtcHour(absl::UnixEpoch() - absl::Seconds(1)), -1);
  EXPECT_EQ(UtcDay(At(2027, 3, 10, 23, 59, 59)) + 1, UtcDay(At(2027, 3, 11, 0, 0, 0)));
  EXPECT_EQ(NextUtcMidnight(At(2027, 3, 10, 23, 59, 59)), At(2027, 3, 11, 0, 0, 0));
  EXPECT_EQ(NextUtcMidnight(At(2027, 3, 11, 0, 0, 0)), At(2027, 3, 12, 0, 0, 0));
  EXPECT_EQ(NextUtcMidnight(At(2027, 12, 31, 13, 0)), At(2028, 1, 1, 0, 0));
  EXPECT_EQ(Reputation::WarmupResetsAt(kT0), At(2027, 3, 11, 0, 0));
}

// --- Health ---

TEST(HealthScoreTest, FormulaValues) {
  const ReputationOptions options;
  ReputationCounters c;
  EXPECT_DOUBLE_EQ(HealthScore(c, options), 1.0);  // no data: neutral
  for (int i = 0; i < 90; ++i) c.Add(RC::kSuccess, false);
  EXPECT_DOUBLE_EQ(HealthScore(c, options), 1.0);
  for (int i = 0; i < 10; ++i) c.Add(RC::kRateLimit, false);
  c.Add(RC::kBlocklist, true);
  EXPECT_DOUBLE_EQ(HealthScore(c, options), 90.0 / (90 + 10 + 3));
  // Greylisting, unknown users, full mailboxes and missing domains weigh nothing.
  for (int i = 0; i < 50; ++i) {
    c.Add(RC::kGreylist, false);
    c.Add(RC::kUserUnknown, true);
    c.Add(RC::kMailboxFull, false);
    c.Add(RC::kDomainNotFound, true);
  }
  EXPECT_DOUBLE_EQ(HealthScore(c, options), 90.0 / (90 + 10 + 3));

  ReputationCounters d;
  d.Add(RC::kSuccess, false);
  d.Add(RC::kOtherTransient, false);
  d.Add(RC::kOtherTransient, false);  // 0.5 each
  EXPECT_DOUBLE_EQ(HealthScore(d, options), 0.5);
  d.Add(RC::kContent, true);  // 1
  EXPECT_DOUBLE_EQ(HealthScore(d, options), 1.0 / 3);

  ReputationCounters only_greylist;
  only_greylist.Add(RC::kGreylist, false);
  EXPECT_DOUBLE_EQ(HealthScore(only_greylist, options), 1.0);
  ReputationCounters only_blocked;
  only_blocked.Add(RC::kBlocklist, false);
  EXPECT_DOUBLE_EQ(HealthScore(only_blocked, options), 0.0);
}

TEST(HealthScoreTest, ShapingCanTakeAClassOutOfTheScore) {
  ShapingOptions shaping;
  shaping.actions[static_cast<size_t>(RC::kRateLimit)].reputation_hit = false;
  shaping.actions[static_cast<size_t>(RC::kBlocklist)].reputation_hit = false;
  const ReputationOptions options = ReputationOptionsFrom(shaping);
  EXPECT_EQ(options.deferral_weight[static_cast<size_t>(RC::kRateLimit)], 0.0);
  EXPECT_EQ(options.block_weight, 0.0);
  EXPECT_EQ(options.deferral_weight[static_cast<size_t>(RC::kContent)], 1.0);
  ReputationCounters c;
  c.Add(RC::kSuccess, false);
  c.Add(RC::kRateLimit, false);
  c.Add(RC::kBlocklist, true);
  EXPECT_DOUBLE_EQ(HealthScore(c, options), 1.0);
  EXPECT_DOUBLE_EQ(HealthScore(c, ReputationOptions()), 0.2);
}

TEST(ReputationTest, HealthRecoversAsBadRepliesLeaveTheWindow) {
  Reputation reputation;
  EXPECT_DOUBLE_EQ(reputation.Health("ip1", "google", kT0), 1.0);  // never seen
  RecordN(reputation, "ip1", "google", 3, RC::kSuccess, false, kT0);
  reputation.Record("ip1", "google", RC::kBlocklist, true, kT0);
  EXPECT_DOUBLE_EQ(reputation.Health("ip1", "google", kT0), 0.5);
  RecordN(reputation, "ip1", "google", 3, RC::kSuccess, false, kT0 + absl::Hours(5));
  EXPECT_DOUBLE_EQ(reputation.Health("ip1", "google", kT0 + absl::Hours(5)), 6.0 / 9);
  // 24 hours after the block: only the later deliveries remain.
  EXPECT_DOUBLE_EQ(reputation.Health("ip1", "google", kT0 + absl::Hours(24)), 1.0);
  // Other pairs are not affected.
  EXPECT_DOUBLE_EQ(reputation.Health("ip2", "google", kT0), 1.0);
  EXPECT_DOUBLE_EQ(reputation.Health("ip1", "orange", kT0), 1.0);
}

// --- Warmup ---

TEST(WarmupTest, FindWarmupPlanFollowsThePoolMapping) {
  ShapingOptions shaping;
  shaping.warmup_plans = {{"slow", {10, 20}}, {"fast", {100}}};
  shaping.pool_warmup = {{"new-ips", "slow"}, {"bulk", "fast"}, {"broken", "missing"}};
  ASSERT_NE(FindWarmupPlan(shaping, "new-ips"), nullptr);
  EXPECT_EQ(FindWarmupPlan(shaping, "new-ips")->name, "slow");
  EXPECT_EQ(FindWarmupPlan(shaping, "bulk")->name, "fast");
  EXPECT_EQ(FindWarmupPlan(shaping, "default"), nullptr);
  EXPECT_EQ(FindWarmupPlan(shaping, "broken"), nullptr);
}

TEST(WarmupTest, CapsFollowThePlanDayByDayFromFirstUse) {
  const WarmupPlan plan{"ramp", {50, 100, 200}};
  Reputation reputation;
  // Never used: it would be on day 1 now.
  EXPECT_EQ(reputation.WarmupDay("ip1", kT0), std::nullopt);
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "google", kT0), 50u);
  EXPECT_EQ(reputation.WarmupCap("ip1", nullptr, "google", kT0), std::nullopt);

  reputation.Record("ip1", "google", RC::kSuccess, false, At(2027, 3, 10, 23, 30));
  EXPECT_EQ(reputation.FirstUse("ip1"), At(2027, 3, 10, 23, 30));
  EXPECT_EQ(reputation.WarmupDay("ip1", At(2027, 3, 10, 23, 59, 59)), 1u);
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "google", At(2027, 3, 10, 23, 59, 59)), 50u);
  // Day 2 starts at UTC midnight, 30 minutes after first use.
  EXPECT_EQ(reputation.WarmupDay("ip1", At(2027, 3, 11, 0, 0)), 2u);
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "google", At(2027, 3, 11, 0, 0)), 100u);
  // The cap is the source's day, the same for a site it never sent to.
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "orange", At(2027, 3, 11, 0, 0)), 100u);
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "google", At(2027, 3, 12, 23, 59, 59)), 200u);
  // Past the plan: warm, no cap.
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "google", At(2027, 3, 13, 0, 0)), std::nullopt);
  EXPECT_EQ(reputation.WarmupDay("ip1", At(2027, 3, 13, 0, 0)), 4u);
  // Later replies do not move the first use.
  reputation.Record("ip1", "orange", RC::kSuccess, false, At(2027, 3, 12, 8, 0));
  EXPECT_EQ(reputation.FirstUse("ip1"), At(2027, 3, 10, 23, 30));
  // A source declared warm.
  reputation.SetFirstUse("ip2", At(2026, 1, 1, 0, 0));
  EXPECT_EQ(reputation.WarmupCap("ip2", &plan, "google", kT0), std::nullopt);
}

TEST(WarmupTest, SentTodayCountsFinalAnswersAndResetsAtUtcMidnight) {
  const WarmupPlan plan{"ramp", {3, 5}};
  Reputation reputation;
  const absl::Time evening = At(2027, 3, 10, 22, 0);
  reputation.Record("ip1", "google", RC::kSuccess, false, evening);
  reputation.Record("ip1", "google", RC::kGreylist, false, evening);    // retried: not yet
  reputation.Record("ip1", "google", RC::kRateLimit, false, evening);   // retried: not yet
  reputation.Record("ip1", "google", RC::kUserUnknown, true, evening);  // final
  EXPECT_EQ(reputation.SentToday("ip1", "google", evening), 2u);
  EXPECT_EQ(reputation.SentToday("ip1", "orange", evening), 0u);
  const std::optional<WarmupStanding> standing = reputation.Warmup("ip1", &plan, "google", evening);
  ASSERT_TRUE(standing.has_value());
  EXPECT_EQ((std::array{standing->day, standing->cap, standing->sent_today}),
            (std::array{1u, 3u, 2u}));
  EXPECT_FALSE(standing->spent());
  EXPECT_TRUE(standing->Allows(/*in_flight=*/0));
  // One already in flight fills the third slot.
  EXPECT_FALSE(standing->Allows(/*in_flight=*/1));
  reputation.Record("ip1", "google", RC::kSuccess, false, evening + absl::Minutes(5));
  const absl::Time late = At(2027, 3, 10, 23, 59, 59);
  EXPECT_EQ(reputation.SentToday("ip1", "google", late), 3u);
  EXPECT_TRUE(reputation.Warmup("ip1", &plan, "google", late)->spent());
  EXPECT_FALSE(reputation.Warmup("ip1", &plan, "google", late)->Allows(0));
  EXPECT_TRUE(reputation.Warmup("ip1", &plan, "orange", late)->Allows(0));  // per site
  EXPECT_FALSE(reputation.Warmup("ip1", nullptr, "google", late).has_value());  // no plan
  // The caller sleeps until the reset, then may send again: a new day, a new count, day 2's cap.
  const absl::Time reset = Reputation::WarmupResetsAt(late);
  EXPECT_EQ(reset, At(2027, 3, 11, 0, 0));
  EXPECT_EQ(reputation.SentToday("ip1", "google", reset), 0u);
  EXPECT_EQ(reputation.WarmupCap("ip1", &plan, "google", reset), 5u);
  const std::optional<WarmupStanding> day2 = reputation.Warmup("ip1", &plan, "google", reset);
  ASSERT_TRUE(day2.has_value());
  EXPECT_EQ((std::array{day2->day, day2->cap, day2->sent_today}), (std::array{2u, 5u, 0u}));
  EXPECT_TRUE(day2->Allows(/*in_flight=*/4));
  EXPECT_FALSE(day2->Allows(/*in_flight=*/5));
  // Past the plan: no standing, no cap.
  EXPECT_FALSE(reputation.Warmup("ip1", &plan, "google", reset + absl::Hours(24)).has_value());
}

TEST(WarmupTest, NearerItsCapComparesTheSharesUsed) {
  const WarmupStanding half{1, 10, 5}, most{2, 100, 90}, spent{1, 10, 10}, none{1, 0, 0};
  EXPECT_TRUE(most.NearerItsCapThan(half));
  EXPECT_FALSE(half.NearerItsCapThan(most));
  EXPECT_TRUE(spent.NearerItsCapThan(most));
  EXPECT_FALSE(spent.NearerItsCapThan(WarmupStanding{3, 4, 4}));  // both used up: not nearer
  EXPECT_TRUE(none.NearerItsCapThan(spent));
  EXPECT_FALSE(spent.NearerItsCapThan(none));
  const WarmupStanding huge{9, 4000000000u, 3999999999u};  // no overflow
  EXPECT_TRUE(huge.NearerItsCapThan(WarmupStanding{9, 4000000000u, 3999999998u}));
}

TEST(WarmupTest, WarmupReportsListTheCappedSourcesPairs) {
  const WarmupPlan plan{"ramp", {3, 5}};
  Reputation reputation;
  const absl::Time day1 = At(2027, 3, 10, 9, 0);
  reputation.Record("new", "google", RC::kSuccess, false, day1);
  reputation.Record("new", "google", RC::kGreylist, false, day1);  // not final
  reputation.Record("new", "orange", RC::kSuccess, false, day1);
  reputation.Record("warm", "google", RC::kSuccess, false, day1);  // no plan
  reputation.Record("old", "google", RC::kSuccess, false, day1);
  reputation.SetFirstUse("old", At(2027, 1, 1, 0, 0));  // past its plan
  auto plan_of = [&plan](const std::string& source) -> const WarmupPlan* {
    return source == "warm" ? nullptr : &plan;
  };
  std::vector<Reputation::WarmupReport> reports = reputation.WarmupReports(plan_of, day1);
  std::sort(reports.begin(), reports.end(), [](const auto& a, const auto& b) {
    return std::tie(a.source, a.site) < std::tie(b.source, b.site);
  });
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ((std::tie(reports[0].source, reports[0].site)), std::make_tuple("new", "google"));
  EXPECT_EQ((std::array{reports[0].standing.day, reports[0].standing.cap,
                        reports[0].standing.sent_today}),
            (std::array{1u, 3u, 1u}));
  EXPECT_EQ((std::tie(reports[1].source, reports[1].site)), std::make_tuple("new", "orange"));
  // Day 2: day 2's cap and a new day's count; day 3: past the plan, nothing.
  reports = reputation.WarmupReports(plan_of, day1 + absl::Hours(24));
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ((std::array{reports[0].standing.day, reports[0].standing.cap,
                        reports[0].standing.sent_today}),
            (std::array{2u, 5u, 0u}));
  EXPECT_TRUE(reputation.WarmupReports(plan_of, day1 + absl::Hours(48)).empty());
}

// --- Reports ---

TEST(ReputationTest, ReportListsPairsSortedWithTheirWindowAndWarmupDay) {
  Reputation reputation;
  RecordN(reputation, "ip2", "orange", 2, RC::kSuccess, false, kT0);
  RecordN(reputation, "ip1", "orange", 1, RC::kRateLimit, false, kT0);
  RecordN(reputation, "ip1", "google", 4, RC::kSuccess, false, kT0 - absl::Hours(25));
  reputation.Record("ip1", "google", RC::kBlocklist, false, kT0);
  const std::vector<PairReport> report = reputation.Report(kT0 + absl::Minutes(1));
  ASSERT_EQ(report.size(), 3u);
  EXPECT_EQ(reputation.pair_count(), 3u);
  EXPECT_EQ(report[0].source, "ip1");
  EXPECT_EQ(report[0].site, "google");
  EXPECT_EQ(report[0].last_day.delivered, 0u);  // 25 hours ago
  EXPECT_EQ(report[0].last_day.blocked, 1u);
  EXPECT_EQ(report[0].lifetime.delivered, 4u);
  EXPECT_DOUBLE_EQ(report[0].health, 0.0);
  EXPECT_EQ(report[0].warmup_day, 2u);  // ip1 first sent yesterday
  EXPECT_EQ(report[0].last_record, kT0);
  EXPECT_EQ(report[1].site, "orange");
  EXPECT_DOUBLE_EQ(report[1].health, 0.0);
  EXPECT_EQ(report[2].source, "ip2");
  EXPECT_EQ(report[2].today.delivered, 2u);
  EXPECT_EQ(report[2].warmup_day, 1u);
}

// --- Persistence form ---

PairReputation BusyPair() {
  PairReputation state;
  RecordN(state, 7, RC::kSuccess, false, kT0 - absl::Hours(40));  // lifetime only
  RecordN(state, 3, RC::kSuccess, false, kT0 - absl::Hours(20));  // yesterday, in the window
  RecordN(state, 2, RC::kGreylist, false, kT0 - absl::Hours(20));
  RecordN(state, 300, RC::kSuccess, false, kT0);
  RecordN(state, 2, RC::kRateLimit, false, kT0);
  state.Record(RC::kBlocklist, true, kT0 + absl::Minutes(3));
  state.Record(RC::kUserUnknown, true, kT0 + absl::Minutes(4));
  state.Record(RC::kOtherPermanent, true, kT0 + absl::Minutes(4));
  return state;
}

void ExpectSameState(const PairReputation& a, const PairReputation& b, absl::Time now) {
  EXPECT_EQ(a.LastDay(now), b.LastDay(now));
  EXPECT_EQ(a.Today(now), b.Today(now));
  EXPECT_EQ(a.Yesterday(now), b.Yesterday(now));
  EXPECT_EQ(a.lifetime(), b.lifetime());
  EXPECT_EQ(a.last_record(), b.last_record());
}

TEST(PairStateSerializeTest, RoundTripKeepsWhatCanBeQueried) {
  const PairReputation state = BusyPair();
  const std::string bytes = state.Serialize();
  EXPECT_LT(bytes.size(), 80u);  // compact: sparse counters, only live buckets
  absl::StatusOr<PairReputation> back = PairReputation::Deserialize(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  for (absl::Duration d : {absl::ZeroDuration(), absl::Hours(3), absl::Hours(20), absl::Hours(30)}) {
    ExpectSameState(state, *back, kT0 + d);
  }
  EXPECT_EQ(back->Serialize(), bytes);
  EXPECT_EQ(back->LastDay(kT0).delivered, 303u);
  EXPECT_EQ(back->Yesterday(kT0).delivered, 3u);
  // It keeps counting where it left off.
  PairReputation copy = *back;
  copy.Record(RC::kSuccess, false, kT0 + absl::Hours(1));
  EXPECT_EQ(copy.LastDay(kT0 + absl::Hours(1)).delivered, 304u);
  EXPECT_EQ(copy.Today(kT0 + absl::Hours(1)).final_answers, 304u);  // 300 + 3 permanent + 1
}

TEST(PairStateSerializeTest, EmptyStateRoundTrips) {
  const PairReputation empty;
  absl::StatusOr<PairReputation> back = PairReputation::Deserialize(empty.Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameState(empty, *back, kT0);
  EXPECT_EQ(back->last_record(), absl::InfinitePast());
}

TEST(PairStateSerializeTest, MalformedBytesAreDataLoss) {
  const std::string bytes = BusyPair().Serialize();
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_EQ(PairReputation::Deserialize(bytes.substr(0, n)).status().code(),
              absl::StatusCode::kDataLoss)
        << "prefix of " << n << " bytes";
  }
  EXPECT_EQ(PairReputation::Deserialize(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
  std::string wrong_version = bytes;
  wrong_version[0] = 2;
  EXPECT_EQ(PairReputation::Deserialize(wrong_version).status().code(), absl::StatusCode::kDataLoss);
  // version 1, flags 0, lifetime with a class bit past the last class.
  const std::string bad_mask("\x01\x00\x00\x00\x00\x80\x40\x00", 8);
  EXPECT_EQ(PairReputation::Deserialize(bad_mask).status().code(), absl::StatusCode::kDataLoss);
  // A zero count behind a set bit is not the canonical form.
  const std::string zero_count("\x01\x00\x00\x00\x00\x01\x00\x00\x00", 9);
  EXPECT_EQ(PairReputation::Deserialize(zero_count).status().code(), absl::StatusCode::kDataLoss);
  // Buckets (zigzag hour, then counters: one delivered) must be in increasing hour order and
  // within one window of the newest.
  const std::string one_delivered("\x01\x00\x00\x00\x00", 5);
  const std::string no_day("\x01\x00\x00\x00\x00\x00\x00", 7);  // version, flags, lifetime 0
  const auto with_buckets = [&](std::initializer_list<char> hours) {
    std::string out = no_day;
    out.push_back(static_cast<char>(hours.size()));
    for (char hour : hours) out += std::string(1, hour) + one_delivered;
    return out;
  };
  EXPECT_TRUE(PairReputation::Deserialize(with_buckets({'\x02', '\x30'})).ok());  // 1 and 24
  for (const std::string& bad : {with_buckets({'\x04', '\x02'}), with_buckets({'\x04', '\x04'}),
                                 with_buckets({'\x02', '\x32'})}) {  // 2, 1; 2, 2; 1 and 25
    EXPECT_EQ(PairReputation::Deserialize(bad).status().code(), absl::StatusCode::kDataLoss);
  }
  const std::string ok("\x01\x00\x00\x00\x00\x01\x05\x00\x00", 9);
  absl::StatusOr<PairReputation> parsed = PairReputation::Deserialize(ok);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->lifetime().deferred[0], 5u);
}

TEST(SourceStateTest, RoundTrip) {
  SourceState used;
  used.first_use = At(2027, 3, 10, 23, 30, 15) + absl::Microseconds(7);
  absl::StatusOr<SourceState> back = SourceState::Deserialize(used.Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->first_use, used.first_use);
  back = SourceState::Deserialize(SourceState().Serialize());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->first_use, absl::InfinitePast());
  EXPECT_FALSE(SourceState::Deserialize("").ok());
  EXPECT_FALSE(SourceState::Deserialize(used.Serialize() + "x").ok());
}

// --- Dirty tracking and restore ---

TEST(ReputationTest, TakeDirtyReturnsWhatChangedOnce) {
  Reputation reputation;
  reputation.Record("ip1", "google", RC::kSuccess, false, kT0);
  reputation.Record("ip1", "orange", RC::kSuccess, false, kT0);
  ReputationDelta delta = reputation.TakeDirty();
  EXPECT_EQ(delta.pairs.size(), 2u);
  ASSERT_EQ(delta.sources.size(), 1u);  // first use of ip1
  EXPECT_EQ(delta.sources[0].source, "ip1");
  EXPECT_TRUE(reputation.TakeDirty().empty());

  reputation.Record("ip1", "google", RC::kRateLimit, false, kT0 + absl::Minutes(1));
  delta = reputation.TakeDirty();
  ASSERT_EQ(delta.pairs.size(), 1u);
  EXPECT_EQ(delta.pairs[0].site, "google");
  EXPECT_TRUE(delta.sources.empty());  // first use unchanged
  EXPECT_EQ(delta.pairs[0].value, reputation.Pair("ip1", "google")->Serialize());

  // A failed write puts them back; the retry carries the state of its own time.
  reputation.Redirty(delta);
  reputation.Record("ip1", "google", RC::kSuccess, false, kT0 + absl::Minutes(2));
  ReputationDelta retry = reputation.TakeDirty();
  ASSERT_EQ(retry.pairs.size(), 1u);
  EXPECT_EQ(retry.pairs[0].value, reputation.Pair("ip1", "google")->Serialize());
  EXPECT_NE(retry.pairs[0].value, delta.pairs[0].value);
}

TEST(ReputationTest, RestoreRebuildsTheSameReportWithoutMarkingDirty) {
  Reputation original;
  RecordN(original, "ip1", "google", 10, RC::kSuccess, false, kT0 - absl::Hours(26));
  RecordN(original, "ip1", "google", 2, RC::kBlocklist, false, kT0);
  RecordN(original, "ip2", "orange", 5, RC::kSuccess, false, kT0);
  const ReputationDelta delta = original.TakeDirty();

  Reputation restored;
  for (const ReputationDelta::Pair& pair : delta.pairs) {
    ASSERT_TRUE(restored.RestorePair(pair.source, pair.site, pair.value).ok());
  }
  for (const ReputationDelta::Source& source : delta.sources) {
    ASSERT_TRUE(restored.RestoreSource(source.source, source.value).ok());
  }
  EXPECT_TRUE(restored.TakeDirty().empty());
  EXPECT_EQ(restored.FirstUse("ip1"), kT0 - absl::Hours(26));
  const std::vector<PairReport> a = original.Report(kT0);
  const std::vector<PairReport> b = restored.Report(kT0);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].source, b[i].source);
    EXPECT_EQ(a[i].site, b[i].site);
    EXPECT_EQ(a[i].last_day, b[i].last_day);
    EXPECT_EQ(a[i].lifetime, b[i].lifetime);
    EXPECT_EQ(a[i].health, b[i].health);
    EXPECT_EQ(a[i].warmup_day, b[i].warmup_day);
  }
  EXPECT_EQ(restored.RestorePair("ip3", "x", "garbage").code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(restored.Pair("ip3", "x").has_value());
}

}  // namespace
}  // namespace facteur::throttle
