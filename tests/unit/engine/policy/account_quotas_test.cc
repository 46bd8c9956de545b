// AccountQuotas on a real RocksDB Store: the record codec, a suspension and the history
// surviving a restart, Resume() persisting, the stopped-server functions, Forget().
#include "engine/policy/account_quotas.h"

#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <string>

#include "engine/base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/store.h"

namespace facteur::policy {
namespace {

using ::testing::HasSubstr;

class AccountQuotasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "account_quotas_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    OpenStore();
  }
  void TearDown() override {
    quotas_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void OpenStore() {
    auto store = queue::Store::Open(dir_ + "/spool");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void OpenQuotas() {
    AccountQuotasOptions options;
    options.quota.defaults = throttle::AccountLimits{.messages_per_hour = 0,
                                                     .messages_per_day = 0,
                                                     .recipients_per_message = 0,
                                                     .detect_anomalies = true};
    options.flush_interval = absl::Hours(1);  // only explicit flushes in these tests
    auto quotas = AccountQuotas::Open(*store_, clock_, options);
    ASSERT_TRUE(quotas.ok()) << quotas.status();
    quotas_ = *std::move(quotas);
  }
  void Restart() {
    quotas_.reset();  // writes what changed
    store_.reset();
    OpenStore();
    OpenQuotas();
  }
  // A day of 20 messages an hour, then a burst that gets the account suspended.
  void HistoryThenBurst(const std::string& account) {
    for (int i = 0; i < 24 * 20; ++i) {
      ASSERT_FALSE(quotas_->table().Admit(account, clock_.Now()).refusal.has_value());
      clock_.Advance(absl::Minutes(3));
    }
    for (int i = 0; i < 100; ++i) {
      throttle::AdmitDecision decision = quotas_->table().Admit(account, clock_.Now());
      if (decision.suspended_now) return;
      clock_.Advance(absl::Milliseconds(100));
    }
    FAIL() << "no suspension";
  }

  std::string dir_;
  SimulatedClock clock_;
  std::unique_ptr<queue::Store> store_;
  std::unique_ptr<AccountQuotas> quotas_;
};

TEST(AccountQuotaRecordTest, RoundTripsEveryField) {
  throttle::AccountQuotaState state;
  state.hour_start = absl::FromUnixSeconds(1'800'000'000);
  state.hour_count = 17;
  state.day_start = absl::FromUnixSeconds(1'799'971'200);
  state.day_count = 342;
  state.ewma = 3.25;
  state.ewma_weight = 0.171875;
  state.suspended = true;
  state.suspended_at = absl::FromUnixMicros(1'800'000'123'456'789);
  state.suspension_detail = "61 messages in the last 5m (732/hour), usual rate 20.0/hour";
  auto decoded = DecodeAccountQuotaState(EncodeAccountQuotaState(state));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, state);

  const throttle::AccountQuotaState fresh;  // InfinitePast times survive too
  auto decoded_fresh = DecodeAccountQuotaState(EncodeAccountQuotaState(fresh));
  ASSERT_TRUE(decoded_fresh.ok());
  EXPECT_EQ(*decoded_fresh, fresh);

  const std::string value = EncodeAccountQuotaState(state);
  EXPECT_EQ(DecodeAccountQuotaState(value.substr(0, 20)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeAccountQuotaState(value + "x").status().code(), absl::StatusCode::kDataLoss);
  std::string future = value;
  future[0] = 2;
  EXPECT_THAT(DecodeAccountQuotaState(future).status().message(), HasSubstr("version 2"));
}

TEST_F(AccountQuotasTest, SuspensionAndHistorySurviveARestartUntilResumed) {
  OpenQuotas();
  HistoryThenBurst("alice");
  ASSERT_TRUE(quotas_->table().Admit("bob", clock_.Now()).refusal == std::nullopt);
  Restart();

  std::optional<throttle::QuotaRefusal> refusal =
      quotas_->table().CheckMessage("alice", clock_.Now());
  ASSERT_TRUE(refusal.has_value());
  EXPECT_EQ(refusal->code, 550);
  std::optional<throttle::AccountQuotaState> state = quotas_->table().Get("alice", clock_.Now());
  ASSERT_TRUE(state.has_value());
  EXPECT_NEAR(throttle::AccountQuotaTable::UsualRate(*state), 20.0, 1.0);
  EXPECT_EQ(quotas_->table().Get("bob", clock_.Now())->day_count, 1u);

  auto resumed = quotas_->Resume("alice");
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_TRUE(*resumed);
  auto again = quotas_->Resume("alice");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again);
  // Resume() wrote at once, synced: the stored record already says so.
  auto stored = ReadStoredAccountQuota(*store_, "alice");
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_TRUE(stored->has_value());
  EXPECT_FALSE((*stored)->suspended);

  Restart();
  EXPECT_FALSE(quotas_->table().CheckMessage("alice", clock_.Now()).has_value());
}

TEST_F(AccountQuotasTest, PersistSoonWritesASuspensionWithoutWaitingForTheInterval) {
  OpenQuotas();
  HistoryThenBurst("alice");
  quotas_->PersistSoon();
  // The writer thread stores it; poll the store (real time, bounded).
  bool stored_suspended = false;
  for (int i = 0; i < 500 && !stored_suspended; ++i) {
    auto stored = ReadStoredAccountQuota(*store_, "alice");
    ASSERT_TRUE(stored.ok()) << stored.status();
    stored_suspended = stored->has_value() && (*stored)->suspended;
    if (!stored_suspended) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(stored_suspended);
}

TEST_F(AccountQuotasTest, StoppedServerResumeClearsTheStoredSuspension) {
  OpenQuotas();
  HistoryThenBurst("alice");
  quotas_.reset();  // the server stops

  auto before = ReadStoredAccountQuota(*store_, "alice");
  ASSERT_TRUE(before.ok() && before->has_value());
  EXPECT_TRUE((*before)->suspended);
  EXPECT_THAT((*before)->suspension_detail, HasSubstr("usual rate"));
  auto resumed = ResumeStoredAccount(*store_, "alice");
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_TRUE(*resumed);
  auto not_suspended = ResumeStoredAccount(*store_, "nobody");
  ASSERT_TRUE(not_suspended.ok());
  EXPECT_FALSE(*not_suspended);

  OpenQuotas();
  EXPECT_FALSE(quotas_->table().CheckMessage("alice", clock_.Now()).has_value());
  // The history stayed.
  EXPECT_NEAR(throttle::AccountQuotaTable::UsualRate(*quotas_->table().Get("alice", clock_.Now())),
              20.0, 1.0);
}

TEST_F(AccountQuotasTest, ForgetRemovesTheRecord) {
  OpenQuotas();
  HistoryThenBurst("alice");
  ASSERT_TRUE(quotas_->Flush().ok());
  ASSERT_TRUE(quotas_->Forget("alice").ok());
  EXPECT_FALSE(quotas_->table().Get("alice", clock_.Now()).has_value());
  auto stored = ReadStoredAccountQuota(*store_, "alice");
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->has_value());
}

}  // namespace
}  // namespace facteur::policy
