// Store: one read-write owner per spool, read-only access beside it or alone, the status mapping.
#include "queue/store.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/spool.h"
#include "tests/unit/queue/queue_test_util.h"

namespace facteur::queue {
namespace {

using ::testing::HasSubstr;

TEST(StoreTest, OpenTwiceInOneProcessIsFailedPrecondition) {
  test::TempDir dir;
  absl::StatusOr<std::unique_ptr<Store>> first = Store::Open(dir.Sub("spool"));
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<Store>> second = Store::Open(dir.Sub("spool"));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("in use by a running facteur"));
}

// Runs only inside the child of the next test: holds the spool open until its stdin closes.
TEST(StoreTestChild, HoldSpool) {
  const char* path = getenv("FACTEUR_TEST_HOLD_SPOOL");
  if (path == nullptr) GTEST_SKIP() << "helper process of OpenWhileAnotherProcessHoldsIt";
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  Envelope envelope = test::SampleEnvelope(MessageId::Generate(absl::Now()), absl::Now());
  SimulatedClock clock;
  absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(**store, SpoolOptions(), clock);
  ASSERT_TRUE(spool.ok()) << spool.status();
  ASSERT_TRUE(test::EnqueueAndWait(**spool, envelope, "held").ok());
  const std::string ready = std::string(envelope.id.Bytes());
  const int ready_fd = atoi(getenv("FACTEUR_TEST_READY_FD"));
  ASSERT_EQ(write(ready_fd, ready.data(), ready.size()), static_cast<ssize_t>(ready.size()));
  char byte;
  while (read(STDIN_FILENO, &byte, 1) > 0) {
  }
}

TEST(StoreTest, OpenWhileAnotherProcessHoldsIt) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  int ready[2], hold[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(pipe(hold), 0);  // the child's stdin; we keep the write end
  fcntl(hold[1], F_SETFD, FD_CLOEXEC);
  fcntl(ready[1], F_SETFD, 0);  // the child writes the id it committed here
  const int saved_stdin = dup(STDIN_FILENO);
  dup2(hold[0], STDIN_FILENO);
  const pid_t child = test::SpawnSelf(
      "StoreTestChild.HoldSpool",
      {"FACTEUR_TEST_HOLD_SPOOL=" + path, "FACTEUR_TEST_READY_FD=" + std::to_string(ready[1])});
  dup2(saved_stdin, STDIN_FILENO);
  close(saved_stdin);
  close(hold[0]);
  close(ready[1]);
  ASSERT_GT(child, 0);

  std::string id_bytes(MessageId::kBytes, '\0');
  pollfd ready_poll{ready[0], POLLIN, 0};
  ASSERT_EQ(poll(&ready_poll, 1, 30'000), 1) << "child did not open the spool";
  ASSERT_EQ(read(ready[0], id_bytes.data(), id_bytes.size()),
            static_cast<ssize_t>(id_bytes.size()));
  const MessageId id = *MessageId::FromBytes(id_bytes);

  absl::StatusOr<std::unique_ptr<Store>> second = Store::Open(path);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr("in use by a running facteur"));

  // Read-only beside the running owner: sees its committed (synced, unflushed) message.
  {
    absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_TRUE((*reader)->read_only());
    absl::StatusOr<std::optional<std::string>> body = ReadBody(**reader, id);
    ASSERT_TRUE(body.ok()) << body.status();
    EXPECT_EQ(body->value_or("<missing>"), "held");
    EXPECT_EQ(CountMessages(**reader).value_or(0), 1u);
  }

  close(hold[1]);  // EOF on the child's stdin: it closes the store and exits
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  close(ready[0]);
  absl::StatusOr<std::unique_ptr<Store>> after = Store::Open(path);
  EXPECT_TRUE(after.ok()) << after.status();
}

TEST(StoreTest, OpenReadOnlyBesideReadWriteInSameProcessAndAfterClose) {
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  SimulatedClock clock;
  const Envelope envelope = test::SampleEnvelope(MessageId::Generate(clock.Now()), clock.Now());
  {
    absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(**store, SpoolOptions(), clock);
    ASSERT_TRUE(spool.ok()) << spool.status();
    ASSERT_TRUE(test::EnqueueAndWait(**spool, envelope, "body one").ok());

    absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    absl::StatusOr<std::optional<Envelope>> read = ReadEnvelope(**reader, envelope.id);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_EQ(read->value_or(Envelope()), envelope);
    // Read-only stores cannot host a spool.
    EXPECT_EQ(Spool::Open(**reader, SpoolOptions(), clock).status().code(),
              absl::StatusCode::kFailedPrecondition);
  }
  absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  absl::StatusOr<std::vector<Envelope>> all = ListEnvelopes(**reader, 10);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0], envelope);
  EXPECT_EQ(ReadBody(**reader, envelope.id)->value_or(""), "body one");
}

TEST(StoreTest, OpenCreatesMissingParentDirectories) {
  test::TempDir dir;
  const std::string path = dir.Sub("new-data-dir/var/spool");
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE(std::filesystem::is_directory(path));
}

TEST(StoreTest, AFamilyOfANewerFacteurDoesNotStopTheOpen) {
  // After a rollback the spool holds a family this binary does not know: RocksDB refuses a
  // read-write open that leaves it out, which would strand every queued message.
  test::TempDir dir;
  const std::string path = dir.Sub("spool");
  {
    std::unique_ptr<Store> store = test::OpenStore(path);
    ASSERT_TRUE(store->db().Put(rocksdb::WriteOptions(), store->family(Family::kEnvelope), "k", "v").ok());
    rocksdb::ColumnFamilyHandle* future = nullptr;
    ASSERT_TRUE(store->db().CreateColumnFamily(rocksdb::ColumnFamilyOptions(), "future", &future).ok());
    ASSERT_TRUE(store->db().Put(rocksdb::WriteOptions(), future, "kept", "as is").ok());
    ASSERT_TRUE(store->db().DestroyColumnFamilyHandle(future).ok());
  }
  std::unique_ptr<Store> store = test::OpenStore(path);
  std::string value;
  ASSERT_TRUE(store->db().Get(rocksdb::ReadOptions(), store->family(Family::kEnvelope), "k", &value).ok());
  EXPECT_EQ(value, "v");
  std::vector<std::string> families;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &families).ok());
  EXPECT_THAT(families, testing::Contains("future"));
}

TEST(StoreTest, OpenReadOnlyWithoutDatabaseIsNotFound) {
  test::TempDir dir;
  absl::StatusOr<std::unique_ptr<Store>> reader = Store::OpenReadOnly(dir.path());
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(reader.status().message(), HasSubstr(dir.path()));
  EXPECT_EQ(Store::OpenReadOnly(dir.Sub("absent")).status().code(), absl::StatusCode::kNotFound);
}

TEST(StoreTest, ToStatusMapsRocksDbCodes) {
  EXPECT_TRUE(ToStatus(rocksdb::Status::OK(), "x").ok());
  EXPECT_EQ(ToStatus(rocksdb::Status::NoSpace("full"), "x").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ToStatus(rocksdb::Status::Busy(), "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(rocksdb::Status::TryAgain(), "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(rocksdb::Status::Incomplete(), "x").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(rocksdb::Status::Corruption(), "x").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ToStatus(rocksdb::Status::NotFound(), "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ToStatus(rocksdb::Status::IOError("eio"), "x").code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(ToStatus(rocksdb::Status::InvalidArgument(), "x").code(),
            absl::StatusCode::kInternal);
  EXPECT_THAT(ToStatus(rocksdb::Status::Corruption("bad"), "reading spool").message(),
              HasSubstr("reading spool"));
}

}  // namespace
}  // namespace facteur::queue
