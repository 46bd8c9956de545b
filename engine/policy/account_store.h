// File: engine/policy/account_store.h
// Submission accounts: who may authenticate (SMTP AUTH, the admin API) and which sender
// addresses each may use. Persisted in the Store's `accounts` column family (DESIGN.md §3), key =
// account name, value = a versioned binary record. Passwords are kept only as libsodium argon2id
// hashes (crypto_pwhash_str, "interactive" limits) and are never logged.
// Thread contract: thread-safe. Every call blocks (RocksDB, and ~50-100 ms of argon2 for
// Create/SetPassword/Authenticate): never call it from an I/O thread; use a worker pool or the
// admin server's own threads. Mutations are serialised by one mutex so that read-modify-write
// updates (Grant, Revoke) never lose each other.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "queue/store.h"

namespace facteur::policy {

// An account as seen outside this module: the password hash stays inside.
struct Account {
  std::string name;
  // Canonical (ASCII-lowercased) "local@domain" addresses and "@domain" patterns, sorted and
  // without duplicates: what MaySendAs() takes.
  std::vector<std::string> grants;
  bool suspended = false;
  absl::Time created_at = absl::UnixEpoch();

  friend bool operator==(const Account&, const Account&) = default;
};

inline constexpr size_t kMaxAccountNameLength = 64;
inline constexpr size_t kMinPasswordLength = 8;
inline constexpr size_t kMaxPasswordLength = 1024;

// OK for 1-64 characters of [A-Za-z0-9._@+-]; InvalidArgument with a sentence otherwise.
absl::Status ValidateAccountName(std::string_view name);
// OK for 8-1024 bytes; InvalidArgument otherwise. Never quotes the password.
absl::Status ValidatePassword(std::string_view password);
// The stored form of a grant: "@domain" (a valid domain, UTF-8 allowed) or a mailbox
// "local@domain" (mail::ParseMailbox with UTF-8), ASCII-lowercased. InvalidArgument otherwise.
absl::StatusOr<std::string> CanonicalGrant(std::string_view pattern);

// Overwrites a buffer that held a password (sodium_memzero, which the compiler may not elide),
// then empties it. For callers that received a password in a std::string (an HTTP body).
void WipeSecret(std::string& secret);

// The argon2id cost of new password hashes. A stored hash carries its own parameters, so
// verification works whatever cost a hash was made with.
struct PasswordHashCost {
  unsigned long long opslimit;
  size_t memlimit;

  // libsodium's "interactive" limits (2 passes, 64 MiB; ~0.1-0.6 s a hash). The production cost.
  static PasswordHashCost Interactive();
  // libsodium's minimum (1 pass, 8 KiB): for unit tests only, where hundreds of milliseconds a
  // hash would make the suite slow. Never use it for real accounts.
  static PasswordHashCost MinimalForTests();
};

class AccountStore {
 public:
  // Initialises libsodium (once per process) and prepares the dummy hash that Authenticate
  // verifies against for unknown names. `store` and `clock` must outlive the AccountStore.
  // On a read-only Store, Get/List/Authenticate work and every write fails with
  // FailedPrecondition.
  static absl::StatusOr<std::unique_ptr<AccountStore>> Open(
      queue::Store& store, Clock& clock, PasswordHashCost cost = PasswordHashCost::Interactive());

  AccountStore(const AccountStore&) = delete;
  AccountStore& operator=(const AccountStore&) = delete;

  // AlreadyExists when `name` is taken; InvalidArgument for a bad name or password.
  absl::Status Create(std::string_view name, std::string_view password);
  // NotFound when there is no such account.
  absl::Status Delete(std::string_view name);
  absl::Status SetPassword(std::string_view name, std::string_view password);
  absl::Status SetSuspended(std::string_view name, bool suspended);
  // Adds `pattern` (see CanonicalGrant); granting an address the account already has is OK.
  absl::Status Grant(std::string_view name, std::string_view pattern);
  // NotFound when the account does not hold `pattern` (compared in canonical form).
  absl::Status Revoke(std::string_view name, std::string_view pattern);

  absl::StatusOr<Account> Get(std::string_view name);
  // Every account, in name order.
  absl::StatusOr<std::vector<Account>> List();

  // How many times the account `name` was created, deleted or changed (password, suspension,
  // grants) through this store since it was opened. From memory, never blocking: an I/O thread
  // may ask. A session that authenticated at one count acts for a stale account at another.
  uint64_t ChangeCount(std::string_view name) const;

  // The account when `password` is right. Unauthenticated, with one message for both an unknown
  // name and a wrong password; an unknown name still costs one hash verification, so timing
  // does not tell which. FailedPrecondition for a suspended account (only once the password
  // checked out, so that suspension does not reveal that a name exists).
  absl::StatusOr<Account> Authenticate(std::string_view name, std::string_view password);

 private:
  struct Record;

  AccountStore(queue::Store& store, Clock& clock, PasswordHashCost cost, std::string dummy_hash);

  absl::StatusOr<Record> Read(std::string_view name);
  absl::Status Write(const Record& record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mutex_);
  void CountChange(std::string_view name);
  absl::Status CheckWritable() const;

  queue::Store& store_;
  Clock& clock_;
  const PasswordHashCost cost_;
  const std::string dummy_hash_;  // argon2id hash of a random password nobody knows
  absl::Mutex write_mutex_;       // serialises mutations (read-modify-write)
  mutable absl::Mutex changes_mutex_;  // its own: readers on I/O threads never wait for a write
  // Accounts changed since the store was opened; one entry per account name at most.
  absl::flat_hash_map<std::string, uint64_t> changes_ ABSL_GUARDED_BY(changes_mutex_);
};

}  // namespace facteur::policy
