// File: tests/support/fault_file_system.h
// A RocksDB FileSystem with two faults on command, real fault injection under the real
// database for the spool's tests:
// - a full disk: while armed, every Append, PositionedAppend, Flush, Sync, Fsync and RangeSync of
//   a writable file (WAL, SST, MANIFEST) returns IOStatus::NoSpace(), as ENOSPC would, and
//   GetFreeSpace() reports 0 bytes;
// - a power cut: CutPower() refuses every write from then on (IOError), and once the database
//   is closed LoseUnsyncedLogTails() puts each write-ahead log back to what its last sync made
//   durable, as the page cache would be lost: RocksDB's bytes up to the synced size, then zeros
//   up to the file's size at that sync. The spool writes its logs over zeros laid ahead
//   (queue/prezeroed_wal.h), which that sync made durable too; unsynced records over them read
//   as zeros again. Only the logs: the writes not synced at once live there (RocksDB syncs SST
//   and MANIFEST files before it uses them).
// Thread contract: thread-safe; every call may come from any thread while RocksDB runs.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace facteur::test_support {

class FaultFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultFileSystem(
      const std::shared_ptr<rocksdb::FileSystem>& target = rocksdb::FileSystem::Default());

  static const char* kClassName() { return "FaultFileSystem"; }
  const char* Name() const override { return kClassName(); }

  void ArmFullDisk() { full_.store(true); }
  void DisarmFullDisk() { full_.store(false); }
  // Writes refused since construction, by either fault.
  uint64_t refusals() const { return refusals_.load(); }

  void CutPower() { powered_off_.store(true); }
  // After the database is closed: every log written through this file system gets back the
  // state of its last sync (above). Returns how many of RocksDB's bytes were lost.
  uint64_t LoseUnsyncedLogTails();
  // Syncs of write-ahead logs since construction.
  uint64_t log_syncs() const { return log_syncs_.load(); }

  // A full disk has no free space: reports 0 bytes while armed (the spool checks before it
  // resumes).
  rocksdb::IOStatus GetFreeSpace(const std::string& path, const rocksdb::IOOptions& options,
                                 uint64_t* free_bytes, rocksdb::IODebugContext* dbg) override;

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& name,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& name, const std::string& old_name,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;

  // Shared with the files it hands out.
  // The status a write gets under the faults armed now; OK when none is.
  rocksdb::IOStatus Refusal();
  // A write of `name` reached `end` bytes; a sync made its first `synced` bytes durable, and
  // the file's size (`file_size`, zeros past those bytes).
  void Appended(const std::string& name, uint64_t end);
  void Synced(const std::string& name, uint64_t synced, uint64_t file_size);

 private:
  // `name` is a new file (created, or reused from an old one): what was known of it goes.
  void Forget(const std::string& name);

  struct LogSizes {
    uint64_t written = 0;  // by RocksDB
    uint64_t synced = 0;   // of RocksDB's bytes
    uint64_t synced_file_size = 0;  // the file's, with the zeros past RocksDB's bytes
  };

  std::atomic<bool> full_{false};
  std::atomic<bool> powered_off_{false};
  std::atomic<uint64_t> refusals_{0};
  std::atomic<uint64_t> log_syncs_{0};
  absl::Mutex mutex_;
  std::map<std::string, LogSizes> logs_ ABSL_GUARDED_BY(mutex_);  // by path
};

// An Env using `fs` for files and the default Env for threads and time (what StoreOptions::env
// takes). `fs` is shared by the test, which arms it, and the Env.
std::shared_ptr<rocksdb::Env> NewEnvWithFileSystem(std::shared_ptr<FaultFileSystem> fs);

}  // namespace facteur::test_support
