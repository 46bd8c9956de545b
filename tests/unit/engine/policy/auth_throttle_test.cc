#include "engine/policy/auth_throttle.h"

#include "gtest/gtest.h"

namespace facteur::policy {
namespace {

using Admission = AuthThrottle::Admission;
using Outcome = AuthThrottle::Outcome;

class AuthThrottleTest : public ::testing::Test {
 protected:
  // One whole check: begun (or refused) and, when begun, finished with `outcome`.
  bool Check(AuthThrottle& throttle, std::string_view client, Outcome outcome) {
    const Admission admission = throttle.Begin(client);
    if (admission == Admission::kRefused) return false;
    throttle.Finish(client, admission, outcome);
    return true;
  }
  bool Refused(AuthThrottle& throttle, std::string_view client) {
    const Admission admission = throttle.Begin(client);
    if (admission == Admission::kRefused) return true;
    throttle.Finish(client, admission, Outcome::kNone);
    return false;
  }
  SimulatedClock clock_;
};

TEST_F(AuthThrottleTest, LocksAnAddressOutAfterTooManyFailuresUntilTheWindowEnds) {
  AuthThrottle throttle(clock_, {.max_failures = 3, .window = absl::Minutes(10)});
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(Check(throttle, "192.0.2.1", Outcome::kFailure)) << i;
    clock_.Advance(absl::Minutes(1));
  }
  EXPECT_TRUE(Refused(throttle, "192.0.2.1"));
  EXPECT_TRUE(Check(throttle, "192.0.2.2", Outcome::kFailure));  // other addresses are not affected
  clock_.Advance(absl::Minutes(6));  // 9 minutes after the first failure
  EXPECT_TRUE(Refused(throttle, "192.0.2.1"));
  clock_.Advance(absl::Minutes(1));  // the window that began with it has ended
  EXPECT_TRUE(Check(throttle, "192.0.2.1", Outcome::kFailure));  // a new window, counted from one
  EXPECT_TRUE(Check(throttle, "192.0.2.1", Outcome::kFailure));
  EXPECT_TRUE(Check(throttle, "192.0.2.1", Outcome::kFailure));
  EXPECT_TRUE(Refused(throttle, "192.0.2.1"));
}

TEST_F(AuthThrottleTest, FailuresSpreadOverMoreThanOneWindowNeverLockOut) {
  AuthThrottle throttle(clock_, {.max_failures = 3, .window = absl::Minutes(10)});
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(Check(throttle, "198.51.100.7", Outcome::kFailure)) << i;
    clock_.Advance(absl::Minutes(5));  // at most 2 failures in any window
    if (i % 2 == 1) clock_.Advance(absl::Minutes(1));
  }
}

TEST_F(AuthThrottleTest, SuccessForgetsTheFailuresAndNoVerdictCountsNothing) {
  AuthThrottle throttle(clock_, {.max_failures = 2, .window = absl::Minutes(10)});
  EXPECT_TRUE(Check(throttle, "unix", Outcome::kFailure));
  EXPECT_TRUE(Check(throttle, "unix", Outcome::kSuccess));
  EXPECT_TRUE(Check(throttle, "unix", Outcome::kFailure));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(Check(throttle, "unix", Outcome::kNone)) << i;
  EXPECT_TRUE(Check(throttle, "unix", Outcome::kFailure));
  EXPECT_TRUE(Refused(throttle, "unix"));
}

// Many connections guessing at the same time: the checks still running count, so that no more
// begin than kChecksAtOnce before a first failure, and none once the failures and the checks
// running reach the limit, whatever they turn out to be.
TEST_F(AuthThrottleTest, ChecksRunningCountTowardTheLimit) {
  AuthThrottle throttle(clock_, {.max_failures = 3, .window = absl::Minutes(10)});
  int begun = 0;
  for (int i = 0; i < 250; ++i) {
    begun += throttle.Begin("203.0.113.9") == Admission::kCounted ? 1 : 0;
  }
  EXPECT_EQ(begun, static_cast<int>(AuthThrottle::kChecksAtOnce));
  throttle.Finish("203.0.113.9", Admission::kCounted, Outcome::kFailure);
  EXPECT_TRUE(Refused(throttle, "203.0.113.9")) << "one failure: the limit is max_failures";
  for (int i = 1; i < begun; ++i) {
    throttle.Finish("203.0.113.9", Admission::kCounted, Outcome::kFailure);
  }
  EXPECT_TRUE(Refused(throttle, "203.0.113.9"));
  clock_.Advance(absl::Minutes(10));
  EXPECT_TRUE(Check(throttle, "203.0.113.9", Outcome::kSuccess));

  // With a failure counted, the checks running count against what is left of max_failures.
  EXPECT_TRUE(Check(throttle, "198.51.100.1", Outcome::kFailure));
  EXPECT_EQ(throttle.Begin("198.51.100.1"), Admission::kCounted);
  EXPECT_EQ(throttle.Begin("198.51.100.1"), Admission::kCounted);
  EXPECT_TRUE(Refused(throttle, "198.51.100.1")) << "one failure and two still running";
  throttle.Finish("198.51.100.1", Admission::kCounted, Outcome::kNone);  // e.g. no pool room
  EXPECT_EQ(throttle.Begin("198.51.100.1"), Admission::kCounted);
  throttle.Finish("198.51.100.1", Admission::kCounted, Outcome::kSuccess);  // forgets failures
  throttle.Finish("198.51.100.1", Admission::kCounted, Outcome::kFailure);
  EXPECT_TRUE(Check(throttle, "198.51.100.1", Outcome::kFailure));
  EXPECT_EQ(throttle.Begin("198.51.100.1"), Admission::kCounted);
  EXPECT_TRUE(Refused(throttle, "198.51.100.1"));

  // A limit above kChecksAtOnce is the limit.
  AuthThrottle lenient(clock_, {.max_failures = 20, .window = absl::Minutes(10)});
  begun = 0;
  for (int i = 0; i < 250; ++i) begun += lenient.Begin("192.0.2.50") == Admission::kCounted;
  EXPECT_EQ(begun, 20);
}

TEST_F(AuthThrottleTest, IPv6ClientsCountByTheirSlash64) {
  EXPECT_EQ(AuthThrottle::KeyOf("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::/64");
  EXPECT_EQ(AuthThrottle::KeyOf("::ffff:192.0.2.7"), "192.0.2.7");
  EXPECT_EQ(AuthThrottle::KeyOf("192.0.2.7"), "192.0.2.7");
  EXPECT_EQ(AuthThrottle::KeyOf("unix"), "unix");
  AuthThrottle throttle(clock_, {.max_failures = 2, .window = absl::Minutes(10)});
  EXPECT_TRUE(Check(throttle, "2001:db8:1:2::1", Outcome::kFailure));
  EXPECT_TRUE(Check(throttle, "2001:db8:1:2:ffff::9", Outcome::kFailure));
  EXPECT_TRUE(Refused(throttle, "2001:db8:1:2:1234::77")) << "another address of the same /64";
  EXPECT_TRUE(Check(throttle, "2001:db8:1:3::1", Outcome::kFailure));  // the next /64
  EXPECT_TRUE(Check(throttle, "::ffff:192.0.2.7", Outcome::kFailure));
  EXPECT_TRUE(Check(throttle, "192.0.2.7", Outcome::kFailure));
  EXPECT_TRUE(Refused(throttle, "192.0.2.7"));
}

TEST_F(AuthThrottleTest, ZeroDisablesIt) {
  AuthThrottle throttle(clock_, {.max_failures = 0});
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(Check(throttle, "192.0.2.1", Outcome::kFailure));
  for (int i = 0; i < 100; ++i) EXPECT_NE(throttle.Begin("192.0.2.1"), Admission::kRefused);
}

TEST_F(AuthThrottleTest, TracksABoundedNumberOfAddresses) {
  AuthThrottle throttle(clock_, {.max_failures = 1, .window = absl::Minutes(10), .max_tracked = 2});
  EXPECT_TRUE(Check(throttle, "a", Outcome::kFailure));
  EXPECT_TRUE(Check(throttle, "b", Outcome::kFailure));
  EXPECT_EQ(throttle.Begin("c"), Admission::kUncounted);  // the table is full of live entries
  throttle.Finish("c", Admission::kUncounted, Outcome::kFailure);
  EXPECT_TRUE(Refused(throttle, "a"));
  EXPECT_TRUE(Refused(throttle, "b"));
  EXPECT_TRUE(Check(throttle, "c", Outcome::kFailure));
  clock_.Advance(absl::Minutes(11));  // expired entries make room again
  // An untracked check ending after its address got an entry leaves that entry alone.
  const Admission untracked = Admission::kUncounted;
  EXPECT_EQ(throttle.Begin("c"), Admission::kCounted);
  throttle.Finish("c", untracked, Outcome::kSuccess);
  throttle.Finish("c", Admission::kCounted, Outcome::kFailure);
  EXPECT_TRUE(Refused(throttle, "c"));
}

}  // namespace
}  // namespace facteur::policy
