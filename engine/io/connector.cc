#include "engine/io/connector.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

// Linux 4.2+; older libc headers lack the name.
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

namespace facteur::io {
namespace {

bool IsInet(const SocketAddress& address) {
  return (address.family() == AF_INET && address.length == sizeof(sockaddr_in)) ||
         (address.family() == AF_INET6 && address.length == sizeof(sockaddr_in6));
}

uint16_t Port(const SocketAddress& address) {
  return address.family() == AF_INET
             ? ntohs(reinterpret_cast<const sockaddr_in*>(&address.storage)->sin_port)
             : ntohs(reinterpret_cast<const sockaddr_in6*>(&address.storage)->sin6_port);
}

// "127.0.0.1:25 from 127.0.0.2", the prefix of every message about one connect.
std::string Describe(const ConnectSpec& spec) {
  std::string text = absl::StrCat("connect to ", FormatAddress(spec.remote));
  if (spec.source.has_value()) absl::StrAppend(&text, " from ", MakePeerInfo(*spec.source).ip_text);
  return text;
}

}  // namespace

// One connect in flight: the socket, the CONNECT and its LINK_TIMEOUT (each with its own
// Completion: both CQEs always arrive), and what to call when it is over. It reports only once
// both CQEs (or its deferred report timer) are in, then hands the socket on or closes it.
class Connector::PendingConnect {
 public:
  PendingConnect(Connector& connector, const ConnectSpec& spec, StreamHandlerFactory factory,
                 absl::AnyInvocable<void(absl::Status) &&> failed)
      : connector_(connector), spec_(spec), factory_(std::move(factory)),
        failed_(std::move(failed)) {}
  ~PendingConnect() {
    if (fd_ >= 0) ::close(fd_);
  }

  // Opens, binds and submits; a setup error is reported on the next loop turn.
  void Begin();
  // Cancels the connect; the report (Cancelled) follows from its completion.
  void Abort();

 private:
  absl::Status OpenSocket();
  void Submit();
  void CancelConnect();
  void OnConnect(int32_t result, uint32_t flags);
  void OnTimeout(int32_t result, uint32_t flags);
  void ArmTimer(absl::Duration delay);
  void MaybeFinish();
  absl::Status Outcome() const;

  EventLoop& loop() { return connector_.loop_; }

  Connector& connector_;
  const ConnectSpec spec_;  // a copy: the address must outlive the SQE
  StreamHandlerFactory factory_;
  absl::AnyInvocable<void(absl::Status) &&> failed_;
  int fd_ = -1;
  __kernel_timespec timeout_spec_{};
  absl::Time deadline_;
  absl::Status setup_error_;
  int32_t connect_result_ = -ECANCELED;
  bool connect_in_flight_ = false;
  bool timeout_in_flight_ = false;
  bool timed_out_ = false;
  bool aborted_ = false;
  // A deferred report (setup error), or the deadline when the LINK_TIMEOUT did not get linked.
  TimerId timer_ = kNoTimer;
  MemberCompletion<PendingConnect, &PendingConnect::OnConnect> connect_completion_{this};
  MemberCompletion<PendingConnect, &PendingConnect::OnTimeout> timeout_completion_{this};
};

absl::Status Connector::PendingConnect::OpenSocket() {
  if (!IsInet(spec_.remote) || Port(spec_.remote) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(spec_), ": not an IPv4/IPv6 address with a port"));
  }
  if (spec_.source.has_value() &&
      (!IsInet(*spec_.source) || spec_.source->family() != spec_.remote.family())) {
    return absl::InvalidArgumentError(
        absl::StrCat(Describe(spec_), ": the source is not an address of the remote's family"));
  }
  if (spec_.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(Describe(spec_), ": no timeout"));
  }
  // Non-blocking: the ring polls the socket instead of parking a worker thread on it.
  fd_ = ::socket(spec_.remote.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd_ < 0) {
    int error = errno;
    absl::Status status = ErrnoStatus(absl::StrCat(Describe(spec_), ": socket"), error);
    return status.code() == absl::StatusCode::kResourceExhausted
               ? status
               : absl::UnavailableError(status.message());
  }
  int one = 1;
  // SMTP commands are small and latency-bound; Write() already coalesces per callback.
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (spec_.source.has_value()) {
    // The port is chosen at connect time, for the whole 4-tuple: without this, bind() reserves
    // an ephemeral port per socket and one source IP runs out after ~28k connections in total
    // instead of per destination. Works on IPv6 sockets too; best effort on old kernels.
    ::setsockopt(fd_, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    SocketAddress source = *spec_.source;
    if (source.family() == AF_INET) {
      reinterpret_cast<sockaddr_in*>(&source.storage)->sin_port = 0;
    } else {
      reinterpret_cast<sockaddr_in6*>(&source.storage)->sin6_port = 0;
    }
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&source.storage), source.length) != 0) {
      // EADDRNOTAVAIL: the source IP is not configured on this host.
      return absl::InvalidArgumentError(
          absl::StrCat(Describe(spec_), ": bind: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

void Connector::PendingConnect::Begin() {
  setup_error_ = OpenSocket();
  if (!setup_error_.ok()) {
    ArmTimer(absl::ZeroDuration());  // `failed` never runs inside Connect()
    return;
  }
  Submit();
}

void Connector::PendingConnect::Submit() {
  deadline_ = loop().Now() + spec_.timeout;
  timeout_spec_.tv_sec = absl::ToInt64Seconds(spec_.timeout);
  timeout_spec_.tv_nsec =
      absl::ToInt64Nanoseconds(spec_.timeout - absl::Seconds(timeout_spec_.tv_sec));
  connect_in_flight_ = true;
  timeout_in_flight_ = true;
  io_uring_sqe* connect = loop().PrepareSqe(&connect_completion_);
  io_uring_prep_connect(connect, fd_, reinterpret_cast<const sockaddr*>(&spec_.remote.storage),
                        spec_.remote.length);
  connect->flags |= IOSQE_IO_LINK;
  // If the SQ was full here, PrepareSqe() submitted the CONNECT alone and this LINK_TIMEOUT
  // completes with -EINVAL: OnTimeout() then falls back to a loop timer.
  io_uring_sqe* timeout = loop().PrepareSqe(&timeout_completion_);
  io_uring_prep_link_timeout(timeout, &timeout_spec_, 0);
}

void Connector::PendingConnect::CancelConnect() {
  // No Completion on the cancel itself: the CONNECT's own CQE (-ECANCELED) is what counts.
  io_uring_prep_cancel(loop().PrepareSqe(nullptr), &connect_completion_, 0);
}

void Connector::PendingConnect::Abort() {
  if (aborted_) return;
  aborted_ = true;
  if (connect_in_flight_) CancelConnect();
  // A deferred report is due on the next turn anyway; a fallback deadline is cancelled by
  // OnConnect() when the cancelled CONNECT completes.
}

void Connector::PendingConnect::OnConnect(int32_t result, uint32_t /*flags*/) {
  connect_in_flight_ = false;
  connect_result_ = result;
  if (timer_ != kNoTimer) {
    loop().Cancel(timer_);
    timer_ = kNoTimer;
  }
  MaybeFinish();
}

void Connector::PendingConnect::OnTimeout(int32_t result, uint32_t /*flags*/) {
  timeout_in_flight_ = false;
  if (result == -ETIME) {
    // It fired, and the kernel cancelled the CONNECT (whose CQE says -ECANCELED).
    timed_out_ = true;
  } else if (result == -EINVAL && connect_in_flight_) {
    // Not linked (see Submit()): the loop's timer takes over the deadline.
    ArmTimer(std::max(deadline_ - loop().Now(), absl::ZeroDuration()));
  } else if (result != -ECANCELED && connect_in_flight_) {
    // It fired but could not cancel the CONNECT (-EALREADY): cancel it ourselves.
    timed_out_ = true;
    CancelConnect();
  }
  // -ECANCELED: the CONNECT completed first and took its timeout with it.
  MaybeFinish();
}

void Connector::PendingConnect::ArmTimer(absl::Duration delay) {
  timer_ = loop().RunAfter(delay, [this] {
    timer_ = kNoTimer;
    if (connect_in_flight_) {
      timed_out_ = true;
      CancelConnect();
    }
    MaybeFinish();
  });
}

absl::Status Connector::PendingConnect::Outcome() const {
  // Even a connect that won the race against its cancellation: after AbortAll() nothing new
  // may start.
  if (aborted_) return absl::CancelledError(absl::StrCat(Describe(spec_), ": aborted"));
  if (!setup_error_.ok()) return setup_error_;
  if (connect_result_ >= 0) return absl::OkStatus();
  if ((connect_result_ == -ECANCELED && timed_out_) || connect_result_ == -ETIMEDOUT) {
    // ETIMEDOUT: the kernel gave up retrying the SYN before our own deadline.
    return absl::DeadlineExceededError(absl::StrCat(
        Describe(spec_), ": timed out after ", absl::FormatDuration(spec_.timeout)));
  }
  // ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, ECONNRESET, EADDRNOTAVAIL (no free source port)...
  return absl::UnavailableError(
      absl::StrCat(Describe(spec_), ": ", std::strerror(-connect_result_)));
}

void Connector::PendingConnect::MaybeFinish() {
  if (connect_in_flight_ || timeout_in_flight_ || timer_ != kNoTimer) return;
  absl::Status status = Outcome();
  Connector& connector = connector_;
  // Take what outlives this object, then delete it before calling out: a callback may call
  // Connect() or AbortAll() again.
  auto it = connector.pending_.find(this);
  std::unique_ptr<PendingConnect> owned = std::move(it->second);
  connector.pending_.erase(it);
  if (status.ok()) {
    int fd = std::exchange(fd_, -1);
    StreamHandlerFactory factory = std::move(factory_);
    ConnectSpec spec = spec_;
    owned.reset();
    connector.Adopt(fd, spec, factory);
    return;
  }
  auto failed = std::move(failed_);
  owned.reset();  // closes the socket
  std::move(failed)(std::move(status));
}

Connector::Connector(EventLoop& loop) : loop_(loop) {}

Connector::~Connector() = default;

void Connector::Connect(const ConnectSpec& spec, StreamHandlerFactory factory,
                        absl::AnyInvocable<void(absl::Status) &&> failed) {
  auto pending = std::make_unique<PendingConnect>(*this, spec, std::move(factory),
                                                  std::move(failed));
  PendingConnect* raw = pending.get();
  pending_.emplace(raw, std::move(pending));
  raw->Begin();
}

void Connector::Adopt(int fd, const ConnectSpec& spec, const StreamHandlerFactory& factory) {
  auto connection = std::make_unique<Connection>(
      loop_, *this, fd, MakePeerInfo(spec.remote),
      ClientTlsOptions{spec.tls, spec.tls_server_name, spec.verify_peer});
  Connection* raw = connection.get();
  connections_.emplace(raw, std::move(connection));
  raw->Start(factory);
}

void Connector::AbortAll() {
  // Neither call reports synchronously (cancels and closes go through the ring), so the maps
  // do not change while they are walked.
  for (auto& [raw, pending] : pending_) pending->Abort();
  for (auto& [raw, connection] : connections_) connection->Abort();
}

size_t Connector::size() const { return pending_.size() + connections_.size(); }

void Connector::OnConnectionFinished(Connection* connection) { connections_.erase(connection); }

}  // namespace facteur::io
