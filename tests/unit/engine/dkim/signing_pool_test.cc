// File: tests/unit/engine/dkim/signing_pool_test.cc
// The signing pool: a full queue refuses at once (back-pressure), each message gets the fields
// of its From: domain's keys (dual signing, per account) or none (counted unsigned), t= comes
// from the injected clock, a reload swaps the table, and what it returns verifies with dkimpy.
#include "engine/dkim/signing_pool.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/dkim/dkim_test_support.h"

namespace facteur::dkim {
namespace {

using ::testing::HasSubstr;

constexpr char kMessage[] =
    "From: Alice <alice@asso.example>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nHello\r\n";

// Signs nothing: blocks until released, then returns a marker naming the key.
class BlockingSigner final : public Signer {
 public:
  const char* engine_name() const override { return "blocking"; }
  absl::StatusOr<std::string> Sign(const SigningKey& key, std::string_view /*message*/,
                                   const mail::HeaderSection& /*section*/,
                                   absl::Time now) const override {
    started_.fetch_add(1);
    release_.WaitForNotification();
    return absl::StrCat("X-Signed: ", key.selector, " ", absl::ToUnixSeconds(now), "\r\n");
  }
  void Release() { release_.Notify(); }
  int started() const { return started_.load(); }

 private:
  mutable absl::Notification release_;
  mutable std::atomic<int> started_{0};
};

std::shared_ptr<const SigningTable> TableFor(std::vector<std::pair<std::string, std::string>> keys,
                                             DkimAlgorithm algorithm = DkimAlgorithm::kEd25519Sha256) {
  std::vector<SigningTable::Entry> entries;
  for (auto& [domain, selector] : keys) {
    absl::StatusOr<std::unique_ptr<PrivateKey>> key = PrivateKey::Generate(algorithm, 1024);
    EXPECT_TRUE(key.ok());
    entries.push_back(SigningTable::Entry{SigningKey{domain, selector, std::move(*key)}, ""});
  }
  return SigningTable::FromEntries(std::move(entries));
}

TEST(SigningPoolTest, FullQueueRefusesAtOnce) {
  auto signer = std::make_unique<BlockingSigner>();
  BlockingSigner* blocking = signer.get();
  SimulatedClock clock(absl::FromUnixSeconds(1'700'000'000));
  metrics::Metrics metrics;
  const std::string message = kMessage;
  std::atomic<int> done{0};
  {
    SigningPool pool(std::move(signer), TableFor({{"asso.example", "s1"}}), clock, &metrics,
                     SigningPoolOptions{.threads = 1, .max_queued = 2});
    auto count = [&done](absl::StatusOr<std::string> fields) {
      EXPECT_TRUE(fields.ok());
      EXPECT_EQ(*fields, "X-Signed: s1 1700000000\r\n");
      done.fetch_add(1);
    };
    ASSERT_TRUE(pool.Sign(message, "", count));
    // Wait (bounded) until the only worker holds the first message.
    for (int i = 0; i < 5000 && blocking->started() == 0; ++i) absl::SleepFor(absl::Milliseconds(1));
    ASSERT_EQ(blocking->started(), 1);
    EXPECT_TRUE(pool.Sign(message, "", count));
    EXPECT_TRUE(pool.Sign(message, "", count));
    EXPECT_EQ(pool.queued(), 2u);
    EXPECT_THAT(metrics.Serialize(), HasSubstr("facteur_dkim_queue_depth 2"));
    // Third waiting message: refused at once, its callback dropped uncalled.
    bool called = false;
    EXPECT_FALSE(pool.Sign(message, "", [&called](absl::StatusOr<std::string>) { called = true; }));
    EXPECT_FALSE(called);
    blocking->Release();
  }  // the destructor drains the queue
  EXPECT_EQ(done.load(), 3);
  EXPECT_THAT(metrics.Serialize(), HasSubstr("facteur_dkim_queue_depth 0"));
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("facteur_dkim_signatures_total{algorithm=\"ed25519-sha256\",engine=\"blocking\"} 3"));
}

TEST(SigningPoolTest, UnsignedWhenTheFromDomainHasNoKey) {
  SimulatedClock clock;
  metrics::Metrics metrics;
  SigningPool pool(MakeNativeSigner(), TableFor({{"other.example", "s"}}), clock, &metrics,
                   SigningPoolOptions{.threads = 1, .max_queued = 4});
  absl::StatusOr<std::string> fields = pool.SignNow(kMessage, "");
  ASSERT_TRUE(fields.ok());
  EXPECT_EQ(*fields, "");
  // No From: at all: unsigned too, not an error.
  fields = pool.SignNow("To: bob@example.net\r\n\r\nbody\r\n", "");
  ASSERT_TRUE(fields.ok());
  EXPECT_EQ(*fields, "");
  EXPECT_THAT(metrics.Serialize(), HasSubstr("facteur_dkim_unsigned_total 2"));
}

TEST(SigningPoolTest, ReloadSwapsTheTable) {
  SimulatedClock clock(absl::FromUnixSeconds(1'700'000'000));
  SigningPool pool(MakeNativeSigner(), TableFor({}), clock, nullptr,
                   SigningPoolOptions{.threads = 2, .max_queued = 4});
  EXPECT_EQ(*pool.SignNow(kMessage, ""), "");
  pool.Reload(TableFor({{"asso.example", "new"}}));
  absl::StatusOr<std::string> fields = pool.SignNow(kMessage, "");
  ASSERT_TRUE(fields.ok());
  EXPECT_THAT(*fields, HasSubstr("d=asso.example;\r\n\ts=new;"));
}

TEST(SigningPoolTest, DualSignaturesFromThePoolVerifyWithDkimpy) {
  SimulatedClock clock(absl::FromUnixSeconds(1'700'000'000));
  metrics::Metrics metrics;
  std::vector<SigningTable::Entry> entries;
  for (DkimAlgorithm algorithm : {DkimAlgorithm::kEd25519Sha256, DkimAlgorithm::kRsaSha256}) {
    absl::StatusOr<std::unique_ptr<PrivateKey>> key = PrivateKey::Generate(algorithm, 2048);
    ASSERT_TRUE(key.ok());
    entries.push_back(SigningTable::Entry{
        SigningKey{"asso.example", AlgorithmName(algorithm), std::move(*key)}, ""});
  }
  testing::DnsRecords records;
  for (const auto& e : entries) testing::AddRecord(e.key, &records);
  SigningPool pool(MakeNativeSigner(), SigningTable::FromEntries(std::move(entries)), clock,
                   &metrics, SigningPoolOptions{.threads = 2, .max_queued = 16});

  const std::string message = kMessage;
  absl::Mutex mutex;
  std::vector<std::string> signed_messages;
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(pool.Sign(message, "", [&](absl::StatusOr<std::string> fields) {
      ASSERT_TRUE(fields.ok()) << fields.status();
      absl::MutexLock lock(&mutex);
      signed_messages.push_back(*fields + message);
    }));
  }
  {
    absl::MutexLock lock(&mutex);
    mutex.Await(absl::Condition(
        +[](std::vector<std::string>* v) { return v->size() == 8; }, &signed_messages));
  }
  for (const std::string& m : signed_messages) {
    EXPECT_THAT(m, HasSubstr("t=1700000000;"));
    EXPECT_EQ(testing::OpenDkimVerify(m, records), "");
  }
  std::vector<std::string> results = testing::DkimpyVerify(signed_messages, records);
  ASSERT_EQ(results.size(), 8u);
  for (const std::string& r : results) EXPECT_EQ(r, "");
  std::string exposition = metrics.Serialize();
  EXPECT_THAT(exposition, HasSubstr("facteur_dkim_signatures_total{algorithm=\"rsa-sha256\",engine=\"native\"} 8"));
  EXPECT_THAT(exposition, HasSubstr("facteur_dkim_signatures_total{algorithm=\"ed25519-sha256\",engine=\"native\"} 8"));
  EXPECT_THAT(exposition, HasSubstr("facteur_dkim_sign_seconds_count 16"));
}

}  // namespace
}  // namespace facteur::dkim
