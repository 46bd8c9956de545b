#include "engine/base/worker_pool.h"

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace facteur {
namespace {

TEST(WorkerPoolTest, RunsEveryAcceptedTaskBeforeDestruction) {
  std::atomic<int> ran{0};
  {
    WorkerPool pool("test", 2, 1000);
    for (int i = 0; i < 500; ++i) ASSERT_TRUE(pool.TrySubmit([&ran] { ++ran; }));
  }
  EXPECT_EQ(ran.load(), 500);
}

TEST(WorkerPoolTest, RefusesWorkWhenTheQueueIsFull) {
  WorkerPool pool("test", 1, 2);
  absl::Notification release;
  absl::Notification started;
  ASSERT_TRUE(pool.TrySubmit([&] { started.Notify(); release.WaitForNotification(); }));
  started.WaitForNotification();  // the only thread is busy
  EXPECT_TRUE(pool.TrySubmit([] {}));
  EXPECT_TRUE(pool.TrySubmit([] {}));
  EXPECT_FALSE(pool.TrySubmit([] {}));  // back-pressure, not growth
  release.Notify();
}

}  // namespace
}  // namespace facteur
