// File: queue/store.h
// The RocksDB database under the spool directory and its column families (DESIGN.md §3):
// `body`, `envelope`, `schedule`, `accounts`, `reputation`, `suppression`, `quota`,
// `suspension`. The one
// place where rocksdb::Status becomes absl::Status (STYLE.md rule 1).
// Thread contract: thread-safe (rocksdb::DB is). Every call may block on disk: never call it
// from an I/O thread; use the spool's writer or a worker pool.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rocksdb/db.h"

namespace facteur::queue {

// kReputation (queue/reputation_store.h) came later than the others: a primary creates it in an
// older spool; a read-only instance of such a spool has none (family() returns null).
// kSuppression (queue/suppression.h), kQuota (engine/policy/account_quotas.h) and kSuspension
// (queue/suspension_store.h) likewise.
enum class Family {
  kBody, kEnvelope, kSchedule, kAccounts, kReputation, kSuppression, kQuota, kSuspension };

struct StoreOptions {
  // The RocksDB environment (file system, threads). Tests inject a fault-injecting file system
  // here (tests/support/fault_file_system.h). Shared by the caller and the Store, which keeps
  // it alive until the database is closed. Default: null, i.e. rocksdb::Env::Default().
  std::shared_ptr<rocksdb::Env> env;
};

class Store {
 public:
  // Opens (creating if needed) the database at `path` for reading and writing. Only one process
  // may: when a running server holds it, FailedPrecondition says so.
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& path,
                                                     const StoreOptions& options);
  // Opens the database for reading while another process (a running server) may hold it, or
  // while nobody does. Sees the state as of the call. NotFound when there is no database.
  static absl::StatusOr<std::unique_ptr<Store>> OpenReadOnly(const std::string& path);

  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  rocksdb::DB& db() { return *db_; }
  // Null only for a family that a read-only Store's database lacks (see Family).
  rocksdb::ColumnFamilyHandle* family(Family f) const;
  bool read_only() const { return read_only_; }
  const std::string& path() const { return path_; }

 private:
  Store() = default;
  // Both outlive db_ (declared first). caller_env_: StoreOptions::env, shared with the caller;
  // env_: its file system with prezeroed WALs (queue/prezeroed_wal.h), the one db_ uses.
  std::shared_ptr<rocksdb::Env> caller_env_;
  std::shared_ptr<rocksdb::Env> env_;
  std::string path_;
  std::string secondary_path_;  // scratch dir of a read-only (secondary) instance, removed on close
  bool read_only_ = false;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned; destroyed before db_
  std::unique_ptr<rocksdb::DB> db_;
};

// Translates a RocksDB status: NoSpace → ResourceExhausted, Busy/TryAgain/Incomplete →
// Unavailable, Corruption → DataLoss, NotFound → NotFound, other IOError → Unavailable, the rest
// Internal. The message starts with `context`.
absl::Status ToStatus(const rocksdb::Status& status, std::string_view context);

// RocksDB keeps per-operation statistics (its perf context) on every thread unless told not
// to: thread-local lookups on each read and write, for counters nothing here reads. A thread
// that works the spool calls this first.
void StopPerfCountingOnThisThread();

}  // namespace facteur::queue
