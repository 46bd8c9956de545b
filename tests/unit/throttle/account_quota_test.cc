// AccountQuotaTable with explicit times: the hourly and daily UTC windows and the times their
// refusals announce, recipients per message, per-account overrides, refunds; the anomaly
// detection against an account's own history (fires within seconds of a burst from a quiet
// account, not on steady or busy-but-regular accounts, not on a new account's first 50
// messages), resume, and the state's round trip through TakeDirty/Load.
#include "throttle/account_quota.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

using ::testing::HasSubstr;

// 2027-01-15 13:20:00 UTC.
absl::Time At(int day, int hour, int minute, int second = 0) {
  return absl::FromCivil(absl::CivilSecond(2027, 1, day, hour, minute, second),
                         absl::UTCTimeZone());
}

AccountQuotaOptions Limits(uint32_t per_hour, uint32_t per_day, uint32_t recipients = 0) {
  AccountQuotaOptions options;
  options.defaults.messages_per_hour = per_hour;
  options.defaults.messages_per_day = per_day;
  options.defaults.recipients_per_message = recipients;
  return options;
}

AccountQuotaOptions NoLimits() { return Limits(0, 0, 0); }

TEST(AccountQuotaTest, HourlyQuotaRefusesWith450UntilTheNextClockHour) {
  AccountQuotaOptions options = Limits(3, 0);
  options.anomaly.enabled = false;
  AccountQuotaTable table(options);
  EXPECT_FALSE(table.CheckMessage("alice", At(15, 13, 20)).has_value());
  for (int i = 0; i < 3; ++i) {
    AdmitDecision admitted = table.Admit("alice", At(15, 13, 20 + i));
    EXPECT_FALSE(admitted.refusal.has_value()) << i;
  }
  std::optional<QuotaRefusal> refusal = table.CheckMessage("alice", At(15, 13, 40));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->code, 450);
  EXPECT_EQ(refusal->enhanced, "4.7.1");
  EXPECT_EQ(refusal->reason, QuotaReason::kHourly);
  EXPECT_EQ(refusal->text,
            "Hourly sending quota of 3 messages reached for account alice, try again after "
            "14:00 UTC");
  AdmitDecision over = table.Admit("alice", At(15, 13, 59, 59));
  ASSERT_TRUE(over.refusal.has_value());
  EXPECT_EQ(over.refusal->code, 450);
  // Another account is not affected.
  EXPECT_FALSE(table.Admit("bob", At(15, 13, 41)).refusal.has_value());
  // The next hour starts empty.
  EXPECT_FALSE(table.CheckMessage("alice", At(15, 14, 0)).has_value());
  EXPECT_FALSE(table.Admit("alice", At(15, 14, 0)).refusal.has_value());
  EXPECT_EQ(table.Get("alice", At(15, 14, 1))->hour_count, 1u);
}

TEST(AccountQuotaTest, HourEndingAtMidnightNamesTheDate) {
  AccountQuotaOptions options = Limits(1, 0);
  options.anomaly.enabled = false;
  AccountQuotaTable table(options);
  EXPECT_FALSE(table.Admit("alice", At(15, 23, 10)).refusal.has_value());
  std::optional<QuotaRefusal> refusal = table.CheckMessage("alice", At(15, 23, 30));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_THAT(refusal->text, HasSubstr("try again after 2027-01-16 00:00 UTC"));
}

TEST(AccountQuotaTest, DailyQuotaCountsAcrossHoursAndEndsAtUtcMidnight) {
  AccountQuotaOptions options = Limits(0, 5);
  options.anomaly.enabled = false;
  AccountQuotaTable table(options);
  for (int hour = 8; hour < 13; ++hour) {
    EXPECT_FALSE(table.Admit("alice", At(15, hour, 0)).refusal.has_value()) << hour;
  }
  std::optional<QuotaRefusal> refusal = table.CheckMessage("alice", At(15, 22, 0));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->code, 450);
  EXPECT_EQ(refusal->enhanced, "4.7.1");
  EXPECT_EQ(refusal->reason, QuotaReason::kDaily);
  EXPECT_EQ(refusal->text,
            "Daily sending quota of 5 messages reached for account alice, try again after "
            "2027-01-16 00:00 UTC");
  EXPECT_TRUE(table.Admit("alice", At(15, 23, 59, 59)).refusal.has_value());
  EXPECT_FALSE(table.CheckMessage("alice", At(16, 0, 0)).has_value());
  EXPECT_FALSE(table.Admit("alice", At(16, 0, 0)).refusal.has_value());
}

TEST(AccountQuotaTest, WhenBothAreFullTheDayIsAnnounced) {
  AccountQuotaOptions options = Limits(2, 2);
  options.anomaly.enabled = false;
  AccountQuotaTable table(options);
  table.Admit("alice", At(15, 13, 0));
  table.Admit("alice", At(15, 13, 1));
  std::optional<QuotaRefusal> refusal = table.CheckMessage("alice", At(15, 13, 2));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->reason, QuotaReason::kDaily);
}

TEST(AccountQuotaTest, RecipientsPerMessageRefusedWith452PastTheLimit) {
  AccountQuotaTable table(Limits(0, 0, 100));
  EXPECT_FALSE(table.CheckRecipients("alice", 1).has_value());
  EXPECT_FALSE(table.CheckRecipients("alice", 100).has_value());
  std::optional<QuotaRefusal> refusal = table.CheckRecipients("alice", 101);
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->code, 452);
  EXPECT_EQ(refusal->enhanced, "4.5.3");
  EXPECT_EQ(refusal->reason, QuotaReason::kRecipients);
  EXPECT_THAT(refusal->text, HasSubstr("at most 100 recipients"));
  // 0 is unlimited.
  AccountQuotaTable unlimited(NoLimits());
  EXPECT_FALSE(unlimited.CheckRecipients("alice", 100000).has_value());
}

TEST(AccountQuotaTest, PerAccountLimitsReplaceTheDefaults) {
  AccountQuotaOptions options = Limits(1, 0, 10);
  options.anomaly.enabled = false;
  options.per_account.push_back(
      {"bulk", AccountLimits{.messages_per_hour = 3, .messages_per_day = 0,
                             .recipients_per_message = 0, .detect_anomalies = false}});
  AccountQuotaTable table(options);
  EXPECT_EQ(table.LimitsOf("bulk").messages_per_hour, 3u);
  EXPECT_EQ(table.LimitsOf("other").messages_per_hour, 1u);
  EXPECT_FALSE(table.CheckRecipients("bulk", 5000).has_value());
  EXPECT_TRUE(table.CheckRecipients("other", 11).has_value());
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(table.Admit("bulk", At(15, 10, i)).refusal.has_value());
  EXPECT_TRUE(table.Admit("bulk", At(15, 10, 5)).refusal.has_value());
  EXPECT_FALSE(table.Admit("other", At(15, 10, 5)).refusal.has_value());
  EXPECT_TRUE(table.Admit("other", At(15, 10, 6)).refusal.has_value());
}

TEST(AccountQuotaTest, RefundGivesBackAMessageThatWasNotQueued) {
  AccountQuotaOptions options = Limits(1, 0);
  options.anomaly.enabled = false;
  AccountQuotaTable table(options);
  EXPECT_FALSE(table.Admit("alice", At(15, 10, 0)).refusal.has_value());
  EXPECT_TRUE(table.CheckMessage("alice", At(15, 10, 1)).has_value());
  table.Refund("alice", At(15, 10, 0));
  EXPECT_FALSE(table.CheckMessage("alice", At(15, 10, 1)).has_value());
  // A refund for a window that has ended changes nothing in the new one.
  EXPECT_FALSE(table.Admit("alice", At(15, 11, 0)).refusal.has_value());
  table.Refund("alice", At(15, 10, 30));
  EXPECT_TRUE(table.CheckMessage("alice", At(15, 11, 1)).has_value());
}

// Feeds `count` messages spread evenly over [from, from + span). Returns the time of the first
// refusal, or InfiniteFuture.
absl::Time Feed(AccountQuotaTable& table, const std::string& account, absl::Time from,
                absl::Duration span, int count, AdmitDecision* refused = nullptr) {
  for (int i = 0; i < count; ++i) {
    const absl::Time t = from + span * i / count;
    AdmitDecision decision = table.Admit(account, t);
    if (decision.refusal.has_value()) {
      if (refused != nullptr) *refused = decision;
      return t;
    }
  }
  return absl::InfiniteFuture();
}

// Three days of about 20 messages an hour: one every 3 minutes.
void QuietHistory(AccountQuotaTable& table, const std::string& account, absl::Time start) {
  ASSERT_EQ(Feed(table, account, start, absl::Hours(72), 72 * 20), absl::InfiniteFuture());
}

TEST(AccountQuotaTest, BurstFromAQuietAccountSuspendsItWithinSeconds) {
  AccountQuotaTable table(NoLimits());
  const absl::Time start = At(10, 0, 0);
  QuietHistory(table, "alice", start);
  const absl::Time history_end = start + absl::Hours(72);
  EXPECT_NEAR(AccountQuotaTable::UsualRate(*table.Get("alice", history_end)), 20.0, 1.0);

  // 1000 messages at 10 a second.
  const absl::Time burst = history_end + absl::Minutes(7);
  AdmitDecision decision;
  const absl::Time fired = Feed(table, "alice", burst, absl::Seconds(100), 1000, &decision);
  ASSERT_NE(fired, absl::InfiniteFuture()) << "the burst was never detected";
  EXPECT_LE(fired - burst, absl::Seconds(10));
  EXPECT_TRUE(decision.suspended_now);
  EXPECT_GT(decision.rate_per_hour, 10 * decision.usual_per_hour);
  ASSERT_TRUE(decision.refusal.has_value());
  EXPECT_EQ(decision.refusal->code, 550);
  EXPECT_EQ(decision.refusal->enhanced, "5.7.1");
  EXPECT_EQ(decision.refusal->reason, QuotaReason::kSuspended);
  EXPECT_THAT(decision.refusal->text,
              HasSubstr("suspended for unusual sending volume; contact the administrator"));

  // Every further message is refused, at MAIL and at the end of data, even hours later.
  std::optional<QuotaRefusal> later = table.CheckMessage("alice", fired + absl::Hours(5));
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(later->code, 550);
  AdmitDecision again = table.Admit("alice", fired + absl::Seconds(1));
  ASSERT_TRUE(again.refusal.has_value());
  EXPECT_FALSE(again.suspended_now);  // one suspension, one event

  const std::optional<AccountQuotaState> state = table.Get("alice", fired);
  ASSERT_TRUE(state.has_value());
  EXPECT_TRUE(state->suspended);
  EXPECT_EQ(state->suspended_at, fired);
  EXPECT_THAT(state->suspension_detail, HasSubstr("usual rate"));
  EXPECT_EQ(table.SuspendedCount(), 1u);
  EXPECT_TRUE(table.Suspend("bob", fired, "by hand"));
  EXPECT_EQ(table.SuspendedCount(), 2u);
  table.Forget("bob");

  // Resumed, the account sends at its usual pace again without being caught by the burst that
  // is still in the last five minutes.
  EXPECT_TRUE(table.Resume("alice"));
  EXPECT_FALSE(table.Resume("alice"));
  EXPECT_EQ(table.SuspendedCount(), 0u);
  EXPECT_FALSE(table.CheckMessage("alice", fired + absl::Seconds(2)).has_value());
  EXPECT_EQ(Feed(table, "alice", fired + absl::Seconds(2), absl::Hours(1), 20),
            absl::InfiniteFuture());
}

TEST(AccountQuotaTest, SteadyAccountsAreNeverSuspended) {
  AccountQuotaTable table(NoLimits());
  const absl::Time start = At(10, 0, 0);
  // A quiet account with uneven hours: 40 messages in one minute every third hour, nothing in
  // between (about 13/hour), for four days.
  for (int hour = 0; hour < 96; hour += 3) {
    EXPECT_EQ(Feed(table, "bursty", start + absl::Hours(hour), absl::Minutes(1), 40),
              absl::InfiniteFuture())
        << hour;
  }
  // A busy account: a first day at 500 an hour (under the new-account floor of 50 per five
  // minutes), two days at 2000 an hour, then an hour at three times that.
  EXPECT_EQ(Feed(table, "busy", start, absl::Hours(24), 24 * 500), absl::InfiniteFuture());
  EXPECT_EQ(Feed(table, "busy", start + absl::Hours(24), absl::Hours(48), 48 * 2000),
            absl::InfiniteFuture());
  EXPECT_EQ(Feed(table, "busy", start + absl::Hours(72), absl::Hours(1), 6000),
            absl::InfiniteFuture());
  EXPECT_FALSE(table.Get("busy", start + absl::Hours(73))->suspended);
  // The same ramp-up without the first day: 2000 an hour from a standing start is a burst.
  EXPECT_NE(Feed(table, "eager", start, absl::Hours(1), 2000), absl::InfiniteFuture());
  EXPECT_FALSE(table.Get("bursty", start + absl::Hours(96))->suspended);
}

TEST(AccountQuotaTest, NewAccountMaySendItsFirstFiftyMessagesInABurst) {
  AccountQuotaTable table(NoLimits());
  const absl::Time start = At(15, 9, 0);
  EXPECT_EQ(Feed(table, "new", start, absl::Seconds(10), 50), absl::InfiniteFuture());
  EXPECT_FALSE(table.Get("new", start + absl::Seconds(10))->suspended);
  // The 51st within the window is past the floor: no history allows it.
  AdmitDecision decision = table.Admit("new", start + absl::Seconds(11));
  EXPECT_TRUE(decision.suspended_now);

  // Fifty every five minutes stays under the floor.
  EXPECT_EQ(Feed(table, "paced", start, absl::Hours(1), 12 * 50), absl::InfiniteFuture());

  // An account whose anomaly detection is off is never suspended.
  AccountQuotaOptions options = NoLimits();
  options.per_account.push_back({"digest", AccountLimits{.messages_per_hour = 0,
                                                         .messages_per_day = 0,
                                                         .recipients_per_message = 0,
                                                         .detect_anomalies = false}});
  AccountQuotaTable exempt(options);
  EXPECT_EQ(Feed(exempt, "digest", start, absl::Seconds(60), 1000), absl::InfiniteFuture());
}

TEST(AccountQuotaTest, FactorAndMinimumAreHonoured) {
  AccountQuotaOptions options = NoLimits();
  options.anomaly.factor = 3;
  options.anomaly.min_messages = 5;
  AccountQuotaTable table(options);
  const absl::Time start = At(10, 0, 0);
  // One day at 20/hour; then 2× (40/hour over five minutes is ~3 messages): nothing.
  ASSERT_EQ(Feed(table, "alice", start, absl::Hours(24), 24 * 20), absl::InfiniteFuture());
  EXPECT_EQ(Feed(table, "alice", start + absl::Hours(24), absl::Minutes(5), 3),
            absl::InfiniteFuture());
  // 7 in five minutes is 84/hour, over 3 × 20 and over the minimum of 5.
  EXPECT_NE(Feed(table, "alice", start + absl::Hours(25), absl::Minutes(1), 7),
            absl::InfiniteFuture());
}

TEST(AccountQuotaTest, IdleHoursLowerTheUsualRate) {
  AccountQuotaTable table(NoLimits());
  const absl::Time start = At(10, 0, 0);
  ASSERT_EQ(Feed(table, "alice", start, absl::Hours(24), 24 * 20), absl::InfiniteFuture());
  const double busy = AccountQuotaTable::UsualRate(*table.Get("alice", start + absl::Hours(24)));
  EXPECT_NEAR(busy, 20.0, 1.0);
  // A week of silence (half-life 72 h): the history now counts that silence.
  const double idle =
      AccountQuotaTable::UsualRate(*table.Get("alice", start + absl::Hours(24 + 168)));
  EXPECT_LT(idle, busy / 3);
  EXPECT_GT(idle, 0.0);
}

TEST(AccountQuotaTest, StateSurvivesTakeDirtyAndLoad) {
  AccountQuotaTable table(NoLimits());
  const absl::Time start = At(10, 0, 0);
  QuietHistory(table, "alice", start);
  ASSERT_NE(Feed(table, "alice", start + absl::Hours(73), absl::Seconds(30), 300),
            absl::InfiniteFuture());
  std::vector<std::pair<std::string, AccountQuotaState>> dirty = table.TakeDirty();
  ASSERT_EQ(dirty.size(), 1u);
  EXPECT_EQ(dirty[0].first, "alice");
  EXPECT_TRUE(dirty[0].second.suspended);
  EXPECT_TRUE(table.TakeDirty().empty());  // nothing changed since

  AccountQuotaTable restarted(NoLimits());
  restarted.Load(dirty[0].first, dirty[0].second);
  std::optional<QuotaRefusal> refusal =
      restarted.CheckMessage("alice", start + absl::Hours(74));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->reason, QuotaReason::kSuspended);
  EXPECT_NEAR(AccountQuotaTable::UsualRate(dirty[0].second), 20.0, 1.0);
  EXPECT_TRUE(restarted.Resume("alice"));
  EXPECT_FALSE(restarted.CheckMessage("alice", start + absl::Hours(74)).has_value());
  ASSERT_EQ(restarted.TakeDirty().size(), 1u);
}

// A reload: the next check of each account applies the new limits to the counts it has, and a
// suspension stays.
TEST(AccountQuotaTest, ReconfigureAppliesNewLimitsToTheCountsKept) {
  AccountQuotaOptions options = Limits(10, 0);
  options.anomaly.enabled = false;
  AccountQuotaTable table(options);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(table.Admit("alice", At(15, 10, i)).refusal.has_value());
  EXPECT_TRUE(table.Suspend("mallory", At(15, 10, 0), "by hand"));

  AccountQuotaOptions lowered = Limits(10, 0);
  lowered.anomaly.enabled = false;
  lowered.per_account.push_back(
      {"alice", AccountLimits{.messages_per_hour = 3, .messages_per_day = 0,
                              .recipients_per_message = 0, .detect_anomalies = false}});
  table.Reconfigure(lowered);
  EXPECT_EQ(table.LimitsOf("alice").messages_per_hour, 3u);
  EXPECT_EQ(table.Get("alice", At(15, 10, 5))->hour_count, 3u);
  std::optional<QuotaRefusal> refusal = table.CheckMessage("alice", At(15, 10, 5));
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->code, 450);
  EXPECT_THAT(refusal->text, HasSubstr("Hourly sending quota of 3 messages"));
  EXPECT_TRUE(table.Admit("alice", At(15, 10, 6)).refusal.has_value());
  ASSERT_TRUE(table.CheckMessage("mallory", At(15, 10, 6)).has_value());
  EXPECT_EQ(table.CheckMessage("mallory", At(15, 10, 6))->reason, QuotaReason::kSuspended);

  table.Reconfigure(options);  // raised again: alice may send at once
  EXPECT_FALSE(table.Admit("alice", At(15, 10, 7)).refusal.has_value());
  EXPECT_EQ(table.Get("alice", At(15, 10, 8))->hour_count, 4u);
}

TEST(AccountQuotaTest, ReasonNamesAreTheMetricLabels) {
  EXPECT_STREQ(QuotaReasonName(QuotaReason::kHourly), "hourly");
  EXPECT_STREQ(QuotaReasonName(QuotaReason::kDaily), "daily");
  EXPECT_STREQ(QuotaReasonName(QuotaReason::kRecipients), "recipients");
  EXPECT_STREQ(QuotaReasonName(QuotaReason::kSuspended), "suspended");
}

}  // namespace
}  // namespace facteur::throttle
