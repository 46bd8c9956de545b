// File: queue/reputation_store.cc
// Reading and writing throttle::Reputation's records in the `reputation` column family.
#include "queue/reputation_store.h"

#include <memory>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "rocksdb/write_batch.h"

namespace facteur::queue {
namespace {

constexpr char kPairTag = 'p';
constexpr char kSourceTag = 's';

rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }

}  // namespace

std::string ReputationPairKey(std::string_view source, std::string_view site) {
  std::string key(1, kPairTag);
  uint64_t length = source.size();
  while (length >= 0x80) {
    key.push_back(static_cast<char>((length & 0x7f) | 0x80));
    length >>= 7;
  }
  key.push_back(static_cast<char>(length));
  key.append(source);
  key.append(site);
  return key;
}

std::string ReputationSourceKey(std::string_view source) {
  std::string key(1, kSourceTag);
  key.append(source);
  return key;
}

std::optional<ReputationKey> ParseReputationKey(std::string_view key) {
  if (key.empty()) return std::nullopt;
  const char tag = key.front();
  key.remove_prefix(1);
  ReputationKey parsed;
  if (tag == kSourceTag) {
    parsed.source = std::string(key);
    return parsed;
  }
  if (tag != kPairTag) return std::nullopt;
  uint64_t length = 0;
  for (int shift = 0;; shift += 7) {
    if (key.empty() || shift >= 64) return std::nullopt;
    const uint8_t byte = static_cast<uint8_t>(key.front());
    key.remove_prefix(1);
    length |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) break;
  }
  if (length > key.size()) return std::nullopt;
  parsed.is_pair = true;
  parsed.source = std::string(key.substr(0, length));
  parsed.site = std::string(key.substr(length));
  return parsed;
}

absl::StatusOr<ReputationLoadStats> ReputationStore::LoadInto(throttle::Reputation& reputation) {
  ReputationLoadStats stats;
  rocksdb::ColumnFamilyHandle* family = store_.family(Family::kReputation);
  if (family == nullptr) return stats;  // a read-only view of a spool from before the family
  std::unique_ptr<rocksdb::Iterator> it(store_.db().NewIterator(rocksdb::ReadOptions(), family));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string_view key(it->key().data(), it->key().size());
    const std::string_view value(it->value().data(), it->value().size());
    std::optional<ReputationKey> parsed = ParseReputationKey(key);
    absl::Status status;
    if (!parsed.has_value()) {
      status = absl::DataLossError("unknown key");
    } else if (parsed->is_pair) {
      status = reputation.RestorePair(parsed->source, parsed->site, value);
      if (status.ok()) ++stats.pairs;
    } else {
      status = reputation.RestoreSource(parsed->source, value);
      if (status.ok()) ++stats.sources;
    }
    if (!status.ok()) {
      ++stats.skipped;
      Log(LogLevel::kWarning, "reputation: ignoring record %s of spool %s: %s",
          absl::CEscape(ToAbsl(key)), store_.path(), status.ToString());
    }
  }
  FACTEUR_RETURN_IF_ERROR(
      ToStatus(it->status(), absl::StrCat("reading reputation of spool ", store_.path())));
  return stats;
}

absl::Status ReputationStore::Flush(throttle::Reputation& reputation) {
  throttle::ReputationDelta delta = reputation.TakeDirty();
  if (delta.empty()) return absl::OkStatus();
  rocksdb::ColumnFamilyHandle* family = store_.family(Family::kReputation);
  if (store_.read_only() || family == nullptr) {
    reputation.Redirty(delta);
    return absl::FailedPreconditionError(
        absl::StrCat("spool ", store_.path(), " is open read-only: reputation not written"));
  }
  rocksdb::WriteBatch batch;
  for (const throttle::ReputationDelta::Pair& pair : delta.pairs) {
    batch.Put(family, ToSlice(ReputationPairKey(pair.source, pair.site)), ToSlice(pair.value));
  }
  for (const throttle::ReputationDelta::Source& source : delta.sources) {
    batch.Put(family, ToSlice(ReputationSourceKey(source.source)), ToSlice(source.value));
  }
  rocksdb::WriteOptions options;
  options.sync = false;  // see the header: advisory data, WAL only
  absl::Status status = ToStatus(store_.db().Write(options, &batch),
                                 absl::StrCat("writing reputation to spool ", store_.path()));
  if (!status.ok()) reputation.Redirty(delta);
  return status;
}

}  // namespace facteur::queue
