// File: queue/suppression.h
// The suppression list (DESIGN.md §5 "user unknown → add to the suppression list"): addresses
// that a receiving server refused as unknown (550 5.1.1), or that an operator added, to which
// no further mail is sent — it is refused at RCPT TO instead, so the sender learns at once and
// our sources do not keep knocking on a mailbox that does not exist (a classic spam-trap and
// reputation signal at the large providers).
// Persisted in the Store's `suppression` column family: key = the address, ASCII-lowercased
// (NormalizeSuppressedAddress), value = a versioned record (reason, time, the reply). The
// addresses and their times are also held in memory, loaded by Open() and updated by Add() and
// Remove(), so that Find() and Contains() never touch the disk: the SMTP sessions call them on
// their I/O threads (STYLE.md rule 3). Memory: about 100 bytes per address.
// Thread contract: thread-safe. Find/Contains/size take a reader lock on the memory set only;
// Add/Remove/List block on RocksDB: never call them from an I/O thread (the queue manager's
// thread, the admin API's threads and the CLI are fine).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "queue/store.h"

namespace facteur::queue {

// The reason delivery records for a recipient refused as unknown (5.1.1, 5.1.10 and alike).
inline constexpr std::string_view kSuppressedUserUnknown = "user-unknown";
// The reason of an address added by hand (CLI, admin API) when none is given.
inline constexpr std::string_view kSuppressedManual = "manual";

struct SuppressionEntry {
  std::string address;  // normalized: ASCII-lowercased "local@domain"
  std::string reason;   // kSuppressedUserUnknown, kSuppressedManual, or an operator's word
  absl::Time added_at = absl::InfinitePast();
  // The remote reply that caused it ("550 5.1.1 <x@example.org>: Recipient address rejected"),
  // empty for a manual entry.
  std::string reply;

  friend bool operator==(const SuppressionEntry&, const SuppressionEntry&) = default;
};

// "<X@Example.ORG>" → "x@example.org": angle brackets and surrounding spaces removed, a quoted
// local part unquoted ("\"a b\"@x" → "a b@x", as mail::Mailbox::Canonical() has it), ASCII
// lowercased. InvalidArgument for a text that is not local@domain (no '@', an empty side,
// control characters, more than 320 octets).
absl::StatusOr<std::string> NormalizeSuppressedAddress(std::string_view address);

class SuppressionList {
 public:
  // Reads every entry of `store` into memory. `store` outlives the list. On a read-only Store,
  // Find/Contains/List work and Add/Remove fail with FailedPrecondition; a read-only Store of a
  // spool that has no `suppression` family yet gives an empty list.
  static absl::StatusOr<std::unique_ptr<SuppressionList>> Open(Store& store);

  SuppressionList(const SuppressionList&) = delete;
  SuppressionList& operator=(const SuppressionList&) = delete;

  // Adds `address` (normalized) or replaces its entry. Blocks on one RocksDB write, not synced:
  // a crash of the process loses nothing (the WAL is written), a power failure may lose the
  // last entries — which costs one more attempt to an address that answers 5.1.1 again and is
  // added again. The memory set is updated once the write succeeded.
  absl::Status Add(std::string_view address, std::string_view reason, std::string_view reply,
                   absl::Time time);
  // NotFound when the address is not on the list.
  absl::Status Remove(std::string_view address);

  // Memory only (no disk I/O): safe on an I/O thread. `address` may be in any case.
  bool Contains(std::string_view address) const;
  // The entry's reason and time (the reply is not kept in memory: List() reads it). nullopt
  // when the address is not on the list.
  struct Hit {
    std::string reason;
    absl::Time added_at;
  };
  std::optional<Hit> Find(std::string_view address) const;
  size_t size() const;

  // Every entry, with its reply, in address order. Reads the store (blocking).
  absl::StatusOr<std::vector<SuppressionEntry>> List() const;

 private:
  explicit SuppressionList(Store& store) : store_(store) {}
  absl::Status CheckWritable() const;

  Store& store_;
  mutable absl::Mutex mutex_;
  absl::flat_hash_map<std::string, Hit> addresses_ ABSL_GUARDED_BY(mutex_);
};

// The encoding of one entry's value (exposed for the tests of its compatibility).
std::string EncodeSuppressionRecord(const SuppressionEntry& entry);
absl::StatusOr<SuppressionEntry> DecodeSuppressionRecord(std::string_view address,
                                                         std::string_view value);

}  // namespace facteur::queue
