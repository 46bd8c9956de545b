// File: engine/base/worker_pool.h
// A named, bounded pool of threads for work that must not run on an I/O thread: password
// hashing, key loading, signing (STYLE.md rule 3). The queue is bounded: when it is full,
// TrySubmit() refuses the task and the caller turns that into back-pressure (a 4xx reply),
// never into unbounded memory.
// Thread contract: thread-safe. Tasks run on the pool's threads; they post their results back
// to whoever asked.
#pragma once

#include <cstddef>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"

namespace facteur {

class WorkerPool {
 public:
  // `threads` >= 1, `max_queued` >= 1 tasks waiting beyond those running.
  WorkerPool(std::string name, size_t threads, size_t max_queued);
  ~WorkerPool();  // runs what is queued, then joins
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // False (and `task` dropped) when the queue is full or the pool is stopping.
  bool TrySubmit(absl::AnyInvocable<void() &&> task);

  const std::string& name() const { return name_; }

 private:
  void Work();

  const std::string name_;
  const size_t max_queued_;
  absl::Mutex mutex_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mutex_);
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace facteur
