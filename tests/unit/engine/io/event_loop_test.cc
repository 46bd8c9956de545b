#include "engine/io/event_loop.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace facteur::io {
namespace {

TEST(EventLoopTest, PostFromManyThreadsRunsEverythingOnTheLoopThread) {
  auto loop_or = EventLoop::Create();
  ASSERT_TRUE(loop_or.ok()) << loop_or.status();
  EventLoop& loop = **loop_or;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 1000;
  int count = 0;  // touched on the loop thread only
  std::atomic<int> off_thread{0};
  std::thread runner([&] { ASSERT_TRUE(loop.Run().ok()); });
  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        loop.Post([&] {
          if (!loop.IsLoopThread()) off_thread.fetch_add(1);
          if (++count == kThreads * kPerThread) loop.Stop();
        });
      }
    });
  }
  for (auto& poster : posters) poster.join();
  runner.join();
  EXPECT_EQ(count, kThreads * kPerThread);
  EXPECT_EQ(off_thread.load(), 0);
}

TEST(EventLoopTest, PostsKeepTheirOrderFromOneThread) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  std::vector<int> seen;
  for (int i = 0; i < 100; ++i) (*loop)->Post([&seen, i] { seen.push_back(i); });
  (*loop)->Post([&] { (*loop)->Stop(); });
  ASSERT_TRUE((*loop)->Run().ok());
  ASSERT_EQ(seen.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(seen[i], i);
}

TEST(EventLoopTest, TimersFireInDeadlineOrderAndCancelWorks) {
  auto loop_or = EventLoop::Create();
  ASSERT_TRUE(loop_or.ok());
  EventLoop& loop = **loop_or;
  std::vector<std::string> fired;
  absl::Time start;
  loop.Post([&] {
    start = loop.Now();
    loop.RunAfter(absl::Milliseconds(30), [&] {
      fired.push_back("30ms");
      loop.Stop();
    });
    loop.RunAfter(absl::Milliseconds(10), [&] { fired.push_back("10ms"); });
    TimerId cancelled = loop.RunAfter(absl::Milliseconds(20), [&] { fired.push_back("20ms"); });
    TimerId later = loop.RunAfter(absl::Milliseconds(25), [&] { fired.push_back("25ms"); });
    loop.RunAfter(absl::Milliseconds(15), [&, later] {
      fired.push_back("15ms");
      loop.Cancel(later);  // cancelling from inside another timer
    });
    loop.RunAfter(absl::ZeroDuration(), [&] { fired.push_back("0ms"); });
    loop.Cancel(cancelled);
    loop.Cancel(12345);  // unknown ids are ignored
  });
  ASSERT_TRUE(loop.Run().ok());
  EXPECT_EQ(fired, (std::vector<std::string>{"0ms", "10ms", "15ms", "30ms"}));
  EXPECT_GE(loop.Now() - start, absl::Milliseconds(30));
}

TEST(EventLoopTest, SameDeadlineTimersRunInTheOrderTheyWereSet) {
  auto loop_or = EventLoop::Create();
  ASSERT_TRUE(loop_or.ok());
  EventLoop& loop = **loop_or;
  std::vector<int> fired;
  loop.Post([&] {
    for (int i = 0; i < 10; ++i) loop.RunAfter(absl::ZeroDuration(), [&, i] { fired.push_back(i); });
    loop.RunAfter(absl::Milliseconds(1), [&] { loop.Stop(); });
  });
  ASSERT_TRUE(loop.Run().ok());
  EXPECT_EQ(fired, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

// Most timers are cancelled long before their deadline (a command's timeout once its reply
// came): the heap must follow the live timers, not every timer set within the longest timeout.
TEST(EventLoopTest, CancelledTimersDoNotPileUpInTheHeap) {
  auto loop_or = EventLoop::Create();
  ASSERT_TRUE(loop_or.ok());
  EventLoop& loop = **loop_or;
  std::vector<int> fired;
  size_t largest_heap = 0;
  loop.Post([&] {
    // Ten that stay, among 100,000 set for an hour and cancelled at once.
    for (int i = 0; i < 10; ++i) {
      loop.RunAfter(absl::Milliseconds(1 + i), [&, i] { fired.push_back(i); });
    }
    for (int i = 0; i < 100000; ++i) {
      loop.Cancel(loop.RunAfter(absl::Hours(1), [&] { fired.push_back(-1); }));
      largest_heap = std::max(largest_heap, loop.timer_heap_size());
    }
    loop.RunAfter(absl::Milliseconds(20), [&] { loop.Stop(); });
  });
  ASSERT_TRUE(loop.Run().ok());
  EXPECT_LE(largest_heap, 2u * 11 + 64 + 1);
  EXPECT_EQ(fired, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(EventLoopTest, UsesSingleIssuerRing) {
  auto loop = EventLoop::Create();
  ASSERT_TRUE(loop.ok());
  // This kernel supports it (deps.md); the fallback exists for older ones.
  EXPECT_TRUE((*loop)->setup_flags() & IORING_SETUP_SINGLE_ISSUER);
}

}  // namespace
}  // namespace facteur::io
