#include "engine/base/message_id.h"

#include <cstring>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"

namespace facteur {
namespace {

constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

int DecodeCrockford(char c) {
  if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  switch (c) {  // Crockford's aliases for easily confused letters
    case 'O': return 0;
    case 'I': case 'L': return 1;
    default: break;
  }
  for (int i = 0; i < 32; ++i) {
    if (kCrockford[i] == c) return i;
  }
  return -1;
}

// Monotonic state shared by the process: within one millisecond the random part is incremented
// so that ids keep their order (ULID's monotonic mode).
struct Generator {
  absl::Mutex mutex;
  uint64_t last_millis ABSL_GUARDED_BY(mutex) = 0;
  std::array<uint8_t, 10> last_random ABSL_GUARDED_BY(mutex){};
  absl::BitGen random ABSL_GUARDED_BY(mutex);
};

Generator& TheGenerator() {
  static Generator* generator = new Generator();  // never destroyed: used until exit
  return *generator;
}

}  // namespace

MessageId MessageId::Generate(absl::Time now) {
  uint64_t millis = static_cast<uint64_t>(absl::ToUnixMillis(now)) & ((uint64_t{1} << 48) - 1);
  std::array<uint8_t, 10> random_part;
  Generator& g = TheGenerator();
  {
    absl::MutexLock lock(&g.mutex);
    if (millis <= g.last_millis) {
      millis = g.last_millis;
      for (int i = 9; i >= 0; --i) {  // increment the 80-bit counter
        if (++g.last_random[i] != 0) break;
        if (i == 0) ++millis;  // 2^80 ids in one millisecond: spill into the next one
      }
    } else {
      for (auto& b : g.last_random) b = absl::Uniform<uint8_t>(g.random);
      g.last_random[0] &= 0x7f;  // leave room to increment without overflow
    }
    g.last_millis = millis;
    random_part = g.last_random;
  }
  MessageId id;
  for (int i = 0; i < 6; ++i) id.bytes_[i] = static_cast<uint8_t>(millis >> (40 - 8 * i));
  std::memcpy(id.bytes_.data() + 6, random_part.data(), random_part.size());
  return id;
}

std::string MessageId::ToString() const {
  // 128 bits as 26 base32 digits: the first digit carries the top 3 bits (2 zero pad bits).
  std::string out(kTextLength, '0');
  unsigned __int128 value = 0;
  for (uint8_t b : bytes_) value = (value << 8) | b;
  for (int i = kTextLength - 1; i >= 0; --i) {
    out[i] = kCrockford[static_cast<int>(value & 31)];
    value >>= 5;
  }
  return out;
}

std::optional<MessageId> MessageId::Parse(std::string_view text) {
  if (text.size() != kTextLength) return std::nullopt;
  unsigned __int128 value = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    int digit = DecodeCrockford(text[i]);
    if (digit < 0) return std::nullopt;
    if (i == 0 && digit > 7) return std::nullopt;  // would overflow 128 bits
    value = (value << 5) | static_cast<unsigned>(digit);
  }
  MessageId id;
  for (int i = kBytes - 1; i >= 0; --i) {
    id.bytes_[i] = static_cast<uint8_t>(value & 0xff);
    value >>= 8;
  }
  return id;
}

std::optional<MessageId> MessageId::FromBytes(std::string_view bytes) {
  if (bytes.size() != kBytes) return std::nullopt;
  MessageId id;
  std::memcpy(id.bytes_.data(), bytes.data(), kBytes);
  return id;
}

absl::Time MessageId::CreatedAt() const {
  uint64_t millis = 0;
  for (int i = 0; i < 6; ++i) millis = (millis << 8) | bytes_[i];
  return absl::FromUnixMillis(static_cast<int64_t>(millis));
}

bool MessageId::IsZero() const {
  for (uint8_t b : bytes_) {
    if (b != 0) return false;
  }
  return true;
}

}  // namespace facteur
