#include "engine/events/event_log.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace facteur::events {
namespace {

using ::testing::HasSubstr;

const absl::Time kTime =
    absl::FromCivil(absl::CivilSecond(2026, 11, 23, 15, 53, 0), absl::UTCTimeZone()) +
    absl::Milliseconds(123);

// A fresh directory for one test.
class EventLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("events_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  std::filesystem::path dir_;
};

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream content;
  content << file.rdbuf();
  return content.str();
}

// The file's lines, each parsed; a line that is not one JSON object fails the test.
std::vector<nlohmann::json> ReadLines(const std::string& path) {
  const std::string content = ReadFile(path);
  EXPECT_TRUE(content.empty() || content.back() == '\n') << "the file ends inside a line";
  std::vector<nlohmann::json> lines;
  for (absl::string_view line : absl::StrSplit(content, '\n', absl::SkipEmpty())) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << "not a JSON object: " << line;
    lines.push_back(std::move(j));
  }
  return lines;
}

Event Numbered(const std::string& queue_id) {
  Event event;
  event.type = EventType::kDelivery;
  event.time = kTime;
  event.queue_id = queue_id;
  event.recipient = "bob@example.net";
  return event;
}

TEST(FormatEventTest, EveryField) {
  Event event;
  event.type = EventType::kTransientFailure;
  event.time = kTime;
  event.queue_id = "01JQ";
  event.sender = "app@example.org";
  event.recipient = "bob@example.net";
  event.listener = "submission";
  event.client = "192.0.2.7";
  event.account = "app";
  event.size = 12345;
  event.recipients = 2;
  event.domain = "example.net";
  event.site = "example.net";
  event.mx = "mx1.example.net[192.0.2.1]:25";
  event.source_ip = "198.51.100.4";
  event.source = "ip4";
  event.code = 451;
  event.enhanced = "4.7.1";
  event.response = "Greylisted, try again later";
  event.attempt = 3;
  event.queue_time = absl::Milliseconds(61500);
  event.delivery_time = absl::Microseconds(1234567);
  event.tls = true;
  event.next_attempt = kTime + absl::Minutes(5);
  event.detail = "x";
  EXPECT_EQ(FormatEvent(event),
            R"({"time":"2026-11-23T15:53:00.123Z","type":"transient_failure","queue_id":"01JQ",)"
            R"("sender":"app@example.org","recipient":"bob@example.net","listener":"submission",)"
            R"("client":"192.0.2.7","account":"app","size":12345,"recipients":2,)"
            R"("domain":"example.net","site":"example.net","mx":"mx1.example.net[192.0.2.1]:25",)"
            R"("source_ip":"198.51.100.4","source":"ip4","code":451,"enhanced":"4.7.1",)"
            R"("response":"Greylisted, try again later","attempt":3,"queue_time":61.5,)"
            R"("delivery_time":1.235,"tls":true,"next_attempt":"2026-11-23T15:58:00.123Z",)"
            R"("detail":"x"})");
}

TEST(FormatEventTest, EmptyFieldsAreLeftOut) {
  Event event;
  event.type = EventType::kReception;
  event.time = absl::FromUnixSeconds(0);
  EXPECT_EQ(FormatEvent(event), R"({"time":"1970-01-01T00:00:00.000Z","type":"reception"})");
}

TEST(FormatEventTest, TypeNames) {
  EXPECT_STREQ(EventTypeName(EventType::kReception), "reception");
  EXPECT_STREQ(EventTypeName(EventType::kDelivery), "delivery");
  EXPECT_STREQ(EventTypeName(EventType::kTransientFailure), "transient_failure");
  EXPECT_STREQ(EventTypeName(EventType::kBounce), "bounce");
  EXPECT_STREQ(EventTypeName(EventType::kExpiration), "expiration");
  EXPECT_STREQ(EventTypeName(EventType::kSuspension), "suspension");
  EXPECT_STREQ(EventTypeName(EventType::kAccountSuspended), "account_suspended");
  EXPECT_STREQ(EventTypeName(EventType::kWarmupCap), "warmup_cap");
}

TEST(FormatEventTest, HostileTextStaysOneValidLine) {
  Event event = Numbered("q");
  event.response = "550 \"bad\"\r\n550 \\x\x01 caf\xC3\xA9 \xFF\xFE end";
  const std::string line = FormatEvent(event);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line.find('\r'), std::string::npos);
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
  ASSERT_TRUE(j.is_object()) << line;
  // Valid UTF-8 kept, each malformed octet replaced by U+FFFD.
  EXPECT_EQ(j["response"], "550 \"bad\"\r\n550 \\x\x01 caf\xC3\xA9 \xEF\xBF\xBD\xEF\xBF\xBD end");
}

// `n` U+FFFD REPLACEMENT CHARACTERs in UTF-8.
std::string Replacements(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += "\xEF\xBF\xBD";
  return out;
}

TEST(FormatEventTest, MalformedUtf8BecomesReplacementCharacters) {
  const struct {
    std::string in;
    std::string out;
  } cases[] = {
      {"\xF0\x9F\x98\x80 ok \xE2\x82\xAC", "\xF0\x9F\x98\x80 ok \xE2\x82\xAC"},  // 4 and 3 octets
      {"\xC0\xAF", Replacements(2)},                    // overlong '/'
      {"\xE0\x80\xAF", Replacements(3)},                // overlong, 3 octets
      {"\xED\xA0\x80", Replacements(3)},                // a surrogate
      {"\xF4\x90\x80\x80", Replacements(4)},            // past U+10FFFF
      {"end \xE2\x82", "end " + Replacements(2)},       // cut short
      {"\x80 lone", Replacements(1) + " lone"},         // a continuation octet alone
      {"\x7F del", "\x7F del"},
  };
  for (const auto& c : cases) {
    Event event = Numbered("q");
    event.response = c.in;
    const std::string line = FormatEvent(event);
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_TRUE(j.is_object()) << line;
    EXPECT_EQ(j["response"], c.out) << line;
  }
}

TEST(FormatEventTest, RandomOctetsAlwaysMakeOneValidLine) {
  std::mt19937 random(7);
  for (int round = 0; round < 2000; ++round) {
    std::string octets(random() % 24, '\0');
    for (char& c : octets) c = static_cast<char>(random() & 0xFF);
    Event event = Numbered("q");
    event.response = octets;
    event.detail = octets;
    const std::string line = FormatEvent(event);
    ASSERT_EQ(line.find('\n'), std::string::npos);
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);  // strict UTF-8
    ASSERT_TRUE(j.is_object()) << line;
    if (!octets.empty()) {
      EXPECT_EQ(j["response"], j["detail"]);
    }
  }
}

TEST(FormatEventTest, DurationsInSecondsToTheMillisecond) {
  Event event;
  event.type = EventType::kDelivery;
  event.time = absl::FromUnixSeconds(0);
  event.queue_time = absl::Seconds(5);
  event.delivery_time = absl::Microseconds(400);  // rounds to 0 ms, still written
  EXPECT_EQ(FormatEvent(event), R"({"time":"1970-01-01T00:00:00.000Z","type":"delivery",)"
                                R"("queue_time":5.0,"delivery_time":0.0})");
  event.queue_time = absl::Milliseconds(-1250);
  event.delivery_time = absl::Milliseconds(10);
  EXPECT_EQ(FormatEvent(event), R"({"time":"1970-01-01T00:00:00.000Z","type":"delivery",)"
                                R"("queue_time":-1.25,"delivery_time":0.01})");
}

TEST_F(EventLogTest, EachLineIsJsonWithItsFields) {
  const std::string path = Path("events.log");
  auto log = EventLog::Open(path);
  ASSERT_TRUE(log.ok()) << log.status();
  Event reception;
  reception.type = EventType::kReception;
  reception.time = kTime;
  reception.queue_id = "01JA";
  reception.sender = "app@example.org";
  reception.listener = "relay";
  reception.size = 2048;
  reception.recipients = 3;
  (*log)->Record(reception);
  Event delivery = Numbered("01JA");
  delivery.mx = "mx1.example.net[192.0.2.1]:25";
  delivery.code = 250;
  delivery.attempt = 1;
  delivery.queue_time = absl::Seconds(2);
  (*log)->Record(delivery);
  (*log)->Flush();

  const std::vector<nlohmann::json> lines = ReadLines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["type"], "reception");
  EXPECT_EQ(lines[0]["time"], "2026-11-23T15:53:00.123Z");
  EXPECT_EQ(lines[0]["queue_id"], "01JA");
  EXPECT_EQ(lines[0]["size"], 2048);
  EXPECT_EQ(lines[0]["recipients"], 3);
  EXPECT_FALSE(lines[0].contains("code"));
  EXPECT_EQ(lines[1]["type"], "delivery");
  EXPECT_EQ(lines[1]["mx"], "mx1.example.net[192.0.2.1]:25");
  EXPECT_EQ(lines[1]["code"], 250);
  EXPECT_EQ(lines[1]["attempt"], 1);
  EXPECT_EQ(lines[1]["queue_time"], 2.0);
  EXPECT_EQ(lines[1]["recipient"], "bob@example.net");
  EXPECT_EQ((*log)->dropped(), 0u);

  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777 & ~0640, 0u);  // 0640, less what the umask takes
}

TEST_F(EventLogTest, AppendsToAnExistingFileAndEndsAnUnfinishedLine) {
  const std::string path = Path("events.log");
  {
    std::ofstream file(path, std::ios::binary);
    file << "{\"earlier\":true}\n{\"cut\":";  // a crash left half a line
  }
  {
    auto log = EventLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    (*log)->Record(Numbered("after"));
  }  // the destructor writes what is queued
  const std::string content = ReadFile(path);
  EXPECT_EQ(content.substr(0, 26), "{\"earlier\":true}\n{\"cut\":\n{");
  const std::vector<std::string> lines = absl::StrSplit(content, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  const nlohmann::json last = nlohmann::json::parse(lines[2], nullptr, false);
  ASSERT_TRUE(last.is_object()) << lines[2];
  EXPECT_EQ(last["queue_id"], "after");
}

TEST_F(EventLogTest, OpenFailsOnABadPath) {
  auto log = EventLog::Open(Path("no/such/dir/events.log"));
  EXPECT_FALSE(log.ok());
  EXPECT_EQ(log.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(EventLogTest, DestructorWritesWhatIsQueued) {
  const std::string path = Path("events.log");
  {
    auto log = EventLog::Open(path);
    ASSERT_TRUE(log.ok());
    for (int i = 0; i < 1000; ++i) (*log)->Record(Numbered(absl::StrCat(i)));
  }
  const std::vector<nlohmann::json> lines = ReadLines(path);
  ASSERT_EQ(lines.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(lines[i]["queue_id"], absl::StrCat(i));
}

// Lines that follow a write closely gather before the next write (fewer wake-ups), but never
// wait for more lines: a relay that falls quiet still gets its last events into the file
// without Flush(). An idle writer writes at once.
TEST_F(EventLogTest, LinesReachTheFileWithoutFlush) {
  const std::string path = Path("events.log");
  auto log = EventLog::Open(path);
  ASSERT_TRUE(log.ok());
  const auto wait_for_lines = [&path](size_t count) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    std::vector<nlohmann::json> lines;
    while ((lines = ReadLines(path)).size() < count && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(1));
    }
    return lines;
  };
  (*log)->Record(Numbered("0"));
  ASSERT_EQ(wait_for_lines(1).size(), 1u);
  // Just after that write: these two gather, then go out by themselves.
  (*log)->Record(Numbered("1"));
  (*log)->Record(Numbered("2"));
  const std::vector<nlohmann::json> lines = wait_for_lines(3);
  ASSERT_EQ(lines.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(lines[i]["queue_id"], absl::StrCat(i));
}

TEST_F(EventLogTest, RotationByRenameAndReopen) {
  const std::string path = Path("events.log");
  const std::string rotated = Path("events.log.1");
  auto log = EventLog::Open(path);
  ASSERT_TRUE(log.ok());
  (*log)->Record(Numbered("a1"));
  (*log)->Record(Numbered("a2"));
  (*log)->Flush();
  std::filesystem::rename(path, rotated);
  // Recorded after the rename but before Reopen(): still the old file (the writer holds it).
  (*log)->Record(Numbered("b1"));
  (*log)->Reopen();
  (*log)->Record(Numbered("c1"));
  (*log)->Record(Numbered("c2"));
  (*log)->Flush();

  const std::vector<nlohmann::json> old_lines = ReadLines(rotated);
  ASSERT_EQ(old_lines.size(), 3u);
  EXPECT_EQ(old_lines[0]["queue_id"], "a1");
  EXPECT_EQ(old_lines[1]["queue_id"], "a2");
  EXPECT_EQ(old_lines[2]["queue_id"], "b1");
  const std::vector<nlohmann::json> new_lines = ReadLines(path);
  ASSERT_EQ(new_lines.size(), 2u);
  EXPECT_EQ(new_lines[0]["queue_id"], "c1");
  EXPECT_EQ(new_lines[1]["queue_id"], "c2");

  // Reopen() with nothing queued, then Flush(): the new file exists before any line.
  std::filesystem::rename(path, Path("events.log.2"));
  (*log)->Reopen();
  (*log)->Flush();
  EXPECT_TRUE(std::filesystem::exists(path));
  EXPECT_EQ(std::filesystem::file_size(path), 0u);
}

TEST_F(EventLogTest, ConcurrentWritersLoseNothingBelowTheCap) {
  const std::string path = Path("events.log");
  constexpr int kThreads = 4;
  constexpr int kPerThread = 1500;
  auto log = EventLog::Open(path, kThreads * kPerThread);
  ASSERT_TRUE(log.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&log, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Event event = Numbered(absl::StrCat(t, "-", i));
        event.response = std::string(static_cast<size_t>(i % 300), 'r');  // lines of many sizes
        (*log)->Record(event);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  (*log)->Flush();
  EXPECT_EQ((*log)->dropped(), 0u);

  const std::vector<nlohmann::json> lines = ReadLines(path);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kPerThread));
  std::set<std::string> seen;
  std::vector<int> next(kThreads, 0);
  for (const nlohmann::json& line : lines) {
    const std::string id = line["queue_id"];
    EXPECT_TRUE(seen.insert(id).second) << "twice: " << id;
    // Each thread's lines keep their order.
    const std::vector<std::string> parts = absl::StrSplit(id, '-');
    ASSERT_EQ(parts.size(), 2u);
    const int t = std::stoi(parts[0]);
    const int i = std::stoi(parts[1]);
    EXPECT_EQ(i, next[t]) << id;
    next[t] = i + 1;
    EXPECT_EQ(line.value("response", std::string()).size(), static_cast<size_t>(i % 300));
  }
}

// The writer is stuck in write(2) on a full pipe: what the cap lets in is queued, the rest is
// dropped and counted, and nothing is lost once the reader drains the pipe.
TEST_F(EventLogTest, FullQueueDropsAndCounts) {
  const std::string path = Path("events.fifo");
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  const int reader = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(reader, 0);
  const int pipe_size = ::fcntl(reader, F_SETPIPE_SZ, 4096);
  ASSERT_GT(pipe_size, 0);

  constexpr size_t kCap = 10;
  auto log = EventLog::Open(path, kCap);
  ASSERT_TRUE(log.ok()) << log.status();
  // A line larger than the pipe: the writer fills the pipe and blocks in write(2).
  Event big = Numbered("big");
  big.detail = std::string(static_cast<size_t>(pipe_size) * 2, 'd');
  (*log)->Record(big);
  int queued = 0;
  for (int i = 0; i < 10000 && queued < pipe_size; ++i) {  // bounded: the writer is a thread
    ASSERT_EQ(::ioctl(reader, FIONREAD, &queued), 0);
    if (queued < pipe_size) absl::SleepFor(absl::Milliseconds(1));
  }
  ASSERT_EQ(queued, pipe_size) << "the writer never filled the pipe";

  for (size_t i = 0; i < kCap + 5; ++i) (*log)->Record(Numbered(absl::StrCat("q", i)));
  EXPECT_EQ((*log)->dropped(), 5u);

  // Drain: the big line, then the kCap lines that were queued.
  std::string content;
  std::thread drain([&] {
    const int flags = ::fcntl(reader, F_GETFL);
    ::fcntl(reader, F_SETFL, flags & ~O_NONBLOCK);
    char buffer[8192];
    while (std::count(content.begin(), content.end(), '\n') < static_cast<long>(kCap + 1)) {
      const ssize_t n = ::read(reader, buffer, sizeof buffer);
      if (n <= 0) break;
      content.append(buffer, static_cast<size_t>(n));
    }
  });
  (*log)->Flush();
  drain.join();
  ::close(reader);
  const std::vector<std::string> lines = absl::StrSplit(content, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), kCap + 1);
  EXPECT_THAT(lines[0], HasSubstr("\"queue_id\":\"big\""));
  for (size_t i = 0; i < kCap; ++i) {
    const nlohmann::json j = nlohmann::json::parse(lines[i + 1], nullptr, false);
    ASSERT_TRUE(j.is_object()) << lines[i + 1];
    EXPECT_EQ(j["queue_id"], absl::StrCat("q", i));
  }
  EXPECT_EQ((*log)->dropped(), 5u);
}

// Captures what the process writes to stderr (engine/base/log.h writes there) while alive.
class StderrCapture {
 public:
  explicit StderrCapture(std::string path) : path_(std::move(path)) {
    std::fflush(stderr);
    saved_ = ::dup(STDERR_FILENO);
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ::dup2(fd, STDERR_FILENO);
    ::close(fd);
  }
  ~StderrCapture() { Restore(); }
  std::string Restore() {
    if (saved_ >= 0) {
      ::dup2(saved_, STDERR_FILENO);
      ::close(saved_);
      saved_ = -1;
    }
    return ReadFile(path_);
  }

 private:
  std::string path_;
  int saved_ = -1;
};

size_t CountOf(const std::string& haystack, const std::string& needle) {
  size_t count = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

// /dev/full fails every write with ENOSPC: the lines are counted as dropped, the error is
// logged once a minute, and the log recovers when Reopen() finds a good file at the path.
TEST_F(EventLogTest, FullDiskIsReportedOnceAMinuteAndRecoversAfterReopen) {
  const std::string path = Path("events.log");
  std::filesystem::create_symlink("/dev/full", path);
  SimulatedClock clock;
  StderrCapture capture(Path("stderr.txt"));
  auto log = EventLog::Open(path, 1000, clock);
  ASSERT_TRUE(log.ok()) << log.status();

  for (int i = 0; i < 3; ++i) {
    (*log)->Record(Numbered(absl::StrCat("lost", i)));
    (*log)->Flush();  // one failed write each
  }
  EXPECT_EQ((*log)->dropped(), 3u);
  clock.Advance(absl::Seconds(59));
  (*log)->Record(Numbered("lost3"));
  (*log)->Flush();
  clock.Advance(absl::Seconds(2));  // a minute after the first report
  (*log)->Record(Numbered("lost4"));
  (*log)->Flush();
  EXPECT_EQ((*log)->dropped(), 5u);

  // The disk has room again: logrotate (or the operator) puts a good file at the path.
  std::filesystem::remove(path);
  (*log)->Reopen();
  (*log)->Record(Numbered("kept1"));
  (*log)->Record(Numbered("kept2"));
  (*log)->Flush();
  const std::string errors = capture.Restore();

  EXPECT_EQ(CountOf(errors, "write failed"), 2u) << errors;
  EXPECT_THAT(errors, HasSubstr("No space left on device"));
  EXPECT_THAT(errors, HasSubstr("(3 more failed writes since the last report)"));
  EXPECT_EQ((*log)->dropped(), 5u);
  const std::vector<nlohmann::json> lines = ReadLines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["queue_id"], "kept1");
  EXPECT_EQ(lines[1]["queue_id"], "kept2");
}

TEST_F(EventLogTest, ReopenFailureKeepsTheOldFile) {
  const std::string sub = Path("sub");
  std::filesystem::create_directories(sub);
  const std::string path = sub + "/events.log";
  auto log = EventLog::Open(path);
  ASSERT_TRUE(log.ok());
  const std::string moved = Path("moved.log");
  std::filesystem::rename(path, moved);
  std::filesystem::remove_all(sub);  // the path cannot be opened any more
  StderrCapture capture(Path("stderr.txt"));
  (*log)->Reopen();
  (*log)->Record(Numbered("still"));
  (*log)->Flush();
  EXPECT_THAT(capture.Restore(), HasSubstr("reopen failed"));
  const std::vector<nlohmann::json> lines = ReadLines(moved);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["queue_id"], "still");
  EXPECT_EQ((*log)->dropped(), 0u);
}

}  // namespace
}  // namespace facteur::events
