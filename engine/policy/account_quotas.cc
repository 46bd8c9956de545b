// File: engine/policy/account_quotas.cc
#include "engine/policy/account_quotas.h"

#include <pthread.h>
#include <bit>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"

namespace facteur::policy {
namespace {

// Record, version 1 (integers big-endian, doubles as their IEEE 754 bits):
//   u8 version = 1 | u8 flags (bit 0: suspended) | i64 hour_start | u32 hour_count
//   | i64 day_start | u32 day_count | f64 ewma | f64 ewma_weight | i64 suspended_at
//   | u16 length, suspension_detail.
// Times are Unix microseconds, INT64_MIN for InfinitePast. The name is the key.
constexpr uint8_t kRecordVersion = 1;
constexpr uint8_t kFlagSuspended = 0x01;
constexpr size_t kMaxDetail = 1024;

void PutU64(std::string& out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
void PutU32(std::string& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(value >> shift));
}
void PutTime(std::string& out, absl::Time t) {
  const int64_t micros = t == absl::InfinitePast() ? std::numeric_limits<int64_t>::min()
                                                   : absl::ToUnixMicros(t);
  PutU64(out, static_cast<uint64_t>(micros));
}

class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  bool Uint(size_t width, uint64_t& value) {
    if (bytes_.size() < width) return false;
    value = 0;
    for (size_t i = 0; i < width; ++i) value = (value << 8) | static_cast<uint8_t>(bytes_[i]);
    bytes_.remove_prefix(width);
    return true;
  }
  bool U32(uint32_t& value) {
    uint64_t v = 0;
    if (!Uint(4, v)) return false;
    value = static_cast<uint32_t>(v);
    return true;
  }
  bool Double(double& value) {
    uint64_t v = 0;
    if (!Uint(8, v)) return false;
    value = std::bit_cast<double>(v);
    return true;
  }
  bool Time(absl::Time& value) {
    uint64_t v = 0;
    if (!Uint(8, v)) return false;
    const int64_t micros = static_cast<int64_t>(v);
    value = micros == std::numeric_limits<int64_t>::min() ? absl::InfinitePast()
                                                          : absl::FromUnixMicros(micros);
    return true;
  }
  bool String16(std::string& value) {
    uint64_t length = 0;
    if (!Uint(2, length) || bytes_.size() < length) return false;
    value.assign(bytes_.substr(0, length));
    bytes_.remove_prefix(length);
    return true;
  }
  bool empty() const { return bytes_.empty(); }

 private:
  std::string_view bytes_;
};

rocksdb::Slice AsSlice(std::string_view text) { return rocksdb::Slice(text.data(), text.size()); }

rocksdb::WriteOptions Synced(bool sync) {
  rocksdb::WriteOptions options;
  options.sync = sync;
  return options;
}

absl::Status Put(queue::Store& store, std::string_view account,
                 const throttle::AccountQuotaState& state, bool sync) {
  const std::string value = EncodeAccountQuotaState(state);
  rocksdb::Status status = store.db().Put(Synced(sync), store.family(queue::Family::kQuota),
                                          AsSlice(account), AsSlice(value));
  return queue::ToStatus(status, "writing an account's quota state");
}

}  // namespace

std::string EncodeAccountQuotaState(const throttle::AccountQuotaState& state) {
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  out.push_back(static_cast<char>(state.suspended ? kFlagSuspended : 0));
  PutTime(out, state.hour_start);
  PutU32(out, state.hour_count);
  PutTime(out, state.day_start);
  PutU32(out, state.day_count);
  PutU64(out, std::bit_cast<uint64_t>(state.ewma));
  PutU64(out, std::bit_cast<uint64_t>(state.ewma_weight));
  PutTime(out, state.suspended_at);
  const std::string_view detail =
      std::string_view(state.suspension_detail).substr(0, kMaxDetail);
  out.push_back(static_cast<char>((detail.size() >> 8) & 0xff));
  out.push_back(static_cast<char>(detail.size() & 0xff));
  out.append(detail);
  return out;
}

absl::StatusOr<throttle::AccountQuotaState> DecodeAccountQuotaState(std::string_view value) {
  Reader reader(value);
  uint64_t version = 0, flags = 0;
  if (!reader.Uint(1, version)) return absl::DataLossError("empty quota record");
  if (version != kRecordVersion) {
    return absl::DataLossError(absl::StrCat("quota record of unknown version ", version));
  }
  throttle::AccountQuotaState state;
  if (!reader.Uint(1, flags) || !reader.Time(state.hour_start) || !reader.U32(state.hour_count) ||
      !reader.Time(state.day_start) || !reader.U32(state.day_count) ||
      !reader.Double(state.ewma) || !reader.Double(state.ewma_weight) ||
      !reader.Time(state.suspended_at) || !reader.String16(state.suspension_detail)) {
    return absl::DataLossError("truncated quota record");
  }
  if (!reader.empty()) return absl::DataLossError("quota record with trailing bytes");
  state.suspended = (flags & kFlagSuspended) != 0;
  return state;
}

absl::StatusOr<std::unique_ptr<AccountQuotas>> AccountQuotas::Open(queue::Store& store,
                                                                   Clock& clock,
                                                                   AccountQuotasOptions options) {
  std::unique_ptr<AccountQuotas> quotas(new AccountQuotas(store, clock, std::move(options)));
  size_t suspended = 0;
  if (rocksdb::ColumnFamilyHandle* family = store.family(queue::Family::kQuota)) {
    std::unique_ptr<rocksdb::Iterator> it(store.db().NewIterator(rocksdb::ReadOptions(), family));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string name = it->key().ToString();
      absl::StatusOr<throttle::AccountQuotaState> state =
          DecodeAccountQuotaState(std::string_view(it->value().data(), it->value().size()));
      if (!state.ok()) {
        // A damaged counter must not stop the server: the account starts afresh and its next
        // write replaces the record.
        Log(LogLevel::kWarning, "account '%s': quota state ignored: %s", name,
            state.status().ToString());
        continue;
      }
      suspended += state->suspended ? 1 : 0;
      quotas->table_.Load(name, *std::move(state));
    }
    if (!it->status().ok()) return queue::ToStatus(it->status(), "reading quota states");
  }
  if (suspended > 0) {
    Log(LogLevel::kWarning,
        "%d account(s) suspended for unusual sending volume (facteur account resume NAME)",
        static_cast<int>(suspended));
  }
  if (!store.read_only()) {
    quotas->thread_ = std::thread([q = quotas.get()] {
      pthread_setname_np(pthread_self(), "account-quotas");
      q->Run();
    });
  }
  return quotas;
}

AccountQuotas::AccountQuotas(queue::Store& store, Clock& clock, AccountQuotasOptions options)
    : store_(store),
      clock_(clock),
      flush_interval_(options.flush_interval),
      table_(std::move(options.quota)) {}

AccountQuotas::~AccountQuotas() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (!store_.read_only()) {
    if (absl::Status status = Flush(/*sync=*/true); !status.ok()) {
      Log(LogLevel::kWarning, "storing quota states at shutdown: %s", status.ToString());
    }
  }
}

void AccountQuotas::PersistSoon() {
  absl::MutexLock lock(&mutex_);
  persist_now_ = true;
}

void AccountQuotas::Run() {
  for (;;) {
    bool sync = false;
    {
      absl::MutexLock lock(&mutex_);
      auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(mutex_) {
        return stopping_ || persist_now_;
      };
      mutex_.AwaitWithTimeout(absl::Condition(&woken), flush_interval_);
      if (stopping_) return;  // the destructor writes the rest
      sync = persist_now_;
      persist_now_ = false;
    }
    if (absl::Status status = Flush(sync); !status.ok()) {
      Log(LogLevel::kWarning, "storing quota states: %s", status.ToString());
    }
  }
}

absl::Status AccountQuotas::Flush(bool sync) {
  absl::MutexLock lock(&write_mutex_);
  std::vector<std::pair<std::string, throttle::AccountQuotaState>> dirty = table_.TakeDirty();
  if (dirty.empty()) return absl::OkStatus();
  rocksdb::WriteBatch batch;
  for (const auto& [name, state] : dirty) {
    const std::string value = EncodeAccountQuotaState(state);
    batch.Put(store_.family(queue::Family::kQuota), AsSlice(name), AsSlice(value));
  }
  // Not synced on the timer: the WAL alone survives a crash of the process; only a power loss
  // takes the last seconds of counts with it.
  rocksdb::Status status = store_.db().Write(Synced(sync), &batch);
  return queue::ToStatus(status, "writing quota states");
}

absl::StatusOr<bool> AccountQuotas::Resume(std::string_view account) {
  if (!table_.Resume(account)) return false;
  FACTEUR_RETURN_IF_ERROR(Flush(/*sync=*/true));
  Log(LogLevel::kInfo, "account '%s' resumed: it may send again", ToAbsl(account));
  return true;
}

absl::Status AccountQuotas::Forget(std::string_view account) {
  table_.Forget(account);
  absl::MutexLock lock(&write_mutex_);
  rocksdb::Status status = store_.db().Delete(Synced(true), store_.family(queue::Family::kQuota),
                                              AsSlice(account));
  return queue::ToStatus(status, "deleting an account's quota state");
}

absl::StatusOr<std::optional<throttle::AccountQuotaState>> ReadStoredAccountQuota(
    queue::Store& store, std::string_view account) {
  rocksdb::ColumnFamilyHandle* family = store.family(queue::Family::kQuota);
  if (family == nullptr) return std::nullopt;
  std::string value;
  rocksdb::Status status = store.db().Get(rocksdb::ReadOptions(), family, AsSlice(account), &value);
  if (status.IsNotFound()) return std::nullopt;
  if (!status.ok()) return queue::ToStatus(status, "reading an account's quota state");
  FACTEUR_ASSIGN_OR_RETURN(throttle::AccountQuotaState state, DecodeAccountQuotaState(value));
  return state;
}

absl::StatusOr<bool> ResumeStoredAccount(queue::Store& store, std::string_view account) {
  if (store.read_only()) {
    return absl::FailedPreconditionError(
        "The spool is open read-only; resume the account through the running server.");
  }
  FACTEUR_ASSIGN_OR_RETURN(std::optional<throttle::AccountQuotaState> state,
                           ReadStoredAccountQuota(store, account));
  if (!state.has_value() || !state->suspended) return false;
  state->suspended = false;
  state->suspended_at = absl::InfinitePast();
  state->suspension_detail.clear();
  FACTEUR_RETURN_IF_ERROR(Put(store, account, *state, /*sync=*/true));
  return true;
}

}  // namespace facteur::policy
