#include "engine/policy/auth_throttle.h"

#include "gtest/gtest.h"

namespace facteur::policy {
namespace {

class AuthThrottleTest : public ::testing::Test {
 protected:
  SimulatedClock clock_;
};

TEST_F(AuthThrottleTest, LocksAnAddressOutAfterTooManyFailuresUntilTheWindowEnds) {
  AuthThrottle throttle(clock_, {.max_failures = 3, .window = absl::Minutes(10)});
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(throttle.Allowed("192.0.2.1")) << i;
    throttle.RecordFailure("192.0.2.1");
    clock_.Advance(absl::Minutes(1));
  }
  EXPECT_FALSE(throttle.Allowed("192.0.2.1"));
  EXPECT_TRUE(throttle.Allowed("192.0.2.2"));  // other addresses are not affected
  clock_.Advance(absl::Minutes(6));            // 9 minutes after the first failure
  EXPECT_FALSE(throttle.Allowed("192.0.2.1"));
  clock_.Advance(absl::Minutes(1));            // the window that began with it has ended
  EXPECT_TRUE(throttle.Allowed("192.0.2.1"));
  throttle.RecordFailure("192.0.2.1");         // a new window, counted from one
  EXPECT_TRUE(throttle.Allowed("192.0.2.1"));
}

TEST_F(AuthThrottleTest, FailuresSpreadOverMoreThanOneWindowNeverLockOut) {
  AuthThrottle throttle(clock_, {.max_failures = 3, .window = absl::Minutes(10)});
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(throttle.Allowed("198.51.100.7")) << i;
    throttle.RecordFailure("198.51.100.7");
    clock_.Advance(absl::Minutes(5));  // at most 2 failures in any window
    if (i % 2 == 1) clock_.Advance(absl::Minutes(1));
  }
}

TEST_F(AuthThrottleTest, SuccessForgetsTheFailures) {
  AuthThrottle throttle(clock_, {.max_failures = 2, .window = absl::Minutes(10)});
  throttle.RecordFailure("unix");
  throttle.RecordSuccess("unix");
  throttle.RecordFailure("unix");
  EXPECT_TRUE(throttle.Allowed("unix"));
  throttle.RecordFailure("unix");
  EXPECT_FALSE(throttle.Allowed("unix"));
}

TEST_F(AuthThrottleTest, ZeroDisablesIt) {
  AuthThrottle throttle(clock_, {.max_failures = 0});
  for (int i = 0; i < 100; ++i) throttle.RecordFailure("192.0.2.1");
  EXPECT_TRUE(throttle.Allowed("192.0.2.1"));
}

TEST_F(AuthThrottleTest, TracksABoundedNumberOfAddresses) {
  AuthThrottle throttle(clock_, {.max_failures = 1, .window = absl::Minutes(10), .max_tracked = 2});
  throttle.RecordFailure("a");
  throttle.RecordFailure("b");
  throttle.RecordFailure("c");  // not tracked: the table is full of live entries
  EXPECT_FALSE(throttle.Allowed("a"));
  EXPECT_FALSE(throttle.Allowed("b"));
  EXPECT_TRUE(throttle.Allowed("c"));
  clock_.Advance(absl::Minutes(11));  // expired entries make room again
  throttle.RecordFailure("c");
  EXPECT_FALSE(throttle.Allowed("c"));
}

}  // namespace
}  // namespace facteur::policy
