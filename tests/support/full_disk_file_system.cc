// File: tests/support/full_disk_file_system.cc
#include "tests/support/full_disk_file_system.h"

#include <utility>

namespace facteur::test_support {
namespace {

// Owns the real file and refuses its writes while the file system is armed. Holds the file
// system by raw pointer: RocksDB closes every file before the Env (and so the FS) goes away.
class FullDiskWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FullDiskWritableFile(std::unique_ptr<rocksdb::FSWritableFile> file, FullDiskFileSystem* fs)
      : FSWritableFileOwnerWrapper(std::move(file)), fs_(fs) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::Append(data, options, dbg);
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::Append(data, options, info, dbg);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, dbg);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& info,
                                     rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::PositionedAppend(data, offset, options, info, dbg);
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::Flush(options, dbg);
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                         rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::Sync(options, dbg);
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::Fsync(options, dbg);
  }
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override {
    if (fs_->Refuse()) return rocksdb::IOStatus::NoSpace("injected: disk full");
    return FSWritableFileOwnerWrapper::RangeSync(offset, nbytes, options, dbg);
  }

 private:
  FullDiskFileSystem* fs_;
};

}  // namespace

FullDiskFileSystem::FullDiskFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target)
    : FileSystemWrapper(target) {}

rocksdb::IOStatus FullDiskFileSystem::GetFreeSpace(const std::string& path,
                                                   const rocksdb::IOOptions& options,
                                                   uint64_t* free_bytes,
                                                   rocksdb::IODebugContext* dbg) {
  if (full_.load()) {
    *free_bytes = 0;
    return rocksdb::IOStatus::OK();
  }
  return target()->GetFreeSpace(path, options, free_bytes, dbg);
}

rocksdb::IOStatus FullDiskFileSystem::NewWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus status = target()->NewWritableFile(name, options, &file, dbg);
  if (status.ok()) *result = std::make_unique<FullDiskWritableFile>(std::move(file), this);
  return status;
}

rocksdb::IOStatus FullDiskFileSystem::ReopenWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus status = target()->ReopenWritableFile(name, options, &file, dbg);
  if (status.ok()) *result = std::make_unique<FullDiskWritableFile>(std::move(file), this);
  return status;
}

rocksdb::IOStatus FullDiskFileSystem::ReuseWritableFile(
    const std::string& name, const std::string& old_name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus status = target()->ReuseWritableFile(name, old_name, options, &file, dbg);
  if (status.ok()) *result = std::make_unique<FullDiskWritableFile>(std::move(file), this);
  return status;
}

std::shared_ptr<rocksdb::Env> NewEnvWithFileSystem(std::shared_ptr<FullDiskFileSystem> fs) {
  return std::shared_ptr<rocksdb::Env>(rocksdb::NewCompositeEnv(std::move(fs)).release());
}

}  // namespace facteur::test_support
