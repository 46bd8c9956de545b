// File: engine/tls/tls_engine.h
// TlsEngine runs one TLS connection over two memory BIOs: the caller moves ciphertext between
// the engine and its socket (FeedCiphertext / TakeCiphertext) and plaintext between the engine
// and its protocol (ReadPlaintext / WritePlaintext). It never touches a socket, so it fits an
// io_uring loop: recv completion -> FeedCiphertext -> Handshake/ReadPlaintext ->
// TakeCiphertext -> send. After every call, TakeCiphertext may have bytes to send (handshake
// records, session tickets, alerts, close_notify).
// Thread contract: shard-confined (one connection, one thread).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;
typedef struct bio_st BIO;

namespace facteur::tls {

class TlsServerContext;

// What a completed handshake negotiated (engine/io copies it into io::TlsInfo).
struct SessionInfo {
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_256_GCM_SHA384"
  int bits = 0;
  // Client side: the server's chain verified against the trust store AND its certificate
  // matched the server name (RFC 6125), whether or not verification was required. Always false
  // on the server side and for a client without a server name.
  bool peer_verified = false;
};

enum class HandshakeProgress { kWantMore, kDone };

class TlsEngine {
 public:
  // A server-side engine; `context` must outlive it.
  static absl::StatusOr<std::unique_ptr<TlsEngine>> NewServer(const TlsServerContext& context);
  // A client-side engine on a caller-configured SSL_CTX (borrowed, e.g. a TlsClientContext's).
  // `server_name`, when not empty, is sent as SNI (RFC 6066 §3) and checked against the server
  // certificate (RFC 6125, no partial wildcards). With `verify_peer` a bad chain or name fails
  // the handshake, whose error then says why ("hostname mismatch", "self-signed certificate"...);
  // without it the outcome is only reported by info().peer_verified (opportunistic TLS,
  // RFC 7435). `verify_peer` requires a server name (InvalidArgument otherwise).
  static absl::StatusOr<std::unique_ptr<TlsEngine>> NewClient(SSL_CTX* ctx,
                                                              const std::string& server_name,
                                                              bool verify_peer);
  ~TlsEngine();
  TlsEngine(const TlsEngine&) = delete;
  TlsEngine& operator=(const TlsEngine&) = delete;

  // Bytes received from the peer.
  void FeedCiphertext(std::string_view bytes);
  // Advances the handshake with what was fed. kWantMore: send TakeCiphertext() and feed more.
  // An error means the handshake failed (its text names OpenSSL's reason); an alert for the
  // peer may still be waiting in TakeCiphertext().
  absl::StatusOr<HandshakeProgress> Handshake();
  bool handshake_done() const { return handshake_done_; }
  // Appends every plaintext byte that the fed ciphertext decrypts to. OK with nothing appended
  // means "feed more"; peer_closed() turns true on the peer's close_notify. An error is fatal.
  absl::Status ReadPlaintext(std::string* out);
  // Encrypts all of `bytes` (after the handshake) into the outgoing ciphertext.
  absl::Status WritePlaintext(std::string_view bytes);
  // Appends the ciphertext waiting to be sent to `out`; returns whether it appended anything.
  bool TakeCiphertext(std::string* out);
  // Queues our close_notify (RFC 8446 §6.1); send TakeCiphertext() afterwards.
  void Shutdown();
  bool peer_closed() const { return peer_closed_; }
  SessionInfo info() const;

 private:
  explicit TlsEngine(SSL* ssl, BIO* rbio, BIO* wbio) : ssl_(ssl), rbio_(rbio), wbio_(wbio) {}
  // Appends why the peer's certificate failed verification to a failed handshake's status.
  absl::Status WithVerifyReason(absl::Status status) const;
  static absl::StatusOr<std::unique_ptr<TlsEngine>> Wrap(SSL* ssl);

  SSL* ssl_;   // owned; owns both BIOs
  BIO* rbio_;  // borrowed from ssl_: ciphertext in
  BIO* wbio_;  // borrowed from ssl_: ciphertext out
  std::string verify_name_;  // client: the name the certificate is checked against, or ""
  bool verify_peer_ = false; // client: a verification failure fails the handshake
  bool handshake_done_ = false;
  bool peer_closed_ = false;
  bool shutdown_sent_ = false;
};

}  // namespace facteur::tls
