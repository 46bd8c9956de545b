// File: tests/unit/queue/queue_test_util.h
// Helpers shared by the queue tests: a scratch directory removed at the end of the test,
// sample envelopes, synchronous spool calls, opening a store with its spool, and re-running
// this test binary as a child process.
// Thread contract: TempDir is test-thread only; the rest is stateless.
#pragma once

#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "queue/spool.h"

namespace facteur::queue::test {

// A fresh directory under $TMPDIR (default /tmp, on the same disk as the work tree here, so
// fsync is real); removed with its contents on destruction unless FACTEUR_KEEP_TEMP is set.
class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/facteur-queue-XXXXXX");
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code error;
    // FACTEUR_KEEP_TEMP=1 keeps the directory (and RocksDB's LOG) for a post-mortem.
    if (!path_.empty() && getenv("FACTEUR_KEEP_TEMP") == nullptr) {
      std::filesystem::remove_all(path_, error);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Times are stored to the microsecond: `now` is truncated so that round trips compare equal.
inline Envelope SampleEnvelope(const MessageId& id, absl::Time now) {
  now = absl::FromUnixMicros(absl::ToUnixMicros(now));
  Envelope envelope;
  envelope.id = id;
  envelope.sender = "alice@example.org";
  envelope.recipients = {{"bob@example.com", RecipientState::kPending, "SUCCESS,FAILURE",
                          "rfc822;bob@example.com", "", 0, ""},
                         {"carol@example.net", RecipientState::kPending, "", "", "", 0, ""}};
  envelope.listener = "submission";
  envelope.account = "alice";
  envelope.client = "[192.0.2.1]:4567";
  envelope.received_at = now;
  envelope.next_attempt = now;
  return envelope;
}

// A body derived from the id, so a reader can check it without a side table: the id text
// repeated to about 2 KB.
inline std::string BodyFor(const MessageId& id) {
  std::string body;
  const std::string text = id.ToString() + "\r\n";
  while (body.size() < 2048) body += text;
  return body;
}

// Calls `start` with a `done` callback and waits for it: a spool call made synchronous.
template <typename Start>
absl::Status CallAndWait(Start start) {
  absl::Notification done;
  absl::Status result;
  start([&](absl::Status status) {
    result = std::move(status);
    done.Notify();
  });
  // Bounded: a synced write takes milliseconds; a minute means the writer is stuck.
  if (!done.WaitForNotificationWithTimeout(absl::Seconds(60))) {
    return absl::DeadlineExceededError("spool call did not complete");
  }
  return result;
}

inline absl::Status EnqueueAndWait(Spool& spool, Envelope envelope, std::string body) {
  return CallAndWait([&](auto done) {
    spool.Enqueue(std::move(envelope), std::move(body), std::move(done));
  });
}

inline absl::Status UpdateAndWait(Spool& spool, Envelope envelope, absl::Time previous_due,
                                  Durability durability = Durability::kSynced,
                                  std::vector<NewMessage> along = {}) {
  return CallAndWait([&](auto done) {
    spool.Update(std::move(envelope), previous_due, std::move(done), durability,
                 std::move(along));
  });
}

inline absl::Status RemoveAndWait(Spool& spool, const MessageId& id, absl::Time due,
                                  Durability durability = Durability::kSynced,
                                  std::vector<NewMessage> along = {}) {
  return CallAndWait([&](auto done) {
    spool.Remove(id, due, std::move(done), durability, std::move(along));
  });
}

// The store alone, read-write or read-only (a secondary beside the writer); null after
// recording a test failure.
inline std::unique_ptr<Store> OpenStore(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}
inline std::unique_ptr<Store> OpenReader(const std::string& path) {
  absl::StatusOr<std::unique_ptr<Store>> store = Store::OpenReadOnly(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

// A store and the spool on it; the spool goes first (members are destroyed in reverse).
struct Opened {
  std::unique_ptr<Store> store;
  std::unique_ptr<Spool> spool;
};

// Opens both, or records a test failure and returns what it could open.
inline Opened OpenOrDie(const std::string& path, Clock& clock,
                        SpoolOptions options = SpoolOptions(),
                        StoreOptions store_options = StoreOptions()) {
  Opened opened;
  absl::StatusOr<std::unique_ptr<Store>> store = Store::Open(path, store_options);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return opened;
  opened.store = *std::move(store);
  absl::StatusOr<std::unique_ptr<Spool>> spool = Spool::Open(*opened.store, options, clock);
  EXPECT_TRUE(spool.ok()) << spool.status();
  if (spool.ok()) opened.spool = *std::move(spool);
  return opened;
}

// Starts this test binary again with only `test_name` selected and `env` added to the
// environment. fork()+exec() rather than a bare fork(): RocksDB's background thread pools do
// not survive a fork, so a forked child could never flush.
inline pid_t SpawnSelf(const std::string& test_name, const std::vector<std::string>& env) {
  std::vector<std::string> strings = {"/proc/self/exe",
                                      absl::StrCat("--gtest_filter=", test_name)};
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_strings = env;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

}  // namespace facteur::queue::test
