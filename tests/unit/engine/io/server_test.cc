#include "engine/io/server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "engine/tls/tls_context.h"
#include "gtest/gtest.h"

namespace facteur::io {
namespace {

constexpr absl::Duration kWait = absl::Seconds(10);

// What handlers observed, shared with the test thread.
struct Events {
  absl::Mutex mu;
  int started = 0;
  int started_tls = 0;
  int tls_started = 0;
  int tls_failed = 0;
  int idle = 0;
  int closed = 0;
  int data_while_paused = 0;
  int data_between_starttls_and_tls = 0;
  std::vector<std::string> lines;
  std::string last_tls_version;
  std::string last_peer;

  // Bounded wait for `*counter >= n`.
  bool WaitFor(int* counter, int n) {
    std::pair<int*, int> target(counter, n);
    absl::MutexLock lock(&mu);
    return mu.AwaitWithTimeout(
        absl::Condition(+[](std::pair<int*, int>* a) { return *a->first >= a->second; }, &target),
        kWait);
  }
};

struct HandlerOptions {
  bool greet = false;
  bool start_paused = false;  // SetReading(false) at start, true again 100 ms later
  absl::Duration idle = absl::ZeroDuration();
  absl::Duration send_timeout = absl::ZeroDuration();
  size_t greeting_octets = 0;  // more written at start than any socket buffer holds
};

// Echoes every byte; "QUIT" closes after its echo; "STARTTLS" answers 220 and starts TLS,
// dropping the rest of the chunk as an SMTP session would.
class EchoHandler final : public StreamHandler {
 public:
  EchoHandler(Stream& stream, Events& events, HandlerOptions options)
      : stream_(stream), events_(events), options_(options) {}

  void OnStart(const TlsInfo* tls) override {
    {
      absl::MutexLock lock(&events_.mu);
      ++events_.started;
      if (tls != nullptr) {
        ++events_.started_tls;
        events_.last_tls_version = tls->version;
      }
      events_.last_peer = stream_.peer().text;
    }
    if (options_.greet) stream_.Write("220 hello\r\n");
    if (options_.greeting_octets > 0) stream_.Write(std::string(options_.greeting_octets, 'g'));
    if (options_.send_timeout > absl::ZeroDuration()) {
      stream_.SetSendTimeout(options_.send_timeout);
    }
    if (options_.idle > absl::ZeroDuration()) stream_.SetIdleTimeout(options_.idle);
    if (options_.start_paused) {
      paused_ = true;
      stream_.SetReading(false);
      stream_.loop().RunAfter(absl::Milliseconds(100), [this] {
        paused_ = false;
        stream_.SetReading(true);
      });
    }
  }

  void OnData(std::string_view bytes) override {
    if (paused_) {
      absl::MutexLock lock(&events_.mu);
      ++events_.data_while_paused;
    }
    if (between_starttls_and_tls_) {
      absl::MutexLock lock(&events_.mu);
      ++events_.data_between_starttls_and_tls;
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
      if (line == "STARTTLS") {
        stream_.Write("220 go ahead\r\n");
        stream_.StartTls();
        between_starttls_and_tls_ = true;
        buffer_.clear();  // RFC 3207 §4.2: the rest of this chunk is not acted upon
        return;
      }
      stream_.Write(line + "\r\n");
      if (line == "QUIT") {
        stream_.Close();
        return;
      }
    }
  }

  void OnTlsStarted(const TlsInfo& tls) override {
    between_starttls_and_tls_ = false;
    absl::MutexLock lock(&events_.mu);
    ++events_.tls_started;
    events_.last_tls_version = tls.version;
  }
  void OnTlsFailed(std::string_view) override {
    absl::MutexLock lock(&events_.mu);
    ++events_.tls_failed;
  }
  void OnIdleTimeout() override {
    {
      absl::MutexLock lock(&events_.mu);
      ++events_.idle;
    }
    stream_.Write("421 4.4.2 idle\r\n");
    stream_.Close();
  }
  void OnClosed() override {
    absl::MutexLock lock(&events_.mu);
    ++events_.closed;
  }

 private:
  Stream& stream_;
  Events& events_;
  HandlerOptions options_;
  std::string buffer_;
  bool paused_ = false;
  bool between_starttls_and_tls_ = false;
};

StreamHandlerFactory EchoFactory(Events& events, HandlerOptions options = {}) {
  return [&events, options](Stream& stream) {
    return std::make_unique<EchoHandler>(stream, events, options);
  };
}

// ---- A blocking test client with bounded waits. ----
// Every call retries EINTR: io_uring task work on this process can interrupt a blocking socket
// call that has SO_RCVTIMEO/SO_SNDTIMEO (such calls are not restarted by the kernel).

int Connect(const std::string& bound) {
  int fd;
  if (!bound.empty() && bound[0] == '/') {
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strncpy(un.sun_path, bound.c_str(), sizeof(un.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&un), sizeof(un)) != 0) return -1;
  } else {
    size_t colon = bound.rfind(':');
    std::string host = bound.substr(0, colon);
    int port = std::stoi(bound.substr(colon + 1));
    if (host[0] == '[') {
      fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in6 in6{};
      in6.sin6_family = AF_INET6;
      in6.sin6_port = htons(port);
      inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &in6.sin6_addr);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&in6), sizeof(in6)) != 0) return -1;
    } else {
      fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in in4{};
      in4.sin_family = AF_INET;
      in4.sin_port = htons(port);
      inet_pton(AF_INET, host.c_str(), &in4.sin_addr);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&in4), sizeof(in4)) != 0) return -1;
    }
  }
  timeval tv{10, 0};  // every read in these tests is bounded
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads until `total` bytes arrived, EOF, or the 10 s timeout.
std::string ReadExactly(int fd, size_t total) {
  std::string out;
  char buffer[4096];
  while (out.size() < total) {
    ssize_t n = ::recv(fd, buffer, std::min(sizeof(buffer), total - out.size()), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buffer, static_cast<size_t>(n));
  }
  return out;
}

// True when the peer closed (EOF or reset) within the timeout, ignoring any bytes first.
bool ReadsEof(int fd) {
  char buffer[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n == 0) return true;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == ECONNRESET;
  }
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char pattern[] = "/tmp/facteur_io_test_XXXXXX";
    dir_ = new std::string(::mkdtemp(pattern));
    auto context = tls::TlsServerContext::SelfSigned(*dir_ + "/tls", "mx.example.test");
    ASSERT_TRUE(context.ok()) << context.status();
    tls_context_ = context->release();
  }
  static void TearDownTestSuite() {
    delete tls_context_;
    std::string cmd = "rm -rf '" + *dir_ + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0);
    delete dir_;
  }

  static std::string* dir_;
  static tls::TlsServerContext* tls_context_;
  Events events_;
};
std::string* ServerTest::dir_ = nullptr;
tls::TlsServerContext* ServerTest::tls_context_ = nullptr;

// A blocking TLS client on a connected socket.
class TlsClient {
 public:
  explicit TlsClient(int fd) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd);
    SSL_set_tlsext_host_name(ssl_, "mx.example.test");
  }
  ~TlsClient() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
  }
  bool Handshake() {
    for (;;) {
      int rc = SSL_connect(ssl_);
      if (rc == 1) return true;
      if (!Interrupted(rc)) return false;
    }
  }
  bool Write(std::string_view data) {
    for (;;) {
      int n = SSL_write(ssl_, data.data(), static_cast<int>(data.size()));
      if (n == static_cast<int>(data.size())) return true;
      if (!Interrupted(n)) return false;
    }
  }
  std::string Read(size_t total) {
    std::string out;
    char buffer[4096];
    while (out.size() < total) {
      int n = SSL_read(ssl_, buffer, static_cast<int>(std::min(sizeof(buffer), total - out.size())));
      if (n <= 0 && Interrupted(n)) continue;
      if (n <= 0) break;
      out.append(buffer, static_cast<size_t>(n));
    }
    return out;
  }

 private:
  bool Interrupted(int rc) {
    // A socket BIO reports EINTR as "retry" (WANT_READ/WANT_WRITE) or as a bare SYSCALL error.
    int saved_errno = errno;
    int error = SSL_get_error(ssl_, rc);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return true;
    if (error == SSL_ERROR_SYSCALL && saved_errno == EINTR) {
      ERR_clear_error();
      return true;
    }
    ADD_FAILURE() << "SSL error " << error << " errno " << saved_errno << " "
                  << ERR_error_string(ERR_get_error(), nullptr);
    return false;
  }
  SSL_CTX* ctx_;
  SSL* ssl_;
};

TEST_F(ServerTest, EchoesPipelinedLinesFromManyConcurrentClients) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone, EchoFactory(events_), nullptr}});
  ASSERT_TRUE(server.Start(2).ok());
  std::string address = server.BoundAddress(0);
  ASSERT_EQ(address.rfind("127.0.0.1:", 0), 0u) << address;
  constexpr int kClients = 50;
  constexpr int kLines = 100;
  std::atomic<int> good{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      int fd = Connect(address);
      if (fd < 0) return;
      std::string request;
      for (int i = 0; i < kLines; ++i) absl::StrAppend(&request, "client ", c, " line ", i, "\r\n");
      bool ok = SendAll(fd, request) && ReadExactly(fd, request.size()) == request;
      ok = ok && SendAll(fd, "QUIT\r\n") && ReadExactly(fd, 6) == "QUIT\r\n" && ReadsEof(fd);
      if (ok) good.fetch_add(1);
      ::close(fd);
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(good.load(), kClients);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, kClients));
  {
    absl::MutexLock lock(&events_.mu);
    EXPECT_EQ(events_.started, kClients);
    EXPECT_EQ(events_.closed, kClients);
    EXPECT_EQ(events_.last_peer.rfind("[127.0.0.1]:", 0), 0u) << events_.last_peer;
  }
  server.Stop();
  EXPECT_EQ(server.active_connections(), 0u);
}

TEST_F(ServerTest, UnixSocketListener) {
  std::string path = *dir_ + "/facteur.sock";
  // A stale socket file from an earlier run is replaced.
  {
    int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::strncpy(un.sun_path, path.c_str(), sizeof(un.sun_path) - 1);
    ASSERT_EQ(::bind(stale, reinterpret_cast<sockaddr*>(&un), sizeof(un)), 0);
    ::close(stale);
  }
  Server server({ListenSpec{"unix:" + path, TlsMode::kNone, EchoFactory(events_, {.greet = true}),
                            nullptr}});
  ASSERT_TRUE(server.Start(2).ok());
  EXPECT_EQ(server.BoundAddress(0), path);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666u);
  // Several connections, so that some are handed off to the other loop.
  for (int i = 0; i < 4; ++i) {
    int fd = Connect(path);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(ReadExactly(fd, 11), "220 hello\r\n");
    ASSERT_TRUE(SendAll(fd, "one\r\ntwo\r\nQUIT\r\n"));
    EXPECT_EQ(ReadExactly(fd, 16), "one\r\ntwo\r\nQUIT\r\n");
    EXPECT_TRUE(ReadsEof(fd));
    ::close(fd);
  }
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 4));
  {
    absl::MutexLock lock(&events_.mu);
    // SO_PEERCRED: this process is the peer.
    EXPECT_EQ(events_.last_peer, absl::StrCat("unix uid=", ::getuid(), " pid=", ::getpid()));
  }
  server.Stop();
  EXPECT_NE(::access(path.c_str(), F_OK), 0);  // removed at Stop()
}

TEST_F(ServerTest, Ipv6Loopback) {
  int probe = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  in6.sin6_addr = in6addr_loopback;
  bool has_ipv6 = probe >= 0 && ::bind(probe, reinterpret_cast<sockaddr*>(&in6), sizeof(in6)) == 0;
  if (probe >= 0) ::close(probe);
  if (!has_ipv6) GTEST_SKIP() << "no IPv6 on lo";
  Server server({ListenSpec{"[::1]:0", TlsMode::kNone, EchoFactory(events_), nullptr}});
  ASSERT_TRUE(server.Start(1).ok());
  std::string address = server.BoundAddress(0);
  ASSERT_EQ(address.rfind("[::1]:", 0), 0u) << address;
  int fd = Connect(address);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "hi\r\nQUIT\r\n"));
  EXPECT_EQ(ReadExactly(fd, 10), "hi\r\nQUIT\r\n");
  EXPECT_TRUE(ReadsEof(fd));
  ::close(fd);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
  absl::MutexLock lock(&events_.mu);
  EXPECT_EQ(events_.last_peer.rfind("[::1]:", 0), 0u) << events_.last_peer;
}

TEST_F(ServerTest, AddressInUseNamesTheAddress) {
  Server first({ListenSpec{"127.0.0.1:0", TlsMode::kNone, EchoFactory(events_), nullptr}});
  ASSERT_TRUE(first.Start(1).ok());
  // A plain socket without SO_REUSEPORT holding a port makes our bind fail.
  int holder = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in in4{};
  in4.sin_family = AF_INET;
  in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(holder, reinterpret_cast<sockaddr*>(&in4), sizeof(in4)), 0);
  ASSERT_EQ(::listen(holder, 1), 0);
  socklen_t len = sizeof(in4);
  ::getsockname(holder, reinterpret_cast<sockaddr*>(&in4), &len);
  std::string address = absl::StrCat("127.0.0.1:", ntohs(in4.sin_port));
  Server second({ListenSpec{address, TlsMode::kNone, EchoFactory(events_), nullptr}});
  absl::Status status = second.Start(1);
  ::close(holder);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(address), absl::string_view::npos) << status;
}

TEST_F(ServerTest, StartTlsDiscardsPipelinedInputThenEchoesOverTls) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kStartTls,
                            EchoFactory(events_, {.greet = true}), tls_context_}});
  ASSERT_TRUE(server.Start(2).ok());
  int fd = Connect(server.BoundAddress(0));
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ReadExactly(fd, 11), "220 hello\r\n");
  ASSERT_TRUE(SendAll(fd, "STARTTLS\r\nINJECTED\r\n"));
  EXPECT_EQ(ReadExactly(fd, 14), "220 go ahead\r\n");
  {
    TlsClient client(fd);
    ASSERT_TRUE(client.Handshake()) << ERR_error_string(ERR_get_error(), nullptr);
    ASSERT_TRUE(client.Write("secret\r\nQUIT\r\n"));
    EXPECT_EQ(client.Read(14), "secret\r\nQUIT\r\n");
  }
  EXPECT_TRUE(ReadsEof(fd));
  ::close(fd);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
  absl::MutexLock lock(&events_.mu);
  EXPECT_EQ(events_.tls_started, 1);
  EXPECT_EQ(events_.data_between_starttls_and_tls, 0);
  EXPECT_EQ(events_.lines, (std::vector<std::string>{"STARTTLS", "secret", "QUIT"}));
  EXPECT_EQ(events_.last_tls_version, "TLSv1.3");
}

TEST_F(ServerTest, ImplicitTlsAndGarbageClientHello) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kImplicit,
                            EchoFactory(events_, {.greet = true}), tls_context_}});
  ASSERT_TRUE(server.Start(2).ok());
  std::string address = server.BoundAddress(0);

  int bad = Connect(address);
  ASSERT_GE(bad, 0);
  ASSERT_TRUE(SendAll(bad, "EHLO i do not speak TLS\r\n"));
  EXPECT_TRUE(ReadsEof(bad));  // maybe after an alert
  ::close(bad);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
  {
    absl::MutexLock lock(&events_.mu);
    EXPECT_EQ(events_.tls_failed, 1);
    EXPECT_EQ(events_.started, 0);  // OnStart only after a handshake
  }

  for (int i = 0; i < 3; ++i) {
    int fd = Connect(address);
    ASSERT_GE(fd, 0);
    {
      TlsClient client(fd);
      ASSERT_TRUE(client.Handshake());
      EXPECT_EQ(client.Read(11), "220 hello\r\n");
      ASSERT_TRUE(client.Write("over tls\r\nQUIT\r\n"));
      EXPECT_EQ(client.Read(16), "over tls\r\nQUIT\r\n");
    }
    EXPECT_TRUE(ReadsEof(fd));
    ::close(fd);
  }
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 4));
  absl::MutexLock lock(&events_.mu);
  EXPECT_EQ(events_.started_tls, 3);
  EXPECT_EQ(events_.tls_failed, 1);
}

TEST_F(ServerTest, IdleTimeoutClosesAnIdleClient) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone,
                            EchoFactory(events_, {.idle = absl::Milliseconds(100)}), nullptr}});
  ASSERT_TRUE(server.Start(1).ok());
  absl::Time start = absl::Now();  // before connecting: the server's timer starts later
  int fd = Connect(server.BoundAddress(0));
  ASSERT_GE(fd, 0);
  EXPECT_EQ(ReadExactly(fd, 16), "421 4.4.2 idle\r\n");
  EXPECT_TRUE(ReadsEof(fd));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(90));
  ::close(fd);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
  absl::MutexLock lock(&events_.mu);
  EXPECT_EQ(events_.idle, 1);
}

TEST_F(ServerTest, ASendThatMakesNoProgressEndsAfterTheSendTimeout) {
  // The client never reads 64 MB: the send stalls, and the send timeout, not the far longer
  // idle timeout, ends the connection (RFC 5321 §4.5.3.2.5 for the SMTP client).
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone,
                            EchoFactory(events_, {.idle = absl::Seconds(30),
                                                  .send_timeout = absl::Milliseconds(300),
                                                  .greeting_octets = 64 << 20}),
                            nullptr}});
  ASSERT_TRUE(server.Start(1).ok());
  const absl::Time start = absl::Now();
  int fd = Connect(server.BoundAddress(0));
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(events_.WaitFor(&events_.idle, 1));
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, absl::Milliseconds(250));
  EXPECT_LT(waited, absl::Seconds(10));
  ::close(fd);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
}

TEST_F(ServerTest, SetReadingFalseHoldsInputUntilTrue) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone,
                            EchoFactory(events_, {.start_paused = true}), nullptr}});
  ASSERT_TRUE(server.Start(1).ok());
  int fd = Connect(server.BoundAddress(0));
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendAll(fd, "held\r\nQUIT\r\n"));
  EXPECT_EQ(ReadExactly(fd, 12), "held\r\nQUIT\r\n");
  EXPECT_TRUE(ReadsEof(fd));
  ::close(fd);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
  absl::MutexLock lock(&events_.mu);
  EXPECT_EQ(events_.data_while_paused, 0);
}

// A client that sends without ever reading must not make the server buffer its replies without
// bound: the server stops reading it, so the client's sends block; once the client reads,
// everything is echoed, nothing lost.
TEST_F(ServerTest, APeerThatDoesNotReadIsNotReadEither) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone, EchoFactory(events_), nullptr}});
  ASSERT_TRUE(server.Start(1).ok());
  int fd = Connect(server.BoundAddress(0));
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
  const std::string line = std::string(1022, 'x') + "\r\n";
  constexpr size_t kLimit = 64 << 20;  // far beyond kernel buffers plus kMaxUnsentOutput
  size_t sent = 0;
  while (sent < kLimit) {
    const size_t offset = sent % line.size();  // a partial send continues its line
    ssize_t n = ::send(fd, line.data() + offset, line.size() - offset, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    ASSERT_TRUE(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) << std::strerror(errno);
    pollfd writable{fd, POLLOUT, 0};
    if (::poll(&writable, 1, 1000) == 0) break;  // a second without room: the server stopped
  }
  EXPECT_LT(sent, kLimit) << "the server kept reading a peer that never reads";
  // Now read: the server resumes and echoes every byte it was sent.
  ASSERT_EQ(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
  const size_t whole_lines = sent - sent % line.size();  // the handler echoes whole lines
  EXPECT_EQ(ReadExactly(fd, whole_lines).size(), whole_lines);
  ::close(fd);
  ASSERT_TRUE(events_.WaitFor(&events_.closed, 1));
}

TEST_F(ServerTest, StopClosesLiveConnections) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone, EchoFactory(events_, {.greet = true}),
                            nullptr},
                 ListenSpec{"127.0.0.1:0", TlsMode::kImplicit, EchoFactory(events_),
                            tls_context_}});
  ASSERT_TRUE(server.Start(2).ok());
  std::vector<int> fds;
  for (int i = 0; i < 6; ++i) {
    int fd = Connect(server.BoundAddress(0));
    ASSERT_GE(fd, 0);
    EXPECT_EQ(ReadExactly(fd, 11), "220 hello\r\n");  // the server has started it
    fds.push_back(fd);
  }
  ASSERT_TRUE(events_.WaitFor(&events_.started, 6));
  EXPECT_EQ(server.active_connections(), 6u);
  server.Stop();
  EXPECT_EQ(server.active_connections(), 0u);
  {
    absl::MutexLock lock(&events_.mu);
    EXPECT_EQ(events_.closed, 6);
  }
  for (int fd : fds) {
    EXPECT_TRUE(ReadsEof(fd));
    ::close(fd);
  }
}

TEST_F(ServerTest, StopAcceptingRefusesNewClientsAndKeepsOpenOnes) {
  Server server({ListenSpec{"127.0.0.1:0", TlsMode::kNone, EchoFactory(events_), nullptr}});
  ASSERT_TRUE(server.Start(2).ok());
  const std::string address = server.BoundAddress(0);
  int open = Connect(address);
  ASSERT_GE(open, 0);
  ASSERT_TRUE(SendAll(open, "before\r\n"));
  EXPECT_EQ(ReadExactly(open, 8), "before\r\n");

  server.StopAccepting();
  server.StopAccepting();  // idempotent
  // The listening sockets close as their accepts are cancelled: soon nothing connects.
  bool refused = false;
  for (int i = 0; i < 500 && !refused; ++i) {
    int fd = Connect(address);
    refused = fd < 0 || ReadsEof(fd);
    if (fd >= 0) ::close(fd);
    if (!refused) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(refused);
  // The connection accepted before goes on.
  ASSERT_TRUE(SendAll(open, "after\r\n"));
  EXPECT_EQ(ReadExactly(open, 7), "after\r\n");
  EXPECT_EQ(server.active_connections(), 1u);
  server.Stop();
  EXPECT_TRUE(ReadsEof(open));
  ::close(open);
}

}  // namespace
}  // namespace facteur::io
