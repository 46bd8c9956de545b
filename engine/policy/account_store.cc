// File: engine/policy/account_store.cc
#include "engine/policy/account_store.h"

#include <sodium.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/mail/address.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace facteur::policy {

struct AccountStore::Record {
  Account account;
  std::string password_hash;  // crypto_pwhash_str output: "$argon2id$v=19$m=...,t=...,p=1$..."
};

namespace {

// Record encoding, version 1 (all integers big-endian):
//   u8 version = 1 | u8 flags (bit 0: suspended) | i64 created_at (Unix microseconds)
//   | u16 hash length, hash | u16 grant count, then per grant: u16 length, bytes.
// The account name is the key, not repeated in the value. A new field means a new version;
// Decode keeps reading every older one.
constexpr uint8_t kRecordVersion = 1;
constexpr uint8_t kFlagSuspended = 0x01;

void PutU16(std::string& out, size_t value) {
  out.push_back(static_cast<char>((value >> 8) & 0xff));
  out.push_back(static_cast<char>(value & 0xff));
}

void PutString16(std::string& out, std::string_view value) {
  PutU16(out, value.size());
  out.append(value);
}

class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  bool U8(uint8_t& value) {
    if (bytes_.size() < 1) return false;
    value = static_cast<uint8_t>(bytes_[0]);
    bytes_.remove_prefix(1);
    return true;
  }
  bool U16(size_t& value) {
    if (bytes_.size() < 2) return false;
    value = (static_cast<size_t>(static_cast<uint8_t>(bytes_[0])) << 8) |
            static_cast<uint8_t>(bytes_[1]);
    bytes_.remove_prefix(2);
    return true;
  }
  bool I64(int64_t& value) {
    if (bytes_.size() < 8) return false;
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(bytes_[i]);
    value = static_cast<int64_t>(v);
    bytes_.remove_prefix(8);
    return true;
  }
  bool String16(std::string& value) {
    size_t length = 0;
    if (!U16(length) || bytes_.size() < length) return false;
    value.assign(bytes_.substr(0, length));
    bytes_.remove_prefix(length);
    return true;
  }
  bool empty() const { return bytes_.empty(); }

 private:
  std::string_view bytes_;
};

std::string EncodeRecord(const Account& account, std::string_view password_hash) {
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  out.push_back(static_cast<char>(account.suspended ? kFlagSuspended : 0));
  const uint64_t micros = static_cast<uint64_t>(absl::ToUnixMicros(account.created_at));
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(micros >> shift));
  PutString16(out, password_hash);
  PutU16(out, account.grants.size());
  for (const std::string& grant : account.grants) PutString16(out, grant);
  return out;
}

absl::Status Corrupt(std::string_view name, std::string_view what) {
  return absl::DataLossError(
      absl::StrCat("account '", ToAbsl(name), "' has a corrupt record: ", ToAbsl(what)));
}

absl::Status ValidateGrantCount(size_t count) {
  // A u16 count and u16 lengths bound the record; nobody needs 65535 grants.
  if (count > 0xffff) return absl::InvalidArgumentError("An account may hold at most 65535 grants.");
  return absl::OkStatus();
}

absl::StatusOr<std::string> HashPassword(std::string_view password, PasswordHashCost cost) {
  char hash[crypto_pwhash_argon2id_STRBYTES];
  if (crypto_pwhash_argon2id_str(hash, password.data(), password.size(), cost.opslimit,
                                 cost.memlimit) != 0) {
    // libsodium's only failure here is running out of memory for argon2's 64 MiB.
    return absl::ResourceExhaustedError("not enough memory to hash a password");
  }
  return std::string(hash);
}

bool VerifyPassword(const std::string& hash, std::string_view password) {
  return crypto_pwhash_str_verify(hash.c_str(), password.data(), password.size()) == 0;
}

absl::Status InitSodium() {
  static const int result = sodium_init();  // thread-safe once: C++ static initialisation
  if (result < 0) return absl::InternalError("libsodium failed to initialise (sodium_init)");
  return absl::OkStatus();
}

rocksdb::WriteOptions SyncedWrite() {
  rocksdb::WriteOptions options;
  options.sync = true;  // an account change is acknowledged only once it is on disk
  return options;
}

constexpr std::string_view kAuthFailed = "Authentication failed: unknown account or wrong password";

}  // namespace

PasswordHashCost PasswordHashCost::Interactive() {
  return {crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE, crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE};
}

PasswordHashCost PasswordHashCost::MinimalForTests() {
  return {crypto_pwhash_argon2id_OPSLIMIT_MIN, crypto_pwhash_argon2id_MEMLIMIT_MIN};
}

absl::Status ValidateAccountName(std::string_view name) {
  if (name.empty() || name.size() > kMaxAccountNameLength) {
    return absl::InvalidArgumentError("Account name must be 1 to 64 characters long.");
  }
  for (char c : name) {
    const bool allowed = absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                         c == '_' || c == '@' || c == '+' || c == '-';
    if (!allowed) {
      return absl::InvalidArgumentError(
          "Account name may contain only letters, digits and the characters . _ @ + -");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePassword(std::string_view password) {
  if (password.size() < kMinPasswordLength) {
    return absl::InvalidArgumentError("Password must be at least 8 bytes long.");
  }
  if (password.size() > kMaxPasswordLength) {
    return absl::InvalidArgumentError("Password must be at most 1024 bytes long.");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> CanonicalGrant(std::string_view pattern) {
  if (!pattern.empty() && pattern.front() == '@') {
    const std::string_view domain = pattern.substr(1);
    if (domain.size() > mail::kMaxDomainOctets || !mail::IsValidDomain(domain, true)) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", ToAbsl(pattern), "' is not a valid domain pattern (@domain)."));
    }
    return absl::StrCat("@", absl::AsciiStrToLower(ToAbsl(domain)));
  }
  auto mailbox = mail::ParseMailbox(pattern, /*allow_utf8=*/true);
  if (!mailbox.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("A grant is an address local@domain or a domain pattern @domain; '",
                     ToAbsl(pattern), "' is neither: ", mailbox.status().message()));
  }
  return mailbox->Canonical();
}

void WipeSecret(std::string& secret) {
  if (!secret.empty()) sodium_memzero(secret.data(), secret.size());
  secret.clear();
}

absl::StatusOr<std::unique_ptr<AccountStore>> AccountStore::Open(queue::Store& store,
                                                                 Clock& clock,
                                                                 PasswordHashCost cost) {
  FACTEUR_RETURN_IF_ERROR(InitSodium());
  // A password nobody knows, hashed with the same parameters as real ones, so that verifying
  // against it costs what verifying a real account does.
  unsigned char random[32];
  randombytes_buf(random, sizeof random);
  auto dummy =
      HashPassword(std::string_view(reinterpret_cast<const char*>(random), sizeof random), cost);
  sodium_memzero(random, sizeof random);
  if (!dummy.ok()) return dummy.status();
  return std::unique_ptr<AccountStore>(new AccountStore(store, clock, cost, *std::move(dummy)));
}

AccountStore::AccountStore(queue::Store& store, Clock& clock, PasswordHashCost cost,
                           std::string dummy_hash)
    : store_(store), clock_(clock), cost_(cost), dummy_hash_(std::move(dummy_hash)) {}

absl::Status AccountStore::CheckWritable() const {
  if (store_.read_only()) {
    return absl::FailedPreconditionError(
        "The account store is read-only (the spool was opened read-only); stop the server or use "
        "its admin API to change accounts.");
  }
  return absl::OkStatus();
}

absl::StatusOr<AccountStore::Record> AccountStore::Read(std::string_view name) {
  std::string value;
  rocksdb::Status status =
      store_.db().Get(rocksdb::ReadOptions(), store_.family(queue::Family::kAccounts),
                      rocksdb::Slice(name.data(), name.size()), &value);
  if (status.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("There is no account '", ToAbsl(name), "'."));
  }
  if (!status.ok()) return queue::ToStatus(status, "reading an account");

  Record record;
  record.account.name = std::string(name);
  Reader reader(value);
  uint8_t version = 0, flags = 0;
  int64_t micros = 0;
  size_t grant_count = 0;
  if (!reader.U8(version)) return Corrupt(name, "empty");
  if (version != kRecordVersion) return Corrupt(name, absl::StrCat("unknown version ", version));
  if (!reader.U8(flags) || !reader.I64(micros) || !reader.String16(record.password_hash) ||
      !reader.U16(grant_count)) {
    return Corrupt(name, "truncated");
  }
  record.account.suspended = (flags & kFlagSuspended) != 0;
  record.account.created_at = absl::FromUnixMicros(micros);
  record.account.grants.resize(grant_count);
  for (std::string& grant : record.account.grants) {
    if (!reader.String16(grant)) return Corrupt(name, "truncated grant list");
  }
  if (!reader.empty()) return Corrupt(name, "trailing bytes");
  return record;
}

absl::Status AccountStore::Write(const Record& record) {
  FACTEUR_RETURN_IF_ERROR(ValidateGrantCount(record.account.grants.size()));
  const std::string value = EncodeRecord(record.account, record.password_hash);
  const std::string& name = record.account.name;
  rocksdb::Status status = store_.db().Put(SyncedWrite(), store_.family(queue::Family::kAccounts),
                                           rocksdb::Slice(name), rocksdb::Slice(value));
  if (!status.ok()) return queue::ToStatus(status, "writing an account");
  CountChange(name);
  return absl::OkStatus();
}

void AccountStore::CountChange(std::string_view name) {
  absl::MutexLock lock(&changes_mutex_);
  ++changes_[std::string(name)];
}

uint64_t AccountStore::ChangeCount(std::string_view name) const {
  absl::MutexLock lock(&changes_mutex_);
  auto it = changes_.find(ToAbsl(name));
  return it == changes_.end() ? 0 : it->second;
}

absl::Status AccountStore::Create(std::string_view name, std::string_view password) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  FACTEUR_RETURN_IF_ERROR(ValidateAccountName(name));
  FACTEUR_RETURN_IF_ERROR(ValidatePassword(password));
  const absl::Status exists =
      absl::AlreadyExistsError(absl::StrCat("An account named '", ToAbsl(name), "' already exists."));
  // Checked before hashing to fail fast, and again under the lock (another Create may race).
  if (Read(name).ok()) return exists;
  // Hashing takes ~50-100 ms: done outside the lock so that other mutations are not held up.
  FACTEUR_ASSIGN_OR_RETURN(std::string hash, HashPassword(password, cost_));

  absl::MutexLock lock(&write_mutex_);
  auto current = Read(name);
  if (current.ok()) return exists;
  if (!absl::IsNotFound(current.status())) return current.status();
  Record record;
  record.account.name = std::string(name);
  record.account.created_at = absl::FromUnixMicros(absl::ToUnixMicros(clock_.Now()));
  record.password_hash = std::move(hash);
  FACTEUR_RETURN_IF_ERROR(Write(record));
  Log(LogLevel::kInfo, "account '%s' created", ToAbsl(name));
  return absl::OkStatus();
}

absl::Status AccountStore::Delete(std::string_view name) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  absl::MutexLock lock(&write_mutex_);
  FACTEUR_RETURN_IF_ERROR(Read(name).status());
  // With its quota state (engine/policy/account_quotas.h): a new account of the same name must
  // not inherit the old one's history or suspension.
  rocksdb::WriteBatch batch;
  const rocksdb::Slice key(name.data(), name.size());
  batch.Delete(store_.family(queue::Family::kAccounts), key);
  batch.Delete(store_.family(queue::Family::kQuota), key);
  rocksdb::Status status = store_.db().Write(SyncedWrite(), &batch);
  if (!status.ok()) return queue::ToStatus(status, "deleting an account");
  CountChange(name);
  Log(LogLevel::kInfo, "account '%s' deleted", ToAbsl(name));
  return absl::OkStatus();
}

absl::Status AccountStore::SetPassword(std::string_view name, std::string_view password) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  FACTEUR_RETURN_IF_ERROR(Read(name).status());
  FACTEUR_RETURN_IF_ERROR(ValidatePassword(password));
  FACTEUR_ASSIGN_OR_RETURN(std::string hash, HashPassword(password, cost_));
  absl::MutexLock lock(&write_mutex_);
  FACTEUR_ASSIGN_OR_RETURN(Record record, Read(name));
  record.password_hash = std::move(hash);
  FACTEUR_RETURN_IF_ERROR(Write(record));
  Log(LogLevel::kInfo, "account '%s': password changed", ToAbsl(name));
  return absl::OkStatus();
}

absl::Status AccountStore::SetSuspended(std::string_view name, bool suspended) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  absl::MutexLock lock(&write_mutex_);
  FACTEUR_ASSIGN_OR_RETURN(Record record, Read(name));
  if (record.account.suspended == suspended) return absl::OkStatus();
  record.account.suspended = suspended;
  FACTEUR_RETURN_IF_ERROR(Write(record));
  Log(LogLevel::kInfo, "account '%s' %s", ToAbsl(name), suspended ? "suspended" : "reinstated");
  return absl::OkStatus();
}

absl::Status AccountStore::Grant(std::string_view name, std::string_view pattern) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  FACTEUR_ASSIGN_OR_RETURN(std::string grant, CanonicalGrant(pattern));
  absl::MutexLock lock(&write_mutex_);
  FACTEUR_ASSIGN_OR_RETURN(Record record, Read(name));
  std::vector<std::string>& grants = record.account.grants;
  auto position = std::lower_bound(grants.begin(), grants.end(), grant);
  if (position != grants.end() && *position == grant) return absl::OkStatus();
  grants.insert(position, grant);
  FACTEUR_RETURN_IF_ERROR(Write(record));
  Log(LogLevel::kInfo, "account '%s' may now send as '%s'", ToAbsl(name), grant);
  return absl::OkStatus();
}

absl::Status AccountStore::Revoke(std::string_view name, std::string_view pattern) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  // A pattern that does not canonicalise cannot be held: report it as not held.
  auto canonical = CanonicalGrant(pattern);
  const std::string grant = canonical.ok() ? *canonical : std::string(pattern);
  absl::MutexLock lock(&write_mutex_);
  FACTEUR_ASSIGN_OR_RETURN(Record record, Read(name));
  std::vector<std::string>& grants = record.account.grants;
  auto position = std::lower_bound(grants.begin(), grants.end(), grant);
  if (position == grants.end() || *position != grant) {
    return absl::NotFoundError(absl::StrCat("Account '", ToAbsl(name), "' has no grant '",
                                            ToAbsl(pattern), "'."));
  }
  grants.erase(position);
  FACTEUR_RETURN_IF_ERROR(Write(record));
  Log(LogLevel::kInfo, "account '%s' may no longer send as '%s'", ToAbsl(name), grant);
  return absl::OkStatus();
}

absl::StatusOr<Account> AccountStore::Get(std::string_view name) {
  FACTEUR_ASSIGN_OR_RETURN(Record record, Read(name));
  return std::move(record.account);
}

absl::StatusOr<std::vector<Account>> AccountStore::List() {
  std::vector<Account> accounts;
  std::unique_ptr<rocksdb::Iterator> it(
      store_.db().NewIterator(rocksdb::ReadOptions(), store_.family(queue::Family::kAccounts)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    // Decoded through Read() so that one decoder exists; accounts are few, the second lookup
    // is cheap.
    const std::string name = it->key().ToString();
    auto record = Read(name);
    if (absl::IsNotFound(record.status())) continue;  // deleted between the scan and the read
    if (!record.ok()) return record.status();
    accounts.push_back(std::move(record->account));
  }
  if (!it->status().ok()) return queue::ToStatus(it->status(), "listing accounts");
  return accounts;
}

absl::StatusOr<Account> AccountStore::Authenticate(std::string_view name,
                                                   std::string_view password) {
  const absl::Status failed = absl::UnauthenticatedError(ToAbsl(kAuthFailed));
  absl::StatusOr<Record> record = absl::NotFoundError("");
  if (ValidateAccountName(name).ok()) record = Read(name);
  if (!record.ok() && !absl::IsNotFound(record.status())) return record.status();
  // Refuse absurd lengths before argon2 sees them, but after the same amount of work.
  const bool plausible = password.size() <= kMaxPasswordLength;
  const std::string_view checked = plausible ? password : std::string_view();
  if (!record.ok()) {
    VerifyPassword(dummy_hash_, checked);  // same cost as a real check: timing says nothing
    return failed;
  }
  if (!VerifyPassword(record->password_hash, checked) || !plausible) return failed;
  if (record->account.suspended) {
    return absl::FailedPreconditionError(
        absl::StrCat("Account '", ToAbsl(name), "' is suspended."));
  }
  return std::move(record->account);
}

}  // namespace facteur::policy
