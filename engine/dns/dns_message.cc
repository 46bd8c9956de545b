#include "engine/dns/dns_message.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

namespace facteur::dns {
namespace {

constexpr size_t kHeaderSize = 12;
constexpr size_t kMaxWireName = 255;  // RFC 1035 §3.1, the root's zero byte included
constexpr int kMaxCnameChain = 16;    // longer chains are treated as broken

absl::Status Malformed(std::string_view what, size_t offset) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed DNS message: ", std::string(what), " at offset ", offset));
}

// Reads big-endian integers and names from the message; every read is bounds-checked.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> wire) : wire_(wire) {}

  size_t offset() const { return offset_; }
  size_t remaining() const { return wire_.size() - offset_; }

  absl::Status U16(uint16_t& out) {
    if (remaining() < 2) return Malformed("truncated", offset_);
    out = static_cast<uint16_t>(wire_[offset_] << 8 | wire_[offset_ + 1]);
    offset_ += 2;
    return absl::OkStatus();
  }

  absl::Status U32(uint32_t& out) {
    if (remaining() < 4) return Malformed("truncated", offset_);
    out = static_cast<uint32_t>(wire_[offset_]) << 24 |
          static_cast<uint32_t>(wire_[offset_ + 1]) << 16 |
          static_cast<uint32_t>(wire_[offset_ + 2]) << 8 | wire_[offset_ + 3];
    offset_ += 4;
    return absl::OkStatus();
  }

  absl::Status Bytes(size_t n, std::span<const uint8_t>& out) {
    if (remaining() < n) return Malformed("truncated", offset_);
    out = wire_.subspan(offset_, n);
    offset_ += n;
    return absl::OkStatus();
  }

  // RFC 1035 §4.1.4: a sequence of labels ending in a zero byte or in a pointer to a
  // previous occurrence. Each pointer must point before the previous jump's target (and the
  // first one before the name's own start), so targets strictly decrease and the walk ends.
  absl::Status Name(std::string& out) {
    out.clear();
    size_t pos = offset_;
    size_t limit = offset_;  // a pointer must point strictly below this
    bool jumped = false;
    size_t wire_length = 1;  // the root's zero byte
    for (;;) {
      if (pos >= wire_.size()) return Malformed("name runs past the end", pos);
      const uint8_t length = wire_[pos];
      if ((length & 0xC0) == 0xC0) {
        if (pos + 1 >= wire_.size()) return Malformed("truncated compression pointer", pos);
        const size_t target = static_cast<size_t>(length & 0x3F) << 8 | wire_[pos + 1];
        if (target >= limit) return Malformed("compression pointer does not point back", pos);
        if (!jumped) offset_ = pos + 2;
        jumped = true;
        limit = target;
        pos = target;
        continue;
      }
      // 0x40 and 0x80 were extended label types (RFC 6891 §5); none is in use.
      if ((length & 0xC0) != 0) return Malformed("unknown label type", pos);
      if (length == 0) {
        if (!jumped) offset_ = pos + 1;
        return absl::OkStatus();
      }
      if (pos + 1 + length > wire_.size()) return Malformed("label runs past the end", pos);
      wire_length += 1 + length;
      if (wire_length > kMaxWireName) return Malformed("name longer than 255 bytes", pos);
      if (!out.empty()) out.push_back('.');
      AppendLabel(wire_.subspan(pos + 1, length), out);
      pos += 1 + length;
    }
  }

 private:
  static void AppendLabel(std::span<const uint8_t> label, std::string& out) {
    for (uint8_t c : label) {
      if (c >= 'A' && c <= 'Z') {
        out.push_back(static_cast<char>(c - 'A' + 'a'));
      } else if (c > 0x20 && c < 0x7F && c != '.' && c != '\\') {
        out.push_back(static_cast<char>(c));
      } else {
        const char escaped[] = {'\\', static_cast<char>('0' + c / 100),
                                static_cast<char>('0' + c / 10 % 10),
                                static_cast<char>('0' + c % 10)};
        out.append(escaped, sizeof(escaped));
      }
    }
  }

  std::span<const uint8_t> wire_;
  size_t offset_ = 0;
};

// Decodes the RDATA of the types we use; it must fill exactly `rdlength` bytes.
absl::Status ReadRecordData(Reader& reader, ResourceRecord& rr, size_t rdlength) {
  const size_t start = reader.offset();
  const size_t end = start + rdlength;
  auto ends_exactly = [&]() -> absl::Status {
    if (reader.offset() != end) return Malformed("record data length mismatch", start);
    return absl::OkStatus();
  };
  if (rr.rr_class != kClassIn) {
    std::span<const uint8_t> skipped;
    rr.data = OtherRecord{};
    return reader.Bytes(rdlength, skipped);
  }
  switch (rr.type) {
    case kTypeA: {
      if (rdlength != 4) return Malformed("A record data is not 4 bytes", start);
      std::span<const uint8_t> bytes;
      FACTEUR_RETURN_IF_ERROR(reader.Bytes(4, bytes));
      ARecord a;
      std::copy(bytes.begin(), bytes.end(), a.address.begin());
      rr.data = a;
      return absl::OkStatus();
    }
    case kTypeAaaa: {
      if (rdlength != 16) return Malformed("AAAA record data is not 16 bytes", start);
      std::span<const uint8_t> bytes;
      FACTEUR_RETURN_IF_ERROR(reader.Bytes(16, bytes));
      AaaaRecord aaaa;
      std::copy(bytes.begin(), bytes.end(), aaaa.address.begin());
      rr.data = aaaa;
      return absl::OkStatus();
    }
    case kTypeCname: {
      CnameRecord cname;
      FACTEUR_RETURN_IF_ERROR(reader.Name(cname.target));
      rr.data = std::move(cname);
      return ends_exactly();
    }
    case kTypeMx: {
      MxRecord mx;
      FACTEUR_RETURN_IF_ERROR(reader.U16(mx.preference));
      FACTEUR_RETURN_IF_ERROR(reader.Name(mx.exchange));
      rr.data = std::move(mx);
      return ends_exactly();
    }
    case kTypeTxt: {
      // One or more <character-string>s (a length byte, then that many bytes) filling RDATA.
      TxtRecord txt;
      std::span<const uint8_t> data;
      FACTEUR_RETURN_IF_ERROR(reader.Bytes(rdlength, data));
      size_t pos = 0;
      while (pos < data.size()) {
        const size_t length = data[pos];
        if (pos + 1 + length > data.size())
          return Malformed("TXT string runs past its record", start);
        txt.strings.emplace_back(reinterpret_cast<const char*>(data.data() + pos + 1), length);
        pos += 1 + length;
      }
      rr.data = std::move(txt);
      return absl::OkStatus();
    }
    case kTypeSoa: {
      SoaRecord soa;
      FACTEUR_RETURN_IF_ERROR(reader.Name(soa.mname));
      FACTEUR_RETURN_IF_ERROR(reader.Name(soa.rname));
      for (uint32_t* field : {&soa.serial, &soa.refresh, &soa.retry, &soa.expire, &soa.minimum}) {
        FACTEUR_RETURN_IF_ERROR(reader.U32(*field));
      }
      rr.data = std::move(soa);
      return ends_exactly();
    }
    default: {
      std::span<const uint8_t> skipped;
      rr.data = OtherRecord{};
      return reader.Bytes(rdlength, skipped);
    }
  }
}

absl::Status ReadRecord(Reader& reader, ResourceRecord& rr) {
  FACTEUR_RETURN_IF_ERROR(reader.Name(rr.name));
  uint16_t rdlength = 0;
  FACTEUR_RETURN_IF_ERROR(reader.U16(rr.type));
  FACTEUR_RETURN_IF_ERROR(reader.U16(rr.rr_class));
  FACTEUR_RETURN_IF_ERROR(reader.U32(rr.ttl));
  FACTEUR_RETURN_IF_ERROR(reader.U16(rdlength));
  if (rr.ttl > 0x7FFFFFFFu) rr.ttl = 0;  // RFC 2181 §8
  if (reader.remaining() < rdlength)
    return Malformed("record data runs past the end", reader.offset());
  return ReadRecordData(reader, rr, rdlength);
}

absl::Status ReadSection(Reader& reader, uint16_t count, std::vector<ResourceRecord>& out) {
  for (uint16_t i = 0; i < count; ++i) {
    ResourceRecord rr;
    FACTEUR_RETURN_IF_ERROR(ReadRecord(reader, rr));
    out.push_back(std::move(rr));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DnsMessage> ParseDnsMessage(std::span<const uint8_t> wire) {
  if (wire.size() < kHeaderSize) return Malformed("shorter than a header", 0);
  Reader reader(wire);
  DnsMessage message;
  uint16_t flags = 0, qdcount = 0, ancount = 0, nscount = 0, arcount = 0;
  FACTEUR_RETURN_IF_ERROR(reader.U16(message.id));
  FACTEUR_RETURN_IF_ERROR(reader.U16(flags));
  FACTEUR_RETURN_IF_ERROR(reader.U16(qdcount));
  FACTEUR_RETURN_IF_ERROR(reader.U16(ancount));
  FACTEUR_RETURN_IF_ERROR(reader.U16(nscount));
  FACTEUR_RETURN_IF_ERROR(reader.U16(arcount));
  message.response = (flags & 0x8000) != 0;
  message.opcode = static_cast<uint8_t>((flags >> 11) & 0xF);
  message.authoritative = (flags & 0x0400) != 0;
  message.truncated = (flags & 0x0200) != 0;
  message.recursion_desired = (flags & 0x0100) != 0;
  message.recursion_available = (flags & 0x0080) != 0;
  message.rcode = static_cast<uint8_t>(flags & 0xF);
  for (uint16_t i = 0; i < qdcount; ++i) {
    Question question;
    FACTEUR_RETURN_IF_ERROR(reader.Name(question.name));
    FACTEUR_RETURN_IF_ERROR(reader.U16(question.type));
    FACTEUR_RETURN_IF_ERROR(reader.U16(question.qclass));
    message.questions.push_back(std::move(question));
  }
  FACTEUR_RETURN_IF_ERROR(ReadSection(reader, ancount, message.answers));
  FACTEUR_RETURN_IF_ERROR(ReadSection(reader, nscount, message.authority));
  return message;
}

Answer FindAnswer(const DnsMessage& message, std::string_view name, uint16_t type) {
  Answer answer;
  answer.canonical_name = std::string(name);
  auto fold_ttl = [&answer](uint32_t ttl) {
    answer.ttl = answer.ttl.has_value() ? std::min(*answer.ttl, ttl) : ttl;
  };
  for (int hops = 0; hops <= kMaxCnameChain; ++hops) {
    for (const ResourceRecord& rr : message.answers) {
      if (rr.rr_class == kClassIn && rr.type == type && rr.name == answer.canonical_name) {
        answer.records.push_back(rr);
      }
    }
    if (!answer.records.empty() || type == kTypeCname) break;
    const ResourceRecord* alias = nullptr;
    for (const ResourceRecord& rr : message.answers) {
      if (rr.rr_class == kClassIn && rr.type == kTypeCname && rr.name == answer.canonical_name) {
        alias = &rr;
        break;
      }
    }
    if (alias == nullptr) break;
    if (hops == kMaxCnameChain) {
      // A chain this long is a loop or an attack: no answer (the caller sees NODATA).
      answer.canonical_name = std::string(name);
      answer.ttl.reset();
      return answer;
    }
    const auto* cname = std::get_if<CnameRecord>(&alias->data);
    if (cname == nullptr) break;
    fold_ttl(alias->ttl);
    answer.canonical_name = cname->target;
  }
  for (const ResourceRecord& rr : answer.records) fold_ttl(rr.ttl);
  return answer;
}

std::optional<uint32_t> NegativeTtl(const DnsMessage& message) {
  for (const ResourceRecord& rr : message.authority) {
    if (rr.rr_class != kClassIn || rr.type != kTypeSoa) continue;
    if (const auto* soa = std::get_if<SoaRecord>(&rr.data)) return std::min(rr.ttl, soa->minimum);
  }
  return std::nullopt;
}

}  // namespace facteur::dns
