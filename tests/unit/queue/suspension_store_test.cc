// SuspensionStore on a real RocksDB in a temporary directory: domain holds and pair pauses
// written, the store closed and reopened (a restart), and read back; lifted ones gone, ended
// ones not restored and deleted; a read-only (secondary) reader beside the writer; the pair
// record codec and its refusal of damaged records.
#include "queue/suspension_store.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/store.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using throttle::PairPause;
using RC = throttle::ResponseClass;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using test::OpenReader;
using test::OpenStore;

const absl::Time kT0 = absl::FromCivil(absl::CivilSecond(2026, 12, 6, 9, 20, 0),
                                       absl::UTCTimeZone());

std::vector<std::string> Domains(const std::vector<DomainHold>& holds) {
  std::vector<std::string> domains;
  for (const DomainHold& hold : holds) domains.push_back(hold.domain);
  return domains;
}

TEST(SuspensionStoreTest, DomainHoldsOutliveAReopenUntilReleased) {
  test::TempDir dir;
  {
    std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
    SuspensionStore holds(*store);
    ASSERT_TRUE(holds.HoldDomain("hold.test", kT0).ok());
    ASSERT_TRUE(holds.HoldDomain("other.test", kT0 + absl::Minutes(1)).ok());
  }
  {
    std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
    SuspensionStore holds(*store);
    absl::StatusOr<std::vector<DomainHold>> read = holds.DomainHolds();
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_THAT(Domains(*read), ElementsAre("hold.test", "other.test"));
    EXPECT_EQ((*read)[0].since, kT0);
    ASSERT_TRUE(holds.ReleaseDomain("hold.test").ok());
  }
  std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
  absl::StatusOr<std::vector<DomainHold>> read = SuspensionStore(*store).DomainHolds();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Domains(*read), ElementsAre("other.test"));
}

TEST(SuspensionStoreTest, ReadOnlyReaderSeesHoldsAndCannotWrite) {
  test::TempDir dir;
  std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
  ASSERT_TRUE(SuspensionStore(*store).HoldDomain("hold.test", kT0).ok());
  std::unique_ptr<Store> reader = OpenReader(dir.Sub("spool"));
  ASSERT_NE(reader, nullptr);
  SuspensionStore view(*reader);
  absl::StatusOr<std::vector<DomainHold>> read = view.DomainHolds();
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_THAT(Domains(*read), ElementsAre("hold.test"));
  EXPECT_EQ(view.HoldDomain("x.test", kT0).code(), absl::StatusCode::kFailedPrecondition);
}

PairPause Pause(std::string site, std::string source, absl::Time until, bool manual,
                std::optional<RC> cause) {
  return PairPause{.site = std::move(site), .source = std::move(source), .pool = "default",
                   .since = kT0, .until = until, .manual = manual, .cause = cause,
                   .backoff = std::nullopt};
}

// A blocklist pause, an operator's pause of every source and one of a single source written,
// the store reopened at a later time: the running ones come back as they were, the one that
// ended meanwhile does not and is deleted; a lifted one is gone.
TEST(SuspensionStoreTest, PairPausesOutliveAReopenUntilTheirEnd) {
  test::TempDir dir;
  const PairPause blocklisted = Pause("gmail", "out1", kT0 + absl::Hours(4), false, RC::kBlocklist);
  const PairPause whole_site = Pause("orange", "", kT0 + absl::Hours(10), true, std::nullopt);
  const PairPause short_one = Pause("yahoo", "out2", kT0 + absl::Minutes(10), false, RC::kRateLimit);
  const PairPause lifted = Pause("free", "out1", kT0 + absl::Hours(1), true, std::nullopt);
  {
    std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
    SuspensionStore pauses(*store);
    ASSERT_TRUE(pauses.Write({.set = {blocklisted, whole_site, short_one, lifted}, .lifted = {}},
                             /*synced=*/true)
                    .ok());
    ASSERT_TRUE(pauses.Write({.set = {}, .lifted = {{"free", "out1"}}}, /*synced=*/true).ok());
  }
  const absl::Time restart = kT0 + absl::Hours(1);
  {
    std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
    absl::StatusOr<PairPauseLoad> load = SuspensionStore(*store).PairPauses(restart);
    ASSERT_TRUE(load.ok()) << load.status();
    EXPECT_THAT(load->running, ElementsAre(blocklisted, whole_site));
    EXPECT_EQ(load->expired, 1u);
    EXPECT_EQ(load->skipped, 0u);
  }
  // The ended one was deleted: even a clock set back does not bring it back.
  std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
  absl::StatusOr<PairPauseLoad> load = SuspensionStore(*store).PairPauses(kT0);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, ElementsAre(blocklisted, whole_site));
  EXPECT_EQ(load->expired, 0u);
}

// A rate limit's pause with the back-off that outlives it: the back-off under its own key, so
// that the pause record stays what a binary from before back-offs reads (a rollback keeps the
// pause). Read back whole, kept past the pause's end while its hold runs, then dropped.
TEST(SuspensionStoreTest, BackoffsRoundTripBesideTheirPauseAndOutliveItUntilTheirHoldEnds) {
  PairPause throttled = Pause("outlook", "out1", kT0 + absl::Minutes(15), false, RC::kRateLimit);
  throttled.backoff = throttle::PairBackoff{.rate = 6.125,
                                            .rate_target = 60,
                                            .connections = 1,
                                            .connection_target = 5,
                                            .ceiling = 40.5,
                                            .ceiling_until = kT0 + absl::Hours(1),
                                            .hold_until = kT0 + absl::Minutes(90)};
  // The pause record is version 1, as before, and knows nothing of the back-off.
  const std::string key = SuspensionPairKey(throttled.site, throttled.source);
  const std::string pause_value = EncodePairPause(throttled);
  EXPECT_EQ(pause_value[0], '\x01');
  absl::StatusOr<PairPause> pause_only = DecodePairPause(key, pause_value);
  ASSERT_TRUE(pause_only.ok()) << pause_only.status();
  PairPause without = throttled;
  without.backoff.reset();
  EXPECT_EQ(*pause_only, without);
  // The back-off record, and its damage.
  const std::string value = EncodePairBackoff(*throttled.backoff);
  absl::StatusOr<throttle::PairBackoff> decoded = DecodePairBackoff(value);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, *throttled.backoff);
  for (size_t cut = 0; cut < value.size(); ++cut) {
    EXPECT_EQ(DecodePairBackoff(value.substr(0, cut)).status().code(), absl::StatusCode::kDataLoss)
        << cut;
  }
  EXPECT_EQ(DecodePairBackoff(value + "x").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodePairBackoff("\x02").status().code(), absl::StatusCode::kFailedPrecondition);
  // Times never set stay so (a back-off without a hold, or without a ceiling).
  throttle::PairBackoff cut_only{.rate = 30, .rate_target = 60, .connections = 0,
                                 .connection_target = 0, .ceiling = 0,
                                 .ceiling_until = absl::InfinitePast(),
                                 .hold_until = absl::InfinitePast()};
  decoded = DecodePairBackoff(EncodePairBackoff(cut_only));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, cut_only);

  test::TempDir dir;
  std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
  ASSERT_TRUE(
      SuspensionStore(*store).Write({.set = {throttled}, .lifted = {}}, /*synced=*/true).ok());
  absl::StatusOr<PairPauseLoad> load =
      SuspensionStore(*store).PairPauses(kT0 + absl::Minutes(80));  // the pause is over
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, ElementsAre(throttled));
  load = SuspensionStore(*store).PairPauses(kT0 + absl::Minutes(90));  // and the hold
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, IsEmpty());
  EXPECT_EQ(load->expired, 1u);
  // Both keys went.
  std::string ignored;
  EXPECT_TRUE(store->db()
                  .Get(rocksdb::ReadOptions(), store->family(Family::kSuspension), key, &ignored)
                  .IsNotFound());
  EXPECT_TRUE(store->db()
                  .Get(rocksdb::ReadOptions(), store->family(Family::kSuspension),
                       SuspensionBackoffKey(throttled.site, throttled.source), &ignored)
                  .IsNotFound());
}

// A pause lifted (or rewritten without its back-off) takes its back-off along; a back-off left
// without its pause (lifted by a binary that did not know back-offs) is dropped at start.
TEST(SuspensionStoreTest, ABackoffGoesWithItsPause) {
  PairPause throttled = Pause("outlook", "out1", kT0 + absl::Minutes(15), false, RC::kRateLimit);
  throttled.backoff = throttle::PairBackoff{.rate = 6, .rate_target = 60, .connections = 1,
                                            .connection_target = 5, .ceiling = 0,
                                            .ceiling_until = absl::InfinitePast(),
                                            .hold_until = kT0 + absl::Minutes(90)};
  test::TempDir dir;
  std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
  SuspensionStore pauses(*store);
  ASSERT_TRUE(pauses.Write({.set = {throttled}, .lifted = {}}, /*synced=*/true).ok());
  ASSERT_TRUE(pauses.Write({.set = {}, .lifted = {{"outlook", "out1"}}}, /*synced=*/true).ok());
  absl::StatusOr<PairPauseLoad> load = pauses.PairPauses(kT0);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, IsEmpty());

  ASSERT_TRUE(pauses.Write({.set = {throttled}, .lifted = {}}, /*synced=*/true).ok());
  PairPause manual = throttled;
  manual.backoff.reset();
  manual.manual = true;
  manual.cause.reset();
  ASSERT_TRUE(pauses.Write({.set = {manual}, .lifted = {}}, /*synced=*/true).ok());
  load = pauses.PairPauses(kT0);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, ElementsAre(manual));

  ASSERT_TRUE(store->db()
                  .Put(rocksdb::WriteOptions(), store->family(Family::kSuspension),
                       SuspensionBackoffKey("gone", "out1"),
                       EncodePairBackoff(*throttled.backoff))
                  .ok());
  load = pauses.PairPauses(kT0);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, ElementsAre(manual));
  std::string ignored;
  EXPECT_TRUE(store->db()
                  .Get(rocksdb::ReadOptions(), store->family(Family::kSuspension),
                       SuspensionBackoffKey("gone", "out1"), &ignored)
                  .IsNotFound());
}

TEST(SuspensionStoreTest, PairRecordsRoundTripAndDamagedOnesAreSkipped) {
  const PairPause pause = Pause(std::string("mx:a\0b", 6), "out1", kT0 + absl::Hours(4), false,
                                RC::kBlocklist);
  const std::string key = SuspensionPairKey(pause.site, pause.source);
  absl::StatusOr<PairPause> decoded = DecodePairPause(key, EncodePairPause(pause));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, pause);
  const std::string value = EncodePairPause(pause);
  EXPECT_EQ(DecodePairPause(key, value.substr(0, value.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  // Without a back-off, version 1: what the facteur before back-offs were kept reads.
  EXPECT_EQ(value[0], '\x01');
  // A newer facteur's record (version 2): not read, and not damaged either.
  EXPECT_EQ(DecodePairPause(key, "\x02").status().code(), absl::StatusCode::kFailedPrecondition);

  test::TempDir dir;
  std::unique_ptr<Store> store = OpenStore(dir.Sub("spool"));
  ASSERT_TRUE(SuspensionStore(*store).Write({.set = {pause}, .lifted = {}}, /*synced=*/true).ok());
  ASSERT_TRUE(store->db()
                  .Put(rocksdb::WriteOptions(), store->family(Family::kSuspension),
                       SuspensionPairKey("orange", "out1"), "\x01" "damaged")
                  .ok());
  ASSERT_TRUE(store->db()
                  .Put(rocksdb::WriteOptions(), store->family(Family::kSuspension),
                       SuspensionPairKey("free", "out1"), "\x02 a newer facteur's")
                  .ok());
  absl::StatusOr<PairPauseLoad> load = SuspensionStore(*store).PairPauses(kT0);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_THAT(load->running, ElementsAre(pause));
  EXPECT_EQ(load->skipped, 2u);
  // The damaged record was deleted; the newer one is kept for its binary (a rollback).
  load = SuspensionStore(*store).PairPauses(kT0);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->skipped, 1u);
}

}  // namespace
}  // namespace facteur::queue
