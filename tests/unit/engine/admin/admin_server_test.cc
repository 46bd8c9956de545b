// The admin API through real HTTP on loopback: a real RocksDB Store in a temporary directory, a
// civetweb server on 127.0.0.1:0, and a small blocking HTTP/1.1 client over a socket.
#include "engine/admin/admin_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/admin/json.h"
#include "engine/base/clock.h"
#include "engine/base/message_id.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "queue/spool.h"

namespace facteur::admin {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

struct HttpResponse {
  int status = 0;
  std::string headers;
  std::string body;
  Json json() const { return Json::parse(body, nullptr, false); }
};

// One request on a fresh connection ("Connection: close"), read to EOF.
HttpResponse Request(const std::string& address, const std::string& method,
                     const std::string& path, const std::string& body = "",
                     const std::string& extra_headers = "") {
  HttpResponse response;
  const size_t colon = address.rfind(':');
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(colon + 1), &port));
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  EXPECT_GE(fd, 0);
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(static_cast<uint16_t>(port));
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&peer), sizeof peer) != 0) {
    ADD_FAILURE() << "connect to " << address << " failed";
    close(fd);
    return response;
  }
  const std::string request = absl::StrCat(
      method, " ", path, " HTTP/1.1\r\nHost: ", address, "\r\nConnection: close\r\n",
      extra_headers, body.empty() && method == "GET" ? "" : absl::StrCat("Content-Length: ", body.size(), "\r\n"),
      "\r\n", body);
  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may refuse early (413) and close
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buffer[4096];
  for (;;) {
    const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    raw.append(buffer, static_cast<size_t>(n));
  }
  close(fd);
  const size_t end_of_headers = raw.find("\r\n\r\n");
  if (end_of_headers == std::string::npos || raw.size() < 12) {
    ADD_FAILURE() << "malformed response: " << raw;
    return response;
  }
  EXPECT_TRUE(absl::SimpleAtoi(raw.substr(9, 3), &response.status)) << raw;
  response.headers = raw.substr(0, end_of_headers);
  response.body = raw.substr(end_of_headers + 4);
  return response;
}

class AdminServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "admin_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    auto store = queue::Store::Open(dir_ + "/spool");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto accounts = policy::AccountStore::Open(*store_, clock_, policy::PasswordHashCost::MinimalForTests());
    ASSERT_TRUE(accounts.ok()) << accounts.status();
    accounts_ = *std::move(accounts);
    auto server = AdminServer::Start("127.0.0.1:0", metrics_, *store_, *accounts_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    address_ = server_->BoundAddress();
  }
  void TearDown() override {
    server_.reset();
    accounts_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  HttpResponse Get(const std::string& path) { return Request(address_, "GET", path); }

  std::string dir_;
  SimulatedClock clock_;
  metrics::Metrics metrics_;
  std::unique_ptr<queue::Store> store_;
  std::unique_ptr<policy::AccountStore> accounts_;
  std::unique_ptr<AdminServer> server_;
  std::string address_;
};

TEST_F(AdminServerTest, BindsAnEphemeralLoopbackPort) {
  EXPECT_THAT(address_, ::testing::StartsWith("127.0.0.1:"));
  EXPECT_NE(address_, "127.0.0.1:0");
}

TEST_F(AdminServerTest, HealthAndMetrics) {
  const HttpResponse health = Get("/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok\n");

  metrics_.ForListener("smtp").sessions.Increment(7);
  const HttpResponse scrape = Get("/metrics");
  EXPECT_EQ(scrape.status, 200);
  EXPECT_THAT(scrape.headers, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(scrape.body, HasSubstr(R"(facteur_smtp_sessions_total{listener="smtp"} 7)"));

  EXPECT_EQ(Get("/nowhere").status, 404);
  EXPECT_EQ(Request(address_, "POST", "/metrics", "{}").status, 405);
}

TEST_F(AdminServerTest, AccountRoundTrip) {
  HttpResponse created = Request(address_, "POST", "/api/accounts",
                                 R"({"name":"alice","password":"correct-horse-battery"})");
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.json()["name"], "alice");
  EXPECT_EQ(created.body.find("correct-horse"), std::string::npos);

  EXPECT_EQ(Request(address_, "POST", "/api/accounts",
                    R"({"name":"alice","password":"correct-horse-battery"})")
                .status,
            409);
  HttpResponse bad = Request(address_, "POST", "/api/accounts", R"({"name":"bob","password":"x"})");
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.json()["error"].get<std::string>(), HasSubstr("at least 8"));
  EXPECT_EQ(Request(address_, "POST", "/api/accounts", "not json").status, 400);
  EXPECT_EQ(Request(address_, "POST", "/api/accounts", R"({"name":1})").status, 400);

  HttpResponse granted =
      Request(address_, "POST", "/api/accounts/alice/grants", R"({"pattern":"@Example.com"})");
  ASSERT_EQ(granted.status, 201) << granted.body;
  ASSERT_EQ(Request(address_, "POST", "/api/accounts/alice/grants",
                    R"({"pattern":"alice@example.org"})")
                .status,
            201);
  EXPECT_EQ(Request(address_, "POST", "/api/accounts/alice/grants", R"({"pattern":"nope"})").status,
            400);
  EXPECT_EQ(Request(address_, "POST", "/api/accounts/zed/grants", R"({"pattern":"@a.com"})").status,
            404);

  HttpResponse list = Get("/api/accounts");
  ASSERT_EQ(list.status, 200);
  const Json accounts = list.json()["accounts"];
  ASSERT_EQ(accounts.size(), 1u);
  EXPECT_EQ(accounts[0]["name"], "alice");
  EXPECT_EQ(accounts[0]["grants"], Json({"@example.com", "alice@example.org"}));
  EXPECT_EQ(accounts[0]["suspended"], false);
  EXPECT_EQ(accounts[0]["created_at"], Rfc3339(clock_.Now()));

  ASSERT_EQ(Request(address_, "DELETE", "/api/accounts/alice/grants/@example.com").status, 200);
  EXPECT_EQ(Request(address_, "DELETE", "/api/accounts/alice/grants/@example.com").status, 404);
  EXPECT_EQ(Get("/api/accounts/alice").json()["grants"], Json({"alice@example.org"}));

  ASSERT_EQ(Request(address_, "PUT", "/api/accounts/alice/password",
                    R"({"password":"a-brand-new-password"})")
                .status,
            200);
  EXPECT_TRUE(accounts_->Authenticate("alice", "a-brand-new-password").ok());
  EXPECT_FALSE(accounts_->Authenticate("alice", "correct-horse-battery").ok());

  HttpResponse suspended =
      Request(address_, "PUT", "/api/accounts/alice/suspended", R"({"suspended":true})");
  ASSERT_EQ(suspended.status, 200) << suspended.body;
  EXPECT_EQ(suspended.json()["suspended"], true);

  EXPECT_EQ(Request(address_, "DELETE", "/api/accounts/alice").status, 200);
  EXPECT_EQ(Request(address_, "DELETE", "/api/accounts/alice").status, 404);
  HttpResponse missing = Get("/api/accounts/alice");
  EXPECT_EQ(missing.status, 404);
  EXPECT_TRUE(missing.json()["error"].is_string());
}

TEST_F(AdminServerTest, RefusesLargeBodies) {
  const std::string huge(kMaxRequestBody + 1, 'x');
  EXPECT_EQ(Request(address_, "POST", "/api/accounts", huge).status, 413);
}

TEST_F(AdminServerTest, EmptyQueue) {
  HttpResponse count = Get("/api/queue/count");
  ASSERT_EQ(count.status, 200) << count.body;
  EXPECT_EQ(count.json()["count"], 0);
  HttpResponse list = Get("/api/queue?limit=10");
  ASSERT_EQ(list.status, 200) << list.body;
  EXPECT_EQ(list.json()["messages"], Json::array());
  EXPECT_EQ(Get("/api/queue?limit=0").status, 400);
  EXPECT_EQ(Get("/api/queue?limit=abc").status, 400);
  EXPECT_EQ(Get("/api/queue/not-an-id").status, 400);
  HttpResponse unknown = Get("/api/queue/" + MessageId::Generate(clock_.Now()).ToString());
  EXPECT_EQ(unknown.status, 404);
  EXPECT_TRUE(unknown.json()["error"].is_string());
}

TEST_F(AdminServerTest, QueuedMessageIsListed) {
  const MessageId id = MessageId::Generate(clock_.Now());
  {
    auto spool = queue::Spool::Open(*store_, queue::SpoolOptions(), clock_);
    ASSERT_TRUE(spool.ok()) << spool.status();
    queue::Envelope envelope;
    envelope.id = id;
    envelope.sender = "alice@example.com";
    for (const char* address : {"bob@example.org", "carol@example.net"}) {
      queue::RecipientRecord recipient;
      recipient.address = address;
      envelope.recipients.push_back(recipient);
    }
    envelope.listener = "submission";
    envelope.account = "alice";
    envelope.client = "[127.0.0.1]:4567";
    envelope.received_at = clock_.Now();
    envelope.next_attempt = clock_.Now();
    std::promise<absl::Status> committed;
    (*spool)->Enqueue(envelope, "Subject: hi\r\n\r\nhello\r\n",
                      [&committed](absl::Status status) { committed.set_value(status); });
    const absl::Status status = committed.get_future().get();
    ASSERT_TRUE(status.ok()) << status;
  }

  HttpResponse count = Get("/api/queue/count");
  ASSERT_EQ(count.status, 200) << count.body;
  EXPECT_EQ(count.json()["count"], 1);

  HttpResponse list = Get("/api/queue?limit=5");
  ASSERT_EQ(list.status, 200) << list.body;
  const Json messages = list.json()["messages"];
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_EQ(messages[0]["id"], id.ToString());
  EXPECT_EQ(messages[0]["sender"], "alice@example.com");
  EXPECT_EQ(messages[0]["recipients"], Json({"bob@example.org", "carol@example.net"}));
  EXPECT_EQ(messages[0]["received_at"], Rfc3339(clock_.Now()));
  EXPECT_THAT(messages[0]["received_at"].get<std::string>(), ::testing::StartsWith("2027-01-15T08:00:00"));
  EXPECT_EQ(messages[0]["attempts"], 0);
  EXPECT_EQ(messages[0]["account"], "alice");
  EXPECT_EQ(messages[0]["listener"], "submission");
  EXPECT_EQ(Get("/api/queue?after=" + id.ToString()).json()["messages"], Json::array());

  HttpResponse one = Get("/api/queue/" + id.ToString());
  ASSERT_EQ(one.status, 200) << one.body;
  EXPECT_EQ(one.json()["size"], 22);
  EXPECT_EQ(one.json()["recipient_states"][0]["state"], "pending");
  EXPECT_EQ(one.json()["client"], "[127.0.0.1]:4567");
}

// The delivery endpoints answer 503 until the relay gives them access; then the summary counts
// the spool (due now, scheduled) and /api/reputation is the relay's view. Unknown site
// actions are 404.
TEST_F(AdminServerTest, SummarySitesAndReputationNeedDeliveryAccess) {
  EXPECT_EQ(Get("/api/sites").status, 503);
  EXPECT_EQ(Get("/api/queue/summary").status, 503);
  EXPECT_EQ(Get("/api/reputation").status, 503);
  EXPECT_EQ(Request(address_, "POST", "/api/sites/google/suspend").status, 503);
  EXPECT_EQ(Request(address_, "POST", "/api/sites/google/frobnicate").status, 404);
  EXPECT_EQ(Request(address_, "GET", "/api/sites/google/suspend").status, 405);

  auto spool = queue::Spool::Open(*store_, queue::SpoolOptions(), clock_);
  ASSERT_TRUE(spool.ok()) << spool.status();
  for (absl::Duration delay : {absl::ZeroDuration(), absl::Hours(1)}) {
    queue::Envelope envelope;
    envelope.id = MessageId::Generate(clock_.Now());
    envelope.sender = "alice@example.com";
    queue::RecipientRecord recipient;
    recipient.address = "bob@example.org";
    envelope.recipients.push_back(recipient);
    envelope.received_at = clock_.Now();
    envelope.next_attempt = clock_.Now() + delay;
    std::promise<absl::Status> committed;
    (*spool)->Enqueue(envelope, "Subject: hi\r\n\r\nhello\r\n",
                      [&committed](absl::Status status) { committed.set_value(status); });
    ASSERT_TRUE(committed.get_future().get().ok());
  }
  DeliveryAccess access;
  access.spool = spool->get();
  access.clock = &clock_;
  access.reputation = [](absl::Time) { return Json{{"now", "then"}, {"pairs", Json::array()}}; };
  server_->SetDeliveryAccess(&access);

  HttpResponse summary = Get("/api/queue/summary");
  ASSERT_EQ(summary.status, 200) << summary.body;
  EXPECT_EQ(summary.json()["messages"], 2);
  EXPECT_EQ(summary.json()["due_now"], 1);
  EXPECT_EQ(summary.json()["scheduled"], 1);
  EXPECT_EQ(summary.json()["in_flight"], 0);
  EXPECT_EQ(summary.json()["totals"]["unknown_site"], 1);
  HttpResponse reputation = Get("/api/reputation");
  ASSERT_EQ(reputation.status, 200) << reputation.body;
  EXPECT_EQ(reputation.json()["now"], "then");
  EXPECT_EQ(Get("/api/sites").status, 503);  // no shards in this access
  server_->SetDeliveryAccess(nullptr);
}

TEST(AdminServerStartTest, RejectsMalformedAddresses) {
  // Validation happens before anything touches the store or the accounts.
  metrics::Metrics metrics;
  std::string pattern = (std::filesystem::temp_directory_path() / "admin_start.XXXXXX").string();
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  {
    auto store = queue::Store::Open(pattern + "/spool");
    ASSERT_TRUE(store.ok()) << store.status();
    SimulatedClock clock;
    auto accounts = policy::AccountStore::Open(**store, clock, policy::PasswordHashCost::MinimalForTests());
    ASSERT_TRUE(accounts.ok());
    for (const char* address : {"", "9464", "127.0.0.1", "127.0.0.1:", "127.0.0.1:99999",
                                "127.0.0.1:80s", "::1:9464", "[::1]9464"}) {
      EXPECT_EQ(AdminServer::Start(address, metrics, **store, **accounts).status().code(),
                absl::StatusCode::kInvalidArgument)
          << address;
    }
    // IPv6: works where civetweb has it, else a clear Unimplemented (Debian's build lacks it).
    auto v6 = AdminServer::Start("[::1]:0", metrics, **store, **accounts);
    if (v6.ok()) {
      EXPECT_THAT((*v6)->BoundAddress(), ::testing::StartsWith("[::1]:"));
    } else {
      EXPECT_EQ(v6.status().code(), absl::StatusCode::kUnimplemented) << v6.status();
    }
    // A port already bound cannot be bound twice.
    auto first = AdminServer::Start("127.0.0.1:0", metrics, **store, **accounts);
    ASSERT_TRUE(first.ok()) << first.status();
    auto second = AdminServer::Start((*first)->BoundAddress(), metrics, **store, **accounts);
    EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  }
  std::filesystem::remove_all(pattern);
}

}  // namespace
}  // namespace facteur::admin
