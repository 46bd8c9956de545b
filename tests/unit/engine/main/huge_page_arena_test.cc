// File: tests/unit/engine/main/huge_page_arena_test.cc
// The spool writer's arena: what a thread bound to it allocates lies in memory advised for
// transparent huge pages (VmFlags "hg" in /proc/self/smaps), and only that thread's.
#include "engine/main/huge_page_arena.h"

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"

namespace facteur {
namespace {

#ifdef FACTEUR_JEMALLOC

// The VmFlags of the mapping that holds `address`, or "" when none does.
std::string VmFlagsOf(const void* address) {
  const auto target = reinterpret_cast<uintptr_t>(address);
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    // A mapping's first line: "start-end perms offset dev inode [path]".
    const std::string range = line.substr(0, line.find(' '));
    const std::vector<std::string> bounds = absl::StrSplit(range, '-');
    uint64_t start = 0;
    uint64_t end = 0;
    if (bounds.size() == 2 && absl::SimpleHexAtoi(bounds[0], &start) &&
        absl::SimpleHexAtoi(bounds[1], &end)) {
      inside = start <= target && target < end;
      continue;
    }
    if (inside && absl::StartsWith(line, "VmFlags:")) return line;
  }
  return "";
}

// Allocates 8 MB (the size of a RocksDB memtable block) on a new thread, after `setup`, and
// returns the flags of its mapping.
std::string FlagsOfLargeAllocation(const std::function<void()>& setup) {
  std::string flags;
  std::thread thread([&] {
    if (setup) setup();
    void* block = std::malloc(8 << 20);
    flags = VmFlagsOf(block);
    std::free(block);
  });
  thread.join();
  return flags;
}

TEST(HugePageArenaTest, OnlyTheBoundThreadsMemoryIsAdvisedForHugePages) {
  if (!std::filesystem::exists("/sys/kernel/mm/transparent_hugepage")) {
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  }
  const std::function<void()> bind = HugePageArenaBinder();
  ASSERT_TRUE(bind);
  const std::string unbound = FlagsOfLargeAllocation(nullptr);
  const std::string bound = FlagsOfLargeAllocation(bind);
  ASSERT_FALSE(unbound.empty());
  ASSERT_FALSE(bound.empty());
  EXPECT_FALSE(absl::StrContains(unbound, " hg")) << unbound;
  EXPECT_TRUE(absl::StrContains(bound, " hg")) << bound;
  // Made once: a second call binds to the same arena, and still works.
  EXPECT_TRUE(absl::StrContains(FlagsOfLargeAllocation(HugePageArenaBinder()), " hg"));
}

#else

// The sanitizer builds have no jemalloc: the writer keeps the sanitizer's allocator.
TEST(HugePageArenaTest, WithoutJemallocThereIsNothingToBind) {
  EXPECT_FALSE(HugePageArenaBinder());
}

#endif

}  // namespace
}  // namespace facteur
