#include "engine/io/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/io/socket_address.h"

namespace facteur::io {
namespace {

constexpr int kBacklog = 1024;
constexpr absl::Duration kAcceptRetryDelay = absl::Milliseconds(50);

// An fd travelling inside a posted closure: closed if the closure is destroyed unrun.
class OwnedFd {
 public:
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(OwnedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  OwnedFd& operator=(OwnedFd&&) = delete;
  ~OwnedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int Release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

void CloseAll(std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

}  // namespace

// One listening socket accepted on one shard with a multishot accept.
class Server::Acceptor {
 public:
  Acceptor(Server& server, Shard& shard, int listen_fd, size_t spec_index, bool hand_off)
      : server_(server), shard_(shard), fd_(listen_fd), spec_index_(spec_index),
        hand_off_(hand_off) {}
  ~Acceptor() {
    if (fd_ >= 0) ::close(fd_);
  }

  void Arm();
  void Stop();
  bool done() const { return fd_ < 0; }

 private:
  void OnAccept(int32_t result, uint32_t flags);

  Server& server_;
  Shard& shard_;
  int fd_;
  size_t spec_index_;
  bool hand_off_;  // spread connections over every shard (the unix listener)
  size_t next_shard_ = 0;
  bool in_flight_ = false;
  bool stopping_ = false;
  TimerId retry_timer_ = kNoTimer;
  MemberCompletion<Acceptor, &Acceptor::OnAccept> completion_{this};
};

// One loop thread with the connections and acceptors it owns.
class Server::Shard final : public ConnectionOwner {
 public:
  Shard(Server& server, size_t index, std::unique_ptr<EventLoop> loop)
      : server_(server), index_(index), loop_(std::move(loop)) {}

  EventLoop& loop() { return *loop_; }
  size_t index() const { return index_; }
  bool stopping() const { return stopping_; }
  std::vector<std::unique_ptr<Acceptor>>& acceptors() { return acceptors_; }
  std::thread& thread() { return thread_; }

  // Loop thread: a new connection on this shard.
  void Adopt(int fd, size_t spec_index);
  void BeginStop();
  void MaybeFinishStop();
  void OnConnectionFinished(Connection* connection) override;

 private:
  Server& server_;
  size_t index_;
  std::unique_ptr<EventLoop> loop_;
  std::thread thread_;
  std::vector<std::unique_ptr<Acceptor>> acceptors_;
  absl::flat_hash_map<Connection*, std::unique_ptr<Connection>> connections_;
  bool stopping_ = false;
};

void Server::Acceptor::Arm() {
  if (stopping_ || fd_ < 0) return;
  in_flight_ = true;
  io_uring_sqe* sqe = shard_.loop().PrepareSqe(&completion_);
  // No address buffer: a multishot accept would overwrite it before the CQE is read;
  // getpeername() on the new socket is exact.
  io_uring_prep_multishot_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
}

void Server::Acceptor::OnAccept(int32_t result, uint32_t flags) {
  if (result >= 0) {
    int fd = result;
    if (stopping_ || shard_.stopping()) {
      ::close(fd);
    } else if (!hand_off_) {
      shard_.Adopt(fd, spec_index_);
    } else {
      Shard& target = *server_.shards_[next_shard_++ % server_.shards_.size()];
      if (&target == &shard_) {
        shard_.Adopt(fd, spec_index_);
      } else {
        size_t spec = spec_index_;
        target.loop().Post([&target, owned = OwnedFd(fd), spec]() mutable {
          target.Adopt(owned.Release(), spec);
        });
      }
    }
  } else if (result != -ECANCELED) {
    Log(LogLevel::kWarning, "accept on %s: %s", server_.bound_[spec_index_].text,
        UringStatus("accept", result).ToString());
  }
  if (flags & IORING_CQE_F_MORE) return;
  in_flight_ = false;
  if (stopping_) {
    ::close(fd_);
    fd_ = -1;
    shard_.MaybeFinishStop();
    return;
  }
  if (result >= 0 || result == -EINTR) {
    Arm();
  } else {
    // EMFILE/ENFILE/ENOBUFS: re-arming at once would spin; try again shortly.
    retry_timer_ = shard_.loop().RunAfter(kAcceptRetryDelay, [this] {
      retry_timer_ = kNoTimer;
      Arm();
    });
  }
}

void Server::Acceptor::Stop() {
  if (stopping_) return;  // StopAccepting() then Stop()
  stopping_ = true;
  if (retry_timer_ != kNoTimer) {
    shard_.loop().Cancel(retry_timer_);
    retry_timer_ = kNoTimer;
  }
  if (in_flight_) {
    io_uring_prep_cancel(shard_.loop().PrepareSqe(nullptr), &completion_, 0);
  } else if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

void Server::Shard::Adopt(int fd, size_t spec_index) {
  if (stopping_) {
    ::close(fd);
    return;
  }
  const ListenSpec& spec = server_.specs_[spec_index];
  SocketAddress peer_address;
  peer_address.length = sizeof(peer_address.storage);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer_address.storage),
                    &peer_address.length) != 0) {
    // The peer already went away (ENOTCONN): nothing to serve.
    ::close(fd);
    return;
  }
  if (peer_address.family() == AF_INET || peer_address.family() == AF_INET6) {
    int one = 1;
    // SMTP replies are small and latency-bound; Write() already coalesces per callback.
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  PeerInfo peer = MakePeerInfo(peer_address);
  if (peer.is_unix) {
    ucred credentials{};
    socklen_t size = sizeof(credentials);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &size) == 0) {
      peer.unix_uid = credentials.uid;
      peer.unix_pid = credentials.pid;
      peer.text = absl::StrCat("unix uid=", credentials.uid, " pid=", credentials.pid);
    }
  }
  auto connection = std::make_unique<Connection>(*loop_, *this, fd, std::move(peer), spec.tls,
                                                 spec.tls_context);
  Connection* raw = connection.get();
  connections_.emplace(raw, std::move(connection));
  server_.active_connections_.fetch_add(1);
  raw->Start(spec.factory);
}

void Server::Shard::OnConnectionFinished(Connection* connection) {
  connections_.erase(connection);
  server_.active_connections_.fetch_sub(1);
  MaybeFinishStop();
}

void Server::Shard::BeginStop() {
  stopping_ = true;
  for (auto& acceptor : acceptors_) acceptor->Stop();
  // Abort() never deletes synchronously (the close goes through the ring), so iterating is safe.
  for (auto& [raw, connection] : connections_) connection->Abort();
  MaybeFinishStop();
}

void Server::Shard::MaybeFinishStop() {
  if (!stopping_ || !connections_.empty()) return;
  for (auto& acceptor : acceptors_) {
    if (!acceptor->done()) return;
  }
  loop_->Stop();
}

Server::Server(std::vector<ListenSpec> specs) : specs_(std::move(specs)) {}

Server::~Server() {
  Stop();
  // Acceptors close their fds; listeners never handed to an acceptor are closed here.
  for (Bound& bound : bound_) CloseAll(bound.fds);
}

size_t Server::loop_count() const { return shards_.size(); }
EventLoop& Server::loop(size_t i) { return shards_.at(i)->loop(); }

std::string Server::BoundAddress(size_t i) const {
  return i < bound_.size() ? bound_[i].text : std::string();
}

absl::Status Server::Bind(const ListenSpec& spec, size_t shards, Bound* bound) {
  FACTEUR_ASSIGN_OR_RETURN(SocketAddress address, ParseListenAddress(spec.address));
  auto fail = [&](std::string_view what, int error) {
    CloseAll(bound->fds);
    return ErrnoStatus(absl::StrCat(ToAbsl(what), " ", spec.address), error);
  };
  if (address.family() == AF_UNIX) {
    bound->is_unix = true;
    bound->unix_path = spec.address.substr(5);
    bound->text = bound->unix_path;
    struct stat st;
    if (::lstat(bound->unix_path.c_str(), &st) == 0) {
      // A socket file left by a previous run; anything else is not ours to delete.
      if (!S_ISSOCK(st.st_mode)) return fail("not a socket, refusing to replace", EEXIST);
      if (::unlink(bound->unix_path.c_str()) != 0) return fail("unlink stale socket", errno);
    }
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail("socket", errno);
    bound->fds.push_back(fd);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
      return fail("bind", errno);
    }
    // Local applications of any user may submit; policy decides what they may send.
    if (::chmod(bound->unix_path.c_str(), 0666) != 0) return fail("chmod 0666", errno);
    if (::listen(fd, kBacklog) != 0) return fail("listen", errno);
    return absl::OkStatus();
  }
  for (size_t i = 0; i < shards; ++i) {
    int fd = ::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd < 0) return fail("socket", errno);
    bound->fds.push_back(fd);
    int one = 1;
    if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
      return fail("setsockopt SO_REUSEPORT", errno);
    }
    if (address.family() == AF_INET6 &&
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) {
      return fail("setsockopt IPV6_V6ONLY", errno);
    }
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) {
      return fail("bind", errno);
    }
    if (i == 0) {
      // Port 0: every shard's socket must join the port the kernel picked for the first.
      SocketAddress actual;
      actual.length = sizeof(actual.storage);
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&actual.storage), &actual.length) != 0) {
        return fail("getsockname", errno);
      }
      address = actual;
      bound->text = FormatAddress(actual);
    }
    if (::listen(fd, kBacklog) != 0) return fail("listen", errno);
  }
  return absl::OkStatus();
}

absl::Status Server::Start(size_t threads) {
  if (started_) return absl::FailedPreconditionError("Server::Start called twice");
  started_ = true;
  if (threads == 0) threads = 1;
  for (const ListenSpec& spec : specs_) {
    if (!spec.factory) {
      return absl::InvalidArgumentError(absl::StrCat("listener ", spec.address, ": no handler"));
    }
    if (spec.tls != TlsMode::kNone && spec.tls_context == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("listener ", spec.address, ": TLS mode without a TLS context"));
    }
  }
  for (size_t i = 0; i < threads; ++i) {
    FACTEUR_ASSIGN_OR_RETURN(std::unique_ptr<EventLoop> loop, EventLoop::Create());
    shards_.push_back(std::make_unique<Shard>(*this, i, std::move(loop)));
  }
  bound_.resize(specs_.size());
  for (size_t i = 0; i < specs_.size(); ++i) {
    absl::Status status = Bind(specs_[i], threads, &bound_[i]);
    if (!status.ok()) {
      for (Bound& bound : bound_) CloseAll(bound.fds);
      return status;
    }
  }
  // Hand each listening fd to the acceptor of its shard; unix listeners spread over shards.
  size_t next_unix_shard = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    Bound& bound = bound_[i];
    for (size_t k = 0; k < bound.fds.size(); ++k) {
      Shard& shard = bound.is_unix ? *shards_[next_unix_shard++ % threads] : *shards_[k];
      shard.acceptors().push_back(
          std::make_unique<Acceptor>(*this, shard, bound.fds[k], i, bound.is_unix));
    }
    bound.fds.clear();
  }
  for (auto& shard : shards_) {
    Shard* raw = shard.get();
    raw->loop().Post([raw] {
      for (auto& acceptor : raw->acceptors()) acceptor->Arm();
    });
    raw->thread() = std::thread([raw] {
      pthread_setname_np(pthread_self(), absl::StrCat("io-", raw->index()).c_str());
      absl::Status status = raw->loop().Run();
      if (!status.ok()) Log(LogLevel::kError, "loop %d: %s", raw->index(), status.ToString());
    });
  }
  return absl::OkStatus();
}

void Server::StopAccepting() {
  if (!started_ || stopped_ || accepting_stopped_) return;
  accepting_stopped_ = true;
  for (auto& shard : shards_) {
    Shard* raw = shard.get();
    // Shared: the loop may still be inside Notify() when this thread sees it and returns.
    auto done = std::make_shared<absl::Notification>();
    raw->loop().Post([raw, done] {
      for (auto& acceptor : raw->acceptors()) acceptor->Stop();
      done->Notify();
    });
    done->WaitForNotification();
  }
}

void Server::Stop() {
  if (stopped_) return;
  stopped_ = true;
  for (auto& shard : shards_) {
    Shard* raw = shard.get();
    raw->loop().Post([raw] { raw->BeginStop(); });
  }
  for (auto& shard : shards_) {
    if (shard->thread().joinable()) shard->thread().join();
  }
  for (Bound& bound : bound_) {
    if (bound.is_unix) ::unlink(bound.unix_path.c_str());
  }
}

}  // namespace facteur::io
