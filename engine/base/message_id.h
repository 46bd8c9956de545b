// File: engine/base/message_id.h
// Message ids: 128 bits, time-ordered like a ULID (48-bit Unix milliseconds, then 80 random
// bits), printed as 26 Crockford base32 characters in the 250 reply, stored as 16 big-endian
// bytes so that RocksDB keys sort by creation time (DESIGN.md §3).
// Thread contract: MessageId is a value type; Generate() is thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace facteur {

class MessageId {
 public:
  static constexpr size_t kBytes = 16;
  static constexpr size_t kTextLength = 26;

  MessageId() = default;  // all zero: "no id"

  // A fresh id for time `now`; ids made in one process within one millisecond still increase.
  static MessageId Generate(absl::Time now);
  // The inverse of ToString(); nullopt unless `text` is 26 valid base32 characters (any case).
  static std::optional<MessageId> Parse(std::string_view text);
  // The inverse of Bytes(); nullopt unless `bytes` is exactly 16 bytes.
  static std::optional<MessageId> FromBytes(std::string_view bytes);

  std::string ToString() const;
  // The 16-byte big-endian key form.
  std::string_view Bytes() const {
    return {reinterpret_cast<const char*>(bytes_.data()), bytes_.size()};
  }
  absl::Time CreatedAt() const;
  bool IsZero() const;

  friend bool operator==(const MessageId&, const MessageId&) = default;
  friend auto operator<=>(const MessageId&, const MessageId&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const MessageId& id) {
    return H::combine(std::move(h), id.Bytes());
  }

 private:
  std::array<uint8_t, kBytes> bytes_{};
};

}  // namespace facteur
