// File: engine/events/event_log.h
// The events log: one JSON object per line for each reception, delivery, transient failure,
// bounce, expiration and suspension (DESIGN.md §6), for log pipelines. Record() never blocks
// and never does I/O: it formats the line and queues it for one writer thread, which appends
// to the file, many lines per write(2), within 20 ms of Record(); when the queue is full
// (the disk stalls) lines are dropped and counted rather than stalling an I/O shard. A failed
// write (EIO, ENOSPC) loses that batch, counts its lines as dropped and is logged at most once
// a minute; the writer goes on with the next lines. Reopen() (on SIGHUP) reopens the path, for
// logrotate: rename the file away, Reopen(), and the lines recorded after the call go to a new
// file at the path.
// Thread contract: thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"

namespace facteur::events {

// kAccountSuspended: a submission account stopped for unusual sending volume (issue #5).
// kWarmupCap: a new source used up its warmup cap for a site today (issue #5 point 5).
// kDeletion: a recipient left undelivered when the administrator deleted its message.
enum class EventType {
  kReception,
  kDelivery,
  kTransientFailure,
  kBounce,
  kExpiration,
  kSuspension,
  kAccountSuspended,
  kWarmupCap,
  kDeletion,
};

// "reception", "delivery", "transient_failure", "bounce", "expiration", "suspension",
// "account_suspended", "warmup_cap", "deletion".
const char* EventTypeName(EventType type);

// One event. Empty strings, zero numbers, zero durations, false and InfinitePast are left out
// of the line. The JSON keys are the field names below; times are RFC 3339 UTC with
// milliseconds ("2026-11-23T15:53:00.123Z"), durations are seconds with millisecond
// precision (a JSON number: 1.25).
struct Event {
  EventType type = EventType::kDelivery;
  absl::Time time;            // "time", always written
  std::string queue_id;
  std::string sender;
  std::string recipient;      // one line per recipient for delivery outcomes
  // Reception.
  std::string listener;
  std::string client;
  std::string account;
  uint64_t size = 0;
  uint32_t recipients = 0;
  // Delivery outcomes.
  std::string domain;         // the recipient's domain
  std::string site;           // the delivery destination (route or MX set)
  std::string mx;             // "mx1.example.net[192.0.2.1]:25" that answered
  std::string source_ip;
  std::string source;         // the [[source]] name (suspension, warmup_cap)
  int code = 0;
  std::string enhanced;
  std::string response;       // the reply text
  uint32_t attempt = 0;       // 1 for the first attempt
  absl::Duration queue_time = absl::ZeroDuration();     // since reception
  absl::Duration delivery_time = absl::ZeroDuration();  // this attempt
  bool tls = false;
  // Transient failures: the next attempt; suspension, warmup_cap: when it lifts.
  absl::Time next_attempt = absl::InfinitePast();
  std::string detail;         // free text (suspension reason, the DSN's queue id, ...)
};

// The JSON line for `event` (without the newline): {"time":"2026-…Z","type":"delivery",...},
// keys in the order of the struct. Strings from outside (a server's reply) may hold anything:
// control characters are escaped and malformed UTF-8 is replaced by U+FFFD, so a line is
// always one valid JSON object.
std::string FormatEvent(const Event& event);

class EventLog {
 public:
  // Opens (creating, mode 0640, appending) `path` and starts the writer thread. `clock` paces
  // the write-error reports; it must outlive the log.
  static absl::StatusOr<std::unique_ptr<EventLog>> Open(const std::string& path,
                                                        size_t max_queued_lines = 65536,
                                                        Clock& clock = RealClock::Get());
  ~EventLog();  // writes what is queued, then closes
  EventLog(const EventLog&) = delete;
  EventLog& operator=(const EventLog&) = delete;

  void Record(const Event& event);
  // Asks the writer to reopen the path once it has written the lines recorded before this call
  // (log rotation). Does not wait. When the path cannot be opened, the error is logged and the
  // writer keeps the file it had.
  void Reopen();
  // Lines lost: refused because the queue was full, or in a failed write.
  uint64_t dropped() const;
  // Blocks until every line recorded so far is written (or lost to a write error) and a
  // Reopen() asked for before is done (tests, shutdown).
  void Flush();

 private:
  EventLog(std::string path, int fd, size_t max_queued_lines, Clock& clock);
  void Run();
  // Writer thread: appends `data` (whole lines); returns how many lines were lost.
  uint64_t WriteLines(std::string_view data, uint64_t lines);
  void ReopenFile();
  void ReportWriteError(int error_number);

  const std::string path_;
  const size_t max_queued_lines_;
  Clock& clock_;
  mutable absl::Mutex mutex_;
  std::deque<std::string> lines_ ABSL_GUARDED_BY(mutex_);  // each with its newline
  bool reopen_ ABSL_GUARDED_BY(mutex_) = false;
  uint64_t reopen_after_ ABSL_GUARDED_BY(mutex_) = 0;  // `recorded_` when Reopen() was called
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  int flushing_ ABSL_GUARDED_BY(mutex_) = 0;  // Flush() calls waiting: no gathering
  uint64_t dropped_ ABSL_GUARDED_BY(mutex_) = 0;
  uint64_t recorded_ ABSL_GUARDED_BY(mutex_) = 0;  // lines queued, ever
  uint64_t done_ ABSL_GUARDED_BY(mutex_) = 0;      // of those, written or lost by the writer
  // Writer thread only after construction.
  int fd_;
  bool mid_line_ = false;  // the file ends inside a line (a short write, or as we found it)
  absl::Time last_error_report_ = absl::InfinitePast();
  absl::Time last_write_ = absl::InfinitePast();  // real time: paces the gathering
  uint64_t unreported_errors_ = 0;
  std::thread thread_;
};

}  // namespace facteur::events
