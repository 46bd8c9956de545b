// File: queue/suspension_store.cc
// Reading and writing domain holds and pair pauses in the `suspension` column family.
#include "queue/suspension_store.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <utility>

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
// A pair's back-off (PairBackoff) beside its pause record, under a key of its own: a binary
// from before back-offs were kept reads the pauses ('p') as they were and never sees these.
constexpr char kBackoffTag = 'b';
constexpr uint8_t kVersion = 1;
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

namespace {

std::string PairKeyWithTag(char tag, std::string_view site, std::string_view source) {
  std::string key(1, tag);
  PutVarint(key, site.size());
  key.append(site);
  key.append(source);
  return key;
}

// The (site, source) of a pair key of `tag`; false when malformed.
bool ParsePairKey(char tag, std::string_view key, std::string& site, std::string& source) {
  VarintReader k(key);
  uint8_t found = 0;
  uint64_t site_length = 0;
  std::string_view site_view;
  if (!k.Byte(found) || found != static_cast<uint8_t>(tag) || !k.Varint(site_length) ||
      !k.Bytes(site_length, site_view)) {
    return false;
  }
  std::string_view source_view;
  k.Bytes(k.remaining(), source_view);
  site = std::string(site_view);
  source = std::string(source_view);
  return true;
}

}  // namespace

std::string SuspensionPairKey(std::string_view site, std::string_view source) {
  return PairKeyWithTag(kPairTag, site, source);
}

std::string SuspensionBackoffKey(std::string_view site, std::string_view source) {
  return PairKeyWithTag(kBackoffTag, site, source);
}

std::string EncodePairBackoff(const throttle::PairBackoff& backoff) {
  std::string value(1, static_cast<char>(kVersion));
  PutRate(value, backoff.rate);
  PutRate(value, backoff.rate_target);
  PutVarint(value, backoff.connections);
  PutVarint(value, backoff.connection_target);
  PutRate(value, backoff.ceiling);
  PutTime(value, backoff.ceiling_until);
  PutTime(value, backoff.hold_until);
  return value;
}

absl::StatusOr<throttle::PairBackoff> DecodePairBackoff(std::string_view value) {
  VarintReader v(value);
  uint8_t version = 0;
  if (v.Byte(version) && version > kVersion) {
    return absl::FailedPreconditionError(absl::StrCat("record version ", version, " is newer"));
  }
  throttle::PairBackoff b;
  if (version != kVersion || !ReadRate(v, b.rate) || !ReadRate(v, b.rate_target) ||
      !ReadCount(v, b.connections) || !ReadCount(v, b.connection_target) ||
      !ReadRate(v, b.ceiling) || !v.Time(b.ceiling_until) || !v.Time(b.hold_until) ||
      !v.done()) {
    return absl::DataLossError("malformed pair back-off record");
  }
  return b;
}

std::string EncodePairPause(const throttle::PairPause& pause) {
  std::string value(1, static_cast<char>(kVersion));
  PutTime(value, pause.since);
  PutTime(value, pause.until);
  value.push_back(static_cast<char>(pause.manual ? kManualFlag : 0));
  // By name, not by number: the classes may be renumbered, their names are in the shaping files.
  PutString(value, pause.cause.has_value() ? throttle::ResponseClassName(*pause.cause) : "");
  PutString(value, pause.pool);
  return value;  // the back-off goes under its own key (EncodePairBackoff)
}

absl::StatusOr<throttle::PairPause> DecodePairPause(std::string_view key, std::string_view value) {
  throttle::PairPause pause;
  if (!ParsePairKey(kPairTag, key, pause.site, pause.source)) {
    return absl::DataLossError("malformed pair pause key");
  }
  VarintReader v(value);
  uint8_t version = 0;
  uint8_t flags = 0;
  std::string cause;
  if (v.Byte(version) && version > kVersion) {
    // A newer facteur's (before a rollback): not ours to read, nor to delete.
    return absl::FailedPreconditionError(absl::StrCat("record version ", version, " is newer"));
  }
  if (version != kVersion || !v.Time(pause.since) || !v.Time(pause.until) || !v.Byte(flags) ||
      !v.String(cause) || !v.String(pause.pool) || !v.done()) {
    return absl::DataLossError("malformed pair pause record");
  }
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
  std::map<std::pair<std::string, std::string>, throttle::PairPause> pauses;
  auto skip = [&](const rocksdb::Slice& key, const absl::Status& status) {
    ++load.skipped;
    Log(LogLevel::kWarning, "suspension: ignoring record %s of spool %s: %s",
        absl::CEscape(ToAbsl(ToView(key))), store_.path(), status.message());
    // A newer facteur's is kept, unread, for it (a rollback); a damaged one goes.
    if (!absl::IsFailedPrecondition(status)) stale.emplace_back(ToView(key));
  };
  {
    std::unique_ptr<rocksdb::Iterator> it(store_.db().NewIterator(rocksdb::ReadOptions(), family));
    const std::string pause_prefix(1, kPairTag);
    for (it->Seek(ToSlice(pause_prefix));
         it->Valid() && it->key().starts_with(ToSlice(pause_prefix)); it->Next()) {
      absl::StatusOr<throttle::PairPause> pause =
          DecodePairPause(ToView(it->key()), ToView(it->value()));
      if (!pause.ok()) {
        skip(it->key(), pause.status());
        continue;
      }
      auto key = std::make_pair(pause->site, pause->source);
      pauses.emplace(std::move(key), *std::move(pause));
    }
    // Each back-off joins its pause record; one without (its pause lifted by a binary that
    // did not know back-offs) is stale.
    const std::string backoff_prefix(1, kBackoffTag);
    for (it->Seek(ToSlice(backoff_prefix));
         it->Valid() && it->key().starts_with(ToSlice(backoff_prefix)); it->Next()) {
      std::string site;
      std::string source;
      if (!ParsePairKey(kBackoffTag, ToView(it->key()), site, source)) {
        skip(it->key(), absl::DataLossError("malformed pair back-off key"));
        continue;
      }
      auto pause = pauses.find({site, source});
      if (pause == pauses.end()) {
        stale.emplace_back(ToView(it->key()));
        continue;
      }
      absl::StatusOr<throttle::PairBackoff> backoff = DecodePairBackoff(ToView(it->value()));
      if (!backoff.ok()) {
        skip(it->key(), backoff.status());
        continue;
      }
      pause->second.backoff = *backoff;
    }
    FACTEUR_RETURN_IF_ERROR(
        ToStatus(it->status(), absl::StrCat("reading pair pauses of spool ", store_.path())));
  }
  for (auto& [key, pause] : pauses) {
    if (throttle::KeptUntil(pause) <= now) {
      ++load.expired;
      stale.push_back(SuspensionPairKey(pause.site, pause.source));
      if (pause.backoff.has_value()) stale.push_back(SuspensionBackoffKey(pause.site, pause.source));
      continue;
    }
    load.running.push_back(std::move(pause));
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
    const std::string backoff_key = SuspensionBackoffKey(pause.site, pause.source);
    if (pause.backoff.has_value()) {
      batch.Put(family, ToSlice(backoff_key), ToSlice(EncodePairBackoff(*pause.backoff)));
    } else {
      batch.Delete(family, ToSlice(backoff_key));
    }
  }
  for (const auto& [site, source] : delta.lifted) {
    batch.Delete(family, ToSlice(SuspensionPairKey(site, source)));
    batch.Delete(family, ToSlice(SuspensionBackoffKey(site, source)));
  }
  rocksdb::WriteOptions options = Synced();
  options.sync = synced;
  return ToStatus(store_.db().Write(options, &batch),
                  absl::StrCat("writing pair pauses to spool ", store_.path()));
}

}  // namespace facteur::queue
