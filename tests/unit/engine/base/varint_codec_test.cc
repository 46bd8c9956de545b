// File: tests/unit/engine/base/varint_codec_test.cc
// The varint codec the spool's records share: times round-trip, the infinities included (a
// back-off without a hold stores InfinitePast, and must read it back as such).
#include "engine/base/varint_codec.h"

#include <string>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace facteur {
namespace {

TEST(VarintCodecTest, TimesRoundTripTheInfinitiesIncluded) {
  const absl::Time times[] = {absl::InfinitePast(), absl::InfiniteFuture(), absl::UnixEpoch(),
                              absl::FromUnixMicros(1'800'000'000'123'456),
                              absl::FromUnixMicros(-5)};
  std::string bytes;
  for (const absl::Time t : times) PutTime(bytes, t);
  VarintReader in(bytes);
  for (const absl::Time t : times) {
    absl::Time read;
    ASSERT_TRUE(in.Time(read));
    EXPECT_EQ(read, t);
  }
  EXPECT_TRUE(in.done());
}

TEST(VarintCodecTest, TruncatedInputIsRefused) {
  std::string bytes;
  PutTime(bytes, absl::FromUnixMicros(1'800'000'000'123'456));
  PutString(bytes, "site");
  VarintReader in(std::string_view(bytes).substr(0, bytes.size() - 1));
  absl::Time t;
  std::string s;
  EXPECT_TRUE(in.Time(t));
  EXPECT_FALSE(in.String(s));
}

}  // namespace
}  // namespace facteur
