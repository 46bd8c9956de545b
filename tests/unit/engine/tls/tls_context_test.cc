#include "engine/tls/tls_context.h"

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

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

}  // namespace
}  // namespace facteur::tls
