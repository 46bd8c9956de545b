// Synced enqueue throughput of the spool with 1, 16 and 128 concurrent producers, 2 KB bodies.
// A producer behaves like an SMTP session: it enqueues one message and waits for `done` (the
// 250) before the next, so N producers keep N messages in flight and the writer's batches show
// how well group commit turns concurrency into throughput.
// And what one synced write (4 KB, 100 KB) costs the disk's file system, appended to a growing
// file or written over blocks already written (queue/prezeroed_wal.h): BM_FdatasyncAfter.
// The database lives under $FACTEUR_BENCH_DIR, default /var/tmp (a real disk: fsync is real).
#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <semaphore>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/base/clock.h"
#include "engine/base/log.h"
#include "queue/prezeroed_wal.h"
#include "queue/spool.h"
#include "rocksdb/file_system.h"

namespace facteur::queue {
namespace {

// Enough messages per iteration for a stable rate without minutes of single-producer fsyncs.
int MessagesPerIteration(int producers) { return std::max(512, 32 * producers); }

std::string MakeScratchDir() {
  const char* base = getenv("FACTEUR_BENCH_DIR");
  std::string pattern = std::string(base != nullptr ? base : "/var/tmp") + "/spool-bench-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) return "";
  return pattern;
}

double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

void BM_SyncedEnqueue(benchmark::State& state) {
  const int producers = static_cast<int>(state.range(0));
  const int per_iteration = MessagesPerIteration(producers);
  SetLogLevel(LogLevel::kWarning);
  const std::string dir = MakeScratchDir();
  if (dir.empty()) {
    state.SkipWithError("mkdtemp failed");
    return;
  }
  RealClock& clock = RealClock::Get();
  uint64_t messages = 0, commits = 0;
  double cpu_seconds = 0;  // the whole process's (writer, RocksDB, producers) in the loop
  {
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(dir + "/spool");
    if (!store.ok()) {
      state.SkipWithError(std::string(store.status().message()).c_str());
      return;
    }
    absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(**store, SpoolOptions(), clock);
    if (!spool.ok()) {
      state.SkipWithError(std::string(spool.status().message()).c_str());
      return;
    }
    std::atomic<uint64_t> committed{0}, batches{0};
    (*spool)->SetCommitObserver([&](size_t batch_size, absl::Duration, bool) {
      committed.fetch_add(batch_size, std::memory_order_relaxed);
      batches.fetch_add(1, std::memory_order_relaxed);
    });
    const std::string body(2048, 'x');
    std::atomic<int> failures{0};
    const double cpu_before = ProcessCpuSeconds();
    for (auto _ : state) {
      std::vector<std::thread> threads;
      for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
          std::binary_semaphore acknowledged(0);
          for (int i = p; i < per_iteration; i += producers) {
            Envelope envelope;
            envelope.id = MessageId::Generate(clock.Now());
            envelope.sender = "bench@example.org";
            envelope.recipients = {{"rcpt@example.com", RecipientState::kPending, "", "", "", 0, ""}};
            envelope.received_at = envelope.next_attempt = clock.Now();
            (*spool)->Enqueue(std::move(envelope), body, [&](absl::Status status) {
              if (!status.ok()) failures.fetch_add(1);
              acknowledged.release();
            });
            acknowledged.acquire();
          }
        });
      }
      for (std::thread& thread : threads) thread.join();
    }
    cpu_seconds = ProcessCpuSeconds() - cpu_before;
    if (failures.load() != 0) state.SkipWithError("enqueue failed");
    messages = committed.load();
    commits = batches.load();
  }
  std::error_code error;
  std::filesystem::remove_all(dir, error);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * per_iteration);
  state.counters["avg_batch"] =
      benchmark::Counter(commits == 0 ? 0.0 : static_cast<double>(messages) / commits);
  state.counters["cpu_us_per_msg"] =
      benchmark::Counter(messages == 0 ? 0.0 : 1e6 * cpu_seconds / static_cast<double>(messages));
  state.counters["commits_per_s"] =
      benchmark::Counter(static_cast<double>(commits), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_SyncedEnqueue)
    ->Arg(1)
    ->Arg(16)
    ->Arg(128)
    ->Iterations(3)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// One write of range(1) bytes then fdatasync, many times, into a file that is:
// range(0) = 0: appended to (a fresh file, RocksDB's WAL before 8f3fbc1);
//            1: written over (written and synced beforehand, outside the measurement);
//            2: a write-ahead log of queue/prezeroed_wal.h, written over the zeros it lays
//               1 MiB ahead (their cost included).
void BM_FdatasyncAfter(benchmark::State& state) {
  const int mode = static_cast<int>(state.range(0));
  const size_t write_size = static_cast<size_t>(state.range(1));
  const int syncs = write_size <= 8192 ? 4000 : 1000;
  state.SetLabel(mode == 0 ? "append" : mode == 1 ? "overwrite" : "over zeros laid ahead");
  const std::string dir = MakeScratchDir();
  if (dir.empty()) {
    state.SkipWithError("mkdtemp failed");
    return;
  }
  const std::string name = dir + "/000001.log";
  const std::string block(write_size, 'x');
  PrezeroedWalFileSystem prezeroed(rocksdb::FileSystem::Default(),
                                   PrezeroedWalFileSystem::Where::kEverywhere);
  double cpu_seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    int fd = -1;
    std::unique_ptr<rocksdb::FSWritableFile> wal;
    bool failed = false;
    if (mode == 2) {
      failed = !prezeroed.NewWritableFile(name, rocksdb::FileOptions(), &wal, nullptr).ok();
    } else {
      fd = open(name.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      failed = fd < 0;
      for (int i = 0; mode == 1 && !failed && i < syncs; ++i) {
        failed = write(fd, block.data(), write_size) != static_cast<ssize_t>(write_size);
      }
      failed = failed || fsync(fd) != 0 || lseek(fd, 0, SEEK_SET) != 0;
    }
    state.ResumeTiming();
    const double cpu_before = ProcessCpuSeconds();
    for (int i = 0; !failed && i < syncs; ++i) {
      if (mode == 2) {
        failed = !wal->Append(block, rocksdb::IOOptions(), nullptr).ok() ||
                 !wal->Sync(rocksdb::IOOptions(), nullptr).ok();
      } else {
        failed = write(fd, block.data(), write_size) != static_cast<ssize_t>(write_size) ||
                 fdatasync(fd) != 0;
      }
    }
    cpu_seconds += ProcessCpuSeconds() - cpu_before;
    if (fd >= 0) close(fd);
    if (wal != nullptr) failed = !wal->Close(rocksdb::IOOptions(), nullptr).ok() || failed;
    if (failed) {
      state.SkipWithError("write or fdatasync failed");
      break;
    }
  }
  std::error_code error;
  std::filesystem::remove_all(dir, error);
  const double total = static_cast<double>(state.iterations()) * syncs;
  state.SetItemsProcessed(static_cast<int64_t>(total));
  state.counters["cpu_us_per_sync"] = benchmark::Counter(1e6 * cpu_seconds / total);
}

BENCHMARK(BM_FdatasyncAfter)
    ->ArgsProduct({{0, 1, 2}, {4096, 102400}})
    ->Iterations(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace facteur::queue
