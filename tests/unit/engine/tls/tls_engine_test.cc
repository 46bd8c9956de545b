#include "engine/tls/tls_engine.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <memory>
#include <string>

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
  auto client = TlsEngine::NewClient(client_ctx_, "mx.example.test");
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
