// File: queue/prezeroed_wal.h
// A RocksDB FileSystem that writes each write-ahead log over zeros written ahead of it.
//
// Why: every synced write of the spool appends to the WAL. On ext4 an fdatasync after an
// append must also write the inode (the file grew, and its new blocks turn from unwritten
// to written), a second serial I/O before the cache flush; after an overwrite of blocks
// already written it writes only the data. Measured here (bench/micro/spool_bench,
// BM_FdatasyncAfter), a 4 KB write + fdatasync costs about 48 µs of CPU as an append and 30 µs
// over zeros laid ahead, the zeros included; with 100 KB writes the zeros cost about what the
// sync saves (they double the bytes written).
//
// How: before RocksDB writes past the zeroed end of a log, the next kZeroChunk bytes (past the
// end RocksDB has reached) are filled with zeros through a second descriptor; one fdatasync
// in a chunk pays for the size change, the others only write data. Only on the file systems
// that overwrite in place (Where::kWhereItPays).
//
// Why it is safe: RocksDB's log reader takes a zero header for the padding of a preallocated
// file and skips to the next block (kZeroType, db/log_format.h; its old mmap writer left such
// tails), so after a crash the point-in-time recovery the spool uses ends the log at the zeros
// as it would at the end of the file. A secondary instance (Store::OpenReadOnly) reading a live
// log does not stop there: it reads through the zeros as padding, and a record being written
// over them at that moment reads torn (a checksum mismatch): OpenReadOnly opens again when that
// happens, and never catches up with the primary later (records written over zeros it already
// passed would be missed). Only fresh logs are zeroed (recycle_log_file_num stays 0): no old
// record can be read back. Close trims a log to what RocksDB wrote.
// tests/unit/queue/prezeroed_wal_test.cc recovers a database copied as a crash leaves it and
// opens it read-only beside a writing primary; the kill -9 tests (spool_crash_test,
// tests/integration/kill9_*) run over it too.
//
// Thread contract: thread-safe as FileSystem. A log file's state (how far RocksDB appended,
// how far the zeros reach) changes only in its Append, Truncate and Close, which RocksDB calls
// one at a time (one WAL writer); a Sync from another thread touches none of it.
#pragma once

#include <memory>

#include "rocksdb/env.h"
#include "rocksdb/file_system.h"

namespace facteur::queue {

class PrezeroedWalFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  // Zeros written at a time: one inode-writing sync per this many bytes of log.
  static constexpr size_t kZeroChunk = 1 << 20;
  // The zeros end where an append ends plus whole 32 KiB log blocks (db/log_format.h
  // kBlockSize), so a log that ends in its zeros never ends 1-6 bytes into a block, which the
  // reader would call a truncated header (the log writer pads a block's last 6 bytes before
  // the next record, so no append ends there).
  static_assert(kZeroChunk % 32768 == 0);

  enum class Where {
    // On the file systems that overwrite in place (ext2/3/4, XFS). Elsewhere the zeros would
    // only cost writes: btrfs copies on write whatever the block held, tmpfs has no disk.
    kWhereItPays,
    // On any file system: for the tests of the mechanism.
    kEverywhere,
  };

  explicit PrezeroedWalFileSystem(const std::shared_ptr<rocksdb::FileSystem>& target,
                                  Where where = Where::kWhereItPays);

  // Whether the file system holding `path` overwrites in place, so that kWhereItPays zeros
  // the logs there.
  static bool PaysAt(const std::string& path);

  static const char* kClassName() { return "FacteurPrezeroedWalFileSystem"; }
  const char* Name() const override { return kClassName(); }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;

 private:
  const Where where_;
};

// An Env whose file system is `base`'s (rocksdb::Env::Default()'s when null) with prezeroed
// WALs. The returned Env keeps the file system alive; the caller keeps `base` alive.
std::shared_ptr<rocksdb::Env> WithPrezeroedWals(const std::shared_ptr<rocksdb::Env>& base);

}  // namespace facteur::queue
