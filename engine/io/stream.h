// File: engine/io/stream.h
// The seam between the io_uring layer and a protocol: a Stream is one connection, accepted by a
// listener or made by a Connector (TCP or Unix, plain or TLS through memory BIOs); a
// StreamHandler is the protocol session that reads from it and writes to it. The handler never
// sees a socket, a ring or OpenSSL.
// Thread contract: shard-confined. A Stream and its handler live on the EventLoop thread that
// accepted or made the connection; every callback runs there; every Stream method must be
// called there.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace facteur::io {

class EventLoop;

struct PeerInfo {
  bool is_unix = false;
  uint8_t address[16] = {};  // IPv4 in the first 4 bytes (address_length 4), or IPv6 (16)
  size_t address_length = 0;
  uint16_t port = 0;
  std::string text;          // "[192.0.2.1]:4567", "[::1]:4567", "unix uid=33 pid=812" or "unix"
  std::string ip_text;       // "192.0.2.1", "::1", or "" for unix
  // A Unix socket peer's user and process (SO_PEERCRED, read at accept): who submitted, for
  // the trace field and the logs, since the socket asks for no AUTH. -1 when not known.
  int64_t unix_uid = -1;
  int64_t unix_pid = -1;
};

struct TlsInfo {
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_256_GCM_SHA384"
  int bits = 0;
  // Outbound connections: the server's certificate chain and name verified (whether or not
  // verification was required), for the logs and for opportunistic policies. Inbound: false.
  bool peer_verified = false;
};

class Stream {
 public:
  virtual ~Stream() = default;
  // Appends to the output; what is written during a callback is sent when it returns
  // (one send for many pipelined replies).
  virtual void Write(std::string_view bytes) = 0;
  // After the pending output is sent, runs a TLS handshake: server side on an accepted
  // connection, client side on one made by a Connector. Input that arrived before the
  // handshake and was not yet delivered is discarded, both ways (RFC 3207 §4.2,
  // CVE-2011-0411); the rest of the OnData() chunk being handled is the handler's to drop.
  // Then OnTlsStarted() or OnTlsFailed().
  virtual void StartTls() = 0;
  // After the pending output is sent, closes the connection. Then OnClosed(), once.
  virtual void Close() = 0;
  // Flow control: while false, OnData() is not called (input stays in the kernel).
  virtual void SetReading(bool reading) = 0;
  // OnIdleTimeout() fires after `timeout` without progress: re-armed by every input and by
  // every send that completes (a wait for a reply starts once the request is on the wire).
  // Zero disables it.
  virtual void SetIdleTimeout(absl::Duration timeout) = 0;
  // While output waits to be sent, OnIdleTimeout() fires instead after `timeout` without a
  // send completing (RFC 5321 §4.5.3.2.5: each block of data); zero: the idle timeout applies
  // then too.
  virtual void SetSendTimeout(absl::Duration timeout) = 0;
  virtual bool tls_active() const = 0;
  virtual const PeerInfo& peer() const = 0;
  virtual EventLoop& loop() = 0;
};

class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  // The connection is ready: for implicit TLS, after the handshake (with its TlsInfo).
  virtual void OnStart(const TlsInfo* implicit_tls) = 0;
  // Bytes from the peer (plaintext after TLS). Views are valid during the call only.
  virtual void OnData(std::string_view bytes) = 0;
  virtual void OnTlsStarted(const TlsInfo& tls) = 0;
  // The handshake failed; the stream is closing, OnClosed() follows.
  virtual void OnTlsFailed(std::string_view reason) = 0;
  // No input for the idle timeout: the handler replies (421 4.4.2) and calls Close().
  virtual void OnIdleTimeout() = 0;
  // The connection is gone (peer closed, error, or after Close()). The handler is destroyed
  // right after this returns; pending asynchronous work must not touch it any more.
  virtual void OnClosed() = 0;
};

// Makes the handler for a new connection accepted by a listener. Runs on the accepting loop.
using StreamHandlerFactory =
    std::function<std::unique_ptr<StreamHandler>(Stream& stream)>;

}  // namespace facteur::io
