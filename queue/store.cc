// File: queue/store.cc
// Opening the spool's RocksDB database (read-write as the one primary, or read-only as a
// secondary instance) and the rocksdb::Status → absl::Status adapter.
#include "queue/store.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "queue/prezeroed_wal.h"
#include "rocksdb/listener.h"
#include "rocksdb/options.h"
#include "rocksdb/perf_level.h"
#include "rocksdb/slice_transform.h"

namespace facteur::queue {
namespace {

// Order matters: handles_[0] is "default", handles_[1 + Family] the named ones.
constexpr const char* kFamilyNames[] = {"default",  "body",       "envelope",    "schedule",
                                        "accounts", "reputation", "suppression", "quota",
                                        "suspension"};
// Families added after the first release: a read-only instance opens a spool without them
// (written by an older primary) and leaves their handles null.
bool IsOptionalFamily(std::string_view name) {
  return name == "reputation" || name == "suppression" || name == "quota" ||
         name == "suspension";
}

// RocksDB's own recovery from a full disk starts at once, while the disk is likely still full;
// its flush then fails too and the error turns fatal (only a reopen clears it). The spool's
// writer calls Resume() itself, at most once a second, when it has work (spool.cc).
class NoAutoRecovery : public rocksdb::EventListener {
 public:
  const char* Name() const override { return "FacteurNoAutoRecovery"; }
  void OnErrorRecoveryBegin(rocksdb::BackgroundErrorReason /*reason*/,
                            rocksdb::Status /*bg_error*/, bool* auto_recovery) override {
    *auto_recovery = false;
  }
};

// RocksDB's messages go to facteur's log instead of a LOG file in the spool directory: on a
// full disk, RocksDB's own LOG writer trips an assertion in Debian's librocksdb (its
// WritableFileWriter after a failed append) and aborts the process, where the spool must
// instead answer 452 4.3.1 and heal once space is back. Warnings and errors only: the info
// level (compaction statistics every few minutes) would drown the relay's own log.
class ForwardingLogger final : public rocksdb::Logger {
 public:
  ForwardingLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::WARN_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char line[1024];
    std::vsnprintf(line, sizeof(line), format, ap);
    // DB::Open's failure reaches Store::Open's caller as its status, which says it better (a
    // held LOCK: "in use by a running facteur"). Logged too, it is noise on every CLI command
    // that then asks the running server instead.
    if (absl::StrContains(line, "DB::Open() failed")) return;
    Log(level >= rocksdb::InfoLogLevel::ERROR_LEVEL ? LogLevel::kError : LogLevel::kWarning,
        "rocksdb: %s", line);
  }
};

// Store::OpenReadOnly's opens next to a server that is writing: 20 tries 10 ms apart. Under a
// continuous stream of synced 100 KB writes, about 4 opens in 10 met a torn record (the review
// of 2026-12-05); twenty in a row would take a write-bound server and bad luck.
constexpr int kReadOnlyOpenAttempts = 20;
constexpr absl::Duration kReadOnlyOpenRetryDelay = absl::Milliseconds(10);

// The primary's MANIFEST as a secondary open finds it: the file CURRENT names, and its size.
// A flush during the open adds to it (or a new one replaces it) and may delete the log the
// secondary meant to replay for what that flush wrote: the open then missed those records.
std::string ManifestState(const std::string& path) {
  std::string name;
  if (FILE* current = std::fopen((path + "/CURRENT").c_str(), "r")) {
    char line[256];
    if (std::fgets(line, sizeof line, current) != nullptr) name = line;
    std::fclose(current);
  }
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  struct stat info;
  if (name.empty() || ::stat((path + "/" + name).c_str(), &info) != 0) return name;
  return absl::StrCat(name, ":", info.st_size);
}

rocksdb::Options PrimaryOptions(rocksdb::Env* env) {
  rocksdb::Options options;
  // Two background threads are enough for flushes and compactions of a queue whose writes come
  // from one writer thread; more would compete with the I/O shards for CPU.
  options.IncreaseParallelism(2);
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  // Lets the memtable insert of one write group overlap the WAL write of the next: helps when
  // the account store or an admin command write next to the spool's writer.
  options.enable_pipelined_write = true;
  // The WAL is the durability of an acknowledged message: never disabled, never recycled in a
  // way that could resurrect old records after a crash.
  options.recycle_log_file_num = 0;
  // A WAL file is deleted only once every family with data in it has flushed. The envelope and
  // schedule families fill their memtables some 20 times slower than the body family, so by
  // default (4 × the memtables of all 8 families, about 4 GB) the WAL of a large queue stays
  // whole, and the next start replays all of it: 2.3 GB and some 6 s with 1M messages of 2 KB
  // (bench/macro/queue_scale). Past this size the families holding the oldest WAL are flushed
  // and it goes: start-up replays at most this much, and the small families' memtables stay
  // small too.
  options.max_total_wal_size = 256 << 20;
  // Message ids, and the schedule's (due, id) keys, grow with time, so each insert lands near
  // an earlier one of its family. With one hint per family (the empty prefix) the memtable's
  // skip list starts from the previous insert instead of its top: about a third fewer key
  // comparisons, most of them cache misses (bench/README "Where the time goes"). Concurrent
  // memtable inserts ignore the hint; they only serve many writer threads, and the spool has
  // one.
  options.memtable_insert_with_hint_prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(0));
  options.allow_concurrent_memtable_write = false;
  options.listeners.push_back(std::make_shared<NoAutoRecovery>());
  options.info_log = std::make_shared<ForwardingLogger>();
  options.env = env;
  return options;
}

bool IsLockHeld(const rocksdb::Status& status) {
  // RocksDB reports the LOCK file held by another process as an IOError "While lock file ...:
  // Resource temporarily unavailable", and held by this process as "lock hold by current
  // process". Both mean a running instance owns the spool.
  if (!status.IsIOError()) return false;
  const std::string text = status.ToString();
  return absl::StrContains(text, "lock file") || absl::StrContains(text, "LOCK") ||
         absl::StrContains(text, "lock hold");
}

}  // namespace

absl::Status ToStatus(const rocksdb::Status& status, std::string_view context) {
  if (status.ok()) return absl::OkStatus();
  std::string message = absl::StrCat(ToAbsl(context), ": ", status.ToString());
  if (status.IsNoSpace()) return absl::ResourceExhaustedError(message);
  if (status.IsBusy() || status.IsTryAgain() || status.IsIncomplete()) {
    return absl::UnavailableError(message);
  }
  if (status.IsCorruption()) return absl::DataLossError(message);
  if (status.IsNotFound()) return absl::NotFoundError(message);
  if (status.IsIOError()) return absl::UnavailableError(message);
  return absl::InternalError(message);
}

void StopPerfCountingOnThisThread() { rocksdb::SetPerfLevel(rocksdb::PerfLevel::kDisable); }

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path) {
  return Open(path, StoreOptions{});
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& path,
                                                   const StoreOptions& options) {
  // RocksDB creates the spool directory but not its parents (and logs an error while it looks
  // for it): a first `facteur account add` on a new data directory must work like `serve`.
  {
    std::error_code error;
    std::filesystem::create_directories(path, error);
    if (error) {
      return absl::PermissionDeniedError(
          absl::StrCat("creating the directory of spool ", path, ": ", error.message()));
    }
  }
  std::unique_ptr<Store> store(new Store());
  store->caller_env_ = options.env;
  store->env_ = WithPrezeroedWals(options.env);
  store->path_ = path;
  rocksdb::Options db_options = PrimaryOptions(store->env_.get());
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const char* name : kFamilyNames) {
    families.emplace_back(name, rocksdb::ColumnFamilyOptions(db_options));
  }
  // A family this binary does not know (a newer facteur's, before a rollback) is opened too,
  // after ours, and left alone: RocksDB refuses a read-write open that leaves one out, which
  // would strand every queued message.
  std::vector<std::string> existing;
  if (rocksdb::DB::ListColumnFamilies(db_options, path, &existing).ok()) {
    for (const std::string& name : existing) {
      if (std::find(std::begin(kFamilyNames), std::end(kFamilyNames), name) ==
          std::end(kFamilyNames)) {
        Log(LogLevel::kWarning, "spool %s: family '%s' is a newer facteur's; left as it is", path,
            absl::CHexEscape(name));
        families.emplace_back(name, rocksdb::ColumnFamilyOptions(db_options));
      }
    }
  }
  rocksdb::DB* db = nullptr;
  rocksdb::Status status = rocksdb::DB::Open(db_options, path, families, &store->handles_, &db);
  if (!status.ok()) {
    if (IsLockHeld(status)) {
      return absl::FailedPreconditionError(
          absl::StrCat("spool ", path, " is in use by a running facteur (", status.ToString(),
                       "); stop it, or open the spool read-only"));
    }
    return ToStatus(status, absl::StrCat("opening spool ", path));
  }
  store->db_.reset(db);
  return store;
}

absl::StatusOr<std::unique_ptr<Store>> Store::OpenReadOnly(const std::string& path) {
  // A secondary instance instead of DB::OpenForReadOnly: it does not need the LOCK, so it works
  // next to a running server, and it replays the primary's live WAL so it sees every
  // acknowledged message, not only what was flushed.
  struct stat info;
  const std::string current = path + "/CURRENT";
  if (::stat(current.c_str(), &info) != 0) {
    return absl::NotFoundError(absl::StrCat("no spool database at ", path));
  }

  std::unique_ptr<Store> store(new Store());
  store->path_ = path;
  store->read_only_ = true;
  char scratch[] = "/tmp/facteur-secondary-XXXXXX";
  if (::mkdtemp(scratch) == nullptr) {
    return ErrnoStatus("mkdtemp for the read-only spool instance", errno);
  }
  // From here ~Store removes the scratch directory on every return path.
  store->secondary_path_ = scratch;

  rocksdb::Options db_options;
  db_options.max_open_files = -1;  // required by secondary instances
  db_options.info_log = std::make_shared<ForwardingLogger>();
  // A torn record at the live tail is reported as a warning ("dropping N bytes; Corruption")
  // before the open is tried again (below): a command's user sees only what does not pass.
  db_options.info_log->SetInfoLogLevel(rocksdb::InfoLogLevel::ERROR_LEVEL);
  std::vector<std::string> existing;
  rocksdb::Status status = rocksdb::DB::ListColumnFamilies(db_options, path, &existing);
  if (!status.ok()) return ToStatus(status, absl::StrCat("listing families of spool ", path));
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  std::vector<bool> present;  // by kFamilyNames index
  for (const char* name : kFamilyNames) {
    const bool exists = std::find(existing.begin(), existing.end(), name) != existing.end();
    present.push_back(exists);
    if (exists) {
      families.emplace_back(name, rocksdb::ColumnFamilyOptions(db_options));
    } else if (!IsOptionalFamily(name)) {
      return absl::FailedPreconditionError(
          absl::StrCat("database at ", path, " is not a facteur spool: no family ", name));
    }
  }
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> opened;
  // The open replays the live WAL once, and the view stays as of then: no catch-up later. A
  // record the server is writing over a log's zeros at that moment reads torn, a checksum
  // mismatch (queue/prezeroed_wal.h): a moment later it is whole, so the open is tried again.
  // So is an open during which the server flushed (its MANIFEST changed): the log holding
  // what it flushed may be gone before the open read it, and the flush's table not in the
  // open's view.
  for (int attempt = 1;; ++attempt) {
    const std::string manifest = ManifestState(path);
    status = rocksdb::DB::OpenAsSecondary(db_options, path, store->secondary_path_, families,
                                          &opened, &db);
    if (attempt == kReadOnlyOpenAttempts) break;
    if (status.ok()) {
      if (ManifestState(path) == manifest) break;
      for (rocksdb::ColumnFamilyHandle* handle : opened) {
        db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
      }
      db->Close().PermitUncheckedError();
      delete db;
      db = nullptr;
    } else if (!status.IsCorruption()) {
      break;
    }
    opened.clear();
    absl::SleepFor(kReadOnlyOpenRetryDelay);
  }
  if (!status.ok()) return ToStatus(status, absl::StrCat("opening spool ", path, " read-only"));
  store->db_.reset(db);
  // handles_ stays indexed like kFamilyNames, with null for an absent optional family.
  for (size_t i = 0, next = 0; i < present.size(); ++i) {
    store->handles_.push_back(present[i] ? opened[next++] : nullptr);
  }
  return store;
}

Store::~Store() {
  if (db_ != nullptr) {
    for (rocksdb::ColumnFamilyHandle* handle : handles_) {
      if (handle != nullptr) db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
    }
    handles_.clear();
    rocksdb::Status status = db_->Close();
    if (!status.ok()) {
      Log(LogLevel::kWarning, "closing spool %s: %s", path_, status.ToString());
    }
    db_.reset();
  }
  if (!secondary_path_.empty()) {
    std::error_code error;  // best effort: a leftover scratch dir in /tmp is harmless
    std::filesystem::remove_all(secondary_path_, error);
  }
}

rocksdb::ColumnFamilyHandle* Store::family(Family f) const {
  return handles_[1 + static_cast<size_t>(f)];
}

}  // namespace facteur::queue
