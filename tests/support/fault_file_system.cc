// File: tests/support/fault_file_system.cc
#include "tests/support/fault_file_system.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <utility>

#include "absl/strings/match.h"

namespace facteur::test_support {
namespace {

// RocksDB names its write-ahead logs NNNNNN.log.
bool IsWriteAheadLog(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (!absl::EndsWith(base, ".log") || base.size() == 4) return false;
  return std::all_of(base.begin(), base.end() - 4, [](char c) { return std::isdigit(c) != 0; });
}

// Owns the real file, refuses its writes while a fault is armed and tells the file system how
// far a log was written and synced. Holds the file system by raw pointer: RocksDB closes every
// file before the Env (and so the FS) goes away.
class FaultWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(std::unique_ptr<rocksdb::FSWritableFile> file, FaultFileSystem* fs,
                    std::string path, uint64_t size)
      : FSWritableFileOwnerWrapper(std::move(file)),
        fs_(fs),
        path_(std::move(path)),
        log_(IsWriteAheadLog(path_)),
        size_(size) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    return Wrote(FSWritableFileOwnerWrapper::Append(data, options, dbg), size_ + data.size());
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    return Wrote(FSWritableFileOwnerWrapper::Append(data, options, info, dbg),
                 size_ + data.size());
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    return Wrote(FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, dbg),
                 std::max(size_, offset + data.size()));
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& info,
                                     rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    return Wrote(FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, info, dbg),
                 std::max(size_, offset + data.size()));
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    return FSWritableFileOwnerWrapper::Flush(options, dbg);
  }
  // What a sync makes durable is sampled before it starts: what is written meanwhile (RocksDB's
  // SyncWAL runs beside appends) may or may not be, so it counts as not.
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                         rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    const Durable durable = ToBeSynced(size_);
    return SyncedTo(FSWritableFileOwnerWrapper::Sync(options, dbg), durable);
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    const Durable durable = ToBeSynced(size_);
    return SyncedTo(FSWritableFileOwnerWrapper::Fsync(options, dbg), durable);
  }
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override {
    if (rocksdb::IOStatus refused = fs_->Refusal(); !refused.ok()) return refused;
    // Only a range: the zeros past it are not made durable by it.
    const Durable durable{std::min(size_, offset + nbytes), 0};
    return SyncedTo(FSWritableFileOwnerWrapper::RangeSync(offset, nbytes, options, dbg), durable);
  }

 private:
  rocksdb::IOStatus Wrote(rocksdb::IOStatus status, uint64_t end) {
    if (status.ok()) {
      size_ = end;
      if (log_) fs_->Appended(path_, end);
    }
    return status;
  }
  struct Durable {
    uint64_t written;    // RocksDB's bytes
    uint64_t file_size;  // with the zeros written ahead of them through another descriptor
  };
  Durable ToBeSynced(uint64_t written) const {
    struct stat file {};
    return {written, stat(path_.c_str(), &file) == 0 ? static_cast<uint64_t>(file.st_size) : 0};
  }
  rocksdb::IOStatus SyncedTo(rocksdb::IOStatus status, const Durable& durable) {
    if (status.ok() && log_) fs_->Synced(path_, durable.written, durable.file_size);
    return status;
  }

  FaultFileSystem* fs_;
  const std::string path_;
  const bool log_;
  uint64_t size_;  // bytes written so far
};

}  // namespace

FaultFileSystem::FaultFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target)
    : FileSystemWrapper(target) {}

rocksdb::IOStatus FaultFileSystem::Refusal() {
  if (powered_off_.load()) {
    refusals_.fetch_add(1);
    return rocksdb::IOStatus::IOError("injected: power cut");
  }
  if (full_.load()) {
    refusals_.fetch_add(1);
    return rocksdb::IOStatus::NoSpace("injected: disk full");
  }
  return rocksdb::IOStatus::OK();
}

void FaultFileSystem::Forget(const std::string& name) {
  absl::MutexLock lock(&mutex_);
  logs_.erase(name);
}

void FaultFileSystem::Appended(const std::string& name, uint64_t end) {
  absl::MutexLock lock(&mutex_);
  logs_[name].written = end;
}

void FaultFileSystem::Synced(const std::string& name, uint64_t synced, uint64_t file_size) {
  log_syncs_.fetch_add(1);
  absl::MutexLock lock(&mutex_);
  LogSizes& sizes = logs_[name];
  sizes.synced = std::max(sizes.synced, synced);
  sizes.synced_file_size = std::max(sizes.synced_file_size, file_size);
}

uint64_t FaultFileSystem::LoseUnsyncedLogTails() {
  absl::MutexLock lock(&mutex_);
  uint64_t lost = 0;
  for (auto& [path, sizes] : logs_) {
    // Cut at the synced bytes, then grown back with zeros to the synced file size (a clean
    // close drops the zeros; a power cut does not): unsynced records read as the zeros they
    // were written over. A log deleted since (obsolete after a flush) has nothing to lose.
    if (truncate(path.c_str(), static_cast<off_t>(sizes.synced)) != 0) continue;
    if (sizes.synced_file_size > sizes.synced) {
      (void)!truncate(path.c_str(), static_cast<off_t>(sizes.synced_file_size));
    }
    lost += sizes.written - std::min(sizes.written, sizes.synced);
    sizes.written = sizes.synced;
  }
  return lost;
}

rocksdb::IOStatus FaultFileSystem::GetFreeSpace(const std::string& path,
                                                const rocksdb::IOOptions& options,
                                                uint64_t* free_bytes,
                                                rocksdb::IODebugContext* dbg) {
  if (full_.load()) {
    *free_bytes = 0;
    return rocksdb::IOStatus::OK();
  }
  return target()->GetFreeSpace(path, options, free_bytes, dbg);
}

rocksdb::IOStatus FaultFileSystem::NewWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  if (powered_off_.load()) return Refusal();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus status = target()->NewWritableFile(name, options, &file, dbg);
  if (status.ok()) {
    Forget(name);
    *result = std::make_unique<FaultWritableFile>(std::move(file), this, name, 0);
  }
  return status;
}

rocksdb::IOStatus FaultFileSystem::ReopenWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  if (powered_off_.load()) return Refusal();
  // What the file already holds was there before: count it as synced.
  uint64_t size = 0;
  if (!target()->GetFileSize(name, rocksdb::IOOptions(), &size, dbg).ok()) size = 0;
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus status = target()->ReopenWritableFile(name, options, &file, dbg);
  if (status.ok()) {
    *result = std::make_unique<FaultWritableFile>(std::move(file), this, name, size);
  }
  return status;
}

rocksdb::IOStatus FaultFileSystem::ReuseWritableFile(
    const std::string& name, const std::string& old_name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  if (powered_off_.load()) return Refusal();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus status = target()->ReuseWritableFile(name, old_name, options, &file, dbg);
  if (status.ok()) {
    Forget(name);
    *result = std::make_unique<FaultWritableFile>(std::move(file), this, name, 0);
  }
  return status;
}

std::shared_ptr<rocksdb::Env> NewEnvWithFileSystem(std::shared_ptr<FaultFileSystem> fs) {
  return std::shared_ptr<rocksdb::Env>(rocksdb::NewCompositeEnv(std::move(fs)).release());
}

}  // namespace facteur::test_support
