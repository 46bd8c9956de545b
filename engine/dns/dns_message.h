// File: engine/dns/dns_message.h
// RFC 1035 §4 DNS messages as the resolver reads them: the header, the question, answer and
// authority sections (the additional section is not read), names with compression
// (RFC 1035 §4.1.4), and the record data of the types facteur asks for — A, AAAA, MX, TXT,
// CNAME — plus SOA, whose fields give the RFC 2308 negative TTL. Any nameserver, or anyone able to
// spoof one, writes these bytes: every length is checked against the message, compression
// pointers must point strictly backwards (so a name always ends), names are at most 255 bytes
// on the wire, and counts in the header never size an allocation. Fuzzed (tests/fuzz/dns_message).
// Thread contract: stateless.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace facteur::dns {

// RR types (RFC 1035 §3.2.2, RFC 3596 §2.1) and the one class we use.
inline constexpr uint16_t kTypeA = 1;
inline constexpr uint16_t kTypeCname = 5;
inline constexpr uint16_t kTypeSoa = 6;
inline constexpr uint16_t kTypeMx = 15;
inline constexpr uint16_t kTypeTxt = 16;
inline constexpr uint16_t kTypeAaaa = 28;
inline constexpr uint16_t kClassIn = 1;

// RCODEs (RFC 1035 §4.1.1).
inline constexpr uint8_t kRcodeNoError = 0;
inline constexpr uint8_t kRcodeFormErr = 1;
inline constexpr uint8_t kRcodeServFail = 2;
inline constexpr uint8_t kRcodeNxDomain = 3;
inline constexpr uint8_t kRcodeNotImp = 4;
inline constexpr uint8_t kRcodeRefused = 5;

// Names are in lower case (RFC 4343: DNS names compare without case), without the trailing dot;
// the root is "". A label byte outside '!'..'~', and '.' or '\' inside a label, is written
// "\DDD" (RFC 1035 §5.1), so that a name never reads as another one.

struct ARecord {
  std::array<uint8_t, 4> address{};
};
struct AaaaRecord {
  std::array<uint8_t, 16> address{};
};
struct CnameRecord {
  std::string target;
};
struct MxRecord {
  uint16_t preference = 0;
  std::string exchange;  // "" is the root: RFC 7505 null MX when alone with preference 0
};
struct TxtRecord {
  std::vector<std::string> strings;  // the <character-string>s, in order (RFC 1035 §3.3.14)
};
struct SoaRecord {
  std::string mname;
  std::string rname;
  uint32_t serial = 0;
  uint32_t refresh = 0;
  uint32_t retry = 0;
  uint32_t expire = 0;
  uint32_t minimum = 0;  // RFC 2308 §4: the negative-caching TTL
};
// A record of a type not listed above: its data is skipped.
struct OtherRecord {};

using RecordData =
    std::variant<OtherRecord, ARecord, AaaaRecord, CnameRecord, MxRecord, TxtRecord, SoaRecord>;

struct ResourceRecord {
  std::string name;
  uint16_t type = 0;
  uint16_t rr_class = 0;
  uint32_t ttl = 0;  // RFC 2181 §8: a TTL with the top bit set reads as 0
  RecordData data;
};

struct Question {
  std::string name;
  uint16_t type = 0;
  uint16_t qclass = 0;
};

struct DnsMessage {
  uint16_t id = 0;
  bool response = false;  // QR
  uint8_t opcode = 0;
  bool authoritative = false;  // AA
  bool truncated = false;      // TC
  bool recursion_desired = false;
  bool recursion_available = false;
  uint8_t rcode = 0;  // the 4 header bits (no EDNS extended RCODE)
  std::vector<Question> questions;
  std::vector<ResourceRecord> answers;
  std::vector<ResourceRecord> authority;
};

// Parses `wire`. InvalidArgument, naming the first problem, when it is not a well-formed
// message (truncated, a bad name, record data that does not match its type).
absl::StatusOr<DnsMessage> ParseDnsMessage(std::span<const uint8_t> wire);

// The answer to (`name`, `type`) within `message`'s answer section: CNAMEs owned by `name` are
// followed (RFC 1034 §3.6.2, RFC 2181 §10.1.1) up to a bounded chain, and the records of `type`
// and class IN owned by the last name are collected.
struct Answer {
  std::string canonical_name;           // `name`, or the last CNAME target
  std::vector<ResourceRecord> records;  // of `type`, owned by canonical_name
  // The smallest TTL among the CNAMEs followed and `records` (the time the whole answer may
  // be cached); nullopt when there is neither.
  std::optional<uint32_t> ttl;
};
Answer FindAnswer(const DnsMessage& message, std::string_view name, uint16_t type);

// RFC 2308 §5: how long a negative answer (NXDOMAIN, NODATA) may be cached — the smaller of
// the SOA record's own TTL and its MINIMUM field, from the authority section. nullopt without an
// SOA there (such answers are not cached, RFC 2308 §5).
std::optional<uint32_t> NegativeTtl(const DnsMessage& message);

}  // namespace facteur::dns
