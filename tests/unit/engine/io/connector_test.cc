#include "engine/io/connector.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "engine/io/server.h"
#include "engine/io/socket_address.h"
#include "engine/tls/tls_client_context.h"
#include "engine/tls/tls_context.h"
#include "gtest/gtest.h"

namespace facteur::io {
namespace {

constexpr absl::Duration kWait = absl::Seconds(10);
constexpr char kServerName[] = "mx.example.test";

// One EventLoop on its own thread, with the Connector under test living on it.
class LoopThread {
 public:
  LoopThread() {
    auto loop = EventLoop::Create();
    EXPECT_TRUE(loop.ok()) << loop.status();
    loop_ = std::move(*loop);
    thread_ = std::thread([this] { EXPECT_TRUE(loop_->Run().ok()); });
    RunSync([this] { connector_ = std::make_unique<Connector>(*loop_); });
  }
  ~LoopThread() {
    // Shut down as a shard would: abort, let the loop drain, then destroy on the loop thread.
    RunSync([this] { connector_->AbortAll(); });
    EXPECT_TRUE(WaitUntilEmpty());
    RunSync([this] { connector_.reset(); });
    loop_->Stop();
    thread_.join();
  }

  void RunSync(absl::AnyInvocable<void() &&> fn) {
    absl::Notification done;
    loop_->Post([&] {
      std::move(fn)();
      done.Notify();
    });
    done.WaitForNotification();
  }
  size_t ConnectorSize() {
    size_t size = 0;
    RunSync([&] { size = connector_->size(); });
    return size;
  }
  // Bounded polling: the connections finish on the loop thread.
  bool WaitUntilEmpty() {
    for (absl::Time end = absl::Now() + kWait; absl::Now() < end;) {
      if (ConnectorSize() == 0) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }
  EventLoop& loop() { return *loop_; }
  Connector& connector() { return *connector_; }

 private:
  std::unique_ptr<EventLoop> loop_;
  std::unique_ptr<Connector> connector_;
  std::thread thread_;
};

// ---- The far end: an io::Server echoing lines, with STARTTLS. ----

struct ServerEvents {
  absl::Mutex mu;
  int started = 0;
  int tls_started = 0;
  int tls_failed = 0;
  int closed = 0;
  std::vector<std::string> peers;
  std::vector<std::string> lines;
};

// Greets with "220 hello"; echoes every line; "STARTTLS" answers "220 go ahead" and starts
// TLS; "QUIT" closes after its echo.
class EchoServerHandler final : public StreamHandler {
 public:
  EchoServerHandler(Stream& stream, ServerEvents& events) : stream_(stream), events_(events) {}
  void OnStart(const TlsInfo*) override {
    {
      absl::MutexLock lock(&events_.mu);
      ++events_.started;
      events_.peers.push_back(stream_.peer().text);
    }
    stream_.Write("220 hello\r\n");
  }
  void OnData(std::string_view bytes) override {
    buffer_.append(bytes);
    size_t end;
    while ((end = buffer_.find("\r\n")) != std::string::npos) {
      std::string line = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      {
        absl::MutexLock lock(&events_.mu);
        events_.lines.push_back(line);
      }
      if (line == "STARTTLS") {
        stream_.Write("220 go ahead\r\n");
        stream_.StartTls();
        buffer_.clear();
        return;
      }
      stream_.Write(line + "\r\n");
      if (line == "QUIT") {
        stream_.Close();
        return;
      }
    }
  }
  void OnTlsStarted(const TlsInfo&) override {
    absl::MutexLock lock(&events_.mu);
    ++events_.tls_started;
  }
  void OnTlsFailed(std::string_view) override {
    absl::MutexLock lock(&events_.mu);
    ++events_.tls_failed;
  }
  void OnIdleTimeout() override {}
  void OnClosed() override {
    absl::MutexLock lock(&events_.mu);
    ++events_.closed;
  }

 private:
  Stream& stream_;
  ServerEvents& events_;
  std::string buffer_;
};

// ---- The near end: what a client handler saw. ----

struct ClientEvents {
  absl::Mutex mu;
  int started = 0;
  int tls_started = 0;
  int tls_failed = 0;
  int closed = 0;
  int failed = 0;
  int failed_inside_connect = 0;
  std::vector<absl::Status> failures;
  std::vector<absl::Duration> failure_delays;  // from Connect() to `failed`
  std::vector<std::string> lines;
  std::string peer;
  std::string tls_failure;
  TlsInfo tls;
  bool plaintext_after_starttls = false;

  bool WaitFor(int* counter, int n) {
    std::pair<int*, int> target(counter, n);
    absl::MutexLock lock(&mu);
    return mu.AwaitWithTimeout(
        absl::Condition(+[](std::pair<int*, int>* a) { return *a->first >= a->second; }, &target),
        kWait);
  }
};

enum class Script {
  kIdle,      // connects and waits (AbortAll() closes it)
  kPing,      // after the greeting: "ping", then QUIT
  kStartTls,  // after the greeting: STARTTLS, then "secret" and QUIT over TLS
};

// The SMTP client's side in miniature: line-based, STARTTLS after the server's 220.
class ClientHandler final : public StreamHandler {
 public:
  ClientHandler(Stream& stream, ClientEvents& events, Script script, std::string tag)
      : stream_(stream), events_(events), script_(script), tag_(std::move(tag)) {}
  void OnStart(const TlsInfo* tls) override {
    EXPECT_EQ(tls, nullptr);
    absl::MutexLock lock(&events_.mu);
    ++events_.started;
    events_.peer = stream_.peer().text;
  }
  void OnData(std::string_view bytes) override {
    if (starttls_sent_ && !stream_.tls_active()) {
      absl::MutexLock lock(&events_.mu);
      events_.plaintext_after_starttls = true;
    }
    buffer_.append(bytes);
    size_t end;
    while ((end = buffer_.find("\r\n")) != std::string::npos) {
      std::string line = buffer_.substr(0, end);
      buffer_.erase(0, end + 2);
      {
        absl::MutexLock lock(&events_.mu);
        events_.lines.push_back(line);
      }
      if (line == "220 hello") {
        if (script_ == Script::kPing) stream_.Write(absl::StrCat("ping ", tag_, "\r\nQUIT\r\n"));
        if (script_ == Script::kStartTls) stream_.Write("STARTTLS\r\n");
      } else if (line == "220 go ahead" && script_ == Script::kStartTls) {
        starttls_sent_ = true;
        stream_.StartTls();
        buffer_.clear();  // RFC 3207 §4.2: nothing after the 220 is acted upon
        return;
      }
    }
  }
  void OnTlsStarted(const TlsInfo& tls) override {
    EXPECT_TRUE(stream_.tls_active());
    {
      absl::MutexLock lock(&events_.mu);
      ++events_.tls_started;
      events_.tls = tls;
    }
    stream_.Write("secret\r\nQUIT\r\n");
  }
  void OnTlsFailed(std::string_view reason) override {
    absl::MutexLock lock(&events_.mu);
    ++events_.tls_failed;
    events_.tls_failure = std::string(reason);
  }
  void OnIdleTimeout() override {}
  void OnClosed() override {
    absl::MutexLock lock(&events_.mu);
    ++events_.closed;
  }

 private:
  Stream& stream_;
  ClientEvents& events_;
  Script script_;
  std::string tag_;
  std::string buffer_;
  bool starttls_sent_ = false;
};

SocketAddress Address(const std::string& ip, uint16_t port) {
  auto address = MakeSocketAddress(ip, port);
  EXPECT_TRUE(address.ok()) << address.status();
  return *address;
}

// "127.0.0.1:34567" (a Server's BoundAddress) as a SocketAddress.
SocketAddress Parse(const std::string& bound) {
  auto address = ParseListenAddress(bound);
  EXPECT_TRUE(address.ok()) << address.status();
  return *address;
}

bool HasIpv6Loopback() {
  int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_addr = in6addr_loopback;
  bool ok = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&in6), sizeof(in6)) == 0;
  if (probe >= 0) ::close(probe);
  return ok;
}

class ConnectorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/facteur_connector_test_XXXXXX";
    dir_ = new std::string(::mkdtemp(pattern));
    auto server_context = tls::TlsServerContext::SelfSigned(*dir_ + "/tls", kServerName);
    ASSERT_TRUE(server_context.ok()) << server_context.status();
    server_tls_ = server_context->release();
    auto trusting = tls::TlsClientContext::Create(*dir_ + "/tls/cert.pem");
    ASSERT_TRUE(trusting.ok()) << trusting.status();
    trusting_ = trusting->release();
    auto system_only = tls::TlsClientContext::Create("");
    ASSERT_TRUE(system_only.ok()) << system_only.status();
    system_only_ = system_only->release();
  }
  static void TearDownTestSuite() {
    delete server_tls_;
    delete trusting_;
    delete system_only_;
    std::string cmd = "rm -rf '" + *dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
    delete dir_;
  }

  // An echo server with STARTTLS on 127.0.0.1 (or [::1]).
  std::unique_ptr<Server> StartServer(const std::string& address = "127.0.0.1:0") {
    auto server = std::make_unique<Server>(std::vector<ListenSpec>{ListenSpec{
        address, TlsMode::kStartTls,
        [this](Stream& stream) { return std::make_unique<EchoServerHandler>(stream, server_); },
        server_tls_}});
    EXPECT_TRUE(server->Start(1).ok());
    return server;
  }

  // Connect() on the loop thread; `failed` records the status and the delay.
  void Connect(const ConnectSpec& spec, Script script, std::string tag = "") {
    loop_.RunSync([this, spec, script, tag] {
      absl::Time start = loop_.loop().Now();
      int failed_before;
      {
        absl::MutexLock lock(&client_.mu);
        failed_before = client_.failed;
      }
      loop_.connector().Connect(
          spec,
          [this, script, tag](Stream& stream) {
            return std::make_unique<ClientHandler>(stream, client_, script, tag);
          },
          [this, start](absl::Status status) {
            absl::MutexLock lock(&client_.mu);
            ++client_.failed;
            client_.failures.push_back(status);
            client_.failure_delays.push_back(loop_.loop().Now() - start);
          });
      absl::MutexLock lock(&client_.mu);
      client_.failed_inside_connect += client_.failed - failed_before;
    });
  }

  absl::Status OnlyFailure() {
    absl::MutexLock lock(&client_.mu);
    EXPECT_EQ(client_.failures.size(), 1u);
    return client_.failures.empty() ? absl::OkStatus() : client_.failures[0];
  }

  static std::string* dir_;
  static tls::TlsServerContext* server_tls_;
  static tls::TlsClientContext* trusting_;     // trusts the server's self-signed certificate
  static tls::TlsClientContext* system_only_;  // does not
  ServerEvents server_;
  ClientEvents client_;
  LoopThread loop_;  // last: destroyed first, while the events above still exist
};
std::string* ConnectorTest::dir_ = nullptr;
tls::TlsServerContext* ConnectorTest::server_tls_ = nullptr;
tls::TlsClientContext* ConnectorTest::trusting_ = nullptr;
tls::TlsClientContext* ConnectorTest::system_only_ = nullptr;

// A listener whose accept queue is full: new SYNs are dropped, connects hang until a timeout.
class BlackHole {
 public:
  BlackHole() {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in in4{};
    in4.sin_family = AF_INET;
    in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&in4), sizeof(in4)), 0);
    // Backlog 0 still queues one connection; it is never accepted, so the queue stays full.
    EXPECT_EQ(::listen(listener_, 0), 0);
    socklen_t len = sizeof(in4);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&in4), &len);
    port_ = ntohs(in4.sin_port);
    filler_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ::connect(filler_, reinterpret_cast<sockaddr*>(&in4), sizeof(in4));
    pollfd connected{filler_, POLLOUT, 0};
    EXPECT_EQ(::poll(&connected, 1, 5000), 1) << "the filler connection did not complete";
  }
  ~BlackHole() {
    ::close(filler_);
    ::close(listener_);
  }
  uint16_t port() const { return port_; }

 private:
  int listener_ = -1;
  int filler_ = -1;
  uint16_t port_ = 0;
};

TEST_F(ConnectorTest, ConnectsAndTalksToManyServersAtOnce) {
  auto server = StartServer();
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  constexpr int kConnections = 50;
  for (int i = 0; i < kConnections; ++i) Connect(spec, Script::kPing, absl::StrCat(i));
  ASSERT_TRUE(client_.WaitFor(&client_.closed, kConnections));
  ASSERT_TRUE(loop_.WaitUntilEmpty());
  absl::MutexLock lock(&client_.mu);
  EXPECT_EQ(client_.failed, 0);
  EXPECT_EQ(client_.started, kConnections);
  const std::string bound = server->BoundAddress(0);  // "127.0.0.1:port"
  EXPECT_EQ(client_.peer, absl::StrCat("[127.0.0.1]", bound.substr(bound.find(':'))));
  // Each got the greeting, its own echo and the QUIT echo, in order per connection.
  int pings = 0;
  for (const std::string& line : client_.lines) pings += line.rfind("ping ", 0) == 0;
  EXPECT_EQ(pings, kConnections);
  EXPECT_EQ(client_.lines.size(), 3u * kConnections);
}

TEST_F(ConnectorTest, BindsTheChosenSourceAddress) {
  auto server = StartServer();
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  spec.source = Address("127.0.0.2", 0);
  Connect(spec, Script::kPing, "from .2");
  spec.source = Address("127.0.0.3", 0);
  Connect(spec, Script::kPing, "from .3");
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 2));
  absl::MutexLock lock(&server_.mu);
  ASSERT_EQ(server_.peers.size(), 2u);
  std::sort(server_.peers.begin(), server_.peers.end());
  EXPECT_EQ(server_.peers[0].rfind("[127.0.0.2]:", 0), 0u) << server_.peers[0];
  EXPECT_EQ(server_.peers[1].rfind("[127.0.0.3]:", 0), 0u) << server_.peers[1];
}

TEST_F(ConnectorTest, Ipv6WithSource) {
  if (!HasIpv6Loopback()) GTEST_SKIP() << "no IPv6 on lo";
  auto server = StartServer("[::1]:0");
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  spec.source = Address("::1", 0);
  Connect(spec, Script::kPing, "v6");
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 1));
  {
    absl::MutexLock lock(&client_.mu);
    EXPECT_EQ(client_.peer.rfind("[::1]:", 0), 0u) << client_.peer;
    EXPECT_EQ(client_.lines, (std::vector<std::string>{"220 hello", "ping v6", "QUIT"}));
  }
  absl::MutexLock lock(&server_.mu);
  ASSERT_EQ(server_.peers.size(), 1u);
  EXPECT_EQ(server_.peers[0].rfind("[::1]:", 0), 0u);
}

TEST_F(ConnectorTest, RefusedIsUnavailableAtOnce) {
  // A port that was just bound and released: nothing listens there.
  int probe = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in in4{};
  in4.sin_family = AF_INET;
  in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(probe, reinterpret_cast<sockaddr*>(&in4), sizeof(in4)), 0);
  socklen_t len = sizeof(in4);
  ::getsockname(probe, reinterpret_cast<sockaddr*>(&in4), &len);
  ::close(probe);
  ConnectSpec spec;
  spec.remote = Address("127.0.0.1", ntohs(in4.sin_port));
  spec.source = Address("127.0.0.2", 0);
  Connect(spec, Script::kPing);
  ASSERT_TRUE(client_.WaitFor(&client_.failed, 1));
  absl::Status status = OnlyFailure();
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_NE(status.message().find("refused"), absl::string_view::npos) << status;
  EXPECT_NE(status.message().find(FormatAddress(spec.remote)), absl::string_view::npos);
  EXPECT_NE(status.message().find("from 127.0.0.2"), absl::string_view::npos) << status;
  absl::MutexLock lock(&client_.mu);
  EXPECT_LT(client_.failure_delays[0], absl::Seconds(1));
  EXPECT_EQ(client_.failed_inside_connect, 0);
  EXPECT_EQ(client_.started, 0);
}

TEST_F(ConnectorTest, UnansweredSynTimesOut) {
  BlackHole hole;
  ConnectSpec spec;
  spec.remote = Address("127.0.0.1", hole.port());
  spec.timeout = absl::Milliseconds(200);
  Connect(spec, Script::kPing);
  ASSERT_TRUE(client_.WaitFor(&client_.failed, 1));
  absl::Status status = OnlyFailure();
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
  EXPECT_NE(status.message().find("timed out after 200ms"), absl::string_view::npos) << status;
  absl::MutexLock lock(&client_.mu);
  EXPECT_GE(client_.failure_delays[0], absl::Milliseconds(190));
  EXPECT_LT(client_.failure_delays[0], absl::Seconds(2));  // not the kernel's SYN retries
  EXPECT_EQ(client_.started, 0);
}

TEST_F(ConnectorTest, BadSpecsFailAfterConnectReturns) {
  auto server = StartServer();
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  spec.source = Address("192.0.2.1", 0);  // TEST-NET-1: not an address of this host
  Connect(spec, Script::kPing);
  spec.source = Address("::1", 0);  // IPv6 source for an IPv4 remote
  Connect(spec, Script::kPing);
  spec.source.reset();
  spec.timeout = absl::ZeroDuration();
  Connect(spec, Script::kPing);
  ConnectSpec unix_remote;
  unix_remote.remote = Parse("unix:/tmp/nothing.sock");
  Connect(unix_remote, Script::kPing);
  ASSERT_TRUE(client_.WaitFor(&client_.failed, 4));
  absl::MutexLock lock(&client_.mu);
  EXPECT_EQ(client_.failed_inside_connect, 0);
  ASSERT_EQ(client_.failures.size(), 4u);
  for (const absl::Status& status : client_.failures) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  }
  EXPECT_NE(client_.failures[0].message().find("bind: Cannot assign requested address"),
            absl::string_view::npos)
      << client_.failures[0];
  EXPECT_EQ(client_.started, 0);
}

TEST_F(ConnectorTest, OpportunisticStartTlsWithAnUntrustedCertificate) {
  auto server = StartServer();
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  spec.tls = system_only_;
  spec.tls_server_name = kServerName;
  Connect(spec, Script::kStartTls);
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 1));
  {
    absl::MutexLock lock(&client_.mu);
    EXPECT_EQ(client_.tls_started, 1);
    EXPECT_EQ(client_.tls.version, "TLSv1.3");
    EXPECT_FALSE(client_.tls.peer_verified);
    EXPECT_FALSE(client_.plaintext_after_starttls);
    EXPECT_EQ(client_.lines,
              (std::vector<std::string>{"220 hello", "220 go ahead", "secret", "QUIT"}));
  }
  absl::MutexLock lock(&server_.mu);
  EXPECT_EQ(server_.tls_started, 1);
  EXPECT_EQ(server_.lines, (std::vector<std::string>{"STARTTLS", "secret", "QUIT"}));
}

TEST_F(ConnectorTest, VerifiedStartTls) {
  auto server = StartServer();
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  spec.tls = trusting_;
  spec.tls_server_name = kServerName;
  spec.verify_peer = true;
  Connect(spec, Script::kStartTls);
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 1));
  absl::MutexLock lock(&client_.mu);
  EXPECT_EQ(client_.tls_started, 1) << client_.tls_failure;
  EXPECT_TRUE(client_.tls.peer_verified);
  EXPECT_EQ(client_.lines.back(), "QUIT");
}

TEST_F(ConnectorTest, VerificationFailuresFailTheHandshakeWithTheReason) {
  auto server = StartServer();
  ConnectSpec wrong_name;
  wrong_name.remote = Parse(server->BoundAddress(0));
  wrong_name.tls = trusting_;
  wrong_name.tls_server_name = "mx.other.test";
  wrong_name.verify_peer = true;
  Connect(wrong_name, Script::kStartTls);
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 1));
  {
    absl::MutexLock lock(&client_.mu);
    EXPECT_EQ(client_.tls_failed, 1);
    EXPECT_NE(client_.tls_failure.find("hostname mismatch (expected mx.other.test)"),
              std::string::npos)
        << client_.tls_failure;
  }
  ConnectSpec untrusted = wrong_name;
  untrusted.tls = system_only_;
  untrusted.tls_server_name = kServerName;
  Connect(untrusted, Script::kStartTls);
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 2));
  {
    absl::MutexLock lock(&client_.mu);
    EXPECT_EQ(client_.tls_failed, 2);
    EXPECT_EQ(client_.tls_started, 0);
    EXPECT_NE(client_.tls_failure.find("self-signed certificate"), std::string::npos)
        << client_.tls_failure;
    // Nothing meant for the TLS session went out in plaintext, or at all.
    EXPECT_EQ(std::count(client_.lines.begin(), client_.lines.end(), "secret"), 0);
  }
  // The server saw both handshakes fail (our alert, then the close) and no "secret".
  ASSERT_TRUE(loop_.WaitUntilEmpty());
  absl::MutexLock lock(&server_.mu);
  EXPECT_EQ(std::count(server_.lines.begin(), server_.lines.end(), "secret"), 0);
  EXPECT_EQ(server_.tls_started, 0);
}

TEST_F(ConnectorTest, StartTlsWithoutAClientContextFails) {
  auto server = StartServer();
  ConnectSpec spec;
  spec.remote = Parse(server->BoundAddress(0));
  Connect(spec, Script::kStartTls);
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 1));
  absl::MutexLock lock(&client_.mu);
  EXPECT_EQ(client_.tls_failed, 1);
  EXPECT_EQ(client_.tls_failure, "no TLS client context");
}

// A man in the middle answers STARTTLS, then injects plaintext while the client's handshake is
// under way: the client must not take it as a reply (RFC 3207 §4.2 applies to clients too).
TEST_F(ConnectorTest, PlaintextInjectedAfterStartTlsIsNeverDelivered) {
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in in4{};
  in4.sin_family = AF_INET;
  in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&in4), sizeof(in4)), 0);
  ASSERT_EQ(::listen(listener, 1), 0);
  socklen_t len = sizeof(in4);
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&in4), &len);
  std::thread mitm([listener] {
    int fd = ::accept(listener, nullptr, nullptr);
    ASSERT_GE(fd, 0);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    auto send_all = [fd](std::string_view s) {
      EXPECT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL), static_cast<ssize_t>(s.size()));
    };
    auto read_some = [fd] {
      char buffer[4096];
      ssize_t n;
      do n = ::recv(fd, buffer, sizeof(buffer), 0); while (n < 0 && errno == EINTR);
      return n > 0 ? std::string(buffer, static_cast<size_t>(n)) : std::string();
    };
    send_all("220 hello\r\n");
    EXPECT_EQ(read_some(), "STARTTLS\r\n");
    send_all("220 go ahead\r\n");
    std::string hello = read_some();
    ASSERT_FALSE(hello.empty());
    EXPECT_EQ(hello[0], 0x16);  // a TLS handshake record: the ClientHello
    send_all("250 injected\r\n");
    while (!read_some().empty()) {
    }
    ::close(fd);
  });
  ConnectSpec spec;
  spec.remote = Address("127.0.0.1", ntohs(in4.sin_port));
  spec.tls = system_only_;
  spec.tls_server_name = kServerName;
  Connect(spec, Script::kStartTls);
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 1));
  mitm.join();
  ::close(listener);
  absl::MutexLock lock(&client_.mu);
  EXPECT_EQ(client_.tls_failed, 1);
  EXPECT_FALSE(client_.plaintext_after_starttls);
  EXPECT_EQ(client_.lines, (std::vector<std::string>{"220 hello", "220 go ahead"}));
}

TEST_F(ConnectorTest, AbortAllCancelsPendingConnectsAndClosesConnections) {
  auto server = StartServer();
  BlackHole hole;
  ConnectSpec open;
  open.remote = Parse(server->BoundAddress(0));
  for (int i = 0; i < 3; ++i) Connect(open, Script::kIdle);
  ASSERT_TRUE(client_.WaitFor(&client_.started, 3));
  ConnectSpec hanging;
  hanging.remote = Address("127.0.0.1", hole.port());
  hanging.timeout = absl::Seconds(30);
  for (int i = 0; i < 4; ++i) Connect(hanging, Script::kIdle);
  ConnectSpec bad;
  bad.remote = open.remote;
  bad.source = Address("192.0.2.1", 0);
  absl::Time start = absl::Now();
  loop_.RunSync([this, bad] {
    // A setup failure whose report is still pending when everything is aborted.
    loop_.connector().Connect(
        bad, [](Stream&) { return nullptr; },
        [this](absl::Status status) {
          absl::MutexLock lock(&client_.mu);
          ++client_.failed;
          client_.failures.push_back(status);
        });
    EXPECT_EQ(loop_.connector().size(), 8u);
    loop_.connector().AbortAll();
    absl::MutexLock lock(&client_.mu);
    EXPECT_EQ(client_.closed, 0);  // nothing is called back inside AbortAll()
    EXPECT_EQ(client_.failed, 0);
  });
  ASSERT_TRUE(client_.WaitFor(&client_.failed, 5));
  ASSERT_TRUE(client_.WaitFor(&client_.closed, 3));
  ASSERT_TRUE(loop_.WaitUntilEmpty());
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  absl::MutexLock lock(&client_.mu);
  for (const absl::Status& status : client_.failures) {
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  }
  EXPECT_EQ(client_.started, 3);
}

}  // namespace
}  // namespace facteur::io
