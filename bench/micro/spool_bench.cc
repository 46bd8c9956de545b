// Synced enqueue throughput of the spool with 1, 16 and 128 concurrent producers, 2 KB bodies.
// A producer behaves like an SMTP session: it enqueues one message and waits for `done` (the
// 250) before the next, so N producers keep N messages in flight and the writer's batches show
// how well group commit turns concurrency into throughput.
// The database lives under $FACTEUR_BENCH_DIR, default /var/tmp (a real disk: fsync is real).
#include <stdlib.h>

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
#include "queue/spool.h"

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
    for (auto _ : state) {
      std::vector<std::thread> threads;
      for (int p = 0; p < producers; ++p) {
        threads.emplace_back([&, p] {
          std::binary_semaphore acknowledged(0);
          for (int i = p; i < per_iteration; i += producers) {
            Envelope envelope;
            envelope.id = MessageId::Generate(clock.Now());
            envelope.sender = "bench@example.org";
            envelope.recipients = {{"rcpt@example.com", RecipientState::kPending, "", "", "", 0}};
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
    if (failures.load() != 0) state.SkipWithError("enqueue failed");
    messages = committed.load();
    commits = batches.load();
  }
  std::error_code error;
  std::filesystem::remove_all(dir, error);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * per_iteration);
  state.counters["avg_batch"] =
      benchmark::Counter(commits == 0 ? 0.0 : static_cast<double>(messages) / commits);
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

}  // namespace
}  // namespace facteur::queue
