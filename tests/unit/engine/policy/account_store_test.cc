// Accounts on a real RocksDB Store in a temporary directory.
#include "engine/policy/account_store.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "engine/base/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "queue/store.h"

namespace facteur::policy {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kPassword[] = "correct-horse-battery-staple";

class AccountStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "policy_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    OpenAll();
  }
  void TearDown() override {
    CloseAll();
    std::filesystem::remove_all(dir_);
  }
  void OpenAll() {
    auto store = queue::Store::Open(dir_ + "/spool");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto accounts = AccountStore::Open(*store_, clock_, PasswordHashCost::MinimalForTests());
    ASSERT_TRUE(accounts.ok()) << accounts.status();
    accounts_ = *std::move(accounts);
  }
  void CloseAll() {
    accounts_.reset();
    store_.reset();
  }

  std::string dir_;
  SimulatedClock clock_;
  std::unique_ptr<queue::Store> store_;
  std::unique_ptr<AccountStore> accounts_;
};

TEST_F(AccountStoreTest, CreateGetAndDuplicate) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  auto alice = accounts_->Get("alice");
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->name, "alice");
  EXPECT_THAT(alice->grants, IsEmpty());
  EXPECT_FALSE(alice->suspended);
  EXPECT_EQ(alice->created_at, clock_.Now());

  EXPECT_EQ(accounts_->Create("alice", "another-password").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(accounts_->Get("bob").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(AccountStoreTest, AuthenticateRightWrongUnknown) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  auto ok = accounts_->Authenticate("alice", kPassword);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->name, "alice");

  auto wrong = accounts_->Authenticate("alice", "wrong-password");
  auto unknown = accounts_->Authenticate("mallory", kPassword);
  auto invalid_name = accounts_->Authenticate("not a name!", kPassword);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(invalid_name.status().code(), absl::StatusCode::kUnauthenticated);
  // One message for both, so that a client cannot probe which names exist.
  EXPECT_EQ(wrong.status().message(), unknown.status().message());
  EXPECT_EQ(accounts_->Authenticate("alice", "").status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(AccountStoreTest, SuspendedAccountCannotAuthenticate) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  ASSERT_TRUE(accounts_->SetSuspended("alice", true).ok());
  EXPECT_TRUE(accounts_->Get("alice")->suspended);
  EXPECT_EQ(accounts_->Authenticate("alice", kPassword).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A wrong password on a suspended account does not reveal the suspension.
  EXPECT_EQ(accounts_->Authenticate("alice", "wrong-password").status().code(),
            absl::StatusCode::kUnauthenticated);
  ASSERT_TRUE(accounts_->SetSuspended("alice", false).ok());
  EXPECT_TRUE(accounts_->Authenticate("alice", kPassword).ok());
  EXPECT_EQ(accounts_->SetSuspended("bob", true).code(), absl::StatusCode::kNotFound);
}

// Every change counts, so that sessions authenticated before it see their account is stale;
// reads and refused changes do not.
TEST_F(AccountStoreTest, ChangeCountGrowsWithEveryChangeOfThatAccount) {
  EXPECT_EQ(accounts_->ChangeCount("alice"), 0u);
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  ASSERT_TRUE(accounts_->Create("bob", kPassword).ok());
  uint64_t last = accounts_->ChangeCount("alice");
  EXPECT_GT(last, 0u);
  const auto changed = [&] {
    const uint64_t now = accounts_->ChangeCount("alice");
    const bool grew = now > last;
    last = now;
    return grew;
  };
  ASSERT_TRUE(accounts_->Grant("alice", "alice@asso.org").ok());
  EXPECT_TRUE(changed());
  ASSERT_TRUE(accounts_->SetSuspended("alice", true).ok());
  EXPECT_TRUE(changed());
  ASSERT_TRUE(accounts_->SetSuspended("alice", false).ok());
  EXPECT_TRUE(changed());
  ASSERT_TRUE(accounts_->SetPassword("alice", "a-new-password").ok());
  EXPECT_TRUE(changed());
  ASSERT_TRUE(accounts_->Revoke("alice", "alice@asso.org").ok());
  EXPECT_TRUE(changed());
  // Not changes: reads, a refused change, a grant already held, another account's change.
  ASSERT_TRUE(accounts_->Get("alice").ok());
  ASSERT_TRUE(accounts_->Authenticate("alice", "a-new-password").ok());
  EXPECT_FALSE(accounts_->Revoke("alice", "alice@asso.org").ok());
  ASSERT_TRUE(accounts_->Grant("bob", "bob@asso.org").ok());
  EXPECT_FALSE(changed());
  ASSERT_TRUE(accounts_->Delete("alice").ok());
  EXPECT_TRUE(changed());
}

TEST_F(AccountStoreTest, SetPassword) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  ASSERT_TRUE(accounts_->SetPassword("alice", "a-new-password").ok());
  EXPECT_FALSE(accounts_->Authenticate("alice", kPassword).ok());
  EXPECT_TRUE(accounts_->Authenticate("alice", "a-new-password").ok());
  EXPECT_EQ(accounts_->SetPassword("alice", "short").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(accounts_->SetPassword("bob", "a-new-password").code(), absl::StatusCode::kNotFound);
}

TEST_F(AccountStoreTest, GrantAndRevoke) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  ASSERT_TRUE(accounts_->Grant("alice", "Alice@Example.COM").ok());
  ASSERT_TRUE(accounts_->Grant("alice", "@Example.org").ok());
  ASSERT_TRUE(accounts_->Grant("alice", "alice@example.com").ok());  // duplicate: no-op
  ASSERT_TRUE(accounts_->Grant("alice", "bob@example.com").ok());
  EXPECT_THAT(accounts_->Get("alice")->grants,
              ElementsAre("@example.org", "alice@example.com", "bob@example.com"));

  EXPECT_EQ(accounts_->Grant("alice", "not an address").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(accounts_->Grant("alice", "@").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(accounts_->Grant("alice", "@-bad-.com").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(accounts_->Grant("bob", "bob@example.com").code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(accounts_->Revoke("alice", "BOB@example.com").ok());
  EXPECT_EQ(accounts_->Revoke("alice", "bob@example.com").code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(accounts_->Get("alice")->grants, ElementsAre("@example.org", "alice@example.com"));
}

TEST_F(AccountStoreTest, DeleteAndList) {
  ASSERT_TRUE(accounts_->Create("carol", kPassword).ok());
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  auto list = accounts_->List();
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].name, "alice");
  EXPECT_EQ((*list)[1].name, "carol");

  ASSERT_TRUE(accounts_->Delete("alice").ok());
  EXPECT_EQ(accounts_->Delete("alice").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(accounts_->Authenticate("alice", kPassword).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(accounts_->List()->size(), 1u);
}

TEST_F(AccountStoreTest, PersistsAcrossReopenWithoutThePassword) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  ASSERT_TRUE(accounts_->Grant("alice", "@example.com").ok());
  const absl::Time created = accounts_->Get("alice")->created_at;
  CloseAll();

  // Neither the record nor the write-ahead log nor any table holds the password itself.
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream file(entry.path(), std::ios::binary);
    const std::string bytes{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
    EXPECT_EQ(bytes.find(kPassword), std::string::npos) << entry.path();
  }

  OpenAll();
  auto alice = accounts_->Get("alice");
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_THAT(alice->grants, ElementsAre("@example.com"));
  EXPECT_EQ(alice->created_at, created);
  EXPECT_TRUE(accounts_->Authenticate("alice", kPassword).ok());

  std::string value;
  ASSERT_TRUE(store_->db()
                  .Get(rocksdb::ReadOptions(), store_->family(queue::Family::kAccounts), "alice",
                       &value)
                  .ok());
  EXPECT_EQ(value.find(kPassword), std::string::npos);
  EXPECT_NE(value.find("$argon2id$"), std::string::npos);
}

TEST_F(AccountStoreTest, ReadOnlyStoreReadsButRefusesWrites) {
  ASSERT_TRUE(accounts_->Create("alice", kPassword).ok());
  CloseAll();
  auto store = queue::Store::OpenReadOnly(dir_ + "/spool");
  ASSERT_TRUE(store.ok()) << store.status();
  auto accounts = AccountStore::Open(**store, clock_, PasswordHashCost::MinimalForTests());
  ASSERT_TRUE(accounts.ok()) << accounts.status();
  EXPECT_TRUE((*accounts)->Get("alice").ok());
  EXPECT_EQ((*accounts)->List()->size(), 1u);
  EXPECT_TRUE((*accounts)->Authenticate("alice", kPassword).ok());
  const absl::Status refused = (*accounts)->Create("bob", kPassword);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.message()), HasSubstr("read-only"));
  EXPECT_EQ((*accounts)->Grant("alice", "@example.com").code(),
            absl::StatusCode::kFailedPrecondition);
  accounts->reset();
  store->reset();
  OpenAll();
}

// The production cost is argon2id with libsodium's interactive limits (64 MiB, 2 passes).
TEST_F(AccountStoreTest, DefaultCostIsArgon2idInteractive) {
  auto accounts = AccountStore::Open(*store_, clock_);
  ASSERT_TRUE(accounts.ok()) << accounts.status();
  ASSERT_TRUE((*accounts)->Create("dora", kPassword).ok());
  std::string value;
  ASSERT_TRUE(store_->db()
                  .Get(rocksdb::ReadOptions(), store_->family(queue::Family::kAccounts), "dora",
                       &value)
                  .ok());
  EXPECT_NE(value.find("$argon2id$v=19$m=65536,t=2,p=1$"), std::string::npos);
  // Hashes made at another cost still verify.
  EXPECT_TRUE(accounts_->Authenticate("dora", kPassword).ok());
}

TEST(AccountValidationTest, Names) {
  EXPECT_TRUE(ValidateAccountName("a").ok());
  EXPECT_TRUE(ValidateAccountName("alice.smith+news@example-1.com_x").ok());
  EXPECT_TRUE(ValidateAccountName(std::string(64, 'x')).ok());
  EXPECT_EQ(ValidateAccountName("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateAccountName(std::string(65, 'x')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateAccountName("alice smith").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateAccountName("alice/x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateAccountName("alice\n").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateAccountName("élise").code(), absl::StatusCode::kInvalidArgument);
}

TEST(AccountValidationTest, Passwords) {
  EXPECT_TRUE(ValidatePassword("12345678").ok());
  EXPECT_TRUE(ValidatePassword(std::string(1024, 'p')).ok());
  EXPECT_EQ(ValidatePassword("1234567").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidatePassword(std::string(1025, 'p')).code(), absl::StatusCode::kInvalidArgument);
  // The message is a sentence about the rule and never repeats the password.
  EXPECT_EQ(ValidatePassword("secret1").message().find("secret1"), absl::string_view::npos);
}

TEST_F(AccountStoreTest, CreateValidates) {
  EXPECT_EQ(accounts_->Create("bad name", kPassword).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(accounts_->Create("alice", "short").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(accounts_->Get("alice").status().code(), absl::StatusCode::kNotFound);
}

TEST(CanonicalGrantTest, Forms) {
  EXPECT_EQ(*CanonicalGrant("Alice@Example.com"), "alice@example.com");
  EXPECT_EQ(*CanonicalGrant("@EXAMPLE.com"), "@example.com");
  EXPECT_EQ(*CanonicalGrant("@[192.0.2.1]"), "@[192.0.2.1]");
  EXPECT_TRUE(CanonicalGrant("élise@exemple.fr").ok());
  EXPECT_FALSE(CanonicalGrant("").ok());
  EXPECT_FALSE(CanonicalGrant("example.com").ok());
  EXPECT_FALSE(CanonicalGrant("@exa mple.com").ok());
}

TEST(WipeSecretTest, EmptiesTheString) {
  std::string secret = kPassword;
  WipeSecret(secret);
  EXPECT_TRUE(secret.empty());
}

}  // namespace
}  // namespace facteur::policy
