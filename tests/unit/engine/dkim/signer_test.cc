// File: tests/unit/engine/dkim/signer_test.cc
// The two signing engines against each other and against verifiers we did not write (issue #4
// point 4): over the corpus in corpus/, for RSA-1024, RSA-2048 and Ed25519 keys of several
// domains, native and opendkim produce byte-identical DKIM-Signature fields given the same time
// (4b); every signature verifies with dkimpy (4a) and with libopendkim's verifier (4c); a changed
// byte makes them fail (so the verifiers are really checking).
#include "engine/dkim/signer.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/dkim/dkim_test_support.h"

namespace facteur::dkim {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// In the past: verifiers refuse a t= in the future (RFC 6376 §3.5).
const absl::Time kNow = absl::FromUnixSeconds(1'700'000'000);

class SignerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    keys_ = new std::vector<SigningKey>();
    auto add = [](std::string domain, std::string selector, DkimAlgorithm algorithm, int bits) {
      absl::StatusOr<std::unique_ptr<PrivateKey>> key = PrivateKey::Generate(algorithm, bits);
      ASSERT_TRUE(key.ok()) << key.status();
      keys_->push_back(SigningKey{domain, selector, std::move(*key)});
    };
    add("example.com", "rsa2048", DkimAlgorithm::kRsaSha256, 2048);
    add("example.org", "ed", DkimAlgorithm::kEd25519Sha256, 0);
    add("asso.example", "small", DkimAlgorithm::kRsaSha256, 1024);
    add("mail.asso.example", "2026-11", DkimAlgorithm::kEd25519Sha256, 0);
  }
  static void TearDownTestSuite() { delete keys_; }

  void SetUp() override {
    native_ = MakeNativeSigner();
    absl::StatusOr<std::unique_ptr<Signer>> opendkim = MakeOpenDkimSigner();
    ASSERT_TRUE(opendkim.ok()) << opendkim.status();
    opendkim_ = std::move(*opendkim);
    corpus_ = testing::LoadCorpus();
    ASSERT_GE(corpus_.size(), 15u) << "corpus not found; FACTEUR_SOURCE_DIR?";
    for (const SigningKey& k : *keys_) testing::AddRecord(k, &records_);
  }

  static std::string SignWith(const Signer& signer, const SigningKey& key,
                              const std::string& message, absl::Time now = kNow) {
    absl::StatusOr<std::string> field =
        signer.Sign(key, message, mail::ParseHeaderSection(message), now);
    EXPECT_TRUE(field.ok()) << signer.engine_name() << ": " << field.status();
    return field.ok() ? *field : std::string();
  }

  static std::vector<SigningKey>* keys_;
  std::unique_ptr<Signer> native_;
  std::unique_ptr<Signer> opendkim_;
  std::map<std::string, std::string> corpus_;
  testing::DnsRecords records_;
};

std::vector<SigningKey>* SignerTest::keys_ = nullptr;

TEST_F(SignerTest, NativeAndOpenDkimAreByteIdentical) {
  int compared = 0;
  for (const auto& [name, message] : corpus_) {
    for (const SigningKey& key : *keys_) {
      std::string native = SignWith(*native_, key, message);
      std::string reference = SignWith(*opendkim_, key, message);
      EXPECT_EQ(native, reference) << name << " signed with " << key.selector << "._domainkey."
                                   << key.domain;
      ++compared;
    }
  }
  EXPECT_EQ(compared, static_cast<int>(corpus_.size() * keys_->size()));
}

TEST_F(SignerTest, EverySignatureVerifiesWithDkimpyAndLibopendkim) {
  std::vector<std::string> signed_messages;
  std::vector<std::string> labels;
  for (const auto& [name, message] : corpus_) {
    for (const SigningKey& key : *keys_) {
      signed_messages.push_back(SignWith(*native_, key, message) + message);
      labels.push_back(absl::StrCat(name, " / ", key.domain));
    }
    // Dual signing: Ed25519 and RSA on one message, both prepended.
    signed_messages.push_back(SignWith(*native_, (*keys_)[1], message) +
                              SignWith(*native_, (*keys_)[0], message) + message);
    labels.push_back(absl::StrCat(name, " / dual"));
  }
  std::vector<std::string> dkimpy = testing::DkimpyVerify(signed_messages, records_);
  ASSERT_EQ(dkimpy.size(), signed_messages.size());
  for (size_t i = 0; i < signed_messages.size(); ++i) {
    EXPECT_EQ(dkimpy[i], "") << "dkimpy: " << labels[i] << "\n" << signed_messages[i].substr(0, 2000);
    EXPECT_EQ(testing::OpenDkimVerify(signed_messages[i], records_), "")
        << "libopendkim: " << labels[i];
  }
}

TEST_F(SignerTest, VerifiersRefuseATamperedMessage) {
  const std::string& message = corpus_.at("list_headers.eml");
  std::vector<std::string> tampered;
  for (const SigningKey& key : *keys_) {
    std::string signed_message = SignWith(*native_, key, message) + message;
    std::string body_changed = signed_message;
    body_changed.replace(body_changed.rfind("news"), 4, "NEWS");
    std::string header_added = signed_message;  // over-signing: a second Subject: breaks it
    header_added.insert(header_added.find("Subject:"), "Subject: added later\r\n");
    tampered.push_back(body_changed);
    tampered.push_back(header_added);
    EXPECT_NE(testing::OpenDkimVerify(body_changed, records_), "");
    EXPECT_NE(testing::OpenDkimVerify(header_added, records_), "");
  }
  std::vector<std::string> dkimpy = testing::DkimpyVerify(tampered, records_);
  ASSERT_EQ(dkimpy.size(), tampered.size());
  for (const std::string& result : dkimpy) EXPECT_NE(result, "");
}

TEST_F(SignerTest, FieldShape) {
  const std::string& message = corpus_.at("list_headers.eml");
  std::string field = SignWith(*native_, (*keys_)[0], message);
  std::string unfolded = absl::StrReplaceAll(field, {{"\r\n\t ", ""}, {"\r\n\t", " "}});
  EXPECT_THAT(unfolded, StartsWith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; "
                                   "d=example.com; s=rsa2048; t=1700000000; bh="));
  EXPECT_TRUE(absl::EndsWith(field, "\r\n"));
  EXPECT_THAT(field, ::testing::Not(HasSubstr("l=")));
  // Lines end in CRLF, continuation lines start with white space, none is overlong.
  std::vector<std::string> lines = absl::StrSplit(field.substr(0, field.size() - 2), "\r\n");
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_LE(lines[i].size(), 78u) << lines[i];
    EXPECT_EQ(lines[i].find('\n'), std::string::npos);
    if (i > 0) {
      EXPECT_EQ(lines[i][0], '\t') << lines[i];
    }
  }
  // h=: each present signed field once per occurrence, then the over-signed names once more.
  EXPECT_THAT(unfolded,
              HasSubstr("h=From:To:Cc:Reply-To:Subject:Date:Message-ID:MIME-Version:"
                        "Content-Type:List-Id:List-Unsubscribe:List-Unsubscribe-Post:From:"
                        "Subject:Date:To:Cc:Reply-To:Message-ID:MIME-Version:Content-Type:"
                        "List-Unsubscribe:List-Unsubscribe-Post;"));
}

TEST_F(SignerTest, TimestampComesFromTheCaller) {
  const std::string& message = corpus_.at("simple.eml");
  std::string a = SignWith(*native_, (*keys_)[1], message, absl::FromUnixSeconds(1'600'000'000));
  EXPECT_THAT(a, HasSubstr("t=1600000000;"));
  EXPECT_EQ(a, SignWith(*opendkim_, (*keys_)[1], message, absl::FromUnixSeconds(1'600'000'000)));
  EXPECT_NE(a, SignWith(*native_, (*keys_)[1], message, absl::FromUnixSeconds(1'600'000'001)));
}

TEST_F(SignerTest, ManyRepeatedFieldsSignInLinearTimeAndVerify) {
  auto make = [](int count) {
    std::string message = "From: alice@example.com\r\nSubject: many\r\n";
    for (int i = 0; i < count; ++i) absl::StrAppend(&message, "To: r", i, "@example.net\r\n");
    return message + "\r\nbody\r\n";
  };
  const SigningKey& key = (*keys_)[1];
  // 300 fields: libopendkim agrees byte for byte.
  std::string some = make(300);
  std::string native_some = SignWith(*native_, key, some);
  EXPECT_EQ(native_some, SignWith(*opendkim_, key, some));
  // 5000 fields: linear time. (libopendkim truncates its header list at 4 KiB and is not
  // compared here; dkimpy is.)
  std::string many = make(5000);
  const absl::Time start = absl::Now();
  std::string native_many = SignWith(*native_, key, many);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  std::vector<std::string> result =
      testing::DkimpyVerify({native_some + some, native_many + many}, records_);
  ASSERT_EQ(result.size(), 2u);
  EXPECT_EQ(result[0], "");
  EXPECT_EQ(result[1], "");
}

TEST_F(SignerTest, Rsa4096SignsAndVerifies) {
  // Generating a 4096-bit key takes seconds: a test-only key is checked in instead.
  const char* source = std::getenv("FACTEUR_SOURCE_DIR");
  std::ifstream in(absl::StrCat(source != nullptr ? source : ".",
                                "/tests/unit/engine/dkim/testdata/rsa4096_test_only.pem"));
  std::stringstream pem;
  pem << in.rdbuf();
  absl::StatusOr<std::unique_ptr<PrivateKey>> key =
      PrivateKey::FromPem(pem.str(), DkimAlgorithm::kRsaSha256, "rsa4096_test_only.pem");
  ASSERT_TRUE(key.ok()) << key.status();
  ASSERT_EQ((*key)->bits(), 4096);
  SigningKey big{"big.example", "k4096", std::move(*key)};
  testing::DnsRecords records;
  testing::AddRecord(big, &records);
  const std::string& message = corpus_.at("folded_headers.eml");
  std::string native = SignWith(*native_, big, message);
  EXPECT_EQ(native, SignWith(*opendkim_, big, message));
  std::vector<std::string> result = testing::DkimpyVerify({native + message}, records);
  ASSERT_EQ(result.size(), 1u);
  EXPECT_EQ(result[0], "");
  EXPECT_EQ(testing::OpenDkimVerify(native + message, records), "");
}

}  // namespace
}  // namespace facteur::dkim
