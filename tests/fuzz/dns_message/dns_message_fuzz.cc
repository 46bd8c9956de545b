// Fuzz target: a nameserver's answer through ParseDnsMessage, FindAnswer and NegativeTtl.
// Invariants: no crash; a parsed message's names are bounded (255 wire bytes, at most 4 text
// bytes each once escaped) and never end in a dot; TTLs fit RFC 2181 §8; FindAnswer returns
// only records of the asked type owned by its canonical name, and a TTL whenever it has records.
// Corpus: real dnsmasq answers (MX, null MX, NXDOMAIN and NODATA with SOA, A, AAAA, CNAME
// chains, TXT over UDP truncated and over TCP, REFUSED) and a misaligned TXT.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "engine/dns/dns_message.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

void CheckName(const std::string& name) {
  Check(name.size() <= 4 * 255, "name length is bounded");
  Check(name.empty() || name.back() != '.', "no trailing dot");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace dns = facteur::dns;
  const auto message = dns::ParseDnsMessage(std::span<const uint8_t>(data, size));
  if (!message.ok()) return 0;
  for (const dns::Question& q : message->questions) CheckName(q.name);
  for (const auto* section : {&message->answers, &message->authority}) {
    for (const dns::ResourceRecord& rr : *section) {
      CheckName(rr.name);
      Check(rr.ttl <= 0x7FFFFFFFu, "TTL top bit cleared");
      if (const auto* mx = std::get_if<dns::MxRecord>(&rr.data)) CheckName(mx->exchange);
      if (const auto* cname = std::get_if<dns::CnameRecord>(&rr.data)) CheckName(cname->target);
      if (const auto* txt = std::get_if<dns::TxtRecord>(&rr.data)) {
        for (const std::string& s : txt->strings) Check(s.size() <= 255, "TXT string <= 255");
      }
    }
  }
  std::vector<std::string> names;
  for (const dns::Question& q : message->questions) names.push_back(q.name);
  for (const dns::ResourceRecord& rr : message->answers) names.push_back(rr.name);
  for (const std::string& name : names) {
    for (uint16_t type :
         {dns::kTypeA, dns::kTypeAaaa, dns::kTypeMx, dns::kTypeTxt, dns::kTypeCname}) {
      const dns::Answer answer = dns::FindAnswer(*message, name, type);
      for (const dns::ResourceRecord& rr : answer.records) {
        Check(rr.type == type && rr.name == answer.canonical_name, "answer records match");
      }
      Check(answer.records.empty() || answer.ttl.has_value(), "records come with a TTL");
    }
  }
  const auto negative = dns::NegativeTtl(*message);
  Check(!negative.has_value() || *negative <= 0x7FFFFFFFu, "negative TTL bounded");
  return 0;
}
