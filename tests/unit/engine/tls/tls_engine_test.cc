#include "engine/tls/tls_engine.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "engine/tls/tls_client_context.h"
#include "engine/tls/tls_context.h"
#include "gtest/gtest.h"

namespace facteur::tls {
namespace {

class TlsEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/facteur_tls_engine_XXXXXX";
    dir_ = ::mkdtemp(pattern);
    auto context = TlsServerContext::SelfSigned(dir_ + "/tls", "mx.example.test");
    ASSERT_TRUE(context.ok()) << context.status();
    server_context_ = std::move(*context);
    client_ctx_ = SSL_CTX_new(TLS_client_method());
    ASSERT_NE(client_ctx_, nullptr);
  }
  void TearDown() override {
    SSL_CTX_free(client_ctx_);
    std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }

  // Moves ciphertext between the two engines until both handshakes are done.
  void Handshake(TlsEngine& server, TlsEngine& client) {
    for (int round = 0; round < 20; ++round) {
      auto c = client.Handshake();
      ASSERT_TRUE(c.ok()) << c.status();
      std::string wire;
      client.TakeCiphertext(&wire);
      server.FeedCiphertext(wire);
      auto s = server.Handshake();
      ASSERT_TRUE(s.ok()) << s.status();
      wire.clear();
      server.TakeCiphertext(&wire);
      client.FeedCiphertext(wire);
      if (*c == HandshakeProgress::kDone && *s == HandshakeProgress::kDone) return;
    }
    FAIL() << "handshake did not finish";
  }

  std::string dir_;
  std::unique_ptr<TlsServerContext> server_context_;
  SSL_CTX* client_ctx_ = nullptr;
};

TEST_F(TlsEngineTest, HandshakeAndDataBothWays) {
  auto server = TlsEngine::NewServer(*server_context_);
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = TlsEngine::NewClient(client_ctx_, "mx.example.test", /*verify_peer=*/false);
  ASSERT_TRUE(client.ok()) << client.status();
  Handshake(**server, **client);
  ASSERT_TRUE((*server)->handshake_done());

  SessionInfo info = (*server)->info();
  EXPECT_EQ(info.version, "TLSv1.3");
  EXPECT_FALSE(info.cipher.empty());
  EXPECT_GE(info.bits, 128);

  std::string big(100000, 'x');
  ASSERT_TRUE((*client)->WritePlaintext("EHLO client\r\n").ok());
  ASSERT_TRUE((*client)->WritePlaintext(big).ok());
  std::string wire;
  ASSERT_TRUE((*client)->TakeCiphertext(&wire));
  (*server)->FeedCiphertext(wire);
  std::string plain;
  ASSERT_TRUE((*server)->ReadPlaintext(&plain).ok());
  EXPECT_EQ(plain, "EHLO client\r\n" + big);

  ASSERT_TRUE((*server)->WritePlaintext("250 ok\r\n").ok());
  wire.clear();
  ASSERT_TRUE((*server)->TakeCiphertext(&wire));
  (*client)->FeedCiphertext(wire);
  plain.clear();
  ASSERT_TRUE((*client)->ReadPlaintext(&plain).ok());
  EXPECT_EQ(plain, "250 ok\r\n");

  // close_notify reaches the peer as a clean end.
  (*client)->Shutdown();
  wire.clear();
  ASSERT_TRUE((*client)->TakeCiphertext(&wire));
  (*server)->FeedCiphertext(wire);
  plain.clear();
  ASSERT_TRUE((*server)->ReadPlaintext(&plain).ok());
  EXPECT_TRUE(plain.empty());
  EXPECT_TRUE((*server)->peer_closed());
}

TEST_F(TlsEngineTest, RawSslClientSeesTheSelfSignedName) {
  auto server = TlsEngine::NewServer(*server_context_);
  ASSERT_TRUE(server.ok());
  // A plain OpenSSL client over its own memory BIOs, forced to TLS 1.2.
  SSL* ssl = SSL_new(client_ctx_);
  SSL_set_max_proto_version(ssl, TLS1_2_VERSION);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);
  SSL_set_bio(ssl, in, out);
  SSL_set_connect_state(ssl);
  bool done = false;
  for (int round = 0; round < 20 && !done; ++round) {
    int rc = SSL_do_handshake(ssl);
    char buffer[65536];
    int n;
    std::string wire;
    while ((n = BIO_read(out, buffer, sizeof(buffer))) > 0) wire.append(buffer, n);
    (*server)->FeedCiphertext(wire);
    auto s = (*server)->Handshake();
    ASSERT_TRUE(s.ok()) << s.status();
    wire.clear();
    (*server)->TakeCiphertext(&wire);
    BIO_write(in, wire.data(), static_cast<int>(wire.size()));
    done = rc == 1 && *s == HandshakeProgress::kDone;
  }
  ASSERT_TRUE(done);
  EXPECT_EQ((*server)->info().version, "TLSv1.2");
  X509* peer = SSL_get1_peer_certificate(ssl);
  ASSERT_NE(peer, nullptr);
  EXPECT_EQ(X509_check_host(peer, "mx.example.test", 0, 0, nullptr), 1);
  X509_free(peer);
  SSL_free(ssl);
}

// Runs both handshakes to the end; the client's error when it fails (the server's otherwise).
absl::Status RunHandshake(TlsEngine& server, TlsEngine& client) {
  for (int round = 0; round < 20; ++round) {
    auto c = client.Handshake();
    if (!c.ok()) return c.status();
    std::string wire;
    client.TakeCiphertext(&wire);
    server.FeedCiphertext(wire);
    auto s = server.Handshake();
    if (!s.ok()) return s.status();
    wire.clear();
    server.TakeCiphertext(&wire);
    client.FeedCiphertext(wire);
    if (*c == HandshakeProgress::kDone && *s == HandshakeProgress::kDone) return absl::OkStatus();
  }
  return absl::InternalError("handshake did not finish");
}

// Loading the system bundle is slow under sanitizers: the contexts are made once.
class TlsClientVerifyTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/facteur_tls_verify_XXXXXX";
    dir_ = new std::string(::mkdtemp(pattern));
    auto server = TlsServerContext::SelfSigned(*dir_ + "/tls", "mx.example.test");
    ASSERT_TRUE(server.ok()) << server.status();
    server_context_ = server->release();
    auto trusting = TlsClientContext::Create(*dir_ + "/tls/cert.pem");
    ASSERT_TRUE(trusting.ok()) << trusting.status();
    trusting_ = trusting->release();
    auto system_only = TlsClientContext::Create("");
    ASSERT_TRUE(system_only.ok()) << system_only.status();
    system_only_ = system_only->release();
  }
  static void TearDownTestSuite() {
    delete server_context_;
    delete trusting_;
    delete system_only_;
    std::string cmd = "rm -rf '" + *dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
    delete dir_;
  }
  // The client's handshake outcome and, on success, its session.
  absl::StatusOr<SessionInfo> Connect(const TlsClientContext& context, const std::string& name,
                                      bool verify_peer) {
    auto server = TlsEngine::NewServer(*server_context_);
    if (!server.ok()) return server.status();
    auto client = TlsEngine::NewClient(context.native(), name, verify_peer);
    if (!client.ok()) return client.status();
    absl::Status status = RunHandshake(**server, **client);
    if (!status.ok()) return status;
    return (*client)->info();
  }
  static std::string* dir_;
  static TlsServerContext* server_context_;
  static TlsClientContext* trusting_;     // trusts the server's self-signed cert
  static TlsClientContext* system_only_;  // does not
};
std::string* TlsClientVerifyTest::dir_ = nullptr;
TlsServerContext* TlsClientVerifyTest::server_context_ = nullptr;
TlsClientContext* TlsClientVerifyTest::trusting_ = nullptr;
TlsClientContext* TlsClientVerifyTest::system_only_ = nullptr;

TEST_F(TlsClientVerifyTest, TrustedChainAndRightNameVerify) {
  auto info = Connect(*trusting_, "mx.example.test", true);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->peer_verified);
  EXPECT_EQ(info->version, "TLSv1.3");
  // A DNS name with the root's trailing dot is the same name.
  info = Connect(*trusting_, "mx.example.test.", true);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->peer_verified);
}

TEST_F(TlsClientVerifyTest, WrongNameFailsWithTheReason) {
  auto info = Connect(*trusting_, "other.example.test", true);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("hostname mismatch (expected other.example.test)"),
            absl::string_view::npos)
      << info.status();
  // RFC 6125 §7.2: no partial matching of a longer name either.
  info = Connect(*trusting_, "x.mx.example.test", true);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("hostname mismatch"), absl::string_view::npos);
  // An address is checked against iPAddress names, which this certificate has none of.
  info = Connect(*trusting_, "127.0.0.1", true);
  ASSERT_FALSE(info.ok());
  EXPECT_NE(info.status().message().find("IP address mismatch"), absl::string_view::npos)
      << info.status();
}

TEST_F(TlsClientVerifyTest, UntrustedChainFailsWithTheReason) {
  auto info = Connect(*system_only_, "mx.example.test", true);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(info.status().message().find("certificate verify failed"), absl::string_view::npos)
      << info.status();
  EXPECT_NE(info.status().message().find("self-signed certificate"), absl::string_view::npos)
      << info.status();
}

TEST_F(TlsClientVerifyTest, OpportunisticTlsSucceedsAndReportsWhatItSaw) {
  auto info = Connect(*system_only_, "mx.example.test", false);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->peer_verified);  // untrusted chain
  info = Connect(*trusting_, "other.example.test", false);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->peer_verified);  // trusted chain, wrong name
  info = Connect(*trusting_, "", false);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->peer_verified);  // no name to check: not verified for anyone
  info = Connect(*trusting_, "mx.example.test", false);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->peer_verified);   // everything checked, though not required
}

TEST_F(TlsClientVerifyTest, VerifyingNeedsAName) {
  auto client = TlsEngine::NewClient(trusting_->native(), "", true);
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TlsEngineTest, GarbageFailsTheHandshake) {
  auto server = TlsEngine::NewServer(*server_context_);
  ASSERT_TRUE(server.ok());
  (*server)->FeedCiphertext("EHLO this is not a ClientHello\r\n");
  auto s = (*server)->Handshake();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("TLS handshake"), absl::string_view::npos);
}

}  // namespace
}  // namespace facteur::tls
