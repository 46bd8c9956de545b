#include "engine/base/message_id.h"

#include <set>

#include "gtest/gtest.h"

namespace facteur {
namespace {

TEST(MessageIdTest, TextRoundTripsAndIsTwentySixCharacters) {
  MessageId id = MessageId::Generate(absl::FromUnixSeconds(1'800'000'000));
  std::string text = id.ToString();
  EXPECT_EQ(text.size(), MessageId::kTextLength);
  std::optional<MessageId> parsed = MessageId::Parse(text);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(*parsed, id);
  EXPECT_EQ(MessageId::FromBytes(id.Bytes()), id);
}

TEST(MessageIdTest, CarriesItsCreationMillisecond) {
  absl::Time t = absl::FromUnixMillis(1'800'000'000'123);
  EXPECT_EQ(MessageId::Generate(t).CreatedAt(), t);
}

TEST(MessageIdTest, IdsIncreaseEvenWithinOneMillisecondAndWhenTimeGoesBack) {
  absl::Time t = absl::FromUnixSeconds(1'900'000'000);
  MessageId previous = MessageId::Generate(t);
  std::set<std::string> seen{previous.ToString()};
  for (int i = 0; i < 1000; ++i) {
    MessageId next = MessageId::Generate(i % 7 == 0 ? t - absl::Seconds(1) : t);
    EXPECT_LT(previous, next);
    EXPECT_LT(previous.ToString(), next.ToString());  // text sorts like the bytes
    EXPECT_TRUE(seen.insert(next.ToString()).second);
    previous = next;
  }
}

TEST(MessageIdTest, ParseRejectsWrongLengthAndAlphabet) {
  EXPECT_FALSE(MessageId::Parse("").has_value());
  EXPECT_FALSE(MessageId::Parse("01ARZ3NDEKTSV4RRFFQ69G5FA").has_value());    // 25
  EXPECT_FALSE(MessageId::Parse("01ARZ3NDEKTSV4RRFFQ69G5FAVV").has_value());  // 27
  EXPECT_FALSE(MessageId::Parse("01ARZ3NDEKTSV4RRFFQ69G5FA!").has_value());
  EXPECT_FALSE(MessageId::Parse("81ARZ3NDEKTSV4RRFFQ69G5FAV").has_value());   // > 128 bits
  EXPECT_TRUE(MessageId::Parse("01arz3ndektsv4rrffq69g5fav").has_value());    // any case
  EXPECT_FALSE(MessageId::FromBytes("short").has_value());
}

}  // namespace
}  // namespace facteur
