#include "engine/io/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "engine/base/log.h"
#include "engine/base/status.h"

namespace facteur::io {

Connection::Connection(EventLoop& loop, ConnectionOwner& owner, int fd, PeerInfo peer,
                       TlsMode mode, const tls::TlsServerContext* tls_context)
    : loop_(loop),
      owner_(owner),
      fd_(fd),
      peer_(std::move(peer)),
      mode_(mode),
      client_(false),
      tls_context_(tls_context) {}

Connection::Connection(EventLoop& loop, ConnectionOwner& owner, int fd, PeerInfo peer,
                       ClientTlsOptions client_tls)
    : loop_(loop),
      owner_(owner),
      fd_(fd),
      peer_(std::move(peer)),
      mode_(TlsMode::kStartTls),
      client_(true),
      tls_context_(nullptr),
      client_tls_(std::move(client_tls)) {}

Connection::~Connection() {
  // Normally the ring closed the fd already; this covers a connection destroyed with its loop.
  if ((phase_ == Phase::kOpen || phase_ == Phase::kTearingDown) && fd_ >= 0) ::close(fd_);
}

void Connection::Start(const StreamHandlerFactory& factory) {
  last_progress_ = loop_.Now();
  handler_ = factory(*this);
  if (handler_ == nullptr) {
    BeginTeardown();
    return;
  }
  if (mode_ == TlsMode::kImplicit) {
    BeginHandshake();
  } else {
    started_ = true;
    CallbackScope scope(this);
    handler_->OnStart(nullptr);
  }
  Kick();
}

// ---- Stream methods: record intent, act after the callback (or on the next turn). ----

void Connection::AfterMethodCall() {
  if (depth_ == 0) ScheduleKick();
}

void Connection::ScheduleKick() {
  if (kick_timer_ != kNoTimer || phase_ != Phase::kOpen) return;
  kick_timer_ = loop_.RunAfter(absl::ZeroDuration(), [this] {
    kick_timer_ = kNoTimer;
    Kick();
  });
}

void Connection::Write(std::string_view bytes) {
  if (phase_ != Phase::kOpen || close_requested_) return;
  out_plain_.append(bytes);
  AfterMethodCall();
}

void Connection::StartTls() {
  if (phase_ != Phase::kOpen || close_requested_ || tls_ != nullptr || starttls_pending_) return;
  starttls_pending_ = true;
  // RFC 3207 §4.2: anything the peer sent before the handshake must not be acted on. A server
  // drops a client's pipelined commands; a client drops anything after the server's 220.
  inbox_.clear();
  AfterMethodCall();
}

void Connection::Close() {
  if (phase_ != Phase::kOpen) return;
  close_requested_ = true;
  AfterMethodCall();
}

void Connection::SetReading(bool reading) {
  if (reading_ == reading) return;
  reading_ = reading;
  AfterMethodCall();
}

void Connection::SetIdleTimeout(absl::Duration timeout) {
  idle_timeout_ = timeout;
  if (idle_timer_ != kNoTimer) {
    loop_.Cancel(idle_timer_);
    idle_timer_ = kNoTimer;
  }
  if (phase_ == Phase::kOpen && timeout > absl::ZeroDuration()) {
    last_progress_ = loop_.Now();
    ArmIdleTimer(FirstTimeout());
  }
}

void Connection::SetSendTimeout(absl::Duration timeout) {
  send_timeout_ = timeout;
  SetIdleTimeout(idle_timeout_);
}

absl::Duration Connection::FirstTimeout() const {
  return send_timeout_ > absl::ZeroDuration() ? std::min(send_timeout_, idle_timeout_)
                                               : idle_timeout_;
}

void Connection::Abort() { BeginTeardown(); }

// ---- The engine. ----

void Connection::Kick() {
  if (depth_ > 0 || in_kick_) return;
  in_kick_ = true;
  for (bool again = true; again && phase_ == Phase::kOpen;) {
    again = false;
    // 1. Deliver buffered input.
    if (reading_ && started_ && !inbox_.empty() && !starttls_pending_ && !handshaking_ &&
        !close_requested_) {
      std::string data;
      data.swap(inbox_);
      {
        CallbackScope scope(this);
        handler_->OnData(data);
      }
      again = true;
      continue;
    }
    // 2. Peer EOF (or close_notify) once everything it sent has been delivered.
    if (peer_eof_ && !close_requested_ && (inbox_.empty() || handshaking_ || !started_)) {
      close_requested_ = true;
    }
    // 3. Move the handler's output to the wire. While STARTTLS waits, what was written before
    // it (the 220) still goes out in plaintext; during a handshake, output waits for it.
    if (!out_plain_.empty() && !handshaking_) {
      if (tls_ != nullptr) {
        if (!tls_shutdown_sent_) {
          absl::Status status = tls_->WritePlaintext(out_plain_);
          if (!status.ok()) {
            Log(LogLevel::kDebug, "%s: %s", peer_.text, status.ToString());
            BeginTeardown();
            break;
          }
        }
      } else {
        wire_out_.append(out_plain_);
      }
      out_plain_.clear();
    }
    if (tls_ != nullptr) tls_->TakeCiphertext(&wire_out_);
    if (!send_in_flight_ && !wire_out_.empty()) SubmitSend();
    bool wire_flushed = !send_in_flight_ && wire_out_.empty();
    // 4. STARTTLS once the reply announcing it (server) or the command (client) is on the wire.
    if (starttls_pending_ && wire_flushed && out_plain_.empty() && !close_requested_) {
      starttls_pending_ = false;
      BeginHandshake();
      again = true;
      continue;
    }
    // 5. Close once flushed; a TLS session ends with our close_notify first.
    if (close_requested_ && wire_flushed && (out_plain_.empty() || handshaking_ || starttls_pending_)) {
      if (tls_ != nullptr && tls_->handshake_done() && !tls_shutdown_sent_) {
        tls_shutdown_sent_ = true;
        tls_->Shutdown();
        again = true;
        continue;
      }
      BeginTeardown();
      break;
    }
    // 6. Keep one recv armed when input is wanted: for the handler, for the handshake, or
    // while STARTTLS waits (so that pre-handshake bytes are read and discarded).
    // Back-pressure: a peer that does not read what we send is not read either, so that its
    // pipelined commands cannot grow our output without bound. OnSend() kicks again once the
    // backlog drains, which re-arms the recv.
    const size_t unsent = wire_out_.size() + (sending_.size() - send_offset_);
    bool want_input = !peer_eof_ && !close_requested_ &&
                      (handshaking_ || starttls_pending_ ||
                       (reading_ && inbox_.empty() && unsent < kMaxUnsentOutput));
    if (want_input && !recv_in_flight_) SubmitRecv();
  }
  in_kick_ = false;
}

void Connection::SubmitRecv() {
  recv_in_flight_ = true;
  io_uring_sqe* sqe = loop_.PrepareSqe(&recv_completion_);
  io_uring_prep_recv(sqe, fd_, recv_buffer_.data(), recv_buffer_.size(), 0);
}

void Connection::SubmitSend() {
  if (sending_.size() == send_offset_) {
    sending_.clear();
    sending_.swap(wire_out_);
    send_offset_ = 0;
  }
  send_in_flight_ = true;
  io_uring_sqe* sqe = loop_.PrepareSqe(&send_completion_);
  io_uring_prep_send(sqe, fd_, sending_.data() + send_offset_, sending_.size() - send_offset_,
                     MSG_NOSIGNAL);
}

void Connection::OnRecv(int32_t result, uint32_t /*flags*/) {
  recv_in_flight_ = false;
  if (phase_ != Phase::kOpen) {
    MaybeCloseFd();
    return;
  }
  if (result == -EINTR || result == -EAGAIN) {
    Kick();
    return;
  }
  if (result < 0) {
    // ECONNRESET and friends: the peer is gone, nothing more can be delivered or sent.
    Log(LogLevel::kDebug, "%s: %s", peer_.text, UringStatus("recv", result).ToString());
    BeginTeardown();
    return;
  }
  if (result == 0) {
    peer_eof_ = true;
    if (handshaking_) {
      HandshakeFailed("connection closed during the TLS handshake");
    }
    Kick();
    return;
  }
  last_progress_ = loop_.Now();
  std::string_view bytes(recv_buffer_.data(), static_cast<size_t>(result));
  if (starttls_pending_ || close_requested_) {
    // RFC 3207 §4.2 (and CVE-2011-0411): bytes before the handshake are dropped.
  } else if (tls_ != nullptr) {
    HandleCiphertext(bytes);
  } else {
    inbox_.append(bytes);
  }
  Kick();
}

absl::StatusOr<std::unique_ptr<tls::TlsEngine>> Connection::NewTlsEngine() const {
  if (client_) {
    if (client_tls_.context == nullptr) {
      return absl::FailedPreconditionError("no TLS client context");
    }
    return tls::TlsEngine::NewClient(client_tls_.context->native(), client_tls_.server_name,
                                     client_tls_.verify_peer);
  }
  if (tls_context_ == nullptr) {
    return absl::FailedPreconditionError("TLS is not configured on this listener");
  }
  return tls::TlsEngine::NewServer(*tls_context_);
}

void Connection::BeginHandshake() {
  auto engine = NewTlsEngine();
  if (!engine.ok()) {
    HandshakeFailed(ToStd(engine.status().message()));
    return;
  }
  tls_ = std::move(*engine);
  handshaking_ = true;
  // A client speaks first: this queues its ClientHello, which Kick() sends. A server only
  // learns that it needs input.
  AdvanceHandshake();
}

bool Connection::AdvanceHandshake() {
  auto progress = tls_->Handshake();
  if (!progress.ok()) {
    HandshakeFailed(ToStd(progress.status().message()));
    return false;
  }
  if (*progress == tls::HandshakeProgress::kWantMore) return false;
  HandshakeFinished();
  return true;
}

void Connection::HandleCiphertext(std::string_view bytes) {
  tls_->FeedCiphertext(bytes);
  if (handshaking_) {
    if (!AdvanceHandshake()) return;
    if (phase_ != Phase::kOpen || close_requested_) return;
  }
  absl::Status status = tls_->ReadPlaintext(&inbox_);
  if (!status.ok()) {
    Log(LogLevel::kDebug, "%s: %s", peer_.text, status.ToString());
    BeginTeardown();
    return;
  }
  if (tls_->peer_closed()) peer_eof_ = true;
}

void Connection::HandshakeFinished() {
  handshaking_ = false;
  tls::SessionInfo session = tls_->info();
  TlsInfo info{session.version, session.cipher, session.bits, session.peer_verified};
  CallbackScope scope(this);
  if (!started_) {
    started_ = true;
    handler_->OnStart(&info);
  } else {
    handler_->OnTlsStarted(info);
  }
}

void Connection::HandshakeFailed(std::string_view reason) {
  handshaking_ = false;
  starttls_pending_ = false;
  close_requested_ = true;
  out_plain_.clear();  // never send plaintext meant for a TLS session
  inbox_.clear();
  if (handler_ != nullptr) {
    CallbackScope scope(this);
    handler_->OnTlsFailed(reason);
  }
}

void Connection::OnSend(int32_t result, uint32_t /*flags*/) {
  send_in_flight_ = false;
  if (phase_ != Phase::kOpen) {
    MaybeCloseFd();
    return;
  }
  if (result == -EINTR || result == -EAGAIN) {
    SubmitSend();
    return;
  }
  if (result < 0) {
    Log(LogLevel::kDebug, "%s: %s", peer_.text, UringStatus("send", result).ToString());
    BeginTeardown();
    return;
  }
  send_offset_ += static_cast<size_t>(result);
  last_progress_ = loop_.Now();
  if (send_offset_ < sending_.size()) {
    SubmitSend();  // a partial send: the rest goes next, before anything newer
    return;
  }
  sending_.clear();
  send_offset_ = 0;
  Kick();
}

void Connection::ArmIdleTimer(absl::Duration delay) {
  idle_timer_ = loop_.RunAfter(delay, [this] {
    idle_timer_ = kNoTimer;
    OnIdleTimer();
  });
}

void Connection::OnIdleTimer() {
  if (phase_ != Phase::kOpen || idle_timeout_ <= absl::ZeroDuration()) return;
  const bool sending = send_in_flight_ || !wire_out_.empty() || !out_plain_.empty();
  const absl::Duration limit =
      sending && send_timeout_ > absl::ZeroDuration() ? send_timeout_ : idle_timeout_;
  absl::Duration quiet = loop_.Now() - last_progress_;
  if (quiet < limit) {
    // Progress came since the timer was set: re-arm for the rest instead of on every recv.
    // No later than the shorter timeout, which applies should sending start or end by then.
    ArmIdleTimer(std::min(limit - quiet, FirstTimeout()));
    return;
  }
  if (close_requested_ || !started_) {
    // Already closing and the peer does not read what we flush, or still no handshake.
    if (!started_ && handler_ != nullptr && handshaking_) {
      HandshakeFailed("TLS handshake timed out");
    }
    BeginTeardown();
    return;
  }
  last_progress_ = loop_.Now();
  ArmIdleTimer(FirstTimeout());
  {
    CallbackScope scope(this);
    handler_->OnIdleTimeout();
  }
  Kick();
}

void Connection::BeginTeardown() {
  if (phase_ != Phase::kOpen) return;
  phase_ = Phase::kTearingDown;
  if (idle_timer_ != kNoTimer) loop_.Cancel(idle_timer_);
  if (kick_timer_ != kNoTimer) loop_.Cancel(kick_timer_);
  idle_timer_ = kick_timer_ = kNoTimer;
  // Cancel SQEs carry no Completion: only the cancelled operations' own CQEs matter.
  if (recv_in_flight_) io_uring_prep_cancel(loop_.PrepareSqe(nullptr), &recv_completion_, 0);
  if (send_in_flight_) io_uring_prep_cancel(loop_.PrepareSqe(nullptr), &send_completion_, 0);
  MaybeCloseFd();
}

void Connection::MaybeCloseFd() {
  if (phase_ != Phase::kTearingDown || recv_in_flight_ || send_in_flight_) return;
  phase_ = Phase::kClosing;
  io_uring_sqe* sqe = loop_.PrepareSqe(&close_completion_);
  io_uring_prep_close(sqe, fd_);
}

void Connection::OnCloseDone(int32_t result, uint32_t /*flags*/) {
  if (result < 0) {
    Log(LogLevel::kDebug, "%s: %s", peer_.text, UringStatus("close", result).ToString());
  }
  phase_ = Phase::kClosed;
  fd_ = -1;
  if (handler_ != nullptr) {
    handler_->OnClosed();
    handler_.reset();
  }
  owner_.OnConnectionFinished(this);  // deletes this: nothing may follow
}

}  // namespace facteur::io
