// File: engine/main/huge_page_arena.h
// A jemalloc arena whose memory the kernel may back with transparent huge pages, for the
// spool writer thread. That thread allocates RocksDB's memtables (8 MB blocks, filled a few
// kilobytes per message); with 4 KB pages every new page costs a page fault, about one per
// message, and on a host with kernel page-table isolation a fault is expensive. Measured in
// bench/README.md ("Huge pages for the spool writer").
#ifndef FACTEUR_ENGINE_MAIN_HUGE_PAGE_ARENA_H_
#define FACTEUR_ENGINE_MAIN_HUGE_PAGE_ARENA_H_

#include <functional>

namespace facteur {

// Creates the arena (once per process) and returns what binds the calling thread to it, to be
// run first on the spool writer thread (queue::SpoolOptions::on_writer_start). Returns an empty
// function when the binary is not built with jemalloc (the sanitizer builds) or the arena
// cannot be made; the writer then allocates as every other thread does. The regions are only
// advised (madvise MADV_HUGEPAGE): with transparent huge pages set to "never" nothing changes.
std::function<void()> HugePageArenaBinder();

}  // namespace facteur

#endif  // FACTEUR_ENGINE_MAIN_HUGE_PAGE_ARENA_H_
