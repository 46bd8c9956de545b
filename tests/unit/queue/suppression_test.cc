// SuppressionList on a real RocksDB spool: normalization, add/contains/find/remove, the entries
// surviving a reopen (loaded into memory), the reply kept on disk, read-only access, the
// record codec, and concurrent adds and lookups.
#include "queue/suppression.h"

#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using ::testing::HasSubstr;

const absl::Time kNow = absl::FromUnixSeconds(1'800'000'000);

TEST(SuppressionTest, NormalizesAddresses) {
  EXPECT_EQ(*NormalizeSuppressedAddress("<Bob@Example.ORG>"), "bob@example.org");
  EXPECT_EQ(*NormalizeSuppressedAddress("  x@y.example "), "x@y.example");
  EXPECT_EQ(*NormalizeSuppressedAddress("\"John \\\"Q\\\" Doe\"@Example.org"),
            "john \"q\" doe@example.org");
  EXPECT_EQ(*NormalizeSuppressedAddress("a@b@c.example"), "a@b@c.example");  // last '@'
  EXPECT_EQ(NormalizeSuppressedAddress("nobody").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(NormalizeSuppressedAddress("@example.org").ok());
  EXPECT_FALSE(NormalizeSuppressedAddress("x@").ok());
  EXPECT_FALSE(NormalizeSuppressedAddress("x\r\n@example.org").ok());
  EXPECT_FALSE(NormalizeSuppressedAddress(std::string(400, 'a') + "@example.org").ok());
}

TEST(SuppressionTest, AddFindRemoveAndReopen) {
  test::TempDir dir;
  {
    auto store = Store::Open(dir.Sub("spool"));
    ASSERT_TRUE(store.ok()) << store.status();
    auto list = SuppressionList::Open(**store);
    ASSERT_TRUE(list.ok()) << list.status();
    EXPECT_EQ((*list)->size(), 0u);
    ASSERT_TRUE((*list)
                    ->Add("<Gone@Example.org>", kSuppressedUserUnknown,
                          "550 5.1.1 <gone@example.org>: Recipient address rejected", kNow)
                    .ok());
    ASSERT_TRUE((*list)->Add("blocked@example.net", "", "", kNow + absl::Hours(1)).ok());
    EXPECT_TRUE((*list)->Contains("gone@example.org"));
    EXPECT_TRUE((*list)->Contains("GONE@EXAMPLE.ORG"));
    EXPECT_FALSE((*list)->Contains("other@example.org"));
    std::optional<SuppressionList::Hit> hit = (*list)->Find("blocked@example.net");
    ASSERT_TRUE(hit.has_value());
    EXPECT_EQ(hit->reason, kSuppressedManual);  // no reason given
    EXPECT_EQ(hit->added_at, kNow + absl::Hours(1));
    EXPECT_EQ((*list)->Add("not an address", "manual", "", kNow).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ((*list)->size(), 2u);
  }
  {
    // Reopened: loaded into memory again, the reply read back from disk.
    auto store = Store::Open(dir.Sub("spool"));
    ASSERT_TRUE(store.ok()) << store.status();
    auto list = SuppressionList::Open(**store);
    ASSERT_TRUE(list.ok()) << list.status();
    EXPECT_TRUE((*list)->Contains("gone@example.org"));
    auto entries = (*list)->List();
    ASSERT_TRUE(entries.ok()) << entries.status();
    ASSERT_EQ(entries->size(), 2u);
    EXPECT_EQ((*entries)[0].address, "blocked@example.net");  // address order
    EXPECT_EQ((*entries)[1],
              (SuppressionEntry{"gone@example.org", std::string(kSuppressedUserUnknown), kNow,
                                "550 5.1.1 <gone@example.org>: Recipient address rejected"}));
    // Adding again replaces the entry.
    ASSERT_TRUE((*list)->Add("gone@example.org", "manual", "", kNow + absl::Hours(2)).ok());
    EXPECT_EQ((*list)->Find("gone@example.org")->reason, "manual");
    EXPECT_EQ((*list)->size(), 2u);

    ASSERT_TRUE((*list)->Remove("<GONE@example.org>").ok());
    EXPECT_FALSE((*list)->Contains("gone@example.org"));
    EXPECT_EQ((*list)->Remove("gone@example.org").code(), absl::StatusCode::kNotFound);
  }
  {
    auto store = Store::Open(dir.Sub("spool"));
    ASSERT_TRUE(store.ok()) << store.status();
    auto list = SuppressionList::Open(**store);
    ASSERT_TRUE(list.ok()) << list.status();
    EXPECT_FALSE((*list)->Contains("gone@example.org"));  // the removal persisted
    EXPECT_TRUE((*list)->Contains("blocked@example.net"));
  }
}

TEST(SuppressionTest, ReadOnlyStoreReadsButDoesNotWrite) {
  test::TempDir dir;
  auto primary = Store::Open(dir.Sub("spool"));
  ASSERT_TRUE(primary.ok()) << primary.status();
  auto list = SuppressionList::Open(**primary);
  ASSERT_TRUE(list.ok());
  ASSERT_TRUE((*list)->Add("gone@example.org", kSuppressedUserUnknown, "550 5.1.1", kNow).ok());

  // Beside the running primary, as `facteur suppression list` does when it cannot reach it.
  auto secondary = Store::OpenReadOnly(dir.Sub("spool"));
  ASSERT_TRUE(secondary.ok()) << secondary.status();
  auto view = SuppressionList::Open(**secondary);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE((*view)->Contains("gone@example.org"));
  absl::Status add = (*view)->Add("x@example.org", "manual", "", kNow);
  EXPECT_EQ(add.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(add.message(), HasSubstr("read-only"));
}

TEST(SuppressionTest, RecordCodecRoundTripsAndRejectsDamage) {
  const SuppressionEntry entry{"x@example.org", "user-unknown", kNow, "550 5.1.1 no such user"};
  const std::string value = EncodeSuppressionRecord(entry);
  auto decoded = DecodeSuppressionRecord("x@example.org", value);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, entry);
  EXPECT_EQ(DecodeSuppressionRecord("x", value.substr(0, value.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeSuppressionRecord("x", value + "z").status().code(), absl::StatusCode::kDataLoss);
  std::string future = value;
  future[0] = 9;
  EXPECT_THAT(DecodeSuppressionRecord("x", future).status().message(), HasSubstr("version 9"));
  EXPECT_FALSE(DecodeSuppressionRecord("x", "").ok());
}

TEST(SuppressionTest, ConcurrentAddsAndLookups) {
  test::TempDir dir;
  auto store = Store::Open(dir.Sub("spool"));
  ASSERT_TRUE(store.ok()) << store.status();
  auto list = SuppressionList::Open(**store);
  ASSERT_TRUE(list.ok());
  SuppressionList& suppression = **list;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&suppression, t] {
      for (int i = 0; i < 100; ++i) {
        const std::string address = absl::StrCat("user", i, "@t", t, ".example");
        ASSERT_TRUE(suppression.Add(address, kSuppressedUserUnknown, "550 5.1.1", kNow).ok());
        EXPECT_TRUE(suppression.Contains(address));
        suppression.Contains(absl::StrCat("user", i, "@t", (t + 1) % 4, ".example"));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(suppression.size(), 400u);
  auto entries = suppression.List();
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->size(), 400u);
}

}  // namespace
}  // namespace facteur::queue
