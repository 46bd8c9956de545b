// Fuzz target: bytes through DecodeEnvelope, as spool recovery reads whatever the disk holds.
// Invariants: no crash; a refusal is DataLoss (damage) or FailedPrecondition (a newer version);
// what decodes encodes to bytes that decode to the same envelope.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "absl/status/statusor.h"
#include "queue/spool.h"

namespace {

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<facteur::queue::Envelope> envelope = facteur::queue::DecodeEnvelope(bytes);
  if (!envelope.ok()) {
    Check(absl::IsDataLoss(envelope.status()) || absl::IsFailedPrecondition(envelope.status()),
          "a refusal is DataLoss or FailedPrecondition");
    return 0;
  }
  absl::StatusOr<facteur::queue::Envelope> again =
      facteur::queue::DecodeEnvelope(facteur::queue::EncodeEnvelope(*envelope));
  Check(again.ok(), "what decodes encodes to something that decodes");
  Check(*again == *envelope, "the round trip keeps every field");
  return 0;
}
