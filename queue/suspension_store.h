// File: queue/suspension_store.h
// The `suspension` column family (DESIGN.md §3): the suspensions that must outlive a restart.
//  - domain holds (`facteur queue suspend DOMAIN`), until `queue resume` lifts them;
//  - pauses of (site, source) pairs (throttle/pause_ledger.h), an operator's or a reply's
//    (blocklist, rate limit), until their end time.
// Keys: 'd' domain → DomainHold record; 'p' varint(|site|) site source → PairPause record.
// 'b' varint(|site|) site source → PairBackoff record: what a reply left on the pair besides
// its pause, beside the 'p' record (a binary from before back-offs were kept never reads it).
// Values start with a version byte (1); times are Unix microseconds
// (engine/base/varint_codec.h).
// An operator's writes are synced: they are rare, and the operator is told "suspended" only
// once the hold is on disk — a power cut must not send mail to a domain held because its
// server is being moved. A reply's pause (a rate limit, a blocklist answer) is advisory, like
// reputation: it rides the spool's next sync instead of adding one to the spool's log.
// Records of a newer version (or naming a reply class this binary does not know) are left as
// they are, unread, for the newer binary after a rollback.
// Thread contract: stateless beyond the Store reference; every call blocks on disk, so never on
// an I/O thread (the queue manager's thread, the suspension writer thread, start-up).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "queue/store.h"
#include "throttle/pause_ledger.h"

namespace facteur::queue {

struct DomainHold {
  std::string domain;  // lowercased, as the queue manager matches it
  absl::Time since = absl::InfinitePast();
};

struct PairPauseLoad {
  // Pauses running, or ended with a back-off still kept (throttle::KeptUntil), by site, then
  // source.
  std::vector<throttle::PairPause> running;
  size_t expired = 0;  // records whose end had passed: deleted (read-write Store) and not returned
  size_t skipped = 0;  // records not read: logged, not returned; deleted unless a newer one's
};

class SuspensionStore {
 public:
  // `store` outlives this object. Read-write for the writes; either kind for the reads (a
  // read-only Store of a spool without the family reads nothing).
  explicit SuspensionStore(Store& store) : store_(store) {}

  absl::StatusOr<std::vector<DomainHold>> DomainHolds() const;
  // Synced writes; FailedPrecondition on a read-only Store.
  absl::Status HoldDomain(std::string_view domain, absl::Time since);
  absl::Status ReleaseDomain(std::string_view domain);

  // The pair records that matter at `now` (throttle::KeptUntil). Those that ended while the
  // server was down are deleted from a read-write Store: nothing restores them, and nothing
  // else would remove them.
  absl::StatusOr<PairPauseLoad> PairPauses(absl::Time now);
  // Writes a ledger's changes in one batch, synced or not. FailedPrecondition on a read-only
  // Store.
  absl::Status Write(const throttle::PauseDelta& delta, bool synced);

 private:
  absl::Status CheckWritable() const;
  Store& store_;
};

// The record codecs (exposed for the tests of their compatibility).
std::string SuspensionPairKey(std::string_view site, std::string_view source);
std::string SuspensionBackoffKey(std::string_view site, std::string_view source);
// The pause without its back-off (EncodePairBackoff writes that under its own key).
std::string EncodePairPause(const throttle::PairPause& pause);
// `site` and `source` come from the key. DataLoss on anything malformed; FailedPrecondition
// for a newer version's record.
absl::StatusOr<throttle::PairPause> DecodePairPause(std::string_view key, std::string_view value);
std::string EncodePairBackoff(const throttle::PairBackoff& backoff);
absl::StatusOr<throttle::PairBackoff> DecodePairBackoff(std::string_view value);

}  // namespace facteur::queue
