#include "engine/events/event_log.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "nlohmann/json.hpp"

namespace facteur::events {
namespace {

// One write(2) carries the queued lines up to about this much; more waits for the next.
constexpr size_t kMaxBatchBytes = 1 << 20;
constexpr absl::Duration kErrorReportInterval = absl::Minutes(1);

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

double Seconds(absl::Duration d) {
  return std::round(absl::ToDoubleMilliseconds(d)) / 1000.0;
}

int OpenForAppend(const std::string& path) {
  // Read access too, only to look at the last octet (EndsInsideALine); a file we may only
  // write to is opened write-only.
  for (const int access : {O_RDWR, O_WRONLY}) {
    int fd;
    do {
      fd = ::open(path.c_str(), access | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    } while (fd < 0 && errno == EINTR);
    if (fd >= 0 || errno != EACCES) return fd;
  }
  return -1;
}

// Whether the regular file `fd` ends inside a line (a crash or a short write cut it): the next
// line then starts with a newline, so that it parses.
bool EndsInsideALine(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) return false;
  char last = '\n';
  return ::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n';
}

}  // namespace

const char* EventTypeName(EventType type) {
  switch (type) {
    case EventType::kReception: return "reception";
    case EventType::kDelivery: return "delivery";
    case EventType::kTransientFailure: return "transient_failure";
    case EventType::kBounce: return "bounce";
    case EventType::kExpiration: return "expiration";
    case EventType::kSuspension: return "suspension";
    case EventType::kAccountSuspended: return "account_suspended";
  }
  return "unknown";
}

std::string FormatEvent(const Event& event) {
  // ordered_json keeps the keys in insertion order: "time" and "type" first, for people.
  nlohmann::ordered_json j;
  j["time"] = Rfc3339(event.time);
  j["type"] = EventTypeName(event.type);
  const auto text = [&j](const char* key, const std::string& value) {
    if (!value.empty()) j[key] = value;
  };
  const auto number = [&j](const char* key, auto value) {
    if (value != 0) j[key] = value;
  };
  text("queue_id", event.queue_id);
  text("sender", event.sender);
  text("recipient", event.recipient);
  text("listener", event.listener);
  text("client", event.client);
  text("account", event.account);
  number("size", event.size);
  number("recipients", event.recipients);
  text("domain", event.domain);
  text("site", event.site);
  text("mx", event.mx);
  text("source_ip", event.source_ip);
  number("code", event.code);
  text("enhanced", event.enhanced);
  text("response", event.response);
  number("attempt", event.attempt);
  if (event.queue_time != absl::ZeroDuration()) j["queue_time"] = Seconds(event.queue_time);
  if (event.delivery_time != absl::ZeroDuration()) j["delivery_time"] = Seconds(event.delivery_time);
  if (event.tls) j["tls"] = true;
  if (event.next_attempt != absl::InfinitePast()) j["next_attempt"] = Rfc3339(event.next_attempt);
  text("detail", event.detail);
  // `replace`: malformed UTF-8 (a remote reply is anything) becomes U+FFFD instead of the
  // exception the default `strict` throws. Control characters are escaped by dump itself.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

absl::StatusOr<std::unique_ptr<EventLog>> EventLog::Open(const std::string& path,
                                                         size_t max_queued_lines, Clock& clock) {
  const int fd = OpenForAppend(path);
  if (fd < 0) return ErrnoStatus(absl::StrCat("open events log ", path), errno);
  return std::unique_ptr<EventLog>(new EventLog(path, fd, max_queued_lines, clock));
}

EventLog::EventLog(std::string path, int fd, size_t max_queued_lines, Clock& clock)
    : path_(std::move(path)),
      max_queued_lines_(max_queued_lines == 0 ? 1 : max_queued_lines),
      clock_(clock),
      fd_(fd) {
  mid_line_ = EndsInsideALine(fd_);
  thread_ = std::thread([this] { Run(); });
  pthread_setname_np(thread_.native_handle(), "events-writer");
}

EventLog::~EventLog() {
  {
    absl::MutexLock lock(&mutex_);
    stopping_ = true;
  }
  thread_.join();
  ::close(fd_);
}

void EventLog::Record(const Event& event) {
  std::string line = FormatEvent(event);
  line += '\n';
  absl::MutexLock lock(&mutex_);
  if (lines_.size() >= max_queued_lines_) {
    ++dropped_;
    return;
  }
  lines_.push_back(std::move(line));
  ++recorded_;
}

void EventLog::Reopen() {
  absl::MutexLock lock(&mutex_);
  reopen_ = true;
  reopen_after_ = recorded_;
}

uint64_t EventLog::dropped() const {
  absl::MutexLock lock(&mutex_);
  return dropped_;
}

void EventLog::Flush() {
  absl::MutexLock lock(&mutex_);
  const uint64_t target = recorded_;
  const auto flushed = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
    return done_ >= target && !reopen_;
  };
  mutex_.Await(absl::Condition(&flushed));
}

void EventLog::Run() {
  std::vector<std::string> taken;
  std::string batch;
  for (;;) {
    bool reopen_now = false;
    uint64_t reopen_after = 0;
    taken.clear();
    {
      absl::MutexLock lock(&mutex_);
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
        return stopping_ || reopen_ || !lines_.empty();
      };
      mutex_.Await(absl::Condition(&ready));
      // Lines recorded before Reopen() belong in the old file: take at most those, then reopen.
      uint64_t limit = lines_.size();
      if (reopen_) {
        reopen_after = reopen_after_;
        limit = std::min<uint64_t>(limit, reopen_after_ - done_);
      }
      // Moved out, not copied: Record() waits on this lock.
      size_t bytes = 0;
      while (taken.size() < limit && (taken.empty() || bytes + lines_.front().size() <= kMaxBatchBytes)) {
        bytes += lines_.front().size();
        taken.push_back(std::move(lines_.front()));
        lines_.pop_front();
      }
      reopen_now = reopen_ && done_ + taken.size() == reopen_after_;
      if (taken.empty() && !reopen_now) {
        if (stopping_) return;  // drained
        continue;
      }
    }
    uint64_t lost = 0;
    if (!taken.empty()) {
      batch.clear();
      for (const std::string& line : taken) batch += line;
      lost = WriteLines(batch, taken.size());
    }
    if (reopen_now) ReopenFile();
    absl::MutexLock lock(&mutex_);
    done_ += taken.size();
    dropped_ += lost;
    // A Reopen() that came while reopening asks for another one, after its own lines.
    if (reopen_now && reopen_after_ == reopen_after) reopen_ = false;
  }
}

uint64_t EventLog::WriteLines(std::string_view data, uint64_t lines) {
  // After a short write the file ends inside a line: end it first, so that what follows parses.
  std::string repaired;
  if (mid_line_) {
    repaired = absl::StrCat("\n", absl::string_view(data.data(), data.size()));
    data = repaired;
  }
  size_t written = 0;
  int error_number = 0;
  while (written < data.size()) {
    const ssize_t n = ::write(fd_, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      error_number = errno;
      break;
    }
    if (n == 0) {
      error_number = EIO;
      break;
    }
    written += static_cast<size_t>(n);
  }
  if (written > 0) mid_line_ = data[written - 1] != '\n';
  if (error_number == 0) return 0;
  ReportWriteError(error_number);
  // The lines whose newline was written made it; the rest are lost.
  const uint64_t complete =
      static_cast<uint64_t>(std::count(data.begin(), data.begin() + written, '\n')) -
      (repaired.empty() || written == 0 ? 0 : 1);
  return lines - std::min(lines, complete);
}

void EventLog::ReopenFile() {
  const int fd = OpenForAppend(path_);
  if (fd < 0) {
    Log(LogLevel::kError, "events log %s: reopen failed, still writing to the old file: %s",
        path_, std::strerror(errno));
    return;
  }
  ::close(fd_);
  fd_ = fd;
  mid_line_ = EndsInsideALine(fd_);
}

void EventLog::ReportWriteError(int error_number) {
  // A full or failing disk fails every write: one report a minute says it, with the count.
  const absl::Time now = clock_.Now();
  if (last_error_report_ != absl::InfinitePast() &&
      now - last_error_report_ < kErrorReportInterval) {
    ++unreported_errors_;
    return;
  }
  Log(LogLevel::kError, "events log %s: write failed, lines lost: %s%s", path_,
      std::strerror(error_number),
      unreported_errors_ == 0
          ? std::string()
          : absl::StrCat(" (", unreported_errors_, " more failed writes since the last report)"));
  last_error_report_ = now;
  unreported_errors_ = 0;
}

}  // namespace facteur::events
