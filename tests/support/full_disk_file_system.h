// File: tests/support/full_disk_file_system.h
// A RocksDB FileSystem that behaves like a full disk on command: while armed, every Append,
// PositionedAppend, Flush, Sync, Fsync and RangeSync of a writable file (WAL, SST, MANIFEST)
// returns IOStatus::NoSpace(), as ENOSPC would, and GetFreeSpace() reports 0 bytes. Real fault injection under the real database,
// for the spool's full-disk tests.
// Thread contract: thread-safe; Arm()/Disarm() may be called from any thread while RocksDB runs.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace facteur::test_support {

class FullDiskFileSystem : public rocksdb::FileSystemWrapper {
 public:
  explicit FullDiskFileSystem(
      const std::shared_ptr<rocksdb::FileSystem>& target = rocksdb::FileSystem::Default());

  static const char* kClassName() { return "FullDiskFileSystem"; }
  const char* Name() const override { return kClassName(); }

  void Arm() { full_.store(true); }
  void Disarm() { full_.store(false); }
  bool armed() const { return full_.load(); }
  // Writes refused since construction.
  uint64_t refusals() const { return refusals_.load(); }

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

  // The refusal check, shared with the files it hands out.
  bool Refuse() {
    if (!full_.load()) return false;
    refusals_.fetch_add(1);
    return true;
  }

 private:
  std::atomic<bool> full_{false};
  std::atomic<uint64_t> refusals_{0};
};

// An Env using `fs` for files and the default Env for threads and time (what StoreOptions::env
// takes). `fs` is shared by the test, which arms it, and the Env.
std::shared_ptr<rocksdb::Env> NewEnvWithFileSystem(std::shared_ptr<FullDiskFileSystem> fs);

}  // namespace facteur::test_support
