#include "engine/dns/resolver.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/memory/memory.h"
#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/dns/dns_message.h"

namespace facteur::dns {

std::string IpAddress::ToString() const {
  char text[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(v6 ? AF_INET6 : AF_INET, bytes, text, sizeof(text));
  return text;
}

bool operator==(const IpAddress& a, const IpAddress& b) {
  return a.v6 == b.v6 && std::memcmp(a.bytes, b.bytes, a.v6 ? 16 : 4) == 0;
}

namespace {

// Longest CNAME-free name (RFC 1035 §2.3.4: 255 bytes on the wire, so 253 in text).
constexpr size_t kMaxNameLength = 253;
constexpr size_t kMaxLabelLength = 63;
// Shortest time c-ares waits for one try, whatever the division of the timeout gives.
constexpr absl::Duration kMinTryTimeout = absl::Milliseconds(10);
// Longest lookup timeout accepted (a finite bound keeps every timer computation finite).
constexpr absl::Duration kMaxTimeout = absl::Hours(1);
// How long a retired socket watch waits for its cancelled poll's CQE before looking again.
constexpr absl::Duration kRetiredWatchRecheck = absl::Hours(1);

// A host or domain name as asked for: lower case, no trailing dot, letters, digits, '-' and '_'
// (RFC 1123 §2.1 host names, plus '_' for the RFC 8552 underscored names of DKIM, DMARC…),
// labels of 1 to 63 bytes, at most 253 bytes in all. Internationalized names arrive as A-labels.
absl::StatusOr<std::string> NormalizeName(std::string_view text) {
  std::string name = absl::AsciiStrToLower(ToAbsl(text));
  if (!name.empty() && name.back() == '.') name.pop_back();
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a valid domain name \"", ToAbsl(text), "\": ", ToAbsl(why)));
  };
  if (name.empty()) return bad("empty");
  if (name.size() > kMaxNameLength) return bad("longer than 253 characters");
  size_t label_length = 0;
  for (char c : name) {
    if (c == '.') {
      if (label_length == 0) return bad("empty label");
      label_length = 0;
      continue;
    }
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') {
      return bad("only letters, digits, '-' and '_' are allowed");
    }
    if (++label_length > kMaxLabelLength) return bad("label longer than 63 characters");
  }
  if (label_length == 0) return bad("empty label");
  return name;
}

absl::StatusOr<ares_addr_port_node> ParseNameserver(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed nameserver \"", ToAbsl(text), "\": ", ToAbsl(why)));
  };
  ares_addr_port_node node{};
  std::string host(text);
  std::string_view port_text;
  if (!host.empty() && host.front() == '[') {
    const size_t close = host.find(']');
    if (close == std::string::npos) return bad("unbalanced brackets");
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return bad("expected :port after ]");
      port_text = rest.substr(1);
      if (port_text.empty()) return bad("empty port");
    }
    host = host.substr(1, close - 1);
    if (::inet_pton(AF_INET6, host.c_str(), &node.addr.addr6) != 1) {
      return bad("not an IPv6 address");
    }
    node.family = AF_INET6;
  } else if (::inet_pton(AF_INET6, host.c_str(), &node.addr.addr6) == 1) {
    node.family = AF_INET6;  // a bare IPv6 address: port 53
  } else {
    const size_t colon = host.find(':');
    if (colon != std::string::npos) {
      port_text = text.substr(colon + 1);
      if (port_text.empty()) return bad("empty port");
      host.resize(colon);
    }
    if (::inet_pton(AF_INET, host.c_str(), &node.addr.addr4) != 1) {
      return bad("not an IP address (IPv6 with a port needs brackets)");
    }
    node.family = AF_INET;
  }
  int port = 53;
  if (!port_text.empty()) {
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 ||
        port > 65535) {
      return bad("bad port");
    }
  }
  node.udp_port = port;
  node.tcp_port = port;
  return node;
}

absl::Status AresStatus(std::string_view operation, int code) {
  return absl::InternalError(absl::StrCat(ToAbsl(operation), ": ", ares_strerror(code)));
}

void InitAresLibraryOnce() {
  // ares_library_init is reference counted and not thread-safe; once per process, never undone.
  static std::once_flag once;
  std::call_once(once, [] {
    if (int rc = ares_library_init(ARES_LIB_INIT_ALL); rc != ARES_SUCCESS) {
      Log(LogLevel::kError, "ares_library_init: %s", ares_strerror(rc));
    }
  });
}

const char* TypeName(uint16_t type) {
  switch (type) {
    case kTypeA:
      return "A";
    case kTypeAaaa:
      return "AAAA";
    case kTypeMx:
      return "MX";
    case kTypeTxt:
      return "TXT";
    default:
      return "?";
  }
}

}  // namespace

class Resolver::Impl {
 public:
  Impl(io::EventLoop& loop, const ResolverOptions& options, Clock& clock)
      : loop_(loop), options_(options), clock_(clock) {}
  ~Impl();

  absl::Status Init(const std::vector<ares_addr_port_node>& servers);

  void ResolveMx(std::string_view domain,
                 absl::AnyInvocable<void(absl::StatusOr<MxAnswer>) &&> done);
  void ResolveAddresses(std::string_view host,
                        absl::AnyInvocable<void(absl::StatusOr<std::vector<IpAddress>>) &&> done);
  std::optional<std::vector<IpAddress>> CachedAddresses(std::string_view host);
  void ResolveTxt(std::string_view name,
                  absl::AnyInvocable<void(absl::StatusOr<std::vector<std::string>>) &&> done);
  size_t cache_size() const { return cache_.size(); }

 private:
  // One record set as cached: what (name, type) holds. Only the member of `type` is filled.
  enum class Presence { kRecords, kNoData, kNxDomain };
  struct RecordSet {
    Presence presence = Presence::kNoData;
    std::vector<MxHost> mx;            // MX, in answer order ("" = the root)
    std::vector<IpAddress> addresses;  // A or AAAA
    std::vector<std::string> txt;      // TXT, each record's strings joined
  };
  using FetchResult = absl::StatusOr<RecordSet>;
  using FetchWaiter = absl::AnyInvocable<void(const FetchResult&)>;

  struct CacheKey {
    std::string name;
    uint16_t type = 0;
    bool operator==(const CacheKey& other) const {
      return type == other.type && name == other.name;
    }
    template <typename H>
    friend H AbslHashValue(H h, const CacheKey& key) {
      return H::combine(std::move(h), key.name, key.type);
    }
  };
  struct CacheEntry {
    RecordSet value;
    absl::Time expires;
    std::list<CacheKey>::iterator age;  // position in cache_age_
  };

  // One c-ares query in flight for (name, type); every lookup that needs it waits on it.
  struct Fetch {
    Impl* impl;
    CacheKey key;
    absl::Time started;  // loop time
    std::vector<FetchWaiter> waiters;
  };

  // One call of ResolveMx / ResolveAddresses / ResolveTxt, until its `done` is queued.
  enum class Kind { kMx, kAddresses, kTxt };
  struct Lookup {
    Kind kind;
    std::string name;
    io::TimerId deadline = io::kNoTimer;
    absl::AnyInvocable<void(absl::StatusOr<MxAnswer>) &&> mx_done;
    absl::AnyInvocable<void(absl::StatusOr<std::vector<IpAddress>>) &&> addresses_done;
    absl::AnyInvocable<void(absl::StatusOr<std::vector<std::string>>) &&> txt_done;
    std::optional<FetchResult> a;  // ResolveAddresses, and implicit MX
    std::optional<FetchResult> aaaa;
  };

  // The io_uring poll of one c-ares socket. A one-shot POLL_ADD is armed for the events c-ares
  // wants and re-armed after each completion; when c-ares changes its interest while a poll is
  // in flight, the poll is cancelled and re-armed from its -ECANCELED completion. A watch whose
  // socket c-ares closed (or whose resolver is gone) is retired: it no longer points to the
  // resolver and is owned by a loop timer until the CQE of its last poll has arrived, so that
  // no completion ever reaches freed memory (STYLE.md rule 5).
  class SocketWatch final : public io::Completion {
   public:
    SocketWatch(Impl* impl, io::EventLoop& loop, int fd) : impl_(impl), loop_(loop), fd_(fd) {}
    void OnCompletion(int32_t result, uint32_t flags) override;

    Impl* impl_;  // null once retired
    io::EventLoop& loop_;
    const int fd_;
    bool want_read_ = false;
    bool want_write_ = false;
    bool in_flight_ = false;
    bool cancel_sent_ = false;
    unsigned armed_mask_ = 0;
    io::TimerId keep_alive_ = io::kNoTimer;  // when retired
  };

  // c-ares callbacks.
  static void OnSocketState(void* data, ares_socket_t fd, int readable, int writable);
  static void OnAresAnswer(void* arg, int status, int timeouts, unsigned char* abuf, int alen);

  void Arm(SocketWatch& watch);
  static void Retire(std::unique_ptr<SocketWatch> watch);
  static void Park(std::unique_ptr<SocketWatch> watch);
  void OnSocketEvent(SocketWatch& watch, int32_t result);
  void UpdateAresTimer();

  void StartFetch(const std::string& name, uint16_t type, FetchWaiter waiter);
  // Hands c-ares the fetches waiting for a free query slot (max_queries_in_flight), oldest first.
  void SendWaitingFetches();
  FetchResult Interpret(const Fetch& fetch, int status, const unsigned char* abuf, int alen,
                        absl::Duration& ttl) const;

  const RecordSet* CacheFind(const CacheKey& key);
  void CacheStore(const CacheKey& key, const RecordSet& value, absl::Duration ttl);

  uint64_t StartLookup(Kind kind, std::string name);
  Lookup* FindLookup(uint64_t id);
  std::unique_ptr<Lookup> TakeLookup(uint64_t id);
  void OnDeadline(uint64_t id);
  void OnMx(uint64_t id, const FetchResult& result);
  // The answer to an MX query whose records are `set` (not kNoData: that needs the addresses).
  MxAnswer MxAnswerOf(const RecordSet& set);
  void OnAddress(uint64_t id, bool v6, const FetchResult& result);
  void FinishImplicitMx(uint64_t id);
  void FinishAddresses(uint64_t id);

  template <typename T>
  void Deliver(absl::AnyInvocable<void(absl::StatusOr<T>) &&> done, absl::StatusOr<T> result);
  void FlushReady();

  io::EventLoop& loop_;
  const ResolverOptions options_;
  Clock& clock_;
  ares_channel channel_ = nullptr;
  bool destroying_ = false;
  absl::BitGen random_;

  absl::flat_hash_map<int, std::unique_ptr<SocketWatch>> watches_;
  io::TimerId ares_timer_ = io::kNoTimer;
  absl::Time ares_deadline_;

  absl::flat_hash_map<Fetch*, std::unique_ptr<Fetch>> fetches_;  // sent to c-ares or waiting
  size_t queries_sent_ = 0;          // of fetches_, those c-ares holds
  std::deque<Fetch*> waiting_;       // of fetches_, those waiting for a query slot
  bool sending_ = false;             // SendWaitingFetches() is on the stack
  absl::flat_hash_map<CacheKey, Fetch*> in_flight_;              // the one new lookups join

  absl::flat_hash_map<CacheKey, CacheEntry> cache_;
  std::list<CacheKey> cache_age_;  // oldest first

  absl::flat_hash_map<uint64_t, std::unique_ptr<Lookup>> lookups_;
  uint64_t next_lookup_id_ = 1;

  // `done` calls waiting for the next loop turn, and the timer that runs them.
  std::vector<absl::AnyInvocable<void() &&>> ready_;
  io::TimerId flush_timer_ = io::kNoTimer;
  bool* destroyed_ = nullptr;  // set while FlushReady runs user code
};

// ---- Setup and teardown ----

absl::Status Resolver::Impl::Init(const std::vector<ares_addr_port_node>& servers) {
  InitAresLibraryOnce();
  // c-ares tries each server in turn, `tries` rounds, doubling the per-try timeout each round:
  // servers * timeout * (2^tries - 1) in all. Divide options.timeout accordingly so c-ares
  // gives up within it; the lookup's own loop timer enforces the bound in any case.
  size_t server_count = servers.size();
  if (server_count == 0) {
    ares_channel probe = nullptr;
    if (int rc = ares_init(&probe); rc != ARES_SUCCESS) return AresStatus("ares_init", rc);
    ares_addr_port_node* list = nullptr;
    if (ares_get_servers_ports(probe, &list) == ARES_SUCCESS) {
      for (ares_addr_port_node* n = list; n != nullptr; n = n->next) ++server_count;
      ares_free_data(list);
    }
    ares_destroy(probe);
    server_count = std::max<size_t>(server_count, 1);
  }
  const int64_t rounds_weight = (int64_t{1} << options_.attempts) - 1;
  absl::Duration per_try = options_.timeout / static_cast<int64_t>(server_count) / rounds_weight;
  per_try = std::max(per_try, kMinTryTimeout);

  ares_options opts{};
  opts.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
  opts.timeout = static_cast<int>(absl::ToInt64Milliseconds(per_try));
  opts.tries = options_.attempts;
  opts.sock_state_cb = &Impl::OnSocketState;
  opts.sock_state_cb_data = this;
  const int optmask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
  if (int rc = ares_init_options(&channel_, &opts, optmask); rc != ARES_SUCCESS) {
    channel_ = nullptr;
    return AresStatus("ares_init_options", rc);
  }
  if (!servers.empty()) {
    std::vector<ares_addr_port_node> list = servers;
    for (size_t i = 0; i + 1 < list.size(); ++i) list[i].next = &list[i + 1];
    list.back().next = nullptr;
    if (int rc = ares_set_servers_ports(channel_, list.data()); rc != ARES_SUCCESS) {
      return AresStatus("ares_set_servers_ports", rc);
    }
  }
  return absl::OkStatus();
}

Resolver::Impl::~Impl() {
  if (destroyed_ != nullptr) *destroyed_ = true;
  destroying_ = true;
  // Pending lookups are dropped without calling their `done` (resolver.h).
  for (auto& [id, lookup] : lookups_) loop_.Cancel(lookup->deadline);
  lookups_.clear();
  ready_.clear();
  loop_.Cancel(flush_timer_);
  // ares_destroy ends every query (ARES_EDESTRUCTION: OnAresAnswer frees its Fetch) and closes
  // every socket, which retires its watch through OnSocketState.
  if (channel_ != nullptr) ares_destroy(channel_);
  for (auto& [fd, watch] : watches_) Retire(std::move(watch));
  watches_.clear();
  loop_.Cancel(ares_timer_);
}

// ---- Socket polling on the ring ----

void Resolver::Impl::OnSocketState(void* data, ares_socket_t fd, int readable, int writable) {
  Impl* impl = static_cast<Impl*>(data);
  if (!readable && !writable) {
    // c-ares is about to close `fd`; a later socket may reuse the number.
    auto it = impl->watches_.find(fd);
    if (it == impl->watches_.end()) return;
    std::unique_ptr<SocketWatch> watch = std::move(it->second);
    impl->watches_.erase(it);
    Retire(std::move(watch));
    return;
  }
  std::unique_ptr<SocketWatch>& watch = impl->watches_[fd];
  if (watch == nullptr) watch = std::make_unique<SocketWatch>(impl, impl->loop_, fd);
  watch->want_read_ = readable != 0;
  watch->want_write_ = writable != 0;
  impl->Arm(*watch);
}

void Resolver::Impl::Arm(SocketWatch& watch) {
  const unsigned mask = (watch.want_read_ ? POLLIN : 0) | (watch.want_write_ ? POLLOUT : 0);
  if (watch.in_flight_) {
    if (mask != watch.armed_mask_ && !watch.cancel_sent_) {
      // Cancel SQEs carry no Completion: only the poll's own CQE (-ECANCELED) matters.
      io_uring_prep_cancel(loop_.PrepareSqe(nullptr), &watch, 0);
      watch.cancel_sent_ = true;
    }
    return;
  }
  if (mask == 0) return;
  io_uring_sqe* sqe = loop_.PrepareSqe(&watch);
  io_uring_prep_poll_add(sqe, watch.fd_, mask);
  watch.in_flight_ = true;
  watch.armed_mask_ = mask;
}

void Resolver::Impl::Retire(std::unique_ptr<SocketWatch> watch) {
  watch->impl_ = nullptr;
  if (watch->in_flight_ && !watch->cancel_sent_) {
    io_uring_prep_cancel(watch->loop_.PrepareSqe(nullptr), watch.get(), 0);
    watch->cancel_sent_ = true;
  }
  Park(std::move(watch));
}

void Resolver::Impl::Park(std::unique_ptr<SocketWatch> watch) {
  // A timer owns the retired watch: with no poll in flight it is freed on the next turn (not
  // now: the watch may be the one whose completion is running); otherwise its last CQE cancels
  // the timer, which frees it. If the loop is destroyed first, so is the timer, and the watch.
  SocketWatch* raw = watch.get();
  io::EventLoop& loop = raw->loop_;
  const absl::Duration delay = raw->in_flight_ ? kRetiredWatchRecheck : absl::ZeroDuration();
  raw->keep_alive_ = loop.RunAfter(delay, [watch = std::move(watch)]() mutable {
    if (watch->in_flight_) Park(std::move(watch));
  });
}

void Resolver::Impl::SocketWatch::OnCompletion(int32_t result, uint32_t /*flags*/) {
  in_flight_ = false;
  cancel_sent_ = false;
  if (impl_ == nullptr) {
    // Retired: cancelling the keep-alive timer destroys the lambda that owns this watch.
    io::EventLoop& loop = loop_;
    const io::TimerId keep_alive = keep_alive_;
    loop.Cancel(keep_alive);
    return;
  }
  impl_->OnSocketEvent(*this, result);
}

void Resolver::Impl::OnSocketEvent(SocketWatch& watch, int32_t result) {
  bool readable = false;
  bool writable = false;
  if (result == -ECANCELED) {
    // Cancelled because c-ares changed its interest: re-armed below.
  } else if (result < 0) {
    // The poll itself failed: let c-ares touch the socket and find the error.
    Log(LogLevel::kDebug, "dns: poll of fd %d: %s", watch.fd_,
        io::UringStatus("poll", result).ToString());
    readable = watch.want_read_;
    writable = watch.want_write_;
  } else {
    const unsigned events = static_cast<unsigned>(result);
    readable = watch.want_read_ && (events & (POLLIN | POLLERR | POLLHUP)) != 0;
    writable = watch.want_write_ && (events & (POLLOUT | POLLERR | POLLHUP)) != 0;
  }
  if (readable || writable) {
    // May close this socket (retiring `watch`, which a timer then keeps alive) and open others.
    ares_process_fd(channel_, readable ? watch.fd_ : ARES_SOCKET_BAD,
                    writable ? watch.fd_ : ARES_SOCKET_BAD);
  }
  if (watch.impl_ != nullptr) Arm(watch);
  UpdateAresTimer();
}

void Resolver::Impl::UpdateAresTimer() {
  timeval tv{};
  const timeval* next = ares_timeout(channel_, nullptr, &tv);
  if (next == nullptr) {
    loop_.Cancel(ares_timer_);
    ares_timer_ = io::kNoTimer;
    return;
  }
  // Rounded up to the millisecond, so that the timer never fires just before c-ares's own
  // deadline and spins.
  const absl::Duration delay = absl::Ceil(absl::DurationFromTimeval(*next), absl::Milliseconds(1));
  const absl::Time deadline = loop_.Now() + delay;
  if (ares_timer_ != io::kNoTimer &&
      absl::AbsDuration(deadline - ares_deadline_) < absl::Milliseconds(1)) {
    return;  // already set for (about) that time
  }
  loop_.Cancel(ares_timer_);
  ares_deadline_ = deadline;
  ares_timer_ = loop_.RunAfter(delay, [this] {
    ares_timer_ = io::kNoTimer;
    ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // expires timed-out tries
    UpdateAresTimer();
  });
}

// ---- Queries, answers and the cache ----

void Resolver::Impl::StartFetch(const std::string& name, uint16_t type, FetchWaiter waiter) {
  CacheKey key{name, type};
  if (const RecordSet* cached = CacheFind(key)) {
    waiter(FetchResult(*cached));
    return;
  }
  const absl::Time now = loop_.Now();
  auto joined = in_flight_.find(key);
  // A query older than the timeout is not joined: whatever became of it, a new lookup deserves
  // a fresh try.
  if (joined != in_flight_.end() && now - joined->second->started < options_.timeout) {
    joined->second->waiters.push_back(std::move(waiter));
    return;
  }
  auto fetch = std::make_unique<Fetch>();
  Fetch* raw = fetch.get();
  raw->impl = this;
  raw->key = key;
  raw->started = now;
  raw->waiters.push_back(std::move(waiter));
  fetches_.emplace(raw, std::move(fetch));
  in_flight_[key] = raw;
  waiting_.push_back(raw);
  SendWaitingFetches();
}

// A burst of new destinations (a campaign to thousands of domains) would otherwise put
// thousands of UDP queries on the wire at once: the nameserver's socket buffer, or ours for
// the answers, overflows, and every lost query costs its lookup a try timeout or the whole
// lookup. Bounded, the rest wait here, in order, and are sent as answers come back.
void Resolver::Impl::SendWaitingFetches() {
  if (sending_) return;  // an answer delivered synchronously by ares_query below
  sending_ = true;
  while (!waiting_.empty() && queries_sent_ < options_.max_queries_in_flight && !destroying_) {
    Fetch* raw = waiting_.front();
    waiting_.pop_front();
    ++queries_sent_;
    // May call OnAresAnswer before returning (e.g. no socket could be opened); `raw` is then
    // gone.
    ares_query(channel_, raw->key.name.c_str(), kClassIn, raw->key.type, &Impl::OnAresAnswer,
               raw);
  }
  sending_ = false;
  UpdateAresTimer();
}

void Resolver::Impl::OnAresAnswer(void* arg, int status, int /*timeouts*/, unsigned char* abuf,
                                  int alen) {
  Fetch* raw = static_cast<Fetch*>(arg);
  Impl* impl = raw->impl;
  auto owned = impl->fetches_.find(raw);
  std::unique_ptr<Fetch> fetch = std::move(owned->second);
  impl->fetches_.erase(owned);
  --impl->queries_sent_;
  if (auto it = impl->in_flight_.find(fetch->key);
      it != impl->in_flight_.end() && it->second == raw) {
    impl->in_flight_.erase(it);
  }
  if (impl->destroying_ || status == ARES_EDESTRUCTION) return;
  absl::Duration ttl = absl::ZeroDuration();
  FetchResult result = impl->Interpret(*fetch, status, abuf, alen, ttl);
  if (result.ok()) impl->CacheStore(fetch->key, *result, ttl);
  for (FetchWaiter& waiter : fetch->waiters) waiter(result);
  impl->SendWaitingFetches();
}

Resolver::Impl::FetchResult Resolver::Impl::Interpret(const Fetch& fetch, int status,
                                                      const unsigned char* abuf, int alen,
                                                      absl::Duration& ttl) const {
  const std::string what = absl::StrCat(TypeName(fetch.key.type), " ", fetch.key.name);
  switch (status) {
    case ARES_SUCCESS:
    case ARES_ENODATA:    // NOERROR without answers
    case ARES_ENOTFOUND:  // NXDOMAIN
      break;
    case ARES_ETIMEOUT:
      return absl::DeadlineExceededError(absl::StrCat("DNS ", what, ": timed out"));
    case ARES_ESERVFAIL:
    case ARES_EREFUSED:
    case ARES_ECONNREFUSED:
    case ARES_ENOTIMP:
    case ARES_EFORMERR:
    case ARES_EBADRESP:
      return absl::UnavailableError(absl::StrCat("DNS ", what, ": ", ares_strerror(status)));
    case ARES_EBADNAME:
      return absl::InvalidArgumentError(absl::StrCat("DNS ", what, ": ", ares_strerror(status)));
    case ARES_ENOMEM:
      return absl::ResourceExhaustedError(absl::StrCat("DNS ", what, ": out of memory"));
    default:
      return absl::InternalError(absl::StrCat("DNS ", what, ": ", ares_strerror(status)));
  }
  if (abuf == nullptr || alen <= 0) {
    return absl::UnavailableError(absl::StrCat("DNS ", what, ": empty answer"));
  }
  absl::StatusOr<DnsMessage> message =
      ParseDnsMessage(std::span<const uint8_t>(abuf, static_cast<size_t>(alen)));
  if (!message.ok()) {
    return absl::UnavailableError(absl::StrCat("DNS ", what, ": ", message.status().message()));
  }
  if (!message->response) {
    return absl::UnavailableError(absl::StrCat("DNS ", what, ": answer is not a response"));
  }
  RecordSet set;
  auto negative = [&](Presence presence) {
    set.presence = presence;
    // RFC 2308 §5: cached for the SOA's negative TTL; not at all without an SOA.
    const std::optional<uint32_t> seconds = NegativeTtl(*message);
    ttl = seconds.has_value() ? std::min(absl::Seconds(*seconds), options_.max_negative_ttl)
                              : absl::ZeroDuration();
    return set;
  };
  switch (message->rcode) {
    case kRcodeNoError:
      break;
    case kRcodeNxDomain:
      return negative(Presence::kNxDomain);
    default:
      return absl::UnavailableError(
          absl::StrCat("DNS ", what, ": answer with rcode ", message->rcode));
  }
  const Answer answer = FindAnswer(*message, fetch.key.name, fetch.key.type);
  if (answer.records.empty()) return negative(Presence::kNoData);
  set.presence = Presence::kRecords;
  for (const ResourceRecord& rr : answer.records) {
    if (const auto* mx = std::get_if<MxRecord>(&rr.data)) {
      set.mx.push_back(MxHost{mx->exchange, mx->preference});
    } else if (const auto* a = std::get_if<ARecord>(&rr.data)) {
      IpAddress address;
      std::copy(a->address.begin(), a->address.end(), address.bytes);
      set.addresses.push_back(address);
    } else if (const auto* aaaa = std::get_if<AaaaRecord>(&rr.data)) {
      IpAddress address;
      address.v6 = true;
      std::copy(aaaa->address.begin(), aaaa->address.end(), address.bytes);
      set.addresses.push_back(address);
    } else if (const auto* txt = std::get_if<TxtRecord>(&rr.data)) {
      set.txt.push_back(absl::StrJoin(txt->strings, ""));
    }
  }
  ttl = std::min(absl::Seconds(answer.ttl.value_or(0)), options_.max_ttl);
  return set;
}

const Resolver::Impl::RecordSet* Resolver::Impl::CacheFind(const CacheKey& key) {
  auto it = cache_.find(key);
  if (it == cache_.end()) return nullptr;
  if (clock_.Now() >= it->second.expires) {
    cache_age_.erase(it->second.age);
    cache_.erase(it);
    return nullptr;
  }
  return &it->second.value;
}

void Resolver::Impl::CacheStore(const CacheKey& key, const RecordSet& value, absl::Duration ttl) {
  if (ttl <= absl::ZeroDuration() || options_.max_cache_entries == 0) return;
  if (auto it = cache_.find(key); it != cache_.end()) {
    cache_age_.erase(it->second.age);
    cache_.erase(it);
  }
  cache_age_.push_back(key);
  cache_.emplace(key, CacheEntry{value, clock_.Now() + ttl, std::prev(cache_age_.end())});
  while (cache_.size() > options_.max_cache_entries) {
    cache_.erase(cache_age_.front());
    cache_age_.pop_front();
  }
}

// ---- Lookups ----

uint64_t Resolver::Impl::StartLookup(Kind kind, std::string name) {
  const uint64_t id = next_lookup_id_++;
  auto lookup = std::make_unique<Lookup>();
  lookup->kind = kind;
  lookup->name = std::move(name);
  // The whole lookup — every query, try and nameserver, and the implicit-MX address queries —
  // is bounded by this one timer.
  lookup->deadline = loop_.RunAfter(options_.timeout, [this, id] { OnDeadline(id); });
  lookups_.emplace(id, std::move(lookup));
  return id;
}

Resolver::Impl::Lookup* Resolver::Impl::FindLookup(uint64_t id) {
  auto it = lookups_.find(id);
  return it == lookups_.end() ? nullptr : it->second.get();
}

std::unique_ptr<Resolver::Impl::Lookup> Resolver::Impl::TakeLookup(uint64_t id) {
  auto it = lookups_.find(id);
  if (it == lookups_.end()) return nullptr;
  std::unique_ptr<Lookup> lookup = std::move(it->second);
  lookups_.erase(it);
  loop_.Cancel(lookup->deadline);
  return lookup;
}

void Resolver::Impl::OnDeadline(uint64_t id) {
  std::unique_ptr<Lookup> lookup = TakeLookup(id);
  if (lookup == nullptr) return;
  const absl::Status status = absl::DeadlineExceededError(absl::StrCat(
      "DNS lookup of ", lookup->name, " timed out after ", absl::FormatDuration(options_.timeout)));
  switch (lookup->kind) {
    case Kind::kMx:
      Deliver(std::move(lookup->mx_done), absl::StatusOr<MxAnswer>(status));
      break;
    case Kind::kAddresses:
      Deliver(std::move(lookup->addresses_done), absl::StatusOr<std::vector<IpAddress>>(status));
      break;
    case Kind::kTxt:
      Deliver(std::move(lookup->txt_done), absl::StatusOr<std::vector<std::string>>(status));
      break;
  }
}

void Resolver::Impl::ResolveMx(std::string_view domain,
                               absl::AnyInvocable<void(absl::StatusOr<MxAnswer>) &&> done) {
  absl::StatusOr<std::string> name = NormalizeName(domain);
  if (!name.ok()) {
    Deliver(std::move(done), absl::StatusOr<MxAnswer>(name.status()));
    return;
  }
  // Answered from the cache, as most deliveries are: no lookup to track, no deadline timer.
  // A cached "no MX records" still needs the implicit MX's addresses: a lookup does that.
  if (const RecordSet* cached = CacheFind(CacheKey{*name, kTypeMx});
      cached != nullptr && cached->presence != Presence::kNoData) {
    Deliver(std::move(done), absl::StatusOr<MxAnswer>(MxAnswerOf(*cached)));
    return;
  }
  const uint64_t id = StartLookup(Kind::kMx, *name);
  lookups_[id]->mx_done = std::move(done);
  StartFetch(*name, kTypeMx, [this, id](const FetchResult& result) { OnMx(id, result); });
}

void Resolver::Impl::OnMx(uint64_t id, const FetchResult& result) {
  Lookup* lookup = FindLookup(id);
  if (lookup == nullptr) return;
  if (!result.ok()) {
    Deliver(std::move(TakeLookup(id)->mx_done), absl::StatusOr<MxAnswer>(result.status()));
    return;
  }
  if (result->presence == Presence::kNoData) {
    // RFC 5321 §5.1: no MX records — the domain itself is the implicit MX if it has an address.
    const std::string name = lookup->name;
    StartFetch(name, kTypeA, [this, id](const FetchResult& r) { OnAddress(id, false, r); });
    if (FindLookup(id) == nullptr) return;  // settled from the cache by the A records
    StartFetch(name, kTypeAaaa, [this, id](const FetchResult& r) { OnAddress(id, true, r); });
    return;
  }
  Deliver(std::move(TakeLookup(id)->mx_done), absl::StatusOr<MxAnswer>(MxAnswerOf(*result)));
}

MxAnswer Resolver::Impl::MxAnswerOf(const RecordSet& set) {
  MxAnswer answer;
  switch (set.presence) {
    case Presence::kNxDomain:
      answer.kind = MxKind::kNxDomain;
      break;
    case Presence::kNoData:
      answer.kind = MxKind::kNoMailHost;  // not reached: the caller looks the addresses up
      break;
    case Presence::kRecords: {
      // RFC 7505 §3: the null MX "0 ." says the domain accepts no mail. A "." target is
      // unusable in any case, so an answer whose only targets are "." is treated the same, and
      // "." records beside real ones (which RFC 7505 forbids) are ignored.
      for (const MxHost& host : set.mx) {
        if (!host.name.empty()) answer.hosts.push_back(host);
      }
      if (answer.hosts.empty()) {
        answer.kind = MxKind::kNullMx;
        break;
      }
      answer.kind = MxKind::kHosts;
      std::sort(answer.hosts.begin(), answer.hosts.end(),
                [](const MxHost& a, const MxHost& b) { return a.preference < b.preference; });
      // RFC 5321 §5.1: hosts of equal preference are tried in random order, to spread load.
      for (auto first = answer.hosts.begin(); first != answer.hosts.end();) {
        auto last = std::find_if(first, answer.hosts.end(), [&](const MxHost& h) {
          return h.preference != first->preference;
        });
        std::shuffle(first, last, random_);
        first = last;
      }
      break;
    }
  }
  return answer;
}

void Resolver::Impl::OnAddress(uint64_t id, bool v6, const FetchResult& result) {
  Lookup* lookup = FindLookup(id);
  if (lookup == nullptr) return;
  (v6 ? lookup->aaaa : lookup->a) = result;
  if (lookup->kind == Kind::kMx) {
    FinishImplicitMx(id);
  } else {
    FinishAddresses(id);
  }
}

void Resolver::Impl::FinishImplicitMx(uint64_t id) {
  Lookup* lookup = FindLookup(id);
  auto has_address = [](const std::optional<FetchResult>& r) {
    return r.has_value() && r->ok() && (*r)->presence == Presence::kRecords;
  };
  if (has_address(lookup->a) || has_address(lookup->aaaa)) {
    // Either family is enough: no need to wait for the other.
    MxAnswer answer;
    answer.kind = MxKind::kHosts;
    answer.implicit = true;
    answer.hosts.push_back(MxHost{lookup->name, 0});
    Deliver(std::move(TakeLookup(id)->mx_done), absl::StatusOr<MxAnswer>(std::move(answer)));
    return;
  }
  if (!lookup->a.has_value() || !lookup->aaaa.has_value()) return;
  std::unique_ptr<Lookup> done = TakeLookup(id);
  for (const std::optional<FetchResult>* r : {&done->a, &done->aaaa}) {
    if (!(*r)->ok()) {
      Deliver(std::move(done->mx_done), absl::StatusOr<MxAnswer>((*r)->status()));
      return;
    }
  }
  MxAnswer answer;
  answer.kind = MxKind::kNoMailHost;
  Deliver(std::move(done->mx_done), absl::StatusOr<MxAnswer>(std::move(answer)));
}

void Resolver::Impl::ResolveAddresses(
    std::string_view host,
    absl::AnyInvocable<void(absl::StatusOr<std::vector<IpAddress>>) &&> done) {
  absl::StatusOr<std::string> name = NormalizeName(host);
  if (!name.ok()) {
    Deliver(std::move(done), absl::StatusOr<std::vector<IpAddress>>(name.status()));
    return;
  }
  const uint64_t id = StartLookup(Kind::kAddresses, *name);
  lookups_[id]->addresses_done = std::move(done);
  StartFetch(*name, kTypeA, [this, id](const FetchResult& r) { OnAddress(id, false, r); });
  StartFetch(*name, kTypeAaaa, [this, id](const FetchResult& r) { OnAddress(id, true, r); });
}

std::optional<std::vector<IpAddress>> Resolver::Impl::CachedAddresses(std::string_view host) {
  absl::StatusOr<std::string> name = NormalizeName(host);
  if (!name.ok()) return std::nullopt;
  const RecordSet* a = CacheFind(CacheKey{*name, kTypeA});
  if (a == nullptr) return std::nullopt;
  const RecordSet* aaaa = CacheFind(CacheKey{*name, kTypeAaaa});
  if (aaaa == nullptr) return std::nullopt;
  // IPv4 first, as FinishAddresses orders them.
  std::vector<IpAddress> addresses = a->addresses;
  addresses.insert(addresses.end(), aaaa->addresses.begin(), aaaa->addresses.end());
  if (addresses.empty()) return std::nullopt;
  return addresses;
}

void Resolver::Impl::FinishAddresses(uint64_t id) {
  Lookup* lookup = FindLookup(id);
  if (!lookup->a.has_value() || !lookup->aaaa.has_value()) return;
  std::unique_ptr<Lookup> done = TakeLookup(id);
  // Whatever addresses one family has are usable even if the other family's query failed.
  std::vector<IpAddress> addresses;
  for (const std::optional<FetchResult>* r : {&done->a, &done->aaaa}) {
    if ((*r)->ok()) {
      addresses.insert(addresses.end(), (**r)->addresses.begin(), (**r)->addresses.end());
    }
  }
  if (!addresses.empty()) {
    Deliver(std::move(done->addresses_done),
            absl::StatusOr<std::vector<IpAddress>>(std::move(addresses)));
    return;
  }
  for (const std::optional<FetchResult>* r : {&done->a, &done->aaaa}) {
    if (!(*r)->ok()) {
      Deliver(std::move(done->addresses_done),
              absl::StatusOr<std::vector<IpAddress>>((*r)->status()));
      return;
    }
  }
  const bool nxdomain = (*done->a)->presence == Presence::kNxDomain;
  Deliver(std::move(done->addresses_done),
          absl::StatusOr<std::vector<IpAddress>>(absl::NotFoundError(
              nxdomain ? absl::StrCat("DNS: ", done->name, " does not exist")
                       : absl::StrCat("DNS: ", done->name, " has no address"))));
}

void Resolver::Impl::ResolveTxt(
    std::string_view name_text,
    absl::AnyInvocable<void(absl::StatusOr<std::vector<std::string>>) &&> done) {
  using Result = absl::StatusOr<std::vector<std::string>>;
  absl::StatusOr<std::string> name = NormalizeName(name_text);
  if (!name.ok()) {
    Deliver(std::move(done), Result(name.status()));
    return;
  }
  const uint64_t id = StartLookup(Kind::kTxt, *name);
  lookups_[id]->txt_done = std::move(done);
  StartFetch(*name, kTypeTxt, [this, id](const FetchResult& result) {
    std::unique_ptr<Lookup> lookup = TakeLookup(id);
    if (lookup == nullptr) return;
    if (!result.ok()) {
      Deliver(std::move(lookup->txt_done), Result(result.status()));
    } else if (result->presence == Presence::kNxDomain) {
      Deliver(std::move(lookup->txt_done),
              Result(absl::NotFoundError(absl::StrCat("DNS: ", lookup->name, " does not exist"))));
    } else {
      Deliver(std::move(lookup->txt_done), Result(result->txt));
    }
  });
}

// ---- Delivery of results, always on a later loop turn ----

template <typename T>
void Resolver::Impl::Deliver(absl::AnyInvocable<void(absl::StatusOr<T>) &&> done,
                             absl::StatusOr<T> result) {
  ready_.push_back([done = std::move(done), result = std::move(result)]() mutable {
    std::move(done)(std::move(result));
  });
  if (flush_timer_ == io::kNoTimer) {
    flush_timer_ = loop_.RunAfter(absl::ZeroDuration(), [this] { FlushReady(); });
  }
}

void Resolver::Impl::FlushReady() {
  flush_timer_ = io::kNoTimer;
  std::vector<absl::AnyInvocable<void() &&>> batch;
  batch.swap(ready_);
  // A `done` may destroy the resolver; the rest of the batch is then dropped, as resolver.h says.
  bool destroyed = false;
  destroyed_ = &destroyed;
  for (auto& done : batch) {
    std::move(done)();
    if (destroyed) return;
  }
  destroyed_ = nullptr;
}

// ---- Resolver ----

absl::StatusOr<std::unique_ptr<Resolver>> Resolver::Create(io::EventLoop& loop,
                                                           const ResolverOptions& options,
                                                           Clock& clock) {
  std::vector<ares_addr_port_node> servers;
  for (const std::string& text : options.nameservers) {
    FACTEUR_ASSIGN_OR_RETURN(ares_addr_port_node node, ParseNameserver(text));
    servers.push_back(node);
  }
  if (options.timeout <= absl::ZeroDuration() || options.timeout > kMaxTimeout) {
    return absl::InvalidArgumentError("DNS timeout must be positive and at most 1h");
  }
  if (options.attempts < 1 || options.attempts > 16) {
    return absl::InvalidArgumentError("DNS attempts must be between 1 and 16");
  }
  if (options.max_queries_in_flight == 0) {
    return absl::InvalidArgumentError("DNS max_queries_in_flight must be at least 1");
  }
  auto impl = std::make_unique<Impl>(loop, options, clock);
  FACTEUR_RETURN_IF_ERROR(impl->Init(servers));
  return absl::WrapUnique(new Resolver(std::move(impl)));
}

Resolver::Resolver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Resolver::~Resolver() = default;

void Resolver::ResolveMx(std::string_view domain,
                         absl::AnyInvocable<void(absl::StatusOr<MxAnswer>) &&> done) {
  impl_->ResolveMx(domain, std::move(done));
}

void Resolver::ResolveAddresses(
    std::string_view host,
    absl::AnyInvocable<void(absl::StatusOr<std::vector<IpAddress>>) &&> done) {
  impl_->ResolveAddresses(host, std::move(done));
}

std::optional<std::vector<IpAddress>> Resolver::CachedAddresses(std::string_view host) {
  return impl_->CachedAddresses(host);
}

void Resolver::ResolveTxt(
    std::string_view name,
    absl::AnyInvocable<void(absl::StatusOr<std::vector<std::string>>) &&> done) {
  impl_->ResolveTxt(name, std::move(done));
}

size_t Resolver::cache_size() const { return impl_->cache_size(); }

}  // namespace facteur::dns
