// ReputationStore on a real RocksDB in a temporary directory: the key codec, flush then reopen
// and compare, only changed records written, read-only (secondary) readers beside the writer and
// on a spool from before the `reputation` family, and damaged records skipped.
#include "queue/reputation_store.h"

#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "queue/store.h"
#include "rocksdb/db.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using throttle::PairReport;
using throttle::Reputation;
using RC = throttle::ResponseClass;
using test::OpenReader;
using test::OpenStore;

const absl::Time kT0 = absl::FromCivil(absl::CivilSecond(2027, 3, 10, 10, 15, 0),
                                       absl::UTCTimeZone());

void Fill(Reputation& reputation) {
  for (int i = 0; i < 40; ++i) {
    reputation.Record("ip1", "google", RC::kSuccess, false, kT0 - absl::Hours(30));
  }
  for (int i = 0; i < 12; ++i) reputation.Record("ip1", "google", RC::kSuccess, false, kT0);
  reputation.Record("ip1", "google", RC::kRateLimit, false, kT0);
  reputation.Record("ip1", "google", RC::kBlocklist, true, kT0 + absl::Minutes(1));
  reputation.Record("ip1", "orange", RC::kGreylist, false, kT0);
  reputation.Record("ip1", "orange", RC::kSuccess, false, kT0 + absl::Minutes(6));
  reputation.Record("ip2", "orange", RC::kUserUnknown, true, kT0);
}

void ExpectSameReports(const Reputation& a, const Reputation& b, absl::Time now) {
  const std::vector<PairReport> ra = a.Report(now);
  const std::vector<PairReport> rb = b.Report(now);
  ASSERT_EQ(ra.size(), rb.size());
  for (size_t i = 0; i < ra.size(); ++i) {
    SCOPED_TRACE(ra[i].source + "/" + ra[i].site);
    EXPECT_EQ(ra[i].source, rb[i].source);
    EXPECT_EQ(ra[i].site, rb[i].site);
    EXPECT_EQ(ra[i].last_day, rb[i].last_day);
    EXPECT_EQ(ra[i].today, rb[i].today);
    EXPECT_EQ(ra[i].lifetime, rb[i].lifetime);
    EXPECT_EQ(ra[i].health, rb[i].health);
    EXPECT_EQ(ra[i].warmup_day, rb[i].warmup_day);
    EXPECT_EQ(ra[i].last_record, rb[i].last_record);
    EXPECT_EQ(a.Pair(ra[i].source, ra[i].site)->Serialize(),
              b.Pair(rb[i].source, rb[i].site)->Serialize());
  }
}

TEST(ReputationKeyTest, RoundTripsAnyNames) {
  const std::string long_source(300, 's');  // a two-byte length
  const std::string odd_source("a\0p\x01", 4);
  for (const auto& [source, site] : std::vector<std::pair<std::string, std::string>>{
           {"ip1", "google"}, {long_source, "orange"}, {odd_source, "x\0y"}, {"", ""}}) {
    std::optional<ReputationKey> pair = ParseReputationKey(ReputationPairKey(source, site));
    ASSERT_TRUE(pair.has_value());
    EXPECT_TRUE(pair->is_pair);
    EXPECT_EQ(pair->source, source);
    EXPECT_EQ(pair->site, site);
    std::optional<ReputationKey> alone = ParseReputationKey(ReputationSourceKey(source));
    ASSERT_TRUE(alone.has_value());
    EXPECT_FALSE(alone->is_pair);
    EXPECT_EQ(alone->source, source);
  }
  // Distinct pairs never share a key, even when the concatenations match.
  EXPECT_NE(ReputationPairKey("ab", "c"), ReputationPairKey("a", "bc"));
  EXPECT_FALSE(ParseReputationKey("").has_value());
  EXPECT_FALSE(ParseReputationKey("xyz").has_value());
  EXPECT_FALSE(ParseReputationKey(std::string("p\x05" "ab", 4)).has_value());  // length past end
}

TEST(ReputationStoreTest, FlushThenReopenRestoresTheSameState) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  Reputation original;
  Fill(original);
  {
    std::unique_ptr<Store> store = OpenStore(path);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(ReputationStore(*store).Flush(original).ok());
  }
  std::unique_ptr<Store> store = OpenStore(path);
  ASSERT_NE(store, nullptr);
  Reputation restored;
  absl::StatusOr<ReputationLoadStats> stats = ReputationStore(*store).LoadInto(restored);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pairs, 3u);
  EXPECT_EQ(stats->sources, 2u);
  EXPECT_EQ(stats->skipped, 0u);
  for (absl::Duration d : {absl::ZeroDuration(), absl::Hours(2), absl::Hours(24)}) {
    ExpectSameReports(original, restored, kT0 + d);
  }
  EXPECT_EQ(restored.FirstUse("ip1"), kT0 - absl::Hours(30));
  EXPECT_EQ(restored.SentToday("ip1", "google", kT0 + absl::Minutes(2)), 13u);
  EXPECT_DOUBLE_EQ(restored.Health("ip1", "google", kT0 + absl::Minutes(2)),
                   12.0 / (12 + 1 + 3));
  EXPECT_TRUE(restored.TakeDirty().empty());  // loading is not a change
}

TEST(ReputationStoreTest, FlushWritesOnlyWhatChangedSinceTheLastOne) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  std::unique_ptr<Store> store = OpenStore(path);
  ASSERT_NE(store, nullptr);
  ReputationStore reputation_store(*store);
  Reputation reputation;
  Fill(reputation);
  ASSERT_TRUE(reputation_store.Flush(reputation).ok());
  // Remove one record behind the reputation's back: a second flush with no change must not
  // rewrite it, a change to that pair must.
  const std::string key = ReputationPairKey("ip1", "orange");
  ASSERT_TRUE(store->db()
                  .Delete(rocksdb::WriteOptions(), store->family(Family::kReputation), key)
                  .ok());
  ASSERT_TRUE(reputation_store.Flush(reputation).ok());
  std::string value;
  EXPECT_TRUE(store->db()
                  .Get(rocksdb::ReadOptions(), store->family(Family::kReputation), key, &value)
                  .IsNotFound());
  reputation.Record("ip1", "orange", RC::kSuccess, false, kT0 + absl::Minutes(10));
  ASSERT_TRUE(reputation_store.Flush(reputation).ok());
  ASSERT_TRUE(store->db()
                  .Get(rocksdb::ReadOptions(), store->family(Family::kReputation), key, &value)
                  .ok());
  EXPECT_EQ(value, reputation.Pair("ip1", "orange")->Serialize());
}

TEST(ReputationStoreTest, ASecondaryReaderSeesFlushesOfTheRunningWriter) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  std::unique_ptr<Store> writer = OpenStore(path);  // stays open: the "running server"
  ASSERT_NE(writer, nullptr);
  {
    std::unique_ptr<Store> reader = OpenReader(path);
    ASSERT_NE(reader, nullptr);
    Reputation seen;
    absl::StatusOr<ReputationLoadStats> stats = ReputationStore(*reader).LoadInto(seen);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->pairs, 0u);
  }
  Reputation reputation;
  Fill(reputation);
  ASSERT_TRUE(ReputationStore(*writer).Flush(reputation).ok());  // WAL only, not flushed
  std::unique_ptr<Store> reader = OpenReader(path);
  ASSERT_NE(reader, nullptr);
  Reputation seen;
  absl::StatusOr<ReputationLoadStats> stats = ReputationStore(*reader).LoadInto(seen);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pairs, 3u);
  ExpectSameReports(reputation, seen, kT0);

  // A reader cannot write; what it was asked to write stays dirty.
  seen.Record("ip9", "google", RC::kSuccess, false, kT0);
  absl::Status status = ReputationStore(*reader).Flush(seen);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  EXPECT_EQ(seen.TakeDirty().pairs.size(), 1u);
}

TEST(ReputationStoreTest, ASpoolFromBeforeTheFamilyOpensBothWays) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  {  // The families of a spool written before reputation existed.
    rocksdb::Options options;
    options.create_if_missing = true;
    options.create_missing_column_families = true;
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const char* name : {"default", "body", "envelope", "schedule", "accounts"}) {
      families.emplace_back(name, rocksdb::ColumnFamilyOptions());
    }
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, path, families, &handles, &db).ok());
    for (rocksdb::ColumnFamilyHandle* handle : handles) {
      ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
    }
    ASSERT_TRUE(db->Close().ok());
    delete db;
  }
  {  // `facteur reputation` on it: no family, no data, no error.
    std::unique_ptr<Store> reader = OpenReader(path);
    ASSERT_NE(reader, nullptr);
    EXPECT_EQ(reader->family(Family::kReputation), nullptr);
    EXPECT_NE(reader->family(Family::kAccounts), nullptr);
    Reputation seen;
    absl::StatusOr<ReputationLoadStats> stats = ReputationStore(*reader).LoadInto(seen);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->pairs, 0u);
    Reputation some;
    Fill(some);
    EXPECT_EQ(ReputationStore(*reader).Flush(some).code(), absl::StatusCode::kFailedPrecondition);
  }
  {  // The server on it: the family is created and written.
    std::unique_ptr<Store> store = OpenStore(path);
    ASSERT_NE(store, nullptr);
    ASSERT_NE(store->family(Family::kReputation), nullptr);
    Reputation reputation;
    Fill(reputation);
    ASSERT_TRUE(ReputationStore(*store).Flush(reputation).ok());
  }
  std::unique_ptr<Store> reader = OpenReader(path);
  ASSERT_NE(reader, nullptr);
  Reputation seen;
  absl::StatusOr<ReputationLoadStats> stats = ReputationStore(*reader).LoadInto(seen);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pairs, 3u);
}

TEST(ReputationStoreTest, DamagedRecordsAreSkippedAndTheRestLoads) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  std::unique_ptr<Store> store = OpenStore(path);
  ASSERT_NE(store, nullptr);
  Reputation reputation;
  Fill(reputation);
  ASSERT_TRUE(ReputationStore(*store).Flush(reputation).ok());
  rocksdb::ColumnFamilyHandle* family = store->family(Family::kReputation);
  ASSERT_TRUE(store->db()
                  .Put(rocksdb::WriteOptions(), family, ReputationPairKey("ip1", "google"),
                       "\x09garbage")
                  .ok());
  ASSERT_TRUE(store->db().Put(rocksdb::WriteOptions(), family, "?unknown", "x").ok());
  Reputation loaded;
  absl::StatusOr<ReputationLoadStats> stats = ReputationStore(*store).LoadInto(loaded);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->pairs, 2u);
  EXPECT_EQ(stats->sources, 2u);
  EXPECT_EQ(stats->skipped, 2u);
  EXPECT_FALSE(loaded.Pair("ip1", "google").has_value());
  EXPECT_TRUE(loaded.Pair("ip1", "orange").has_value());
}

}  // namespace
}  // namespace facteur::queue
