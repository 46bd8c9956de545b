// File: queue/suspension_store.cc
// Reading and writing domain holds and pair pauses in the `suspension` column family.
#include "queue/suspension_store.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/base/varint_codec.h"
#include "rocksdb/write_batch.h"

namespace facteur::queue {
namespace {

constexpr char kDomainTag = 'd';
constexpr char kPairTag = 'p';
constexpr uint8_t kVersion = 1;  // of domain holds, and of pair pauses without a back-off
// A pair pause with the back-off that outlives it (PairBackoff) appended. Written only when
// there is one, so that a rollback to a binary reading version 1 loses the back-offs alone.
constexpr uint8_t kPauseVersionWithBackoff = 2;
constexpr uint8_t kManualFlag = 1;

// Rates as thousandths of a message per minute: varints, and no floating-point format.
void PutRate(std::string& out, double per_minute) {
  PutVarint(out, static_cast<uint64_t>(std::llround(std::max(per_minute, 0.0) * 1000)));
}
bool ReadRate(VarintReader& in, double& per_minute) {
  uint64_t thousandths = 0;
  if (!in.Varint(thousandths)) return false;
  per_minute = static_cast<double>(thousandths) / 1000;
  return true;
}
bool ReadCount(VarintReader& in, uint32_t& count) {
  uint64_t value = 0;
  if (!in.Varint(value) || value > UINT32_MAX) return false;
  count = static_cast<uint32_t>(value);
  return true;
}

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
std::string_view ToView(const rocksdb::Slice& s) { return std::string_view(s.data(), s.size()); }

std::string DomainKey(std::string_view domain) {
  std::string key(1, kDomainTag);
  key.append(domain);
  return key;
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions options;
  options.sync = true;  // see the header: the operator is told once it is on disk
  return options;
}

}  // namespace

std::string SuspensionPairKey(std::string_view site, std::string_view source) {
  std::string key(1, kPairTag);
  PutVarint(key, site.size());
  key.append(site);
  key.append(source);
  return key;
}

std::string EncodePairPause(const throttle::PairPause& pause) {
  std::string value(1, static_cast<char>(pause.backoff.has_value() ? kPauseVersionWithBackoff
                                                                  : kVersion));
  PutTime(value, pause.since);
  PutTime(value, pause.until);
  value.push_back(static_cast<char>(pause.manual ? kManualFlag : 0));
  // By name, not by number: the classes may be renumbered, their names are in the shaping files.
  PutString(value, pause.cause.has_value() ? throttle::ResponseClassName(*pause.cause) : "");
  PutString(value, pause.pool);
  if (const std::optional<throttle::PairBackoff>& b = pause.backoff; b.has_value()) {
    PutRate(value, b->rate);
    PutRate(value, b->rate_target);
    PutVarint(value, b->connections);
    PutVarint(value, b->connection_target);
    PutRate(value, b->ceiling);
    PutTime(value, b->ceiling_until);
    PutTime(value, b->hold_until);
  }
  return value;
}

absl::StatusOr<throttle::PairPause> DecodePairPause(std::string_view key, std::string_view value) {
  throttle::PairPause pause;
  VarintReader k(key);
  uint8_t tag = 0;
  uint64_t site_length = 0;
  std::string_view site;
  if (!k.Byte(tag) || tag != kPairTag || !k.Varint(site_length) || !k.Bytes(site_length, site)) {
    return absl::DataLossError("malformed pair pause key");
  }
  pause.site = std::string(site);
  std::string_view source;
  k.Bytes(k.remaining(), source);
  pause.source = std::string(source);

  VarintReader v(value);
  uint8_t version = 0;
  uint8_t flags = 0;
  std::string cause;
  if (v.Byte(version) && version > kPauseVersionWithBackoff) {
    // A newer facteur's (before a rollback): not ours to read, nor to delete.
    return absl::FailedPreconditionError(absl::StrCat("record version ", version, " is newer"));
  }
  if (version < kVersion || !v.Time(pause.since) || !v.Time(pause.until) || !v.Byte(flags) ||
      !v.String(cause) || !v.String(pause.pool)) {
    return absl::DataLossError("malformed pair pause record");
  }
  if (version == kPauseVersionWithBackoff) {
    throttle::PairBackoff& b = pause.backoff.emplace();
    if (!ReadRate(v, b.rate) || !ReadRate(v, b.rate_target) || !ReadCount(v, b.connections) ||
        !ReadCount(v, b.connection_target) || !ReadRate(v, b.ceiling) ||
        !v.Time(b.ceiling_until) || !v.Time(b.hold_until)) {
      return absl::DataLossError("malformed pair pause record");
    }
  }
  if (!v.done()) return absl::DataLossError("malformed pair pause record");
  pause.manual = (flags & kManualFlag) != 0;
  if (!cause.empty()) {
    pause.cause = throttle::ParseResponseClass(cause);
    if (!pause.cause.has_value()) {  // a class a newer facteur knows: kept for it
      return absl::FailedPreconditionError(absl::StrCat("unknown reply class '", cause, "'"));
    }
  }
  return pause;
}

absl::Status SuspensionStore::CheckWritable() const {
  if (store_.read_only() || store_.family(Family::kSuspension) == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("spool ", store_.path(), " is open read-only: suspension not written"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<DomainHold>> SuspensionStore::DomainHolds() const {
  std::vector<DomainHold> holds;
  rocksdb::ColumnFamilyHandle* family = store_.family(Family::kSuspension);
  if (family == nullptr) return holds;  // a read-only view of a spool from before the family
  std::unique_ptr<rocksdb::Iterator> it(store_.db().NewIterator(rocksdb::ReadOptions(), family));
  const std::string prefix(1, kDomainTag);
  for (it->Seek(ToSlice(prefix)); it->Valid() && it->key().starts_with(ToSlice(prefix));
       it->Next()) {
    DomainHold hold;
    hold.domain = std::string(ToView(it->key()).substr(1));
    VarintReader v(ToView(it->value()));
    uint8_t version = 0;
    if (!v.Byte(version) || version != kVersion || !v.Time(hold.since)) {
      // The hold is kept all the same: holding a domain too long is the operator's to lift,
      // sending to it against their word is not ours to do.
      Log(LogLevel::kWarning, "suspension: domain hold %s of spool %s has a damaged time",
          absl::CEscape(ToAbsl(hold.domain)), store_.path());
      hold.since = absl::InfinitePast();
    }
    holds.push_back(std::move(hold));
  }
  FACTEUR_RETURN_IF_ERROR(
      ToStatus(it->status(), absl::StrCat("reading domain holds of spool ", store_.path())));
  return holds;
}

absl::Status SuspensionStore::HoldDomain(std::string_view domain, absl::Time since) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  std::string value(1, static_cast<char>(kVersion));
  PutTime(value, since);
  return ToStatus(store_.db().Put(Synced(), store_.family(Family::kSuspension),
                                  ToSlice(DomainKey(domain)), ToSlice(value)),
                  absl::StrCat("writing the hold of ", ToAbsl(domain), " to spool ", store_.path()));
}

absl::Status SuspensionStore::ReleaseDomain(std::string_view domain) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  return ToStatus(store_.db().Delete(Synced(), store_.family(Family::kSuspension),
                                     ToSlice(DomainKey(domain))),
                  absl::StrCat("removing the hold of ", ToAbsl(domain), " from spool ",
                               store_.path()));
}

absl::StatusOr<PairPauseLoad> SuspensionStore::PairPauses(absl::Time now) {
  PairPauseLoad load;
  rocksdb::ColumnFamilyHandle* family = store_.family(Family::kSuspension);
  if (family == nullptr) return load;
  std::vector<std::string> stale;  // keys of ended or damaged records
  {
    std::unique_ptr<rocksdb::Iterator> it(store_.db().NewIterator(rocksdb::ReadOptions(), family));
    const std::string prefix(1, kPairTag);
    for (it->Seek(ToSlice(prefix)); it->Valid() && it->key().starts_with(ToSlice(prefix));
         it->Next()) {
      absl::StatusOr<throttle::PairPause> pause =
          DecodePairPause(ToView(it->key()), ToView(it->value()));
      if (!pause.ok()) {
        ++load.skipped;
        Log(LogLevel::kWarning, "suspension: ignoring record %s of spool %s: %s",
            absl::CEscape(ToAbsl(ToView(it->key()))), store_.path(), pause.status().message());
        if (absl::IsFailedPrecondition(pause.status())) continue;  // kept, unread
      } else if (throttle::KeptUntil(*pause) <= now) {
        ++load.expired;
      } else {
        load.running.push_back(*std::move(pause));
        continue;
      }
      stale.emplace_back(ToView(it->key()));
    }
    FACTEUR_RETURN_IF_ERROR(
        ToStatus(it->status(), absl::StrCat("reading pair pauses of spool ", store_.path())));
  }
  if (!stale.empty() && CheckWritable().ok()) {
    rocksdb::WriteBatch batch;
    for (const std::string& key : stale) batch.Delete(family, ToSlice(key));
    FACTEUR_RETURN_IF_ERROR(
        ToStatus(store_.db().Write(Synced(), &batch),
                 absl::StrCat("removing ended pair pauses from spool ", store_.path())));
  }
  return load;
}

absl::Status SuspensionStore::Write(const throttle::PauseDelta& delta, bool synced) {
  if (delta.empty()) return absl::OkStatus();
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  rocksdb::ColumnFamilyHandle* family = store_.family(Family::kSuspension);
  rocksdb::WriteBatch batch;
  for (const throttle::PairPause& pause : delta.set) {
    batch.Put(family, ToSlice(SuspensionPairKey(pause.site, pause.source)),
              ToSlice(EncodePairPause(pause)));
  }
  for (const auto& [site, source] : delta.lifted) {
    batch.Delete(family, ToSlice(SuspensionPairKey(site, source)));
  }
  rocksdb::WriteOptions options = Synced();
  options.sync = synced;
  return ToStatus(store_.db().Write(options, &batch),
                  absl::StrCat("writing pair pauses to spool ", store_.path()));
}

}  // namespace facteur::queue
