// File: engine/dkim/signing_pool.h
// The DKIM signing pool (DESIGN.md §2): M worker threads fed by a bounded queue sign messages
// off the I/O threads. For each message it finds the From: domain, looks up its keys in the
// current SigningTable snapshot (per account when declared) and returns the DKIM-Signature
// field(s) to prepend — none when the domain has no key, which is counted as unsigned. A full
// queue refuses at once: the SMTP session answers 451 4.3.0 (back-pressure), memory stays
// bounded. The pool is the sole owner of the private keys in use (through the table).
// Thread contract: thread-safe. Sign()'s `done` runs on a pool thread; Reload() may be called
// from any thread and swaps the table snapshot atomically (signatures in flight finish with the
// snapshot they started with).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/clock.h"
#include "engine/base/worker_pool.h"
#include "engine/dkim/signer.h"
#include "engine/dkim/signing_table.h"
#include "engine/metrics/metrics.h"

namespace facteur::dkim {

struct SigningPoolOptions {
  // Signing threads; 0 = one per core. Default: 0.
  size_t threads = 0;
  // Messages waiting beyond those being signed; past it Sign() refuses. Default: 1024.
  size_t max_queued = 1024;
};

class SigningPool {
 public:
  // `clock` (t=) and `metrics` (nullable) outlive the pool.
  SigningPool(std::unique_ptr<Signer> signer, std::shared_ptr<const SigningTable> table,
              Clock& clock, metrics::Metrics* metrics, SigningPoolOptions options);
  ~SigningPool();  // signs what is queued (running every `done`), then joins
  SigningPool(const SigningPool&) = delete;
  SigningPool& operator=(const SigningPool&) = delete;

  // The header field(s) to prepend, each ending in CRLF; "" when unsigned.
  using Done = absl::AnyInvocable<void(absl::StatusOr<std::string> fields) &&>;

  // Queues the signing of `message` (a whole message, CRLF lines) submitted by `account` (""
  // when none). `message` must stay valid until `done` has run: callers keep it in what `done`
  // owns. Returns false at once, dropping `done` uncalled, when the queue is full or the pool
  // is stopping.
  // `started`, when given, runs on the pool thread just before the signing begins.
  using Started = absl::AnyInvocable<void() &&>;
  bool Sign(std::string_view message, std::string account, Done done, Started started = nullptr);

  // The same, on the calling thread (the workers' body; tests and benchmarks).
  absl::StatusOr<std::string> SignNow(std::string_view message, std::string_view account) const;

  void Reload(std::shared_ptr<const SigningTable> table);
  std::shared_ptr<const SigningTable> table() const;

  const Signer& signer() const { return *signer_; }
  size_t threads() const { return threads_; }
  size_t queued() const { return queued_.load(std::memory_order_relaxed); }

 private:
  const std::unique_ptr<Signer> signer_;
  Clock& clock_;
  metrics::Metrics* const metrics_;
  prometheus::Counter* rsa_signatures_ = nullptr;
  prometheus::Counter* ed25519_signatures_ = nullptr;
  const size_t threads_;
  mutable absl::Mutex mutex_;
  std::shared_ptr<const SigningTable> table_ ABSL_GUARDED_BY(mutex_);
  std::atomic<size_t> queued_{0};
  WorkerPool pool_;  // last: its threads stop first and may use everything above
};

}  // namespace facteur::dkim
