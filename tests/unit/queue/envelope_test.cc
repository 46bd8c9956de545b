// Envelope codec and schedule keys: round trips, and every malformed input is DataLoss.
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/spool.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

Envelope FullEnvelope() {
  const absl::Time now = absl::FromUnixMicros(1'800'000'000'123'456);
  Envelope envelope = test::SampleEnvelope(MessageId::Generate(now), now);
  envelope.sender = "élodie@exemple.fr";  // SMTPUTF8 (RFC 6531): UTF-8 kept byte for byte
  envelope.recipients.push_back({"用户@例子.广告", RecipientState::kDelivered, "NEVER", "", "", 0, ""});
  envelope.recipients.push_back({"x@y.z", RecipientState::kBounced, "", "utf-8;x@y.z", "", 0, ""});
  envelope.recipients.push_back({"grey@list.example", RecipientState::kPending, "", "", "out2", 3,
                                 "mx.list.example[192.0.2.7] said: 450 4.2.0 Greylisted"});
  envelope.smtputf8 = true;
  envelope.eight_bit = true;
  envelope.dsn_ret = "HDRS";
  envelope.dsn_envid = "QQ314159";
  envelope.attempts = 7;
  envelope.next_attempt = now + absl::Minutes(5);
  envelope.recipients.back().retry_at = now + absl::Minutes(7);  // greylisted longer
  return envelope;
}

TEST(EnvelopeTest, RoundTripKeepsEveryField) {
  const Envelope envelope = FullEnvelope();
  absl::StatusOr<Envelope> decoded = DecodeEnvelope(EncodeEnvelope(envelope));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, envelope);
}

TEST(EnvelopeTest, RoundTripNullSenderNoRecipientsAndOldTimes) {
  Envelope envelope;
  envelope.id = MessageId::Generate(absl::Now());
  envelope.received_at = absl::FromUnixMicros(-5);  // zigzag: negative times survive
  envelope.attempts = UINT32_MAX;
  absl::StatusOr<Envelope> decoded = DecodeEnvelope(EncodeEnvelope(envelope));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, envelope);
  EXPECT_EQ(decoded->sender, "");
}

// Spools written before greylisting pins (version 1), before last replies (version 2) and
// before per-recipient retry times (version 3) are still read: their recipients have none.
// Version 2 is still written while no recipient has a last reply, and 3 while none has a retry
// time of its own, which an older facteur can read. The bytes of version 1 are built here as it
// wrote them.
TEST(EnvelopeTest, VersionsOneToThreeAreReadAndTheOldestThatHoldsTheEnvelopeIsWritten) {
  Envelope envelope;
  envelope.id = MessageId::Generate(absl::FromUnixSeconds(1'800'000'000));
  envelope.sender = "a@b.example";
  envelope.recipients.push_back({"c@d.example", RecipientState::kPending, "", "", "", 0, ""});
  std::string v2 = EncodeEnvelope(envelope);
  ASSERT_EQ(v2[0], 2);
  // Version 2 ends with the one recipient's empty pin (0) and greylisted count (0).
  ASSERT_EQ(v2.substr(v2.size() - 2), std::string("\0\0", 2));
  std::string v1 = v2.substr(0, v2.size() - 2);
  v1[0] = 1;
  for (const std::string& old : {v1, v2}) {
    absl::StatusOr<Envelope> decoded = DecodeEnvelope(old);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, envelope);
  }
  v2[0] = 1;  // version 1 with the later fields: trailing bytes
  EXPECT_EQ(DecodeEnvelope(v2).status().code(), absl::StatusCode::kDataLoss);
  envelope.recipients[0].last_reply = "mx[192.0.2.1]:25 said: 451 4.3.0 later";
  const std::string v3 = EncodeEnvelope(envelope);
  EXPECT_EQ(v3[0], 3);
  absl::StatusOr<Envelope> decoded = DecodeEnvelope(v3);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, envelope);
  // Version 4 only once a recipient has a retry time of its own; "none" survives beside one.
  envelope.recipients.push_back({"e@f.example", RecipientState::kPending, "", "", "", 1, ""});
  envelope.recipients.back().retry_at = absl::FromUnixSeconds(1'800'000'300);
  const std::string v4 = EncodeEnvelope(envelope);
  EXPECT_EQ(v4[0], 4);
  decoded = DecodeEnvelope(v4);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, envelope);
  EXPECT_EQ(decoded->recipients[0].retry_at, absl::InfinitePast());
}

TEST(EnvelopeTest, EveryTruncationIsDataLoss) {
  const std::string bytes = EncodeEnvelope(FullEnvelope());
  for (size_t n = 0; n < bytes.size(); ++n) {
    absl::StatusOr<Envelope> decoded = DecodeEnvelope(std::string_view(bytes).substr(0, n));
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kDataLoss) << "prefix of " << n;
  }
}

TEST(EnvelopeTest, TrailingBytesBadVersionAndBadFieldsAreDataLoss) {
  const std::string bytes = EncodeEnvelope(FullEnvelope());
  EXPECT_EQ(DecodeEnvelope(bytes + '\0').status().code(), absl::StatusCode::kDataLoss);
  std::string bad_version = bytes;
  bad_version[0] = 0;
  EXPECT_EQ(DecodeEnvelope(bad_version).status().code(), absl::StatusCode::kDataLoss);
  // A newer facteur's envelope is not damage: FailedPrecondition, which recovery does not remove.
  bad_version[0] = 5;
  EXPECT_EQ(DecodeEnvelope(bad_version).status().code(), absl::StatusCode::kFailedPrecondition);
  std::string bad_flags = bytes;
  bad_flags[1 + MessageId::kBytes] = 0x7f;  // the flags varint follows version and id
  EXPECT_EQ(DecodeEnvelope(bad_flags).status().code(), absl::StatusCode::kDataLoss);
  // The sender length (one byte at 2 + 16) replaced by a 5-byte varint far past the end.
  std::string long_sender = bytes.substr(0, 2 + MessageId::kBytes) + "\xff\xff\xff\xff\x0f" +
                            bytes.substr(3 + MessageId::kBytes);
  EXPECT_EQ(DecodeEnvelope(long_sender).status().code(), absl::StatusCode::kDataLoss);
  // A recipient count that the remaining bytes cannot hold must not allocate or read past.
  Envelope empty;
  empty.id = MessageId::Generate(absl::Now());
  std::string huge_count = EncodeEnvelope(empty);
  huge_count.pop_back();  // the zero recipient count, replaced by 2^32 - 1
  huge_count += "\xff\xff\xff\xff\x0f";
  EXPECT_EQ(DecodeEnvelope(huge_count).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ScheduleKeyTest, KeysSortByDueTimeThenId) {
  const absl::Time base = absl::FromUnixSeconds(1'800'000'000);
  const MessageId early_id = MessageId::Generate(base + absl::Hours(1));
  const MessageId late_id = MessageId::Generate(base - absl::Hours(1));
  // Due times differ by one microsecond, then by hours across the byte boundaries; the id
  // order must not matter.
  const std::string a = ScheduleKey(base, early_id);
  const std::string b = ScheduleKey(base + absl::Microseconds(1), late_id);
  const std::string c = ScheduleKey(base + absl::Hours(300), late_id);
  const std::string d = ScheduleKey(base + absl::Hours(300000), early_id);
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
  EXPECT_LT(c, d);
  EXPECT_EQ(a.size(), 24u);
  absl::StatusOr<ScheduleEntry> parsed = ParseScheduleKey(b);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->due, base + absl::Microseconds(1));
  EXPECT_EQ(parsed->id, late_id);
  EXPECT_EQ(ParseScheduleKey("short").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace facteur::queue
