// File: engine/io/event_loop.h
// EventLoop owns one io_uring ring and runs it on one thread (a shard): completions, timers and
// work posted from other threads. Operations put a Completion* in their SQE's user_data; the
// Completion belongs to the operation's owner (STYLE.md rule 5), which must stay alive until
// that operation's last CQE has been dispatched (cancel, then wait for the CQEs). An SQE whose
// CQE nobody needs (an async cancel) carries user_data 0 and its CQE is dropped.
// Thread contract: shard-confined, except Post() and Stop(), which are thread-safe.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace facteur::io {

// The one adapter from a liburing result (-errno) to absl::Status (STYLE.md rule 1).
// `result` >= 0 is OK.
absl::Status UringStatus(std::string_view operation, int result);

// The receiver of an io_uring completion. Owned by whoever submitted the operation.
class Completion {
 public:
  // `result` is cqe->res (bytes, an fd, or -errno); `flags` is cqe->flags (IORING_CQE_F_MORE...).
  virtual void OnCompletion(int32_t result, uint32_t flags) = 0;

 protected:
  ~Completion() = default;
};

// A Completion forwarding to a member function: `MemberCompletion<Conn, &Conn::OnRecv> recv_{this}`.
template <typename T, void (T::*Method)(int32_t, uint32_t)>
class MemberCompletion final : public Completion {
 public:
  explicit MemberCompletion(T* owner) : owner_(owner) {}
  void OnCompletion(int32_t result, uint32_t flags) override { (owner_->*Method)(result, flags); }

 private:
  T* owner_;
};

using TimerId = uint64_t;  // 0 is never a live timer
inline constexpr TimerId kNoTimer = 0;

class EventLoop {
 public:
  // Sets up the ring: SINGLE_ISSUER|DEFER_TASKRUN, else SINGLE_ISSUER|COOP_TASKRUN, else plain.
  // The ring starts disabled and is bound to the thread that calls Run().
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(unsigned entries = 1024);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Runs completions, timers and posted work on the calling thread until Stop().
  // Returns an error only if the ring itself fails.
  absl::Status Run();
  // Thread-safe: makes Run() return after the current turn. Idempotent.
  void Stop();

  // Thread-safe: runs `fn` on the loop thread, in posting order. Work posted after Run()
  // returned is destroyed, not run, when the loop is destroyed.
  void Post(absl::AnyInvocable<void() &&> fn);

  // Loop thread: runs `fn` once after `delay`. Timers due at the same time run in the order
  // they were set.
  TimerId RunAfter(absl::Duration delay, absl::AnyInvocable<void()> fn);
  // Loop thread: a timer that has not fired yet will not fire. Unknown ids are ignored.
  void Cancel(TimerId id);
  // Entries of the timer heap, cancelled ones not yet dropped included: at most about twice
  // the live timers (Cancel compacts), for tests and diagnostics.
  size_t timer_heap_size() const { return timer_heap_.size(); }

  // Loop thread: an SQE whose user_data is `completion` (nullptr: its CQE is dropped). It is
  // submitted when the loop next enters the kernel. Never null: a full SQ is submitted first.
  io_uring_sqe* PrepareSqe(Completion* completion);

  bool IsLoopThread() const { return std::this_thread::get_id() == owner_.load(); }
  // Monotonic time used by the timers.
  absl::Time Now() const;
  // The loop's ring setup flags, for tests and diagnostics.
  unsigned setup_flags() const { return setup_flags_; }

 private:
  EventLoop() = default;
  void ArmWakeRead();
  void OnWake(int32_t result, uint32_t flags);
  void RunPosted();
  void RunDueTimers();
  void Wake();

  struct TimerEntry {
    absl::Time deadline;
    TimerId id;
    bool operator>(const TimerEntry& o) const {
      return deadline != o.deadline ? deadline > o.deadline : id > o.id;
    }
  };

  io_uring ring_{};
  bool ring_ready_ = false;
  unsigned setup_flags_ = 0;
  int wake_fd_ = -1;  // eventfd written by Post()/Stop()
  uint64_t wake_value_ = 0;
  MemberCompletion<EventLoop, &EventLoop::OnWake> wake_completion_{this};
  std::atomic<std::thread::id> owner_{};
  std::atomic<bool> stop_requested_{false};

  absl::Mutex post_mutex_;
  std::vector<absl::AnyInvocable<void() &&>> posted_ ABSL_GUARDED_BY(post_mutex_);

  void PushTimer(TimerEntry entry);
  void PopTimer();
  void DropCancelledTimers();

  // A min-heap by (deadline, id) (std::greater); cancelled entries stay until they come up or
  // DropCancelledTimers() runs.
  std::vector<TimerEntry> timer_heap_;
  absl::flat_hash_map<TimerId, absl::AnyInvocable<void()>> timers_;  // live ones only
  TimerId next_timer_id_ = 1;
};

}  // namespace facteur::io
