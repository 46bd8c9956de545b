// File: engine/main/huge_page_arena.cc
#include "engine/main/huge_page_arena.h"

#include "engine/base/log.h"

#ifdef FACTEUR_JEMALLOC
#include <jemalloc/jemalloc.h>
#include <sys/mman.h>

#include <cstring>
#include <mutex>
#endif

namespace facteur {

#ifdef FACTEUR_JEMALLOC
namespace {

// jemalloc's own hooks (those of arena 0), which do the work; ours only add the advice. Both
// live as long as the process: jemalloc keeps a pointer to the table.
extent_hooks_t* default_hooks = nullptr;
extent_hooks_t huge_page_hooks;

void* AllocHugePageAdvised(extent_hooks_t* /*hooks*/, void* new_addr, size_t size,
                           size_t alignment, bool* zero, bool* commit, unsigned arena_index) {
  void* const region = default_hooks->alloc(default_hooks, new_addr, size, alignment, zero,
                                            commit, arena_index);
  // Advice only: EINVAL on a kernel without transparent huge pages changes nothing.
  if (region != nullptr) ::madvise(region, size, MADV_HUGEPAGE);
  return region;
}

// The arena's index, or 0 (never a manual arena's) when it could not be made.
unsigned CreateArena() {
  size_t size = sizeof(default_hooks);
  int error = mallctl("arena.0.extent_hooks", &default_hooks, &size, nullptr, 0);
  if (error != 0 || default_hooks == nullptr || default_hooks->alloc == nullptr) {
    Log(LogLevel::kWarning, "huge page arena: reading jemalloc's extent hooks: %s",
        std::strerror(error));
    return 0;
  }
  huge_page_hooks = *default_hooks;
  huge_page_hooks.alloc = &AllocHugePageAdvised;
  extent_hooks_t* hooks = &huge_page_hooks;
  unsigned index = 0;
  size = sizeof(index);
  error = mallctl("arenas.create", &index, &size, &hooks, sizeof(hooks));
  if (error != 0) {
    Log(LogLevel::kWarning, "huge page arena: creating a jemalloc arena: %s", std::strerror(error));
    return 0;
  }
  return index;
}

}  // namespace

std::function<void()> HugePageArenaBinder() {
  static std::once_flag once;
  static unsigned index = 0;
  std::call_once(once, [] { index = CreateArena(); });
  if (index == 0) return {};
  return [] {
    unsigned arena = index;
    const int error = mallctl("thread.arena", nullptr, nullptr, &arena, sizeof(arena));
    if (error != 0) {
      Log(LogLevel::kWarning, "huge page arena: binding a thread to arena %u: %s", arena,
          std::strerror(error));
    }
  };
}

#else

std::function<void()> HugePageArenaBinder() { return {}; }

#endif

}  // namespace facteur
