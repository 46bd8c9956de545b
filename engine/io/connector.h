// File: engine/io/connector.h
// Outbound connections for one shard: a non-blocking socket, optionally bound to a source
// address (the egress IP of a delivery source), connected through the ring with a timeout
// (IORING_OP_CONNECT linked to a LINK_TIMEOUT), then wrapped in a Connection in client mode
// whose StartTls() runs a client handshake (SNI, and certificate verification when asked).
// The Connector owns every connection it made until that connection finishes (the
// ConnectionOwner of the outbound side, as io::Server's shards are for the inbound side).
// Thread contract: shard-confined. Construct, call and destroy on the loop thread.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/io/connection.h"
#include "engine/io/event_loop.h"
#include "engine/io/socket_address.h"
#include "engine/io/stream.h"
#include "engine/tls/tls_client_context.h"

namespace facteur::io {

struct ConnectSpec {
  SocketAddress remote;
  // Bind to this address (port 0) before connecting. Default: unset, the kernel chooses.
  std::optional<SocketAddress> source;
  // Connect timeout (RFC 5321 §4.5.3.2 leaves it to the client; Postfix uses 30s). Must be
  // positive.
  absl::Duration timeout = absl::Seconds(30);
  // For the handler's StartTls(): the client context (borrowed, must outlive the connection).
  // Null: StartTls() fails the stream with OnTlsFailed("no TLS client context").
  const tls::TlsClientContext* tls = nullptr;
  // SNI, and the name the server certificate must match when `verify_peer` is set
  // (RFC 6125 via X509_VERIFY_PARAM_set1_host: the MX host name, RFC 7672 §3.2.2 style).
  std::string tls_server_name;
  // Verify the certificate chain and name during the handshake; a mismatch fails the
  // handshake (OnTlsFailed with OpenSSL's reason). Default: false (opportunistic TLS).
  bool verify_peer = false;
};

class Connector final : public ConnectionOwner {
 public:
  explicit Connector(EventLoop& loop);
  // Frees what is still open without any callback. Only safe once nothing is in flight on the
  // ring: call AbortAll() and let the loop run until size() is 0 first, or destroy the
  // Connector after its loop has stopped for good (the ring, destroyed, dispatches nothing).
  ~Connector();
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  // Connects to spec.remote. On success makes the handler with `factory` and calls its
  // OnStart(nullptr), exactly like an accepted plain connection; the stream's peer() is the
  // remote address. On failure calls `failed` instead, on the loop thread and never inside this
  // call: DeadlineExceeded (timeout), Unavailable (refused, unreachable, reset: the errno text
  // is in the message), InvalidArgument (bad source or remote address, e.g. bind failed),
  // ResourceExhausted (no socket: EMFILE...), Cancelled (AbortAll()). Every message names the
  // remote address (and the source when one was given).
  // `failed` may call Connect() again; `factory` runs inside a completion, like a listener's.
  void Connect(const ConnectSpec& spec, StreamHandlerFactory factory,
               absl::AnyInvocable<void(absl::Status) &&> failed);

  // Aborts every connection (their handlers get OnClosed()) and pending connect (they report
  // Cancelled). Nothing is called back inside this call; run the loop until size() is 0.
  void AbortAll();
  // Connections and pending connects not yet finished.
  size_t size() const;

  // ConnectionOwner
  void OnConnectionFinished(Connection* connection) override;

 private:
  class PendingConnect;
  // A connect succeeded: `fd` becomes a client-mode Connection owned here, then starts.
  void Adopt(int fd, const ConnectSpec& spec, const StreamHandlerFactory& factory);

  EventLoop& loop_;
  absl::flat_hash_map<PendingConnect*, std::unique_ptr<PendingConnect>> pending_;
  absl::flat_hash_map<Connection*, std::unique_ptr<Connection>> connections_;
};

}  // namespace facteur::io
