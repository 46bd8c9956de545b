// File: tests/unit/engine/dkim/signing_table_test.cc
// Keys and the signing table: key files are refused when group or others may read them (with a
// message naming the file), keys must match their declared algorithm and size, lookups go by
// From: domain and account.
#include "engine/dkim/signing_table.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::dkim {
namespace {

using ::testing::HasSubstr;

class SigningTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/facteur-dkim-table-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes a fresh key of `algorithm` to dir_/name with `mode`; returns the path.
  std::string WriteKey(const std::string& name, DkimAlgorithm algorithm, int bits,
                       mode_t mode = 0600) {
    absl::StatusOr<std::unique_ptr<PrivateKey>> key = PrivateKey::Generate(algorithm, bits);
    EXPECT_TRUE(key.ok()) << key.status();
    std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path) << (*key)->pem();
    ::chmod(path.c_str(), mode);
    return path;
  }

  static config::DkimKeyOptions Key(std::string domain, std::string selector, std::string file,
                                    DkimAlgorithm algorithm, std::string account = "") {
    config::DkimKeyOptions k;
    k.domain = std::move(domain);
    k.selector = std::move(selector);
    k.key_file = std::move(file);
    k.algorithm = algorithm;
    k.account = std::move(account);
    return k;
  }

  absl::StatusOr<std::shared_ptr<const SigningTable>> Load(
      const std::vector<config::DkimKeyOptions>& keys) {
    return SigningTable::Load(keys, [this](std::string_view path) {
      return path.front() == '/' ? std::string(path) : dir_ + "/" + std::string(path);
    });
  }

  std::string dir_;
};

TEST_F(SigningTableTest, KeyReadableByOthersIsRefusedNamingTheFile) {
  std::string path = WriteKey("open.pem", DkimAlgorithm::kEd25519Sha256, 0, 0644);
  absl::StatusOr<std::shared_ptr<const SigningTable>> table =
      Load({Key("example.org", "s", "open.pem", DkimAlgorithm::kEd25519Sha256)});
  ASSERT_FALSE(table.ok());
  EXPECT_EQ(table.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(table.status().message(), HasSubstr(path));
  EXPECT_THAT(table.status().message(), HasSubstr("0644"));
  EXPECT_THAT(table.status().message(), HasSubstr("chmod 600"));
  // Group-readable only is refused too; 0600 and 0400 are fine.
  ::chmod(path.c_str(), 0640);
  EXPECT_FALSE(Load({Key("example.org", "s", "open.pem", DkimAlgorithm::kEd25519Sha256)}).ok());
  ::chmod(path.c_str(), 0400);
  EXPECT_TRUE(Load({Key("example.org", "s", "open.pem", DkimAlgorithm::kEd25519Sha256)}).ok());
}

TEST_F(SigningTableTest, MissingFileAndWrongAlgorithmAreRefused) {
  absl::StatusOr<std::shared_ptr<const SigningTable>> missing =
      Load({Key("example.org", "s", "nope.pem", DkimAlgorithm::kRsaSha256)});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.pem"));

  WriteKey("ed.pem", DkimAlgorithm::kEd25519Sha256, 0);
  absl::StatusOr<std::shared_ptr<const SigningTable>> mismatch =
      Load({Key("example.org", "s", "ed.pem", DkimAlgorithm::kRsaSha256)});
  ASSERT_FALSE(mismatch.ok());
  EXPECT_THAT(mismatch.status().message(), HasSubstr("not an RSA key"));

  std::string garbage = absl::StrCat(dir_, "/garbage.pem");
  std::ofstream(garbage) << "not a key\n";
  ::chmod(garbage.c_str(), 0600);
  EXPECT_EQ(Load({Key("example.org", "s", "garbage.pem", DkimAlgorithm::kRsaSha256)})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SigningTableTest, RsaSizesOutside1024To4096AreRefused) {
  // 512 bits: below RFC 8301's minimum.
  std::string path = absl::StrCat(dir_, "/small.pem");
  ASSERT_EQ(std::system(absl::StrCat("openssl genpkey -algorithm RSA -pkeyopt "
                                     "rsa_keygen_bits:512 -out ",
                                     path, " 2>/dev/null")
                            .c_str()),
            0);
  ::chmod(path.c_str(), 0600);
  absl::StatusOr<std::shared_ptr<const SigningTable>> table =
      Load({Key("example.org", "s", "small.pem", DkimAlgorithm::kRsaSha256)});
  ASSERT_FALSE(table.ok());
  EXPECT_THAT(table.status().message(), HasSubstr("512 bits"));
  WriteKey("ok.pem", DkimAlgorithm::kRsaSha256, 1024);
  EXPECT_TRUE(Load({Key("example.org", "s", "ok.pem", DkimAlgorithm::kRsaSha256)}).ok());
}

TEST_F(SigningTableTest, LookupByDomainAndAccountWithDualSigning) {
  WriteKey("rsa.pem", DkimAlgorithm::kRsaSha256, 1024);
  WriteKey("ed.pem", DkimAlgorithm::kEd25519Sha256, 0);
  WriteKey("shop.pem", DkimAlgorithm::kEd25519Sha256, 0);
  absl::StatusOr<std::shared_ptr<const SigningTable>> table = Load({
      Key("Asso.Example", "ed", "ed.pem", DkimAlgorithm::kEd25519Sha256),
      Key("asso.example", "rsa", "rsa.pem", DkimAlgorithm::kRsaSha256),
      Key("asso.example", "shop", "shop.pem", DkimAlgorithm::kEd25519Sha256, "shop"),
  });
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ((*table)->size(), 3u);

  std::vector<const SigningKey*> keys = (*table)->KeysFor("ASSO.example.", "");
  ASSERT_EQ(keys.size(), 2u);  // dual: both, in configuration order
  EXPECT_EQ(keys[0]->selector, "ed");
  EXPECT_EQ(keys[0]->domain, "asso.example");
  EXPECT_EQ(keys[1]->selector, "rsa");
  // An account with its own key gets only that one; other accounts get the domain's keys.
  keys = (*table)->KeysFor("asso.example", "shop");
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0]->selector, "shop");
  EXPECT_EQ((*table)->KeysFor("asso.example", "alice").size(), 2u);
  // No key: unsigned.
  EXPECT_TRUE((*table)->KeysFor("other.example", "").empty());
  EXPECT_TRUE((*table)->KeysFor("sub.asso.example", "").empty());
}

TEST_F(SigningTableTest, DuplicateDeclarationIsRefused) {
  WriteKey("ed.pem", DkimAlgorithm::kEd25519Sha256, 0);
  absl::StatusOr<std::shared_ptr<const SigningTable>> table =
      Load({Key("asso.example", "s", "ed.pem", DkimAlgorithm::kEd25519Sha256),
            Key("ASSO.example", "s", "ed.pem", DkimAlgorithm::kEd25519Sha256)});
  ASSERT_FALSE(table.ok());
  EXPECT_THAT(table.status().message(), HasSubstr("declared twice"));
}

TEST(PrivateKeyTest, DnsRecordAndItsPublicKey) {
  absl::StatusOr<std::unique_ptr<PrivateKey>> ed =
      PrivateKey::Generate(DkimAlgorithm::kEd25519Sha256, 0);
  ASSERT_TRUE(ed.ok());
  std::string record = (*ed)->DnsRecord();
  EXPECT_THAT(record, ::testing::StartsWith("v=DKIM1; k=ed25519; p="));
  EXPECT_EQ((*ed)->PublicKeyBase64().size(), 44u);  // 32 raw bytes (RFC 8463 §4)
  absl::StatusOr<std::string> p = PublicKeyOfRecord(record);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(*p, (*ed)->PublicKeyBase64());
  // FWS inside p= (long records are split) does not matter.
  EXPECT_EQ(*PublicKeyOfRecord("v=DKIM1;k=rsa; p = MIIB Ij\tAN ;"), "MIIBIjAN");
  EXPECT_EQ(PublicKeyOfRecord("v=DKIM1; k=rsa").status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<std::unique_ptr<PrivateKey>> rsa =
      PrivateKey::Generate(DkimAlgorithm::kRsaSha256, 1024);
  ASSERT_TRUE(rsa.ok());
  EXPECT_EQ((*rsa)->bits(), 1024);
  EXPECT_THAT((*rsa)->DnsRecord(), ::testing::StartsWith("v=DKIM1; k=rsa; p=MIGfMA0G"));
}

}  // namespace
}  // namespace facteur::dkim
