// File: tests/unit/queue/faulty_store.h
// Store options whose files go through a FaultFileSystem the test arms (a full disk, a power
// cut: tests/support/fault_file_system.h), and a scratch spool directory with them. Link
// facteur_test_support_fs.
// Thread contract: test-thread only.
#pragma once

#include <memory>
#include <string>

#include "queue/store.h"
#include "tests/support/fault_file_system.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue::test {

struct FaultyStore {
  FaultyStore() { store_options.env = test_support::NewEnvWithFileSystem(fs); }
  std::shared_ptr<test_support::FaultFileSystem> fs =
      std::make_shared<test_support::FaultFileSystem>();
  StoreOptions store_options;
};

// A spool directory whose files go through a FaultFileSystem the test arms.
struct FaultySpoolDir : FaultyStore {
  TempDir dir;
  const std::string path = dir.Sub("spool");
};

}  // namespace facteur::queue::test
