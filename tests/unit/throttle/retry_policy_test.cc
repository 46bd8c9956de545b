// RetryPolicy: exponential growth, the cap, jitter bounds and spread over many seeded draws,
// never past the expiry, and the expiry itself.
#include "throttle/retry_policy.h"

#include <cstdint>
#include <random>

#include "absl/random/random.h"
#include "gtest/gtest.h"

namespace facteur::throttle {
namespace {

const absl::Time kReceived = absl::FromUnixSeconds(1'800'000'000);

RetryOptions NoJitter() {
  RetryOptions options;
  options.jitter = 0;
  return options;
}

TEST(RetryPolicyTest, DelaysGrowByTheBackoffFromTheFirstRetryUpToTheCap) {
  const RetryPolicy policy(NoJitter());
  std::mt19937 random(1);
  const absl::Time now = kReceived + absl::Hours(1);
  EXPECT_EQ(policy.NextAttempt(1, kReceived, now, random), now + absl::Minutes(5));
  EXPECT_EQ(policy.NextAttempt(2, kReceived, now, random), now + absl::Minutes(10));
  EXPECT_EQ(policy.NextAttempt(3, kReceived, now, random), now + absl::Minutes(20));
  EXPECT_EQ(policy.NextAttempt(6, kReceived, now, random), now + absl::Minutes(160));
  EXPECT_EQ(policy.NextAttempt(7, kReceived, now, random), now + absl::Hours(4));  // 320m, capped
  // Far past any integer power: still the cap, no overflow.
  EXPECT_EQ(policy.NextAttempt(UINT32_MAX, kReceived, now, random), now + absl::Hours(4));
  // No failure yet counts as the first.
  EXPECT_EQ(policy.NextAttempt(0, kReceived, now, random), now + absl::Minutes(5));
}

TEST(RetryPolicyTest, OptionsSetTheCurve) {
  RetryOptions options = NoJitter();
  options.first_retry = absl::Minutes(1);
  options.backoff = 3;
  options.max_retry_interval = absl::Minutes(30);
  const RetryPolicy policy(options);
  std::mt19937 random(1);
  EXPECT_EQ(policy.NextAttempt(1, kReceived, kReceived, random), kReceived + absl::Minutes(1));
  EXPECT_EQ(policy.NextAttempt(3, kReceived, kReceived, random), kReceived + absl::Minutes(9));
  EXPECT_EQ(policy.NextAttempt(4, kReceived, kReceived, random), kReceived + absl::Minutes(27));
  EXPECT_EQ(policy.NextAttempt(5, kReceived, kReceived, random), kReceived + absl::Minutes(30));
  options.backoff = 1;  // constant
  EXPECT_EQ(RetryPolicy(options).NextAttempt(40, kReceived, kReceived, random),
            kReceived + absl::Minutes(1));
}

// Over `draws` seeded draws of attempt `n`, every delay lies within ±jitter of `expected`, and
// the draws spread over most of that range, centred on it.
void ExpectJitterAround(const RetryPolicy& policy, uint32_t n, absl::Duration expected,
                        std::mt19937& random) {
  constexpr int kDraws = 20000;
  const double jitter = policy.options().jitter;
  const absl::Time now = kReceived;
  absl::Duration low = absl::InfiniteDuration();
  absl::Duration high = -absl::InfiniteDuration();
  double sum = 0;
  for (int i = 0; i < kDraws; ++i) {
    const absl::Duration delay = policy.NextAttempt(n, kReceived, now, random) - now;
    ASSERT_GE(delay, expected * (1 - jitter)) << "draw " << i;
    ASSERT_LE(delay, expected * (1 + jitter)) << "draw " << i;
    low = std::min(low, delay);
    high = std::max(high, delay);
    sum += absl::ToDoubleSeconds(delay);
  }
  // Uniform over ±20%: 20 000 draws reach within 1% of each end and average within 1%.
  EXPECT_LT(low, expected * (1 - 0.99 * jitter));
  EXPECT_GT(high, expected * (1 + 0.99 * jitter));
  EXPECT_NEAR(sum / kDraws, absl::ToDoubleSeconds(expected),
              0.01 * absl::ToDoubleSeconds(expected));
}

TEST(RetryPolicyTest, JitterSpreadsEachDelayWithinItsBounds) {
  const RetryPolicy policy{RetryOptions()};  // ±20%
  std::mt19937 random(20240601);
  ExpectJitterAround(policy, 1, absl::Minutes(5), random);
  ExpectJitterAround(policy, 3, absl::Minutes(20), random);
  ExpectJitterAround(policy, 12, absl::Hours(4), random);  // the cap, then the spread
}

TEST(RetryPolicyTest, SameSeedSameSchedule) {
  const RetryPolicy policy{RetryOptions()};
  absl::BitGen first(std::seed_seq{7});
  absl::BitGen second(std::seed_seq{7});
  absl::BitGen other(std::seed_seq{8});
  bool differs = false;
  for (uint32_t n = 1; n < 50; ++n) {
    const absl::Time a = policy.NextAttempt(n, kReceived, kReceived, first);
    EXPECT_EQ(a, policy.NextAttempt(n, kReceived, kReceived, second));
    differs |= a != policy.NextAttempt(n, kReceived, kReceived, other);
  }
  EXPECT_TRUE(differs) << "the randomness is not used";
}

TEST(RetryPolicyTest, NeverLaterThanTheExpiry) {
  const RetryPolicy policy{RetryOptions()};
  const absl::Time expiry = kReceived + absl::Hours(24 * 5);
  std::mt19937 random(5);
  // One minute before the expiry, every delay (4 to 6 minutes, or more) would pass it.
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(policy.NextAttempt(1 + i % 20, kReceived, expiry - absl::Minutes(1), random),
              expiry);
  }
  // Already past it: due at the expiry, i.e. at once, to bounce.
  EXPECT_EQ(policy.NextAttempt(3, kReceived, expiry + absl::Hours(1), random), expiry);
  // Well before it, the curve is untouched.
  const absl::Time early = kReceived + absl::Hours(1);
  EXPECT_LT(policy.NextAttempt(30, kReceived, early, random), expiry);
}

TEST(RetryPolicyTest, ExpiresAfterTheQueueLifetime) {
  RetryOptions options;
  EXPECT_EQ(options.queue_lifetime, absl::Hours(120));  // RFC 5321 §4.5.4.1: 4–5 days
  options.queue_lifetime = absl::Hours(2);
  const RetryPolicy policy(options);
  EXPECT_EQ(policy.ExpiresAt(kReceived), kReceived + absl::Hours(2));
  EXPECT_FALSE(policy.Expired(kReceived, kReceived));
  EXPECT_FALSE(policy.Expired(kReceived, kReceived + absl::Hours(2) - absl::Microseconds(1)));
  EXPECT_TRUE(policy.Expired(kReceived, kReceived + absl::Hours(2)));
  EXPECT_TRUE(policy.Expired(kReceived, kReceived + absl::Hours(3)));
}

}  // namespace
}  // namespace facteur::throttle
