// File: engine/io/connection.h
// Connection: the io_uring implementation of Stream for one connected socket, accepted (server
// mode: StartTls() and implicit TLS run a server handshake) or made by a Connector (client
// mode: StartTls() runs a client handshake with SNI and optional verification). It owns the fd,
// the handler, the optional TlsEngine, and the three operations it may have in flight (one
// recv, one send, the final close), each with its own Completion. Teardown cancels what is in
// flight, waits for those CQEs, closes the fd through the ring, then calls OnClosed() exactly
// once and hands itself back to its owner for deletion. OnClosed() therefore never runs inside a
// Stream method call.
// Re-entrancy: handler callbacks run inside a "callback scope"; Stream methods called there only
// record intent, and the connection acts on it when the callback returns. Stream methods called
// outside a callback (posted work, the handler's own timers) schedule that step for the next
// loop turn, so a handler never sees a callback nested inside its own call.
// Thread contract: shard-confined.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"
#include "engine/io/event_loop.h"
#include "engine/io/stream.h"
#include "engine/tls/tls_client_context.h"
#include "engine/tls/tls_context.h"
#include "engine/tls/tls_engine.h"

namespace facteur::io {

enum class TlsMode { kNone, kStartTls, kImplicit };

// Output queued for a peer beyond which the connection stops reading from it until the peer
// has read enough (transport back-pressure, independent of the handler's SetReading()).
inline constexpr size_t kMaxUnsentOutput = 256 * 1024;

// The TLS side of an outbound connection (client mode).
struct ClientTlsOptions {
  // Borrowed, must outlive the connection. Null: StartTls() fails with OnTlsFailed().
  const tls::TlsClientContext* context = nullptr;
  // SNI, and the name the server certificate is checked against ("" for neither).
  std::string server_name;
  // A bad chain or name fails the handshake; otherwise TlsInfo::peer_verified only reports it.
  bool verify_peer = false;
};

class Connection;

// Who deletes a finished connection (the server's per-loop shard, or the Connector).
class ConnectionOwner {
 public:
  // Called once, after OnClosed(); deletes `connection`.
  virtual void OnConnectionFinished(Connection* connection) = 0;

 protected:
  ~ConnectionOwner() = default;
};

class Connection final : public Stream {
 public:
  // Server mode. Takes ownership of `fd`. `tls_context` is borrowed (needed unless mode is kNone).
  Connection(EventLoop& loop, ConnectionOwner& owner, int fd, PeerInfo peer, TlsMode mode,
             const tls::TlsServerContext* tls_context);
  // Client mode: a connected outbound socket (owned); `peer` is the remote end. StartTls() runs
  // a client handshake with `client_tls` (there is no implicit TLS on this side yet).
  Connection(EventLoop& loop, ConnectionOwner& owner, int fd, PeerInfo peer,
             ClientTlsOptions client_tls);
  ~Connection() override;

  // Makes the handler and starts: OnStart() now (plain), or after the handshake (implicit TLS).
  void Start(const StreamHandlerFactory& factory);
  // Closes without flushing (server shutdown, fatal error). OnClosed() follows.
  void Abort();

  // Stream.
  void Write(std::string_view bytes) override;
  void StartTls() override;
  void Close() override;
  void SetReading(bool reading) override;
  void SetIdleTimeout(absl::Duration timeout) override;
  void SetSendTimeout(absl::Duration timeout) override;
  bool tls_active() const override { return tls_ != nullptr && !handshaking_; }
  const PeerInfo& peer() const override { return peer_; }
  EventLoop& loop() override { return loop_; }

 private:
  enum class Phase { kOpen, kTearingDown, kClosing, kClosed };

  // RAII depth counter: Stream methods called while depth_ > 0 only record intent.
  struct CallbackScope {
    explicit CallbackScope(Connection* c) : c(c) { ++c->depth_; }
    ~CallbackScope() { --c->depth_; }
    Connection* c;
  };

  void OnRecv(int32_t result, uint32_t flags);
  void OnSend(int32_t result, uint32_t flags);
  void OnCloseDone(int32_t result, uint32_t flags);

  void Kick();            // acts on recorded intent; may call handler callbacks
  void ScheduleKick();    // Kick() on the next loop turn
  void AfterMethodCall(); // what a Stream method does once it has recorded intent
  void SubmitRecv();
  void SubmitSend();
  void HandleCiphertext(std::string_view bytes);
  absl::StatusOr<std::unique_ptr<tls::TlsEngine>> NewTlsEngine() const;
  void BeginHandshake();
  bool AdvanceHandshake();  // true once the handshake has succeeded
  void HandshakeFinished();
  void HandshakeFailed(std::string_view reason);
  void BeginTeardown();
  void MaybeCloseFd();
  void ArmIdleTimer(absl::Duration delay);
  // The shorter of the idle and send timeouts: when the idle timer must look first.
  absl::Duration FirstTimeout() const;
  void OnIdleTimer();

  EventLoop& loop_;
  ConnectionOwner& owner_;
  int fd_;
  PeerInfo peer_;
  TlsMode mode_;
  const bool client_;                          // made by a Connector: we speak TLS first
  const tls::TlsServerContext* tls_context_;   // server mode
  const ClientTlsOptions client_tls_;          // client mode
  std::unique_ptr<StreamHandler> handler_;
  std::unique_ptr<tls::TlsEngine> tls_;

  Phase phase_ = Phase::kOpen;
  int depth_ = 0;
  bool in_kick_ = false;
  bool started_ = false;          // OnStart() has been called
  bool reading_ = true;           // the handler's flow control
  bool handshaking_ = false;
  bool starttls_pending_ = false; // StartTls() waits for the output to drain
  bool close_requested_ = false;  // Close(), peer EOF, or a failed handshake: flush then close
  bool tls_shutdown_sent_ = false;
  bool peer_eof_ = false;

  std::string inbox_;     // plaintext received, not yet delivered
  std::string out_plain_; // written by the handler, not yet encrypted/queued
  std::string wire_out_;  // bytes for the socket, waiting for the current send
  std::string sending_;   // bytes of the send in flight
  size_t send_offset_ = 0;

  bool recv_in_flight_ = false;
  bool send_in_flight_ = false;
  std::array<char, 16384> recv_buffer_;
  MemberCompletion<Connection, &Connection::OnRecv> recv_completion_{this};
  MemberCompletion<Connection, &Connection::OnSend> send_completion_{this};
  MemberCompletion<Connection, &Connection::OnCloseDone> close_completion_{this};

  absl::Duration idle_timeout_ = absl::ZeroDuration();
  absl::Duration send_timeout_ = absl::ZeroDuration();
  absl::Time last_progress_;  // the last input, or the last send completed
  TimerId idle_timer_ = kNoTimer;
  TimerId kick_timer_ = kNoTimer;
};

}  // namespace facteur::io
