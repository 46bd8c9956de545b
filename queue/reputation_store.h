// File: queue/reputation_store.h
// The `reputation` column family (DESIGN.md §3): the persisted state of throttle::Reputation,
// one record per (source, site) pair and one per source (its warmup start). The server loads it
// all at start and writes what changed in one batch every few seconds; `facteur reputation`
// reads it through a read-only (secondary) Store.
// Keys: 'p' varint(|source|) source site → PairReputation::Serialize();
//       's' source → SourceState::Serialize().
// Writes are not synced: reputation is advisory, and the WAL write alone survives a crash of the
// process (only a power loss can take the last seconds of counts with it), where an fsync every
// few seconds would compete with the spool's own for the disk.
// Thread contract: stateless beyond the Store reference; every call blocks on disk, so never on
// an I/O thread (call Flush from a timer of a worker thread).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "queue/store.h"
#include "throttle/reputation.h"

namespace facteur::queue {

std::string ReputationPairKey(std::string_view source, std::string_view site);
std::string ReputationSourceKey(std::string_view source);

struct ReputationKey {
  bool is_pair = false;
  std::string source;
  std::string site;  // pairs only
};
// The inverse of the two above; nullopt for a key neither wrote.
std::optional<ReputationKey> ParseReputationKey(std::string_view key);

struct ReputationLoadStats {
  size_t pairs = 0;
  size_t sources = 0;
  // Records that did not decode (logged and ignored: a damaged counter must not stop the
  // server; the pair starts afresh and its next flush overwrites the record).
  size_t skipped = 0;
};

class ReputationStore {
 public:
  // `store` outlives this object. Read-write for Flush; either kind for LoadInto.
  explicit ReputationStore(Store& store) : store_(store) {}

  // Reads every record into `reputation`. On a read-only Store of a spool without the family:
  // nothing, OK.
  absl::StatusOr<ReputationLoadStats> LoadInto(throttle::Reputation& reputation);

  // Writes the records `reputation` changed since the last Flush in one batch. On failure they
  // are marked dirty again (the next Flush retries them) and the error is returned:
  // FailedPrecondition on a read-only Store, else as ToStatus().
  absl::Status Flush(throttle::Reputation& reputation);

 private:
  Store& store_;
};

}  // namespace facteur::queue
