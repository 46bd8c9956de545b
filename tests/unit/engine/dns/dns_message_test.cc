#include "engine/dns/dns_message.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::dns {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Writes DNS messages byte by byte, so each test shows exactly what is on the wire.
class Wire {
 public:
  Wire& U8(uint8_t v) {
    bytes_.push_back(v);
    return *this;
  }
  Wire& U16(uint16_t v) { return U8(v >> 8).U8(v & 0xFF); }
  Wire& U32(uint32_t v) { return U16(v >> 16).U16(v & 0xFFFF); }
  Wire& Raw(std::string_view s) {
    bytes_.insert(bytes_.end(), s.begin(), s.end());
    return *this;
  }
  // Labels, then the root byte; "" is the root alone.
  Wire& Name(std::string_view dotted) {
    size_t start = 0;
    while (start < dotted.size()) {
      size_t dot = dotted.find('.', start);
      if (dot == std::string_view::npos) dot = dotted.size();
      U8(static_cast<uint8_t>(dot - start)).Raw(dotted.substr(start, dot - start));
      start = dot + 1;
    }
    return U8(0);
  }
  // Labels, then a compression pointer to `offset`.
  Wire& NameThenPointer(std::string_view labels, uint16_t offset) {
    size_t start = 0;
    while (start < labels.size()) {
      size_t dot = labels.find('.', start);
      if (dot == std::string_view::npos) dot = labels.size();
      U8(static_cast<uint8_t>(dot - start)).Raw(labels.substr(start, dot - start));
      start = dot + 1;
    }
    return Pointer(offset);
  }
  Wire& Pointer(uint16_t offset) { return U16(0xC000 | offset); }
  Wire& Header(uint16_t flags, uint16_t qd, uint16_t an, uint16_t ns, uint16_t ar = 0) {
    return U16(0x1234).U16(flags).U16(qd).U16(an).U16(ns).U16(ar);
  }
  // Type, class IN, TTL, then RDLENGTH computed from `rdata`.
  Wire& Rr(uint16_t type, uint32_t ttl, const Wire& rdata, uint16_t rr_class = kClassIn) {
    U16(type).U16(rr_class).U32(ttl).U16(static_cast<uint16_t>(rdata.size()));
    bytes_.insert(bytes_.end(), rdata.bytes_.begin(), rdata.bytes_.end());
    return *this;
  }
  size_t size() const { return bytes_.size(); }
  std::span<const uint8_t> span() const { return bytes_; }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

constexpr uint16_t kResponse = 0x8180;  // QR RD RA, NOERROR
constexpr uint16_t kQuestionOffset = 12;

TEST(DnsMessageTest, ParsesMxAnswerWithCompressedNames) {
  Wire w;
  w.Header(kResponse, 1, 2, 0).Name("Example.TEST").U16(kTypeMx).U16(kClassIn);
  w.Pointer(kQuestionOffset)
      .Rr(kTypeMx, 300, Wire().U16(10).NameThenPointer("mx1", kQuestionOffset));
  w.Pointer(kQuestionOffset)
      .Rr(kTypeMx, 200, Wire().U16(20).NameThenPointer("MX2", kQuestionOffset));
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(message->response);
  EXPECT_EQ(message->rcode, kRcodeNoError);
  ASSERT_EQ(message->questions.size(), 1u);
  EXPECT_EQ(message->questions[0].name, "example.test");  // RFC 4343: case folded
  ASSERT_EQ(message->answers.size(), 2u);
  const auto& mx1 = std::get<MxRecord>(message->answers[0].data);
  EXPECT_EQ(mx1.preference, 10);
  EXPECT_EQ(mx1.exchange, "mx1.example.test");
  EXPECT_EQ(std::get<MxRecord>(message->answers[1].data).exchange, "mx2.example.test");
  EXPECT_EQ(message->answers[1].ttl, 200u);

  Answer answer = FindAnswer(*message, "example.test", kTypeMx);
  EXPECT_EQ(answer.records.size(), 2u);
  EXPECT_EQ(answer.ttl, 200u);  // the smallest
}

TEST(DnsMessageTest, ParsesAddressesTxtAndNullMx) {
  Wire w;
  w.Header(kResponse, 0, 4, 0);
  w.Name("a.test").Rr(kTypeA, 60, Wire().U8(192).U8(0).U8(2).U8(1));
  w.Name("a.test").Rr(kTypeAaaa, 60, Wire().U16(0x2001).U16(0xdb8).U32(0).U32(0).U32(1));
  w.Name("a.test").Rr(kTypeTxt, 60, Wire().U8(3).Raw("v=1").U8(0).U8(2).Raw("ab"));
  w.Name("null.test").Rr(kTypeMx, 60, Wire().U16(0).U8(0));
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_THAT(std::get<ARecord>(message->answers[0].data).address, ElementsAre(192, 0, 2, 1));
  EXPECT_EQ(std::get<AaaaRecord>(message->answers[1].data).address[15], 1);
  EXPECT_THAT(std::get<TxtRecord>(message->answers[2].data).strings, ElementsAre("v=1", "", "ab"));
  const auto& null_mx = std::get<MxRecord>(message->answers[3].data);
  EXPECT_EQ(null_mx.preference, 0);
  EXPECT_EQ(null_mx.exchange, "");  // the root
}

TEST(DnsMessageTest, FollowsCnameChainsWithinTheAnswer) {
  Wire w;
  w.Header(kResponse, 0, 4, 0);
  w.Name("www.test").Rr(kTypeCname, 100, Wire().Name("edge.test"));
  w.Name("edge.test").Rr(kTypeCname, 30, Wire().Name("host.test"));
  w.Name("host.test").Rr(kTypeA, 500, Wire().U32(0x7F000001));
  w.Name("other.test").Rr(kTypeA, 5, Wire().U32(0x7F000002));  // not on the chain
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  Answer answer = FindAnswer(*message, "www.test", kTypeA);
  EXPECT_EQ(answer.canonical_name, "host.test");
  ASSERT_EQ(answer.records.size(), 1u);
  EXPECT_EQ(answer.ttl, 30u);  // the whole chain may be cached only as long as its weakest link
  EXPECT_TRUE(FindAnswer(*message, "www.test", kTypeMx).records.empty());
  EXPECT_TRUE(FindAnswer(*message, "nothing.test", kTypeA).records.empty());
}

TEST(DnsMessageTest, CnameLoopGivesNoAnswer) {
  Wire w;
  w.Header(kResponse, 0, 2, 0);
  w.Name("a.test").Rr(kTypeCname, 100, Wire().Name("b.test"));
  w.Name("b.test").Rr(kTypeCname, 100, Wire().Name("a.test"));
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  Answer answer = FindAnswer(*message, "a.test", kTypeA);
  EXPECT_TRUE(answer.records.empty());
  EXPECT_FALSE(answer.ttl.has_value());
}

TEST(DnsMessageTest, NegativeTtlIsTheSmallerOfSoaTtlAndMinimum) {
  // RFC 2308 §5.
  auto soa = [](uint32_t ttl, uint32_t minimum) {
    Wire w;
    w.Header(0x8183, 0, 0, 1)
        .Name("test")
        .Rr(kTypeSoa, ttl,
            Wire()
                .Name("ns.test")
                .Name("hostmaster.test")
                .U32(1)
                .U32(2)
                .U32(3)
                .U32(4)
                .U32(minimum));
    return w;
  };
  auto message = ParseDnsMessage(soa(600, 120).span());
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->rcode, kRcodeNxDomain);
  EXPECT_EQ(std::get<SoaRecord>(message->authority[0].data).minimum, 120u);
  EXPECT_EQ(NegativeTtl(*message), 120u);
  EXPECT_EQ(NegativeTtl(*ParseDnsMessage(soa(60, 3600).span())), 60u);

  Wire no_soa;
  no_soa.Header(0x8183, 0, 0, 0);
  EXPECT_EQ(NegativeTtl(*ParseDnsMessage(no_soa.span())), std::nullopt);
}

TEST(DnsMessageTest, TtlWithTopBitSetReadsAsZero) {
  // RFC 2181 §8.
  Wire w;
  w.Header(kResponse, 0, 1, 0).Name("a.test").Rr(kTypeA, 0x80000000u, Wire().U32(1));
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->answers[0].ttl, 0u);
}

TEST(DnsMessageTest, UnknownTypesAndOtherClassesAreSkipped) {
  Wire w;
  w.Header(kResponse, 0, 2, 0);
  w.Name("a.test").Rr(99, 60, Wire().Raw("anything"));
  w.Name("a.test").Rr(kTypeA, 60, Wire().U32(1), /*rr_class=*/3);  // CHAOS
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_TRUE(std::holds_alternative<OtherRecord>(message->answers[0].data));
  EXPECT_TRUE(FindAnswer(*message, "a.test", kTypeA).records.empty());
}

TEST(DnsMessageTest, OddLabelBytesAreEscapedSoNoNameReadsAsAnother) {
  Wire w;
  w.Header(kResponse, 1, 0, 0).U8(3).Raw(std::string("a.b", 3)).U8(2).Raw(std::string("\0\\", 2));
  w.U8(0).U16(kTypeA).U16(kClassIn);
  auto message = ParseDnsMessage(w.span());
  ASSERT_TRUE(message.ok()) << message.status();
  EXPECT_EQ(message->questions[0].name, "a\\046b.\\000\\092");
}

TEST(DnsMessageTest, RejectsMalformedMessages) {
  auto rejects = [](Wire w, std::string_view why) {
    auto message = ParseDnsMessage(w.span());
    EXPECT_FALSE(message.ok()) << why;
    if (!message.ok()) {
      EXPECT_THAT(message.status().message(), HasSubstr(std::string(why)));
    }
  };
  rejects(Wire().U16(1).U16(2), "shorter than a header");
  {
    Wire w;  // a pointer to itself
    w.Header(kResponse, 1, 0, 0).Pointer(kQuestionOffset).U16(1).U16(1);
    rejects(w, "does not point back");
  }
  {
    Wire w;  // a forward pointer
    w.Header(kResponse, 1, 0, 0).Pointer(40).U16(1).U16(1);
    rejects(w, "does not point back");
  }
  {
    // Two names pointing at each other would loop; the first pointer already points forward.
    Wire w;  // 12: "a" + pointer to 20; 20: "b" + pointer to 12
    w.Header(kResponse, 2, 0, 0).NameThenPointer("a", 20).U16(1).U16(1);
    w.NameThenPointer("b", 12).U16(1).U16(1);
    rejects(w, "does not point back");
  }
  {
    Wire w;  // 5 labels of 63 bytes: 320 bytes on the wire
    w.Header(kResponse, 1, 0, 0);
    for (int i = 0; i < 5; ++i) w.U8(63).Raw(std::string(63, 'x'));
    w.U8(0).U16(1).U16(1);
    rejects(w, "longer than 255");
  }
  {
    Wire w;
    w.Header(kResponse, 1, 0, 0).U8(0x40).U8(0);
    rejects(w, "unknown label type");
  }
  {
    Wire w;
    w.Header(kResponse, 0, 1, 0).Name("a.test").Rr(kTypeA, 1, Wire().U8(1).U8(2).U8(3).U8(4).U8(5));
    rejects(w, "A record data is not 4 bytes");
  }
  {
    Wire w;
    w.Header(kResponse, 0, 1, 0).Name("a.test").Rr(kTypeTxt, 1, Wire().U8(10).Raw("short"));
    rejects(w, "TXT string runs past");
  }
  {
    Wire w;  // MX whose exchange ends before RDLENGTH does
    w.Header(kResponse, 0, 1, 0).Name("a.test").Rr(kTypeMx, 1, Wire().U16(1).Name("x").U8(0));
    rejects(w, "length mismatch");
  }
  {
    Wire w;  // more answers announced than present
    w.Header(kResponse, 0, 2, 0).Name("a.test").Rr(kTypeA, 1, Wire().U32(1));
    rejects(w, "");
  }
}

TEST(DnsMessageTest, EveryTruncationOfARealAnswerIsRejectedCleanly) {
  Wire w;
  w.Header(kResponse, 1, 1, 1).Name("example.test").U16(kTypeMx).U16(kClassIn);
  w.Pointer(kQuestionOffset)
      .Rr(kTypeMx, 300, Wire().U16(10).NameThenPointer("mx", kQuestionOffset));
  w.Pointer(kQuestionOffset)
      .Rr(kTypeSoa, 300, Wire().Name("ns").Name("h").U32(1).U32(2).U32(3).U32(4).U32(5));
  ASSERT_TRUE(ParseDnsMessage(w.span()).ok());
  for (size_t length = 0; length < w.size(); ++length) {
    std::vector<uint8_t> prefix(w.bytes().begin(), w.bytes().begin() + length);
    EXPECT_FALSE(ParseDnsMessage(prefix).ok()) << length;
  }
}

std::vector<uint8_t> ReadCorpus(const std::string& name) {
  const std::filesystem::path path =
      std::filesystem::path(FACTEUR_SOURCE_DIR) / "tests/fuzz/dns_message/corpus" / name;
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST(DnsMessageTest, RealDnsmasqAnswersFromTheFuzzCorpus) {
  auto mx = ParseDnsMessage(ReadCorpus("mx_three_hosts"));
  ASSERT_TRUE(mx.ok()) << mx.status();
  Answer hosts = FindAnswer(*mx, "example.test", kTypeMx);
  ASSERT_EQ(hosts.records.size(), 3u);
  EXPECT_EQ(hosts.ttl, 300u);

  auto nx = ParseDnsMessage(ReadCorpus("nxdomain_soa"));
  ASSERT_TRUE(nx.ok()) << nx.status();
  EXPECT_EQ(nx->rcode, kRcodeNxDomain);
  EXPECT_EQ(NegativeTtl(*nx), 300u);

  auto alias = ParseDnsMessage(ReadCorpus("cname_to_mx"));
  ASSERT_TRUE(alias.ok()) << alias.status();
  Answer via_cname = FindAnswer(*alias, "mail.example.test", kTypeMx);
  EXPECT_EQ(via_cname.canonical_name, "example.test");
  EXPECT_EQ(via_cname.records.size(), 3u);

  auto dkim = ParseDnsMessage(ReadCorpus("txt_dkim_tcp"));
  ASSERT_TRUE(dkim.ok()) << dkim.status();
  Answer key = FindAnswer(*dkim, "sel._domainkey.example.test", kTypeTxt);
  ASSERT_EQ(key.records.size(), 1u);
  EXPECT_EQ(std::get<TxtRecord>(key.records[0].data).strings.size(), 3u);

  auto truncated = ParseDnsMessage(ReadCorpus("txt_dkim_truncated_udp"));
  ASSERT_TRUE(truncated.ok()) << truncated.status();
  EXPECT_TRUE(truncated->truncated);

  EXPECT_FALSE(ParseDnsMessage(ReadCorpus("malformed_txt_misaligned")).ok());
}

}  // namespace
}  // namespace facteur::dns
