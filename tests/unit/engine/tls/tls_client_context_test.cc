#include "engine/tls/tls_client_context.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "engine/tls/tls_context.h"
#include "gtest/gtest.h"

namespace facteur::tls {
namespace {

class TlsClientContextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/facteur_tls_client_XXXXXX";
    dir_ = ::mkdtemp(pattern);
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
  }
  // Certificates the context's store knows in memory.
  static int StoreSize(const TlsClientContext& context) {
    X509_STORE* store = SSL_CTX_get_cert_store(context.native());
    STACK_OF(X509_OBJECT)* objects = X509_STORE_get0_objects(store);
    return objects == nullptr ? 0 : sk_X509_OBJECT_num(objects);
  }
  std::string dir_;
};

TEST_F(TlsClientContextTest, LoadsTheSystemBundleEagerlyWithTls12Minimum) {
  auto context = TlsClientContext::Create("");
  ASSERT_TRUE(context.ok()) << context.status();
  EXPECT_EQ(SSL_CTX_get_min_proto_version((*context)->native()), TLS1_2_VERSION);
  EXPECT_EQ(SSL_CTX_get_verify_mode((*context)->native()), SSL_VERIFY_NONE);
  EXPECT_NE(SSL_CTX_get_options((*context)->native()) & SSL_OP_NO_COMPRESSION, 0u);
  // Debian's ca-certificates bundle: well over a hundred roots, all in memory at startup.
  if (::access(X509_get_default_cert_file(), R_OK) == 0) {
    EXPECT_GT(StoreSize(**context), 50);
  }
}

TEST_F(TlsClientContextTest, AddsTheExtraCaFile) {
  ASSERT_TRUE(TlsServerContext::SelfSigned(dir_ + "/tls", "mx.example.test").ok());
  auto plain = TlsClientContext::Create("");
  auto extra = TlsClientContext::Create(dir_ + "/tls/cert.pem");
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_TRUE(extra.ok()) << extra.status();
  EXPECT_EQ(StoreSize(**extra), StoreSize(**plain) + 1);
}

TEST_F(TlsClientContextTest, ABadExtraCaFileIsAnErrorNamingIt) {
  std::string missing = dir_ + "/missing.pem";
  auto context = TlsClientContext::Create(missing);
  ASSERT_FALSE(context.ok());
  EXPECT_EQ(context.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(context.status().message().find(missing), absl::string_view::npos)
      << context.status();

  std::string garbage = dir_ + "/garbage.pem";
  std::ofstream(garbage) << "not a certificate\n";
  context = TlsClientContext::Create(garbage);
  ASSERT_FALSE(context.ok());
  EXPECT_EQ(context.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace facteur::tls
