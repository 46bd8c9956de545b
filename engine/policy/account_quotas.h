// File: engine/policy/account_quotas.h
// The submission quotas of the running server (issue #5 point 6): the in-memory
// throttle::AccountQuotaTable that the SMTP sessions consult, and its persistence in the
// Store's `quota` column family (key = account name, value = a versioned record of
// throttle::AccountQuotaState: the current hour and day counts, the history, the suspension),
// so that a restart neither forgets a suspension nor hands a runaway account a fresh quota.
// Open() loads every record; a writer thread stores the states that changed every
// `flush_interval`, and at once (synced) after a suspension; Resume() writes synced.
// For a stopped server, the free functions read and change the records directly.
// Thread contract: thread-safe. table() is for any thread, the I/O threads included (memory
// only, one short mutex); Resume(), Flush() and the destructor block on RocksDB: admin API
// threads, the main thread.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "queue/store.h"
#include "throttle/account_quota.h"

namespace facteur::policy {

struct AccountQuotasOptions {
  // Limits and anomaly detection. Default: throttle::AccountQuotaOptions{}.
  throttle::AccountQuotaOptions quota;
  // How often changed states are written. A crash loses at most this much of the counts (the
  // suspensions are written at once). Default: 30s.
  absl::Duration flush_interval = absl::Seconds(30);
};

class AccountQuotas {
 public:
  // Loads every stored state. `store` and `clock` outlive the object. A record that does not
  // decode is logged and skipped (the account starts afresh) rather than stopping the server.
  static absl::StatusOr<std::unique_ptr<AccountQuotas>> Open(queue::Store& store, Clock& clock,
                                                             AccountQuotasOptions options);
  // Writes what changed, then stops the writer thread.
  ~AccountQuotas();
  AccountQuotas(const AccountQuotas&) = delete;
  AccountQuotas& operator=(const AccountQuotas&) = delete;

  throttle::AccountQuotaTable& table() { return table_; }
  Clock& clock() { return clock_; }

  // Asks the writer thread to store the changed states now, synced (after a suspension).
  // Does not wait.
  void PersistSoon();
  // Clears the account's suspension and stores it, synced. Returns whether it was suspended.
  absl::StatusOr<bool> Resume(std::string_view account);
  // Forgets the account (deleted) in memory and in the store.
  absl::Status Forget(std::string_view account);
  // Stores the changed states now (blocking).
  absl::Status Flush(bool sync = false);

 private:
  AccountQuotas(queue::Store& store, Clock& clock, AccountQuotasOptions options);
  void Run();

  queue::Store& store_;
  Clock& clock_;
  const absl::Duration flush_interval_;
  throttle::AccountQuotaTable table_;
  absl::Mutex write_mutex_;  // one writer at a time: TakeDirty and its write stay in order
  absl::Mutex mutex_;
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  bool persist_now_ ABSL_GUARDED_BY(mutex_) = false;
  std::thread thread_;
};

// The record of one account's state, version 1.
std::string EncodeAccountQuotaState(const throttle::AccountQuotaState& state);
absl::StatusOr<throttle::AccountQuotaState> DecodeAccountQuotaState(std::string_view value);

// For a stopped server (the CLI with the store opened read-write): the stored state of
// `account` (nullopt when it never sent), and clearing its stored suspension (whether it was
// suspended).
absl::StatusOr<std::optional<throttle::AccountQuotaState>> ReadStoredAccountQuota(
    queue::Store& store, std::string_view account);
absl::StatusOr<bool> ResumeStoredAccount(queue::Store& store, std::string_view account);

}  // namespace facteur::policy
