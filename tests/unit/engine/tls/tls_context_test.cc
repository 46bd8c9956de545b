#include "engine/tls/tls_context.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "gtest/gtest.h"

namespace facteur::tls {
namespace {

std::string MakeTempDir() {
  char pattern[] = "/tmp/facteur_tls_test_XXXXXX";
  char* dir = ::mkdtemp(pattern);
  EXPECT_NE(dir, nullptr);
  return dir;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(TlsServerContextTest, SelfSignedIsGeneratedOnceThenReloaded) {
  std::string base = MakeTempDir();
  std::string dir = base + "/tls";  // does not exist yet: SelfSigned creates it 0700
  auto first = TlsServerContext::SelfSigned(dir, "mx.example.test");
  ASSERT_TRUE(first.ok()) << first.status();
  std::string cert = ReadFile(dir + "/cert.pem");
  std::string key = ReadFile(dir + "/key.pem");
  EXPECT_NE(cert.find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_NE(key.find("PRIVATE KEY"), std::string::npos);

  struct stat st;
  ASSERT_EQ(::stat((dir + "/key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);

  auto second = TlsServerContext::SelfSigned(dir, "mx.example.test");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(ReadFile(dir + "/cert.pem"), cert);
  EXPECT_EQ(ReadFile(dir + "/key.pem"), key);

  auto from_files = TlsServerContext::FromFiles(dir + "/cert.pem", dir + "/key.pem");
  EXPECT_TRUE(from_files.ok()) << from_files.status();

  std::string cmd = "rm -rf '" + base + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST(TlsServerContextTest, MissingFilesAreAnError) {
  auto context = TlsServerContext::FromFiles("/nonexistent/cert.pem", "/nonexistent/key.pem");
  ASSERT_FALSE(context.ok());
  EXPECT_NE(context.status().message().find("/nonexistent/cert.pem"), absl::string_view::npos)
      << context.status();
}

// The CN of the certificate `ctx` presents.
std::string SubjectCn(SSL_CTX* ctx) {
  X509* cert = SSL_CTX_get0_certificate(ctx);
  if (cert == nullptr) return "";
  char cn[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  return cn;
}

TEST(TlsServerContextTest, ReloadSwapsTheContextOfNewConnectionsOnlyWhenThePairLoads) {
  std::string base = MakeTempDir();
  ASSERT_TRUE(TlsServerContext::SelfSigned(base + "/a", "a.example.test").ok());
  ASSERT_TRUE(TlsServerContext::SelfSigned(base + "/b", "b.example.test").ok());
  auto context = TlsServerContext::FromFiles(base + "/a/cert.pem", base + "/a/key.pem");
  ASSERT_TRUE(context.ok()) << context.status();
  std::shared_ptr<SSL_CTX> before = (*context)->current();
  EXPECT_EQ(SubjectCn(before.get()), "a.example.test");
  // A session started before the reload holds its own reference to the old SSL_CTX.
  SSL* open_session = SSL_new(before.get());
  ASSERT_NE(open_session, nullptr);

  ASSERT_TRUE((*context)->ReloadFromFiles(base + "/b/cert.pem", base + "/b/key.pem").ok());
  EXPECT_EQ(SubjectCn((*context)->current().get()), "b.example.test");
  before.reset();
  EXPECT_EQ(SubjectCn(SSL_get_SSL_CTX(open_session)), "a.example.test");
  SSL_free(open_session);

  // A key that does not match, or a missing file: the error says why, B stays.
  absl::Status mismatch = (*context)->ReloadFromFiles(base + "/a/cert.pem", base + "/b/key.pem");
  EXPECT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.message().find("mismatch"), absl::string_view::npos) << mismatch;
  EXPECT_FALSE((*context)->ReloadFromFiles(base + "/c/cert.pem", base + "/c/key.pem").ok());
  EXPECT_EQ(SubjectCn((*context)->current().get()), "b.example.test");

  std::string cmd = "rm -rf '" + base + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

}  // namespace
}  // namespace facteur::tls
