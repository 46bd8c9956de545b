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

namespace facteur::events {
namespace {

// One write(2) carries the queued lines up to about this much; more waits for the next.
constexpr size_t kMaxBatchBytes = 1 << 20;
// A busy writer (it wrote less than kGatherTime ago) lets lines gather until kGatherTime after
// its last write, or until kGatherLines are queued: one wake-up and one write(2) for many
// lines. Waking it for each line cost a context switch per event (two per message: reception,
// delivery) on a busy relay. An idle one writes a line at once: a quiet relay's events are
// in the file as soon as they happen.
constexpr absl::Duration kGatherTime = absl::Milliseconds(20);
constexpr size_t kGatherLines = 256;
constexpr absl::Duration kErrorReportInterval = absl::Minutes(1);

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", t, absl::UTCTimeZone());
}

// `d` in seconds to the millisecond, in the shortest form with at least one decimal ("61.5",
// "1.235", "5.0").
void AppendSeconds(std::string& out, absl::Duration d) {
  int64_t millis = std::llround(absl::ToDoubleMilliseconds(d));
  if (millis < 0) {
    out += '-';
    millis = -millis;
  }
  absl::StrAppend(&out, millis / 1000, ".");
  int64_t fraction = millis % 1000;
  if (fraction == 0) {
    out += '0';
    return;
  }
  char digits[3] = {static_cast<char>('0' + fraction / 100), static_cast<char>('0' + fraction / 10 % 10),
                    static_cast<char>('0' + fraction % 10)};
  size_t length = 3;
  while (digits[length - 1] == '0') --length;
  out.append(digits, length);
}

// How many octets at the start of `text` form one well-formed UTF-8 sequence of two to four
// octets (RFC 3629 §4: no overlong forms, no surrogates, nothing past U+10FFFF); 0 when they
// do not.
size_t WellFormedSequenceLength(std::string_view text) {
  const auto octet = [&text](size_t i) { return static_cast<unsigned char>(text[i]); };
  const auto continuation = [&](size_t i, unsigned char low = 0x80, unsigned char high = 0xBF) {
    return i < text.size() && octet(i) >= low && octet(i) <= high;
  };
  const unsigned char lead = octet(0);
  if (lead >= 0xC2 && lead <= 0xDF) return continuation(1) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    const bool second = lead == 0xE0   ? continuation(1, 0xA0, 0xBF)
                        : lead == 0xED ? continuation(1, 0x80, 0x9F)
                                       : continuation(1);
    return second && continuation(2) ? 3 : 0;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    const bool second = lead == 0xF0   ? continuation(1, 0x90, 0xBF)
                        : lead == 0xF4 ? continuation(1, 0x80, 0x8F)
                                       : continuation(1);
    return second && continuation(2) && continuation(3) ? 4 : 0;
  }
  return 0;
}

// Appends `text` as a JSON string (RFC 8259 §7): quotation mark, reverse solidus and control
// characters escaped, and each octet that does not start a well-formed UTF-8 sequence replaced
// by U+FFFD, so that a line stays valid JSON whatever a remote server sent.
void AppendJsonString(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  size_t i = 0;
  while (i < text.size()) {
    // The common case, a run of printable ASCII, in one append.
    size_t run = i;
    while (run < text.size() && static_cast<unsigned char>(text[run]) >= 0x20 &&
           static_cast<unsigned char>(text[run]) < 0x80 && text[run] != '"' && text[run] != '\\') {
      ++run;
    }
    out.append(text.substr(i, run - i));
    i = run;
    if (i == text.size()) break;
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      const size_t length = WellFormedSequenceLength(text.substr(i));
      if (length == 0) {
        out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
        ++i;
      } else {
        out.append(text.substr(i, length));
        i += length;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
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
    case EventType::kWarmupCap: return "warmup_cap";
    case EventType::kDeletion: return "deletion";
  }
  return "unknown";
}

std::string FormatEvent(const Event& event) {
  // Written directly rather than through a JSON DOM: one line per recipient and attempt, on the
  // delivery path. Keys in the order of the struct, "time" and "type" first, for people.
  std::string out;
  out.reserve(256 + event.response.size());
  out += "{\"time\":\"";
  out += Rfc3339(event.time);
  out += "\",\"type\":\"";
  out += EventTypeName(event.type);
  out += '"';
  const auto key = [&out](const char* name) {
    out += ",\"";
    out += name;
    out += "\":";
  };
  const auto text = [&](const char* name, const std::string& value) {
    if (value.empty()) return;
    key(name);
    AppendJsonString(out, value);
  };
  const auto number = [&](const char* name, auto value) {
    if (value == 0) return;
    key(name);
    absl::StrAppend(&out, value);
  };
  const auto seconds = [&](const char* name, absl::Duration value) {
    if (value == absl::ZeroDuration()) return;
    key(name);
    AppendSeconds(out, value);
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
  text("source", event.source);
  number("code", event.code);
  text("enhanced", event.enhanced);
  text("response", event.response);
  number("attempt", event.attempt);
  seconds("queue_time", event.queue_time);
  seconds("delivery_time", event.delivery_time);
  if (event.tls) out += ",\"tls\":true";
  if (event.next_attempt != absl::InfinitePast()) {
    key("next_attempt");
    out += '"';
    out += Rfc3339(event.next_attempt);
    out += '"';
  }
  text("detail", event.detail);
  out += '}';
  return out;
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
  ++flushing_;
  mutex_.Await(absl::Condition(&flushed));
  --flushing_;
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
      const absl::Duration since_last_write = absl::Now() - last_write_;
      if (since_last_write < kGatherTime) {
        const auto gathered = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_) {
          return stopping_ || reopen_ || flushing_ > 0 || lines_.size() >= kGatherLines;
        };
        mutex_.AwaitWithTimeout(absl::Condition(&gathered), kGatherTime - since_last_write);
      }
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
      last_write_ = absl::Now();
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
