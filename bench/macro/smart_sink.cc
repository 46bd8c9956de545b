// File: bench/macro/smart_sink.cc
// smart_sink: the benchmark sink of issue #7 point 2. An SMTP server on loopback that stores
// nothing and answers each recipient (RCPT TO) with a behaviour chosen from a hash of its
// address, per domain: accept (250), greylist (450 4.2.0 as Postgrey through Postfix words it,
// until --greylist_delay after the first attempt of the (client IP, sender, recipient) triplet),
// ratelimit (451 4.7.1 for the recipient, or 421 4.7.0 closing the session, until
// --ratelimit_delay after the first attempt of the triplet) or reject (550 5.1.1). A benchmark
// thereby measures a relay's retry path, not only its happy path.
//
//   smart_sink --listen=127.0.0.1:0 --default=accept=100 --greylist_delay=5
//     --rule='d1*.sink.test:accept=70,greylist=20,ratelimit=5,reject=5' --stats=FILE
//
// The first line on stdout is the port listened on. Counters are printed as one line on SIGUSR1
// and at exit (SIGTERM, SIGINT), and --stats=FILE is rewritten atomically (rename) within
// 200 ms of any change, with the same line:
//   sessions=N messages=N null_sender=N accepted=N greylisted=N ratelimited=N rejected=N
//   delivered=N greylist_passed=N ratelimit_passed=N bytes=N errors=N
// The bucket of an address is FNV-1a 64 of its lowercased text, xored with --seed, through the
// splitmix64 finaliser, modulo 10,000 (basis points), against the cumulative shares in the order
// accept, greylist, ratelimit, reject: a script can predict it (bench/macro/smart_sink_test.py).
//
// Thread contract: --threads worker threads, each with its own epoll set and its own sessions
// (a session never changes thread); they share the listening socket (EPOLLEXCLUSIVE), the
// immutable Config, the Counters (atomics) and the DeferralTable (a mutex). The main thread only
// waits for signals and writes the stats file. Loopback only: 127.0.0.0/8 and ::1.
#include <arpa/inet.h>
#include <fnmatch.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

namespace facteur::bench {
namespace {

constexpr size_t kInputBufferSize = 64 * 1024;
// RFC 5321 §4.5.3.1.4 says 512 for a command line; parameters make real ones longer.
constexpr size_t kMaxCommandLine = 4096;
constexpr int kMaxRecipients = 1000;  // RFC 5321 §4.5.3.1.8 asks for at least 100
constexpr int kBasisPoints = 10000;
constexpr int64_t kStatsPeriodNs = 200'000'000;

int64_t MonotonicNanos() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// ---- Configuration ---------------------------------------------------------------------------

enum Behaviour : uint8_t { kAccept, kGreylist, kRateLimit, kReject, kBehaviourCount };
constexpr std::array<absl::string_view, kBehaviourCount> kBehaviourNames = {
    "accept", "greylist", "ratelimit", "reject"};

// Shares of the recipients, in basis points, summing to 10,000.
using Shares = std::array<int, kBehaviourCount>;

struct Rule {
  std::string pattern;  // fnmatch(3) glob over the recipient's lowercased domain
  Shares shares{};
};

struct Config {
  std::string listen = "127.0.0.1:0";
  std::vector<Rule> rules;  // the first whose pattern matches wins
  Shares default_shares = {kBasisPoints, 0, 0, 0};
  int64_t greylist_delay_ns = 300'000'000'000;  // Postgrey's default
  int64_t ratelimit_delay_ns = -1;              // -1: the greylist delay
  bool ratelimit_closes = false;                // 421 and close, instead of 451 per recipient
  std::string stats_path;
  int threads = 1;
  int64_t max_size = 50 * 1024 * 1024;
  std::string hostname = "sink.localhost";
  uint64_t seed = 0;
  int64_t idle_timeout_ns = 300'000'000'000;  // RFC 5321 §4.5.3.2.7: 5 minutes
};

// "accept=70,greylist=20,ratelimit=5,reject=5": percentages (two decimals at most), those left
// out are 0, and they must sum to 100.
bool ParseShares(absl::string_view text, Shares* shares, std::string* error) {
  *shares = Shares{};
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(item, '=');
    absl::string_view name = absl::StripAsciiWhitespace(kv.first);
    int index = -1;
    for (int i = 0; i < kBehaviourCount; ++i) {
      if (name == kBehaviourNames[i]) index = i;
    }
    double percent = 0;
    if (index < 0 || !absl::SimpleAtod(absl::StripAsciiWhitespace(kv.second), &percent) ||
        !(percent >= 0 && percent <= 100)) {
      *error = absl::StrCat("bad share '", item,
                            "': write accept|greylist|ratelimit|reject=PERCENT");
      return false;
    }
    (*shares)[index] = static_cast<int>(std::lround(percent * 100));
  }
  int sum = 0;
  for (int share : *shares) sum += share;
  if (sum != kBasisPoints) {
    *error = absl::StrFormat("shares '%s' sum to %.2f%%, not 100%%", text, sum / 100.0);
    return false;
  }
  return true;
}

bool ParseSeconds(absl::string_view text, int64_t* ns) {
  double seconds = 0;
  if (!absl::SimpleAtod(text, &seconds) || !(seconds >= 0) || seconds > 1e7) return false;
  *ns = static_cast<int64_t>(seconds * 1e9);
  return true;
}

constexpr absl::string_view kUsage =
    "usage: smart_sink [--listen=127.0.0.1:PORT] [--rule='GLOB:accept=P,greylist=P,ratelimit=P,"
    "reject=P']...\n"
    "  [--default=accept=100] [--greylist_delay=SECONDS] [--ratelimit_delay=SECONDS]\n"
    "  [--ratelimit_reply=451|421] [--stats=FILE] [--threads=N] [--max_size=BYTES]\n"
    "  [--hostname=NAME] [--seed=N] [--idle_timeout=SECONDS] [--config=FILE]\n"
    "A rule's GLOB matches the recipient's domain (fnmatch, lowercase); the first rule that\n"
    "matches wins, else --default. Flags may be spelled with '-' or '_'. --config=FILE holds\n"
    "one flag per line without the leading '--' ('#' starts a comment). Port 0 picks a port;\n"
    "the port is the first line on stdout.\n";

bool ApplyFlag(std::string name, absl::string_view value, Config* config, std::string* error,
               int depth);

bool ReadConfigFile(const std::string& path, Config* config, std::string* error, int depth) {
  if (depth > 4) {
    *error = "--config files nest too deeply";
    return false;
  }
  std::ifstream file(path);
  if (!file) {
    *error = absl::StrCat("cannot read --config file '", path, "'");
    return false;
  }
  std::string line;
  int number = 0;
  while (std::getline(file, line)) {
    ++number;
    absl::string_view text = line;
    if (size_t hash = text.find('#'); hash != absl::string_view::npos) {
      text = text.substr(0, hash);
    }
    text = absl::StripAsciiWhitespace(text);
    if (text.empty()) continue;
    absl::ConsumePrefix(&text, "--");
    size_t split = text.find_first_of("= \t");
    std::string name(text.substr(0, split));
    absl::string_view value =
        split == absl::string_view::npos ? "" : absl::StripAsciiWhitespace(text.substr(split + 1));
    if (!ApplyFlag(name, value, config, error, depth + 1)) {
      *error = absl::StrCat(path, ":", number, ": ", *error);
      return false;
    }
  }
  return true;
}

bool ApplyFlag(std::string name, absl::string_view value, Config* config, std::string* error,
               int depth) {
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  bool ok = true;
  if (name == "listen") {
    config->listen = std::string(value);
  } else if (name == "rule") {
    size_t colon = value.find(':');
    Rule rule;
    if (colon == absl::string_view::npos || colon == 0) {
      *error = absl::StrCat("bad --rule '", value, "': write GLOB:SHARES");
      return false;
    }
    rule.pattern = absl::AsciiStrToLower(value.substr(0, colon));
    if (!ParseShares(value.substr(colon + 1), &rule.shares, error)) return false;
    config->rules.push_back(std::move(rule));
  } else if (name == "default") {
    return ParseShares(value, &config->default_shares, error);
  } else if (name == "greylist_delay") {
    ok = ParseSeconds(value, &config->greylist_delay_ns);
  } else if (name == "ratelimit_delay") {
    ok = ParseSeconds(value, &config->ratelimit_delay_ns);
  } else if (name == "ratelimit_reply") {
    ok = value == "451" || value == "421";
    config->ratelimit_closes = value == "421";
  } else if (name == "stats") {
    config->stats_path = std::string(value);
  } else if (name == "threads") {
    ok = absl::SimpleAtoi(value, &config->threads) && config->threads >= 1 &&
         config->threads <= 64;
  } else if (name == "max_size") {
    ok = absl::SimpleAtoi(value, &config->max_size) && config->max_size > 0;
  } else if (name == "hostname") {
    config->hostname = std::string(value);
    ok = !value.empty() && value.find_first_of(" \r\n") == absl::string_view::npos;
  } else if (name == "seed") {
    ok = absl::SimpleAtoi(value, &config->seed);
  } else if (name == "idle_timeout") {
    ok = ParseSeconds(value, &config->idle_timeout_ns) && config->idle_timeout_ns > 0;
  } else if (name == "config") {
    return ReadConfigFile(std::string(value), config, error, depth);
  } else {
    *error = absl::StrCat("unknown flag --", name);
    return false;
  }
  if (!ok) *error = absl::StrCat("bad value '", value, "' for --", name);
  return ok;
}

// --name=value or --name value.
bool ParseArgs(int argc, char** argv, Config* config, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *error = "";
      return false;
    }
    if (!absl::ConsumePrefix(&arg, "--")) {
      *error = absl::StrCat("unexpected argument '", arg, "'");
      return false;
    }
    size_t eq = arg.find('=');
    std::string name(arg.substr(0, eq));
    absl::string_view value;
    if (eq != absl::string_view::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      *error = absl::StrCat("--", name, " needs a value");
      return false;
    }
    if (!ApplyFlag(name, value, config, error, 0)) return false;
  }
  if (config->ratelimit_delay_ns < 0) config->ratelimit_delay_ns = config->greylist_delay_ns;
  return true;
}

// Loopback only: 127.0.0.0/8 or [::1].
bool ParseListen(const std::string& text, sockaddr_storage* address, socklen_t* length) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = text.substr(0, colon);
  uint32_t port = 0;
  if (!absl::SimpleAtoi(text.substr(colon + 1), &port) || port > 65535) return false;
  *address = sockaddr_storage{};
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(address);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6->sin6_addr) != 1) {
      return false;
    }
    *length = sizeof(sockaddr_in6);
    return IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
  }
  auto* v4 = reinterpret_cast<sockaddr_in*>(address);
  v4->sin_family = AF_INET;
  v4->sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) != 1) return false;
  *length = sizeof(sockaddr_in);
  return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
}

// ---- Behaviour choice ------------------------------------------------------------------------

// FNV-1a 64 of the lowercased address, xored with the seed, through splitmix64's finaliser (the
// FNV low bits alone are poorly mixed), modulo 10,000.
int Bucket(absl::string_view lowered_address, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : lowered_address) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  h ^= seed;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return static_cast<int>(h % kBasisPoints);
}

Behaviour Choose(const Config& config, absl::string_view lowered_address) {
  size_t at = lowered_address.rfind('@');
  std::string domain(at == absl::string_view::npos ? "" : lowered_address.substr(at + 1));
  const Shares* shares = &config.default_shares;
  for (const Rule& rule : config.rules) {
    if (fnmatch(rule.pattern.c_str(), domain.c_str(), 0) == 0) {
      shares = &rule.shares;
      break;
    }
  }
  int bucket = Bucket(lowered_address, config.seed);
  int upper = 0;
  for (int i = 0; i < kBehaviourCount; ++i) {
    upper += (*shares)[i];
    if (bucket < upper) return static_cast<Behaviour>(i);
  }
  return kAccept;  // unreachable: shares sum to 10,000
}

// ---- Shared state ----------------------------------------------------------------------------

// Thread-safe: relaxed atomics, read as a snapshot by the main thread.
struct Counters {
  std::atomic<int64_t> sessions{0};
  std::atomic<int64_t> messages{0};     // 250 at the end of DATA
  std::atomic<int64_t> null_sender{0};  // of those, with MAIL FROM:<> (DSNs)
  std::atomic<int64_t> accepted{0};     // RCPT 250, retries let through included
  std::atomic<int64_t> greylisted{0};   // RCPT 450
  std::atomic<int64_t> ratelimited{0};  // RCPT 451 or 421
  std::atomic<int64_t> rejected{0};     // RCPT 550
  std::atomic<int64_t> delivered{0};    // recipients of the messages that got 250
  std::atomic<int64_t> greylist_passed{0};
  std::atomic<int64_t> ratelimit_passed{0};
  std::atomic<int64_t> bytes{0};   // message bytes after dot-unstuffing, of the 250'd messages
  std::atomic<int64_t> errors{0};  // 5xx to bad commands, oversized messages, idle timeouts

  std::string Line() const {
    auto get = [](const std::atomic<int64_t>& value) {
      return value.load(std::memory_order_relaxed);
    };
    return absl::StrFormat(
        "sessions=%d messages=%d null_sender=%d accepted=%d greylisted=%d ratelimited=%d "
        "rejected=%d delivered=%d greylist_passed=%d ratelimit_passed=%d bytes=%d errors=%d",
        get(sessions), get(messages), get(null_sender), get(accepted), get(greylisted),
        get(ratelimited), get(rejected), get(delivered), get(greylist_passed),
        get(ratelimit_passed), get(bytes), get(errors));
  }
};

// The first attempt of each deferred (client IP, sender, recipient) triplet. Thread-safe.
class DeferralTable {
 public:
  // True when the triplet's first attempt is at least `delay_ns` old; records a new triplet.
  bool Passed(std::string key, int64_t now_ns, int64_t delay_ns) {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = first_attempt_ns_.try_emplace(std::move(key), now_ns);
    return !inserted && now_ns - it->second >= delay_ns;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, int64_t> first_attempt_ns_ ABSL_GUARDED_BY(mu_);
};

// ---- DATA framing ----------------------------------------------------------------------------

// Finds the end of the mail data, CRLF "." CRLF (RFC 5321 §4.1.1.4; a bare LF never ends it,
// the SMTP smuggling lesson), and counts the message's bytes after removing the leading dot
// of stuffed lines (§4.5.2). Starts at a line start: just after the DATA command's CRLF.
class DataScanner {
 public:
  void Reset() {
    state_ = State::kLineStart;
    bytes_ = 0;
  }
  int64_t bytes() const { return bytes_; }

  // Consumes data[0, size); returns the bytes consumed, up to and including the final
  // ".\r\n" when *done.
  size_t Scan(const char* data, size_t size, bool* done) {
    *done = false;
    size_t i = 0;
    while (i < size) {
      char c = data[i];
      switch (state_) {
        case State::kLineStart:
          if (c == '.') {
            state_ = State::kDot;
            ++i;
          } else {
            state_ = State::kText;
          }
          break;
        case State::kDot:
          if (c == '\r') {
            state_ = State::kDotCr;
            ++i;
          } else {
            state_ = State::kText;  // a stuffed dot: dropped, the line goes on
          }
          break;
        case State::kDotCr:
          if (c == '\n') {
            *done = true;
            return i + 1;
          }
          ++bytes_;  // ".\r" then more: the dot was stuffing, the CR is text
          state_ = State::kCr;
          break;
        case State::kText: {
          const void* cr = memchr(data + i, '\r', size - i);
          if (cr == nullptr) {
            bytes_ += size - i;
            return size;
          }
          size_t at = static_cast<const char*>(cr) - data;
          bytes_ += at - i + 1;
          i = at + 1;
          state_ = State::kCr;
          break;
        }
        case State::kCr:
          ++bytes_;
          ++i;
          state_ = c == '\n' ? State::kLineStart : c == '\r' ? State::kCr : State::kText;
          break;
      }
    }
    return size;
  }

 private:
  enum class State : uint8_t { kLineStart, kDot, kDotCr, kText, kCr };
  State state_ = State::kLineStart;
  int64_t bytes_ = 0;
};

// ---- Sessions --------------------------------------------------------------------------------

struct Session {
  int fd = -1;
  std::string peer_ip;
  std::unique_ptr<char[]> in = std::make_unique<char[]>(kInputBufferSize);
  size_t in_start = 0;
  size_t in_end = 0;
  std::string out;
  size_t out_offset = 0;
  bool writing = false;  // EPOLLOUT armed, reading paused until `out` drains
  bool close_after_flush = false;
  bool peer_closed = false;
  bool discarding_line = false;  // an overlong command line, skipped to its LF
  int64_t last_activity_ns = 0;

  bool in_data = false;
  DataScanner scanner;
  bool helo_seen = false;
  bool mail_seen = false;
  std::string sender;  // lowercased, empty for the null sender
  int recipients = 0;
  int accepted = 0;

  void ResetTransaction() {
    mail_seen = false;
    sender.clear();
    recipients = 0;
    accepted = 0;
  }
};

class Worker {
 public:
  Worker(const Config& config, int index, int listen_fd, Counters& counters,
         DeferralTable& deferrals)
      : config_(config),
        index_(index),
        listen_fd_(listen_fd),
        counters_(counters),
        deferrals_(deferrals) {}
  ~Worker() {
    for (auto& [fd, session] : sessions_) close(fd);
    if (wake_fd_ >= 0) close(wake_fd_);
    if (epoll_fd_ >= 0) close(epoll_fd_);
  }

  bool Init();
  void Run();
  void Stop() {
    stop_.store(true);
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  }

 private:
  void Accept();
  void OnReadable(Session& s);
  void OnWritable(Session& s);
  void Process(Session& s);
  void OnCommand(Session& s, absl::string_view line);
  void OnMail(Session& s, absl::string_view args);
  void OnRcpt(Session& s, absl::string_view args);
  void OnEndOfData(Session& s);
  void Reply(Session& s, absl::string_view text) {
    s.out.append(text.data(), text.size());
    s.out.append("\r\n");
  }
  // Writes what it can; false when the session was closed (and destroyed).
  bool Flush(Session& s);
  void Close(Session& s);
  void SweepIdle(int64_t now);

  const Config& config_;
  const int index_;
  const int listen_fd_;
  Counters& counters_;
  DeferralTable& deferrals_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::unordered_map<int, std::unique_ptr<Session>> sessions_;
  uint64_t queue_ids_ = 0;
  // Tags for epoll_event.data.ptr: the listening socket and the wake eventfd; else a Session.
  char listen_tag_ = 0;
  char wake_tag_ = 0;
};

bool Worker::Init() {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return false;
  epoll_event event{};
  event.events = EPOLLIN | EPOLLEXCLUSIVE;  // one worker woken per connection, not all
  event.data.ptr = &listen_tag_;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &event) != 0) return false;
  event.events = EPOLLIN;
  event.data.ptr = &wake_tag_;
  return epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &event) == 0;
}

void Worker::Run() {
  constexpr int kMaxEvents = 128;
  epoll_event events[kMaxEvents];
  int64_t next_sweep = MonotonicNanos() + 1'000'000'000;
  while (!stop_.load()) {
    int count = epoll_wait(epoll_fd_, events, kMaxEvents, 1000);
    if (count < 0 && errno != EINTR) {
      absl::FPrintF(stderr, "smart_sink: epoll_wait: %s\n", strerror(errno));
      return;
    }
    for (int i = 0; i < count; ++i) {
      void* tag = events[i].data.ptr;
      if (tag == &wake_tag_) continue;
      if (tag == &listen_tag_) {
        Accept();
        continue;
      }
      Session& s = *static_cast<Session*>(tag);
      if (s.writing) {
        if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) OnWritable(s);
      } else if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        OnReadable(s);
      }
    }
    int64_t now = MonotonicNanos();
    if (now >= next_sweep) {
      SweepIdle(now);
      next_sweep = now + 1'000'000'000;
    }
  }
}

void Worker::Accept() {
  while (true) {
    sockaddr_storage peer{};
    socklen_t length = sizeof(peer);
    int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &length,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        absl::FPrintF(stderr, "smart_sink: accept: %s\n", strerror(errno));
      }
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto session = std::make_unique<Session>();
    Session& s = *session;
    s.fd = fd;
    char text[INET6_ADDRSTRLEN] = "";
    if (peer.ss_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&peer)->sin_addr, text, sizeof(text));
    } else {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr, text,
                sizeof(text));
    }
    s.peer_ip = text;
    s.last_activity_ns = MonotonicNanos();
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = &s;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
      close(fd);
      continue;
    }
    sessions_.emplace(fd, std::move(session));
    counters_.sessions.fetch_add(1, std::memory_order_relaxed);
    Reply(s, absl::StrCat("220 ", config_.hostname, " ESMTP smart_sink"));
    Flush(s);
  }
}

void Worker::OnReadable(Session& s) {
  // Room at the end of the buffer; a command line is at most kMaxCommandLine, so compacting
  // always leaves room.
  if (s.in_end == kInputBufferSize) {
    memmove(s.in.get(), s.in.get() + s.in_start, s.in_end - s.in_start);
    s.in_end -= s.in_start;
    s.in_start = 0;
  }
  ssize_t n = recv(s.fd, s.in.get() + s.in_end, kInputBufferSize - s.in_end, 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    Close(s);
    return;
  }
  if (n == 0) {
    s.peer_closed = true;
  } else {
    s.in_end += n;
    s.last_activity_ns = MonotonicNanos();
  }
  Process(s);
  Flush(s);  // closes once drained if the peer has closed its side
}

// Every complete command (or the data) in the buffer; the replies of a pipelined group
// (RFC 2920) go out in one write.
void Worker::Process(Session& s) {
  while (s.in_start < s.in_end && !s.close_after_flush) {
    const char* begin = s.in.get() + s.in_start;
    size_t available = s.in_end - s.in_start;
    if (s.in_data) {
      bool done = false;
      s.in_start += s.scanner.Scan(begin, available, &done);
      if (done) OnEndOfData(s);
      continue;
    }
    const void* lf = memchr(begin, '\n', available);
    if (lf == nullptr) {
      if (available > kMaxCommandLine && !s.discarding_line) {
        s.discarding_line = true;
        counters_.errors.fetch_add(1, std::memory_order_relaxed);
        Reply(s, "500 5.5.2 Error: line too long");
      }
      if (s.discarding_line) s.in_start = s.in_end;
      break;
    }
    size_t length = static_cast<const char*>(lf) - begin;
    s.in_start += length + 1;
    if (s.discarding_line) {
      s.discarding_line = false;
      continue;
    }
    absl::string_view line(begin, length);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    OnCommand(s, line);
  }
  if (s.in_start == s.in_end) s.in_start = s.in_end = 0;
}

void Worker::OnCommand(Session& s, absl::string_view line) {
  absl::string_view verb = line.substr(0, line.find(' '));
  absl::string_view args = verb.size() < line.size() ? line.substr(verb.size() + 1) : "";
  auto is = [verb](absl::string_view name) { return absl::EqualsIgnoreCase(verb, name); };
  if (is("EHLO")) {
    s.helo_seen = true;
    s.ResetTransaction();
    Reply(s, absl::StrCat("250-", config_.hostname, "\r\n250-PIPELINING\r\n250-SIZE ",
                          config_.max_size, "\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES"));
  } else if (is("HELO")) {
    s.helo_seen = true;
    s.ResetTransaction();
    Reply(s, absl::StrCat("250 ", config_.hostname));
  } else if (is("MAIL")) {
    OnMail(s, args);
  } else if (is("RCPT")) {
    OnRcpt(s, args);
  } else if (is("DATA")) {
    if (!s.mail_seen) {
      Reply(s, "503 5.5.1 Error: need RCPT command");
    } else if (s.accepted == 0) {
      // RFC 2920 §3.1: with every recipient refused, DATA fails and no body follows.
      Reply(s, "554 5.5.1 Error: no valid recipients");
    } else {
      s.in_data = true;
      s.scanner.Reset();
      Reply(s, "354 End data with <CR><LF>.<CR><LF>");
    }
  } else if (is("RSET")) {
    s.ResetTransaction();
    Reply(s, "250 2.0.0 Ok");
  } else if (is("NOOP")) {
    Reply(s, "250 2.0.0 Ok");
  } else if (is("QUIT")) {
    Reply(s, "221 2.0.0 Bye");
    s.close_after_flush = true;
  } else if (is("VRFY")) {
    Reply(s, "252 2.0.0 Send some mail, I'll try my best");
  } else if (is("STARTTLS") || is("BDAT") || is("AUTH") || is("ETRN") || is("EXPN")) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Reply(s, "502 5.5.1 Error: command not implemented");
  } else {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Reply(s, "500 5.5.2 Error: command not recognized");
  }
}

// "FROM:<path> [params]" or "TO:<path> [params]" (RFC 5321 §4.1.1.2-3): the path between the
// angle brackets (a bare path is tolerated), and what follows.
bool ParsePath(absl::string_view args, absl::string_view keyword, absl::string_view* path,
               absl::string_view* params) {
  if (!absl::StartsWithIgnoreCase(args, keyword)) return false;
  args.remove_prefix(keyword.size());
  args = absl::StripLeadingAsciiWhitespace(args);
  if (!args.empty() && args.front() == '<') {
    size_t close = args.find('>');
    if (close == absl::string_view::npos) return false;
    *path = args.substr(1, close - 1);
    *params = args.substr(close + 1);
  } else {
    size_t space = args.find(' ');
    *path = args.substr(0, space);
    *params = space == absl::string_view::npos ? "" : args.substr(space);
    if (path->empty()) return false;
  }
  // A source route "@a,@b:user@c" (RFC 5321 §4.1.2, obsolete): keep the mailbox.
  if (!path->empty() && path->front() == '@') {
    size_t colon = path->find(':');
    if (colon != absl::string_view::npos) path->remove_prefix(colon + 1);
  }
  return true;
}

void Worker::OnMail(Session& s, absl::string_view args) {
  if (!s.helo_seen) {
    Reply(s, "503 5.5.1 Error: send HELO/EHLO first");
    return;
  }
  if (s.mail_seen) {
    Reply(s, "503 5.5.1 Error: nested MAIL command");
    return;
  }
  absl::string_view path;
  absl::string_view params;
  if (!ParsePath(args, "FROM:", &path, &params)) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Reply(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
    return;
  }
  // RFC 1870 §6: a declared SIZE above the limit is refused at MAIL.
  for (absl::string_view param : absl::StrSplit(params, ' ', absl::SkipEmpty())) {
    int64_t declared = 0;
    if (absl::StartsWithIgnoreCase(param, "SIZE=") &&
        absl::SimpleAtoi(param.substr(5), &declared) && declared > config_.max_size) {
      Reply(s, "552 5.3.4 Message size exceeds fixed limit");
      return;
    }
  }
  s.mail_seen = true;
  s.sender = absl::AsciiStrToLower(path);
  Reply(s, "250 2.1.0 Ok");
}

void Worker::OnRcpt(Session& s, absl::string_view args) {
  if (!s.mail_seen) {
    Reply(s, "503 5.5.1 Error: need MAIL command");
    return;
  }
  absl::string_view path;
  absl::string_view params;
  if (!ParsePath(args, "TO:", &path, &params) || path.empty()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Reply(s, "501 5.5.4 Syntax: RCPT TO:<address>");
    return;
  }
  if (s.recipients >= kMaxRecipients) {
    Reply(s, "452 4.5.3 Error: too many recipients");
    return;
  }
  ++s.recipients;
  std::string address = absl::AsciiStrToLower(path);
  Behaviour behaviour = Choose(config_, address);
  if (behaviour == kGreylist || behaviour == kRateLimit) {
    int64_t delay = behaviour == kGreylist ? config_.greylist_delay_ns : config_.ratelimit_delay_ns;
    std::string key = absl::StrCat(s.peer_ip, "\n", s.sender, "\n", address);
    if (deferrals_.Passed(std::move(key), MonotonicNanos(), delay)) {
      (behaviour == kGreylist ? counters_.greylist_passed : counters_.ratelimit_passed)
          .fetch_add(1, std::memory_order_relaxed);
      behaviour = kAccept;
    }
  }
  size_t at = path.rfind('@');
  absl::string_view domain = at == absl::string_view::npos ? "" : path.substr(at + 1);
  switch (behaviour) {
    case kAccept:
      ++s.accepted;
      counters_.accepted.fetch_add(1, std::memory_order_relaxed);
      Reply(s, "250 2.1.5 Ok");
      break;
    case kGreylist:
      // Postgrey's DEFER_IF_PERMIT as Postfix renders it.
      counters_.greylisted.fetch_add(1, std::memory_order_relaxed);
      Reply(s, absl::StrCat("450 4.2.0 <", path, ">: Recipient address rejected: Greylisted, "
                            "see http://postgrey.schweikert.ch/help/", domain, ".html"));
      break;
    case kRateLimit:
      counters_.ratelimited.fetch_add(1, std::memory_order_relaxed);
      if (config_.ratelimit_closes) {
        Reply(s, absl::StrCat("421 4.7.0 ", config_.hostname,
                              " Error: too many messages, rate limited, try again later"));
        s.close_after_flush = true;
      } else {
        Reply(s, absl::StrCat("451 4.7.1 <", path, ">: Recipient address rejected: "
                              "Rate limit exceeded, try again later"));
      }
      break;
    case kReject:
      counters_.rejected.fetch_add(1, std::memory_order_relaxed);
      Reply(s, absl::StrCat("550 5.1.1 <", path, ">: Recipient address rejected: "
                            "User unknown in virtual mailbox table"));
      break;
    default:
      break;
  }
}

void Worker::OnEndOfData(Session& s) {
  s.in_data = false;
  if (s.scanner.bytes() > config_.max_size) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Reply(s, "552 5.3.4 Error: message file too big");
  } else {
    counters_.messages.fetch_add(1, std::memory_order_relaxed);
    counters_.delivered.fetch_add(s.accepted, std::memory_order_relaxed);
    counters_.bytes.fetch_add(s.scanner.bytes(), std::memory_order_relaxed);
    if (s.sender.empty()) counters_.null_sender.fetch_add(1, std::memory_order_relaxed);
    Reply(s, absl::StrFormat("250 2.0.0 Ok: queued as %02X%010X", index_, ++queue_ids_));
  }
  s.ResetTransaction();
}

bool Worker::Flush(Session& s) {
  while (s.out_offset < s.out.size()) {
    ssize_t n = send(s.fd, s.out.data() + s.out_offset, s.out.size() - s.out_offset,
                     MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Close(s);
      return false;
    }
    s.out_offset += n;
  }
  bool drained = s.out_offset == s.out.size();
  if (drained) {
    s.out.clear();
    s.out_offset = 0;
    if (s.close_after_flush || s.peer_closed) {
      Close(s);
      return false;
    }
  }
  // Back-pressure: while replies wait for the peer to read them, read no more commands.
  if (drained == s.writing) {
    s.writing = !drained;
    epoll_event event{};
    event.events = s.writing ? EPOLLOUT : EPOLLIN;
    event.data.ptr = &s;
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, s.fd, &event);
  }
  return true;
}

// Process() answers every buffered command before returning, so a drained session only needs
// EPOLLIN back (Flush does it) to go on.
void Worker::OnWritable(Session& s) { Flush(s); }

void Worker::Close(Session& s) {
  int fd = s.fd;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  close(fd);
  sessions_.erase(fd);  // destroys s
}

void Worker::SweepIdle(int64_t now) {
  std::vector<Session*> idle;
  for (auto& [fd, session] : sessions_) {
    if (now - session->last_activity_ns > config_.idle_timeout_ns) idle.push_back(session.get());
  }
  for (Session* s : idle) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    Reply(*s, absl::StrCat("421 4.4.2 ", config_.hostname, " Error: timeout exceeded"));
    s->close_after_flush = true;
    if (Flush(*s)) Close(*s);  // a peer that does not read its replies gets no more patience
  }
}

// ---- main ------------------------------------------------------------------------------------

bool WriteStats(const std::string& path, const std::string& line) {
  std::string temporary = absl::StrCat(path, ".tmp");
  FILE* file = fopen(temporary.c_str(), "w");
  if (file == nullptr) return false;
  bool ok = fputs(line.c_str(), file) >= 0 && fputc('\n', file) != EOF;
  ok = (fclose(file) == 0) && ok;
  return ok && rename(temporary.c_str(), path.c_str()) == 0;
}

int Main(int argc, char** argv) {
  Config config;
  std::string error;
  if (!ParseArgs(argc, argv, &config, &error)) {
    if (!error.empty()) absl::FPrintF(stderr, "smart_sink: %s\n", error);
    absl::FPrintF(stderr, "%s", kUsage);
    return error.empty() ? 0 : 2;
  }
  sockaddr_storage address{};
  socklen_t length = 0;
  if (!ParseListen(config.listen, &address, &length)) {
    absl::FPrintF(stderr,
                  "smart_sink: --listen must be a loopback 127.x.y.z:PORT or [::1]:PORT, got "
                  "'%s'\n",
                  config.listen);
    return 2;
  }
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  int listen_fd = socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (listen_fd < 0 ||
      setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(listen_fd, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listen_fd, 1024) != 0 ||
      getsockname(listen_fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    absl::FPrintF(stderr, "smart_sink: cannot listen on %s: %s\n", config.listen,
                  strerror(errno));
    return 3;
  }
  uint16_t port = address.ss_family == AF_INET
                      ? ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port)
                      : ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);

  // Signals go to the main thread only: block them before the workers start.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGUSR1);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Counters counters;
  DeferralTable deferrals;
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < config.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(config, i, listen_fd, counters, deferrals));
    if (!workers.back()->Init()) {
      absl::FPrintF(stderr, "smart_sink: epoll setup: %s\n", strerror(errno));
      return 3;
    }
  }
  std::vector<std::thread> threads;
  for (auto& worker : workers) threads.emplace_back([&worker] { worker->Run(); });

  absl::PrintF("%d\n", port);
  fflush(stdout);
  absl::FPrintF(stderr, "smart_sink: listening on %s port %d, %d thread(s), %d rule(s)\n",
                config.listen, port, config.threads, config.rules.size());

  std::string written;
  auto write_stats = [&](const std::string& line) {
    if (config.stats_path.empty() || line == written) return;
    if (WriteStats(config.stats_path, line)) {
      written = line;
    } else {
      absl::FPrintF(stderr, "smart_sink: cannot write %s: %s\n", config.stats_path,
                    strerror(errno));
    }
  };
  write_stats(counters.Line());
  timespec period{0, kStatsPeriodNs};
  while (true) {
    siginfo_t info;
    int signal_number = sigtimedwait(&signals, &info, &period);
    if (signal_number == SIGUSR1) {
      absl::PrintF("%s\n", counters.Line());
      fflush(stdout);
    } else if (signal_number == SIGTERM || signal_number == SIGINT || signal_number == SIGHUP) {
      break;
    }
    write_stats(counters.Line());
  }
  for (auto& worker : workers) worker->Stop();
  for (std::thread& thread : threads) thread.join();
  workers.clear();
  close(listen_fd);
  std::string line = counters.Line();
  write_stats(line);
  absl::PrintF("%s\n", line);
  fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace facteur::bench

int main(int argc, char** argv) { return facteur::bench::Main(argc, argv); }
