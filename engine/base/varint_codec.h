// File: engine/base/varint_codec.h
// The binary encoding of the records facteur keeps in RocksDB (envelopes, reputation): LEB128
// varints as RocksDB's own coding.h writes them, zigzag for signed values, length-prefixed
// strings, times as signed Unix microseconds. Reading never runs past the bytes: each read
// says whether it succeeded, so a truncated or hostile record is refused, never overread.
// Thread contract: plain functions and a reader over borrowed bytes (confined to its caller).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace facteur {

inline void PutVarint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

inline uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
inline int64_t UnZigZag(uint64_t v) {
  return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1);
}

inline void PutSigned(std::string& out, int64_t value) { PutVarint(out, ZigZag(value)); }

inline void PutString(std::string& out, std::string_view s) {
  PutVarint(out, s.size());
  out.append(s);
}

inline void PutTime(std::string& out, absl::Time t) { PutSigned(out, absl::ToUnixMicros(t)); }

// Reads fields from the front of `bytes`, which must outlive the reader. A read that fails
// leaves the value unspecified; the caller refuses the record.
class VarintReader {
 public:
  explicit VarintReader(std::string_view bytes) : rest_(bytes) {}

  bool Varint(uint64_t& value) {
    value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (rest_.empty()) return false;
      const uint8_t byte = static_cast<uint8_t>(rest_.front());
      rest_.remove_prefix(1);
      // The tenth byte may only carry the top bit of a 64-bit value.
      if (shift == 63 && byte > 1) return false;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }
  bool Signed(int64_t& value) {
    uint64_t raw;
    if (!Varint(raw)) return false;
    value = UnZigZag(raw);
    return true;
  }
  bool String(std::string& value) {
    uint64_t length;
    if (!Varint(length) || length > rest_.size()) return false;
    value.assign(rest_.data(), length);
    rest_.remove_prefix(length);
    return true;
  }
  bool Time(absl::Time& value) {
    int64_t micros;
    if (!Signed(micros)) return false;
    // PutTime writes the infinities as ToUnixMicros saturates them: they read back as such,
    // not as finite times 292,000 years away.
    if (micros == std::numeric_limits<int64_t>::min()) {
      value = absl::InfinitePast();
    } else if (micros == std::numeric_limits<int64_t>::max()) {
      value = absl::InfiniteFuture();
    } else {
      value = absl::FromUnixMicros(micros);
    }
    return true;
  }
  bool Byte(uint8_t& value) {
    if (rest_.empty()) return false;
    value = static_cast<uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return true;
  }
  bool Bytes(size_t n, std::string_view& value) {
    if (n > rest_.size()) return false;
    value = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return true;
  }
  size_t remaining() const { return rest_.size(); }
  bool done() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

}  // namespace facteur
