// File: bench/dkim/dkim_bench.cc
// DKIM signing rates (issue #4 point 5): for each engine (native, opendkim), key (RSA-2048,
// Ed25519) and message size (2 KB, 100 KB), the signatures per second of one worker (a tight
// loop on one thread) and of the signing pool (SigningPool with --threads workers, fed up to its
// queue bound). Prints one line per cell: engine, algorithm, size, per-worker and pool rates.
// bench/dkim/run puts them next to `openssl speed` for the same key types.
// Thread contract: main thread, plus the pool's workers.
#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/dkim/signing_pool.h"

ABSL_FLAG(double, seconds, 2.0, "measuring time per cell");
ABSL_FLAG(int32_t, threads, 2, "signing pool threads");
ABSL_FLAG(std::string, engines, "native,opendkim", "engines to measure");
ABSL_FLAG(std::string, algorithms, "rsa-2048,ed25519", "keys to measure");
ABSL_FLAG(std::string, sizes, "2048,102400", "message sizes to measure, in bytes");

namespace facteur::dkim {
namespace {

std::string Message(size_t size) {
  std::string message =
      "From: Bench <bench@bench.example>\r\nTo: <sink@example.net>\r\n"
      "Subject: DKIM benchmark message\r\nDate: Mon, 23 Nov 2026 15:53:00 +0000\r\n"
      "Message-ID: <bench@bench.example>\r\nMIME-Version: 1.0\r\n"
      "Content-Type: text/plain; charset=us-ascii\r\n\r\n";
  const std::string line = "The quick brown fox jumps over the lazy dog; pack my box.    \r\n";
  while (message.size() + line.size() <= size) message += line;
  message.append(size - message.size(), 'x');
  message += "\r\n";
  return message;
}

// Signatures/s of one thread signing `message` in a loop for `seconds`.
double PerWorker(const SigningPool& pool, const std::string& message, double seconds) {
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  int64_t count = 0;
  const absl::Time start = absl::Now();
  while ((count & 7) != 0 || absl::Now() < end) {
    absl::StatusOr<std::string> fields = pool.SignNow(message, "");
    if (!fields.ok() || fields->empty()) {
      std::fprintf(stderr, "signing failed: %s\n", fields.status().ToString().c_str());
      return 0;
    }
    ++count;
  }
  return static_cast<double>(count) / absl::ToDoubleSeconds(absl::Now() - start);
}

// Signatures/s of the pool: keeps its queue between half full and full until `seconds` passed
// (the producer sleeps while the workers drain half of it, so it takes little CPU from them),
// then waits for the rest.
double Pool(SigningPool& pool, const std::string& message, double seconds, size_t max_queued) {
  absl::Mutex mutex;
  int64_t done = 0;
  int64_t submitted = 0;
  std::atomic<bool> failed{false};
  const absl::Time start = absl::Now();
  const absl::Time end = start + absl::Seconds(seconds);
  while (absl::Now() < end) {
    while (pool.Sign(message, "", [&](absl::StatusOr<std::string> fields) {
      if (!fields.ok()) failed = true;
      absl::MutexLock lock(&mutex);
      ++done;
    })) {
      ++submitted;
    }
    absl::MutexLock lock(&mutex);
    const int64_t target = submitted - static_cast<int64_t>(max_queued / 2);
    auto drained = [&done, target] { return done >= target; };
    mutex.AwaitWithTimeout(absl::Condition(&drained), absl::Milliseconds(100));
  }
  absl::MutexLock lock(&mutex);
  auto finished = [&done, submitted] { return done == submitted; };
  mutex.Await(absl::Condition(&finished));
  if (failed) std::fprintf(stderr, "a pool signature failed\n");
  return static_cast<double>(done) / absl::ToDoubleSeconds(absl::Now() - start);
}

constexpr size_t kMaxQueued = 256;

int Main() {
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const size_t threads = static_cast<size_t>(absl::GetFlag(FLAGS_threads));
  struct KeySpec {
    const char* name;
    DkimAlgorithm algorithm;
    int bits;
  };
  const KeySpec specs[] = {{"rsa-2048", DkimAlgorithm::kRsaSha256, 2048},
                           {"ed25519", DkimAlgorithm::kEd25519Sha256, 0}};
  std::printf("engine\talgorithm\tsize\tper_worker\tpool\tpool_threads\n");
  for (const std::string& engine_name :
       std::vector<std::string>(absl::StrSplit(absl::GetFlag(FLAGS_engines), ','))) {
    for (const KeySpec& spec : specs) {
      if (!absl::StrContains(absl::GetFlag(FLAGS_algorithms), spec.name)) continue;
      absl::StatusOr<std::unique_ptr<PrivateKey>> key = PrivateKey::Generate(spec.algorithm, spec.bits);
      if (!key.ok()) return 1;
      std::vector<SigningTable::Entry> entries;
      entries.push_back(SigningTable::Entry{SigningKey{"bench.example", "bench", std::move(*key)}, ""});
      absl::StatusOr<std::unique_ptr<Signer>> signer = MakeSigner(
          engine_name == "opendkim" ? config::DkimEngine::kOpenDkim : config::DkimEngine::kNative);
      if (!signer.ok()) return 1;
      SigningPool pool(std::move(*signer), SigningTable::FromEntries(std::move(entries)),
                       RealClock::Get(), nullptr,
                       SigningPoolOptions{.threads = threads, .max_queued = kMaxQueued});
      for (absl::string_view size_text : absl::StrSplit(absl::GetFlag(FLAGS_sizes), ',')) {
        size_t size = 0;
        if (!absl::SimpleAtoi(size_text, &size) || size < 512) return 2;
        const std::string message = Message(size);
        double worker = PerWorker(pool, message, seconds);
        double all = Pool(pool, message, seconds, kMaxQueued);
        std::printf("%s\t%s\t%zu\t%.0f\t%.0f\t%zu\n", engine_name.c_str(), spec.name, size, worker,
                    all, threads);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace facteur::dkim

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return facteur::dkim::Main();
}
