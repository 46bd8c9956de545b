// PauseLedger: what the writer is given (changes only, lifts as deletions, a failed write given
// again), restored pauses not rewritten, ended pauses not running, and a closed ledger that no
// longer makes its writer wait.
#include "throttle/pause_ledger.h"

#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

const absl::Time kT0 = absl::FromUnixSeconds(1'800'000'000);

PairPause Blocklisted(std::string site, std::string source, absl::Time until) {
  return PairPause{.site = std::move(site), .source = std::move(source), .pool = "default",
                   .since = kT0, .until = until, .manual = false,
                   .cause = ResponseClass::kBlocklist, .backoff = std::nullopt};
}

TEST(PauseLedgerTest, TheWriterGetsEachChangeOnce) {
  PauseLedger ledger;
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));  // no change
  PauseDelta delta = ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  ASSERT_THAT(delta.set, testing::SizeIs(1));
  EXPECT_EQ(delta.set[0], Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));
  EXPECT_THAT(delta.lifted, IsEmpty());

  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));  // still no change
  EXPECT_TRUE(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).empty());
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(5)));  // extended
  ledger.Lift("gmail", "out1");
  ledger.Lift("orange", "out1");  // never paused: nothing to delete
  delta = ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  EXPECT_THAT(delta.set, IsEmpty());
  EXPECT_THAT(delta.lifted, ElementsAre(Pair("gmail", "out1")));
}

TEST(PauseLedgerTest, ABackoffKeepsTheRecordPastThePauseUntilItsHoldOrCeilingEnds) {
  PauseLedger ledger;
  PairPause throttled = Blocklisted("outlook", "out1", kT0 + absl::Minutes(15));
  throttled.cause = ResponseClass::kRateLimit;
  throttled.backoff = PairBackoff{.rate = 6, .rate_target = 60, .connections = 1,
                                  .connection_target = 5, .ceiling = 0,
                                  .ceiling_until = absl::InfinitePast(),
                                  .hold_until = kT0 + absl::Minutes(90)};
  EXPECT_EQ(KeptUntil(throttled), kT0 + absl::Minutes(90));
  ledger.Record(throttled);
  EXPECT_THAT(ledger.Running(kT0 + absl::Minutes(60)), ElementsAre(throttled));
  EXPECT_THAT(ledger.Running(kT0 + absl::Minutes(90)), IsEmpty());
  // A cut alone is kept as long as the pause.
  throttled.backoff->hold_until = absl::InfinitePast();
  EXPECT_EQ(KeptUntil(throttled), kT0 + absl::Minutes(15));
}

TEST(PauseLedgerTest, RestoredPausesRunAndAreNotRewrittenButTheirLiftIs) {
  PauseLedger ledger;
  const PairPause manual{.site = "orange", .source = "", .pool = "", .since = kT0,
                         .until = kT0 + absl::Hours(2), .manual = true, .cause = std::nullopt,
                         .backoff = std::nullopt};
  ledger.Restore({Blocklisted("gmail", "out1", kT0 + absl::Hours(4)), manual});
  EXPECT_TRUE(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).empty());
  EXPECT_THAT(ledger.Running(kT0 + absl::Hours(1)),
              ElementsAre(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)), manual));
  EXPECT_THAT(ledger.Running(kT0 + absl::Hours(3)),
              ElementsAre(Blocklisted("gmail", "out1", kT0 + absl::Hours(4))));
  ledger.Lift("orange", "");
  EXPECT_THAT(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).lifted,
              ElementsAre(Pair("orange", "")));
}

TEST(PauseLedgerTest, AFailedWriteIsGivenAgainWithTheStateOfThen) {
  PauseLedger ledger;
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));
  const PauseDelta failed = ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(5)));
  ledger.Redirty(failed);
  const PauseDelta again = ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  ASSERT_THAT(again.set, testing::SizeIs(1));
  EXPECT_EQ(again.set[0].until, kT0 + absl::Hours(5));
}

TEST(PauseLedgerTest, WaitWrittenHoldsUntilTheWriterStoredEveryChangeMadeBefore) {
  PauseLedger ledger;
  EXPECT_TRUE(ledger.WaitWritten(absl::ZeroDuration()));  // nothing to write
  PairPause manual = Blocklisted("orange", "", kT0 + absl::Hours(1));
  manual.manual = true;
  manual.cause.reset();
  ledger.Record(manual);
  EXPECT_FALSE(ledger.WaitWritten(absl::Milliseconds(10)));
  const PauseDelta failed = ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  EXPECT_TRUE(failed.has_operator_change());
  ledger.Redirty(failed);  // the disk said no: still not written
  EXPECT_FALSE(ledger.WaitWritten(absl::Milliseconds(10)));
  std::thread writer([&ledger] {
    const PauseDelta delta = ledger.TakeDirtyWhenAny(absl::Seconds(60));
    ledger.Written(delta);
  });
  EXPECT_TRUE(ledger.WaitWritten(absl::Seconds(30)));
  writer.join();
  // A reply's pause alone is no operator's change, nor is a back-off's end; an operator's
  // resume is one, whether it lifts the record or leaves a back-off in it.
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));
  EXPECT_FALSE(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).has_operator_change());
  ledger.Lift("gmail", "out1");
  EXPECT_FALSE(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).has_operator_change());
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));
  ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  ledger.Lift("gmail", "out1", /*by_operator=*/true);
  EXPECT_TRUE(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).has_operator_change());
  PairPause resumed = Blocklisted("gmail", "out1", kT0);
  resumed.cause = ResponseClass::kRateLimit;
  ledger.Record(resumed, /*by_operator=*/true);
  const PauseDelta refused = ledger.TakeDirtyWhenAny(absl::ZeroDuration());
  EXPECT_TRUE(refused.has_operator_change());
  ledger.Redirty(refused);  // still the operator's when given again
  EXPECT_TRUE(ledger.TakeDirtyWhenAny(absl::ZeroDuration()).has_operator_change());
}

TEST(PauseLedgerTest, AWaitingWriterWakesOnAChangeAndOnClose) {
  PauseLedger ledger;
  std::thread writer([&ledger] {
    const PauseDelta delta = ledger.TakeDirtyWhenAny(absl::Seconds(60));
    EXPECT_THAT(delta.set, testing::SizeIs(1));
    EXPECT_TRUE(ledger.TakeDirtyWhenAny(absl::Seconds(60)).empty());  // woken by Close
  });
  ledger.Record(Blocklisted("gmail", "out1", kT0 + absl::Hours(4)));
  ledger.Close();
  const absl::Time start = absl::Now();
  writer.join();
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  EXPECT_TRUE(ledger.closed());
}

}  // namespace
}  // namespace facteur::throttle
