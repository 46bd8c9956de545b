#include "engine/io/event_loop.h"

#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "engine/base/log.h"
#include "engine/base/status.h"

namespace facteur::io {

absl::Status UringStatus(std::string_view operation, int result) {
  if (result >= 0) return absl::OkStatus();
  return ErrnoStatus(operation, -result);
}

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(unsigned entries) {
  auto loop = absl::WrapUnique(new EventLoop());
  // R_DISABLED defers binding the single issuer to the thread that calls Run(); the ring is
  // made here so that setup errors surface at startup, not inside a thread.
  const unsigned candidates[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_R_DISABLED,
      0,
  };
  int rc = -EINVAL;
  for (unsigned flags : candidates) {
    io_uring_params params{};
    params.flags = flags | IORING_SETUP_CQSIZE;
    params.cq_entries = entries * 4;  // multishot accepts and recvs produce bursts of CQEs
    rc = io_uring_queue_init_params(entries, &loop->ring_, &params);
    if (rc == 0) {
      loop->setup_flags_ = flags;
      break;
    }
  }
  FACTEUR_RETURN_IF_ERROR(UringStatus("io_uring_queue_init", rc));
  loop->ring_ready_ = true;
  loop->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (loop->wake_fd_ < 0) return ErrnoStatus("eventfd", errno);
  return loop;
}

EventLoop::~EventLoop() {
  // Exiting the ring cancels whatever is still in flight; no Completion is called any more.
  if (ring_ready_) io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

absl::Time EventLoop::Now() const {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return absl::TimeFromTimespec(ts);
}

io_uring_sqe* EventLoop::PrepareSqe(Completion* completion) {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    int rc = io_uring_submit(&ring_);
    if (rc < 0 && rc != -EBUSY && rc != -EAGAIN && rc != -EINTR) {
      Log(LogLevel::kError, "io_uring_submit: %s", UringStatus("io_uring_submit", rc).ToString());
      std::abort();  // a ring that cannot submit cannot make progress at all
    }
    sqe = io_uring_get_sqe(&ring_);
  }
  io_uring_sqe_set_data(sqe, completion);
  return sqe;
}

void EventLoop::ArmWakeRead() {
  io_uring_sqe* sqe = PrepareSqe(&wake_completion_);
  io_uring_prep_read(sqe, wake_fd_, &wake_value_, sizeof(wake_value_), 0);
}

void EventLoop::OnWake(int32_t result, uint32_t /*flags*/) {
  if (result < 0 && result != -EAGAIN && result != -EINTR) {
    Log(LogLevel::kError, "eventfd read: %s", UringStatus("read eventfd", result).ToString());
  }
  RunPosted();
  if (!stop_requested_.load()) ArmWakeRead();
}

void EventLoop::RunPosted() {
  std::vector<absl::AnyInvocable<void() &&>> batch;
  {
    absl::MutexLock lock(&post_mutex_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) std::move(fn)();
}

void EventLoop::Wake() {
  uint64_t one = 1;
  // EFD_NONBLOCK: at worst the counter saturates (EAGAIN), and the loop is awake anyway.
  ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  (void)n;
}

void EventLoop::Post(absl::AnyInvocable<void() &&> fn) {
  bool was_empty;
  {
    absl::MutexLock lock(&post_mutex_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(fn));
  }
  // Only the first post of a batch wakes the loop: the loop swaps the whole vector after its
  // eventfd read completes, so later posts of the same batch ride along.
  if (was_empty) Wake();
}

void EventLoop::Stop() {
  stop_requested_.store(true);
  Wake();
}

TimerId EventLoop::RunAfter(absl::Duration delay, absl::AnyInvocable<void()> fn) {
  TimerId id = next_timer_id_++;
  PushTimer(TimerEntry{Now() + delay, id});
  timers_.emplace(id, std::move(fn));
  return id;
}

void EventLoop::Cancel(TimerId id) {
  // The heap entry stays and is skipped when it comes up: cancelling is O(1). But most timers
  // are cancelled (a command's timeout, once its reply came) long before their deadline, and
  // the heap would hold every timer set within the longest timeout: at a few thousand messages
  // a second and minutes of timeout, hundreds of megabytes. So once cancelled entries are the
  // majority they all go at once: O(n) each time the heap has doubled its live count, O(1)
  // amortized per cancel.
  if (timers_.erase(id) == 0) return;
  constexpr size_t kSmallHeap = 64;
  if (timer_heap_.size() > kSmallHeap && timer_heap_.size() > 2 * timers_.size()) {
    DropCancelledTimers();
  }
}

void EventLoop::PushTimer(TimerEntry entry) {
  timer_heap_.push_back(entry);
  std::push_heap(timer_heap_.begin(), timer_heap_.end(), std::greater<TimerEntry>());
}

void EventLoop::PopTimer() {
  std::pop_heap(timer_heap_.begin(), timer_heap_.end(), std::greater<TimerEntry>());
  timer_heap_.pop_back();
}

void EventLoop::DropCancelledTimers() {
  std::erase_if(timer_heap_, [this](const TimerEntry& entry) { return !timers_.contains(entry.id); });
  std::make_heap(timer_heap_.begin(), timer_heap_.end(), std::greater<TimerEntry>());
}

void EventLoop::RunDueTimers() {
  absl::Time now = Now();
  while (!timer_heap_.empty()) {
    const TimerEntry top = timer_heap_.front();
    auto it = timers_.find(top.id);
    if (it == timers_.end()) {
      PopTimer();
      continue;
    }
    if (top.deadline > now) break;
    PopTimer();
    absl::AnyInvocable<void()> fn = std::move(it->second);
    timers_.erase(it);
    fn();  // may add or cancel timers
  }
}

absl::Status EventLoop::Run() {
  owner_.store(std::this_thread::get_id());
  if (setup_flags_ & IORING_SETUP_R_DISABLED) {
    // liburing 2.3 declares io_uring_enable_rings() but its .so does not export it.
    long rc = ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                        nullptr, 0);
    FACTEUR_RETURN_IF_ERROR(UringStatus("io_uring_enable_rings", rc < 0 ? -errno : 0));
    setup_flags_ &= ~IORING_SETUP_R_DISABLED;
  }
  ArmWakeRead();
  constexpr unsigned kBatch = 128;
  io_uring_cqe* cqes[kBatch];
  struct Ready {
    Completion* completion;
    int32_t result;
    uint32_t flags;
  };
  Ready ready[kBatch];
  while (!stop_requested_.load()) {
    // Drop cancelled timers from the top so that the wait uses a live deadline.
    while (!timer_heap_.empty() && !timers_.contains(timer_heap_.front().id)) PopTimer();
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (timer_heap_.empty()) {
      rc = io_uring_submit_and_wait(&ring_, 1);
    } else {
      absl::Duration wait = std::max(timer_heap_.front().deadline - Now(), absl::ZeroDuration());
      __kernel_timespec ts;
      ts.tv_sec = absl::ToInt64Seconds(wait);
      ts.tv_nsec = absl::ToInt64Nanoseconds(wait - absl::Seconds(ts.tv_sec));
      rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      return UringStatus("io_uring_submit_and_wait", rc);
    }
    for (;;) {
      unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kBatch);
      if (n == 0) break;
      // Copy first and free the CQ slots: a handler may submit, and a full CQ stalls the ring.
      for (unsigned i = 0; i < n; ++i) {
        ready[i] = Ready{static_cast<Completion*>(io_uring_cqe_get_data(cqes[i])), cqes[i]->res,
                         cqes[i]->flags};
      }
      io_uring_cq_advance(&ring_, n);
      for (unsigned i = 0; i < n; ++i) {
        if (ready[i].completion != nullptr) {
          ready[i].completion->OnCompletion(ready[i].result, ready[i].flags);
        }
      }
      if (n < kBatch) break;
    }
    RunDueTimers();
  }
  // Submit what the last turn prepared (closes, cancels) so it is not lost with the ring.
  io_uring_submit(&ring_);
  return absl::OkStatus();
}

}  // namespace facteur::io
