// File: queue/suppression.cc
// The suppression list's record codec, its RocksDB reads and writes, and the memory set.
#include "queue/suppression.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"

namespace facteur::queue {
namespace {

// Record, version 1 (integers big-endian):
//   u8 version = 1 | i64 added_at (Unix microseconds) | u16 length, reason | u16 length, reply.
// The address is the key. A new field means a new version; Decode keeps reading the old ones.
constexpr uint8_t kRecordVersion = 1;
// RFC 5321 §4.5.3.1: 64 octets of local part, 255 of domain, and the '@'.
constexpr size_t kMaxAddressOctets = 320;
// A reply is kept for the operator to read; a few lines are enough.
constexpr size_t kMaxStoredText = 4096;

void PutString16(std::string& out, std::string_view text) {
  text = text.substr(0, std::min(text.size(), kMaxStoredText));
  out.push_back(static_cast<char>((text.size() >> 8) & 0xff));
  out.push_back(static_cast<char>(text.size() & 0xff));
  out.append(text);
}

bool TakeString16(std::string_view& in, std::string& out) {
  if (in.size() < 2) return false;
  const size_t length =
      (static_cast<size_t>(static_cast<uint8_t>(in[0])) << 8) | static_cast<uint8_t>(in[1]);
  in.remove_prefix(2);
  if (in.size() < length) return false;
  out.assign(in.substr(0, length));
  in.remove_prefix(length);
  return true;
}

rocksdb::Slice AsSlice(std::string_view text) { return rocksdb::Slice(text.data(), text.size()); }

}  // namespace

absl::StatusOr<std::string> NormalizeSuppressedAddress(std::string_view address) {
  std::string_view text = address;
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  if (text.size() >= 2 && text.front() == '<' && text.back() == '>') {
    text = text.substr(1, text.size() - 2);
  }
  const auto invalid = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("'", ToAbsl(address),
                                                   "' is not an address (local@domain): ",
                                                   ToAbsl(why)));
  };
  const size_t at = text.rfind('@');
  if (at == std::string_view::npos) return invalid("no '@'");
  std::string_view local = text.substr(0, at);
  const std::string_view domain = text.substr(at + 1);
  if (local.empty() || domain.empty()) return invalid("an empty local part or domain");
  std::string out;
  if (local.size() >= 2 && local.front() == '"' && local.back() == '"') {
    // RFC 5321 §4.1.2 Quoted-string: the quotes go, a backslash takes the next octet as is.
    local = local.substr(1, local.size() - 2);
    for (size_t i = 0; i < local.size(); ++i) {
      if (local[i] == '\\' && i + 1 < local.size()) ++i;
      out.push_back(local[i]);
    }
  } else {
    out.assign(local);
  }
  out.push_back('@');
  out.append(domain);
  if (out.size() > kMaxAddressOctets) return invalid("longer than 320 octets");
  for (char c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return invalid("a control character");
  }
  absl::AsciiStrToLower(&out);
  return out;
}

std::string EncodeSuppressionRecord(const SuppressionEntry& entry) {
  std::string out;
  out.push_back(static_cast<char>(kRecordVersion));
  const uint64_t micros = static_cast<uint64_t>(absl::ToUnixMicros(entry.added_at));
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(micros >> shift));
  PutString16(out, entry.reason);
  PutString16(out, entry.reply);
  return out;
}

absl::StatusOr<SuppressionEntry> DecodeSuppressionRecord(std::string_view address,
                                                         std::string_view value) {
  const auto corrupt = [&](std::string_view what) {
    return absl::DataLossError(absl::StrCat("suppression entry '", ToAbsl(address),
                                            "' has a corrupt record: ", ToAbsl(what)));
  };
  if (value.empty()) return corrupt("empty");
  if (static_cast<uint8_t>(value[0]) != kRecordVersion) {
    return corrupt(absl::StrCat("unknown version ", static_cast<int>(value[0])));
  }
  value.remove_prefix(1);
  if (value.size() < 8) return corrupt("truncated");
  uint64_t micros = 0;
  for (int i = 0; i < 8; ++i) micros = (micros << 8) | static_cast<uint8_t>(value[i]);
  value.remove_prefix(8);
  SuppressionEntry entry;
  entry.address = std::string(address);
  entry.added_at = absl::FromUnixMicros(static_cast<int64_t>(micros));
  if (!TakeString16(value, entry.reason) || !TakeString16(value, entry.reply)) {
    return corrupt("truncated");
  }
  if (!value.empty()) return corrupt("trailing bytes");
  return entry;
}

absl::StatusOr<std::unique_ptr<SuppressionList>> SuppressionList::Open(Store& store) {
  std::unique_ptr<SuppressionList> list(new SuppressionList(store));
  rocksdb::ColumnFamilyHandle* family = store.family(Family::kSuppression);
  if (family == nullptr) return list;  // a read-only view of a spool from before the list
  std::unique_ptr<rocksdb::Iterator> it(store.db().NewIterator(rocksdb::ReadOptions(), family));
  absl::MutexLock lock(&list->mutex_);
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string_view key(it->key().data(), it->key().size());
    FACTEUR_ASSIGN_OR_RETURN(
        SuppressionEntry entry,
        DecodeSuppressionRecord(key, std::string_view(it->value().data(), it->value().size())));
    list->addresses_.emplace(std::move(entry.address),
                             Hit{std::move(entry.reason), entry.added_at});
  }
  if (!it->status().ok()) return ToStatus(it->status(), "reading the suppression list");
  return list;
}

absl::Status SuppressionList::CheckWritable() const {
  if (store_.read_only()) {
    return absl::FailedPreconditionError(
        "The suppression list is read-only (the spool was opened read-only); stop the server or "
        "use its admin API to change it.");
  }
  return absl::OkStatus();
}

absl::Status SuppressionList::Add(std::string_view address, std::string_view reason,
                                  std::string_view reply, absl::Time time) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  FACTEUR_ASSIGN_OR_RETURN(std::string normalized, NormalizeSuppressedAddress(address));
  SuppressionEntry entry{normalized, std::string(reason.empty() ? kSuppressedManual : reason),
                         absl::FromUnixMicros(absl::ToUnixMicros(time)), std::string(reply)};
  const std::string value = EncodeSuppressionRecord(entry);
  // Not synced (see the header); the WAL is still written before Put returns.
  rocksdb::Status status = store_.db().Put(rocksdb::WriteOptions(),
                                           store_.family(Family::kSuppression),
                                           AsSlice(normalized), AsSlice(value));
  if (!status.ok()) return ToStatus(status, "adding to the suppression list");
  absl::MutexLock lock(&mutex_);
  addresses_.insert_or_assign(std::move(normalized),
                              Hit{std::move(entry.reason), entry.added_at});
  return absl::OkStatus();
}

absl::Status SuppressionList::Remove(std::string_view address) {
  FACTEUR_RETURN_IF_ERROR(CheckWritable());
  FACTEUR_ASSIGN_OR_RETURN(std::string normalized, NormalizeSuppressedAddress(address));
  if (!Contains(normalized)) {
    return absl::NotFoundError(
        absl::StrCat("<", normalized, "> is not on the suppression list."));
  }
  rocksdb::WriteOptions options;
  options.sync = true;  // an operator's removal is acknowledged once it is on disk
  rocksdb::Status status =
      store_.db().Delete(options, store_.family(Family::kSuppression), AsSlice(normalized));
  if (!status.ok()) return ToStatus(status, "removing from the suppression list");
  absl::MutexLock lock(&mutex_);
  addresses_.erase(normalized);
  return absl::OkStatus();
}

bool SuppressionList::Contains(std::string_view address) const {
  return Find(address).has_value();
}

std::optional<SuppressionList::Hit> SuppressionList::Find(std::string_view address) const {
  // The session passes mail::Mailbox::Canonical(), already normalized; lowering again is cheap
  // and keeps other callers right.
  std::string key(address);
  absl::AsciiStrToLower(&key);
  absl::ReaderMutexLock lock(&mutex_);
  auto it = addresses_.find(key);
  if (it == addresses_.end()) return std::nullopt;
  return it->second;
}

size_t SuppressionList::size() const {
  absl::ReaderMutexLock lock(&mutex_);
  return addresses_.size();
}

absl::StatusOr<std::vector<SuppressionEntry>> SuppressionList::List() const {
  std::vector<SuppressionEntry> entries;
  rocksdb::ColumnFamilyHandle* family = store_.family(Family::kSuppression);
  if (family == nullptr) return entries;
  std::unique_ptr<rocksdb::Iterator> it(store_.db().NewIterator(rocksdb::ReadOptions(), family));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const std::string_view key(it->key().data(), it->key().size());
    FACTEUR_ASSIGN_OR_RETURN(
        SuppressionEntry entry,
        DecodeSuppressionRecord(key, std::string_view(it->value().data(), it->value().size())));
    entries.push_back(std::move(entry));
  }
  if (!it->status().ok()) return ToStatus(it->status(), "listing the suppression list");
  return entries;  // RocksDB's bytewise order is address order
}

}  // namespace facteur::queue
