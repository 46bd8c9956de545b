// File: queue/prezeroed_wal.cc
#include "queue/prezeroed_wal.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <string_view>
#include <utility>

namespace facteur::queue {
namespace {

bool IsWriteAheadLog(std::string_view name) {
  // RocksDB names its logs <number>.log (file/filename.cc); its info log is LOG, not used here.
  return name.size() > 4 && name.substr(name.size() - 4) == ".log";
}

bool OverwritesInPlace(const struct statfs& info) {
  return info.f_type == EXT4_SUPER_MAGIC || info.f_type == XFS_SUPER_MAGIC;  // ext2/3/4 share it
}

bool OverwritesInPlace(int fd) {
  struct statfs info {};
  return fstatfs(fd, &info) == 0 && OverwritesInPlace(info);
}

// Writes zeros over [begin, end) of `fd`. False on any error: the caller stops zeroing.
bool WriteZeros(int fd, uint64_t begin, uint64_t end) {
  static constexpr size_t kBlock = 64 << 10;
  static const std::array<char, kBlock> kZeros{};
  std::array<iovec, PrezeroedWalFileSystem::kZeroChunk / kBlock> pieces;
  for (iovec& piece : pieces) piece = {const_cast<char*>(kZeros.data()), kBlock};
  while (begin < end) {
    const uint64_t want = std::min<uint64_t>(end - begin, pieces.size() * kBlock);
    const int count = static_cast<int>((want + kBlock - 1) / kBlock);
    pieces[count - 1].iov_len = want - (count - 1) * kBlock;
    const ssize_t written = pwritev(fd, pieces.data(), count, static_cast<off_t>(begin));
    pieces[count - 1].iov_len = kBlock;
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return false;
    begin += static_cast<uint64_t>(written);
  }
  return true;
}

class PrezeroedWal final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  PrezeroedWal(std::unique_ptr<rocksdb::FSWritableFile> file, int fd)
      : FSWritableFileOwnerWrapper(std::move(file)), fd_(fd) {}
  ~PrezeroedWal() override { StopZeroing(); }

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    ZeroAhead(data.size());
    rocksdb::IOStatus status = target()->Append(data, options, dbg);
    Appended(status, data.size());
    return status;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& verification_info,
                           rocksdb::IODebugContext* dbg) override {
    ZeroAhead(data.size());
    rocksdb::IOStatus status = target()->Append(data, options, verification_info, dbg);
    Appended(status, data.size());
    return status;
  }
  // Direct I/O only, which NewWritableFile leaves unwrapped; should it come anyway, zeroing
  // stops, since appended_end_ no longer says where RocksDB's data ends.
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* dbg) override {
    StopZeroing();
    return target()->PositionedAppend(data, offset, options, dbg);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& verification_info,
                                     rocksdb::IODebugContext* dbg) override {
    StopZeroing();
    return target()->PositionedAppend(data, offset, options, verification_info, dbg);
  }
  rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = target()->Truncate(size, options, dbg);
    if (status.ok()) appended_end_ = zeroed_end_ = size;
    return status;
  }
  rocksdb::IOStatus Close(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus status = target()->Close(options, dbg);
    // Drops the zeros past what RocksDB wrote (its own Close may already have).
    if (status.ok() && fd_ >= 0 && zeroed_end_ > appended_end_) {
      // A failure is harmless (the reader skips zeros) and left unreported.
      (void)!ftruncate(fd_, static_cast<off_t>(appended_end_));
    }
    return status;
  }

 private:
  // Before an append of `size` bytes that would reach past the zeros, writes the next chunk.
  // Never below appended_end_: only bytes RocksDB has not written yet are zeroed.
  void ZeroAhead(size_t size) {
    if (fd_ < 0 || appended_end_ + size <= zeroed_end_) return;
    const uint64_t begin = std::max(zeroed_end_, appended_end_);
    const uint64_t end = appended_end_ + size + PrezeroedWalFileSystem::kZeroChunk;
    if (WriteZeros(fd_, begin, end)) {
      zeroed_end_ = end;
    } else {
      StopZeroing();  // a full disk, say: the append then fails or succeeds on its own
    }
  }

  void StopZeroing() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // A failed append may have written part of its bytes (RocksDB's POSIX file moves its offset
  // by what write() took): appended_end_ no longer says where the data ends, and zeros from
  // there could overwrite what comes next. RocksDB switches to a new log after a WAL write
  // error; this one is zeroed no more.
  void Appended(const rocksdb::IOStatus& status, size_t size) {
    if (status.ok()) {
      appended_end_ += size;
    } else {
      StopZeroing();
    }
  }

  int fd_;                     // owned; a second descriptor on the log, for the zeros; -1: none
  uint64_t appended_end_ = 0;  // bytes RocksDB has appended
  uint64_t zeroed_end_ = 0;    // zeros (or RocksDB's data) up to here
};

}  // namespace

bool PrezeroedWalFileSystem::PaysAt(const std::string& path) {
  struct statfs info {};
  return statfs(path.c_str(), &info) == 0 && OverwritesInPlace(info);
}

PrezeroedWalFileSystem::PrezeroedWalFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target,
                                               Where where)
    : FileSystemWrapper(target), where_(where) {}

rocksdb::IOStatus PrezeroedWalFileSystem::NewWritableFile(
    const std::string& name, const rocksdb::FileOptions& options,
    std::unique_ptr<rocksdb::FSWritableFile>* result, rocksdb::IODebugContext* dbg) {
  rocksdb::IOStatus status = target()->NewWritableFile(name, options, result, dbg);
  if (!status.ok() || !IsWriteAheadLog(name) || options.use_direct_writes) return status;
  const int fd = open(name.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return status;  // a plain log: slower syncs, nothing lost
  if (where_ == Where::kWhereItPays && !OverwritesInPlace(fd)) {
    close(fd);
    return status;
  }
  *result = std::make_unique<PrezeroedWal>(std::move(*result), fd);
  return status;
}

std::shared_ptr<rocksdb::Env> WithPrezeroedWals(const std::shared_ptr<rocksdb::Env>& base) {
  const std::shared_ptr<rocksdb::FileSystem>& target =
      base != nullptr ? base->GetFileSystem() : rocksdb::Env::Default()->GetFileSystem();
  return std::shared_ptr<rocksdb::Env>(
      rocksdb::NewCompositeEnv(std::make_shared<PrezeroedWalFileSystem>(target)).release());
}

}  // namespace facteur::queue
