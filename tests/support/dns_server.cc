#include "tests/support/dns_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/base/status.h"

extern char** environ;

namespace facteur::testing {
namespace {

constexpr char kDnsmasq[] = "/usr/sbin/dnsmasq";
constexpr absl::Duration kStartTimeout = absl::Seconds(10);
constexpr absl::Duration kStopTimeout = absl::Seconds(5);
constexpr int kStartAttempts = 5;

sockaddr_in Loopback(uint16_t port) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return address;
}

uint16_t BoundPort(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return 0;
  return ntohs(address.sin_port);
}

// A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both), or 0.
uint16_t FreePort() {
  for (int attempt = 0; attempt < 20; ++attempt) {
    const int udp = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in any = Loopback(0);
    if (udp < 0) return 0;
    if (::bind(udp, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0) {
      ::close(udp);
      return 0;
    }
    const uint16_t port = BoundPort(udp);
    const int tcp = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in same = Loopback(port);
    const bool tcp_free =
        tcp >= 0 && ::bind(tcp, reinterpret_cast<sockaddr*>(&same), sizeof(same)) == 0;
    if (tcp >= 0) ::close(tcp);
    ::close(udp);
    if (tcp_free) return port;
  }
  return 0;
}

// A query for `name`'s SOA (RFC 1035 §4.1), to see whether the server answers.
std::string SoaQuery(std::string_view name, uint16_t id) {
  std::string query = {
      static_cast<char>(id >> 8), static_cast<char>(id & 0xFF), 0, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  for (absl::string_view label : absl::StrSplit(ToAbsl(name), '.')) {
    query.push_back(static_cast<char>(label.size()));
    query.append(label.data(), label.size());
  }
  query.append({0, 0, 6, 0, 1});
  return query;
}

bool Answers(uint16_t port, std::string_view zone) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in server = Loopback(port);
  bool answered = false;
  const uint16_t id = 0x5eed;
  const std::string query = SoaQuery(zone, id);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&server), sizeof(server)) == 0 &&
      ::send(fd, query.data(), query.size(), 0) == static_cast<ssize_t>(query.size())) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) == 1) {
      unsigned char reply[512];
      const ssize_t n = ::recv(fd, reply, sizeof(reply), 0);
      // QR set: a response. Without this check, a probe socket that the kernel happened to
      // give the server's own (still free) port would read its own query as the answer.
      answered = n >= 12 && (reply[0] << 8 | reply[1]) == id && (reply[2] & 0x80) != 0;
    }
  }
  ::close(fd);
  return answered;
}

std::string Hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 0xF]);
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

}  // namespace

DnsServer::~DnsServer() {
  Stop();
  if (!directory_.empty()) {
    ::unlink((directory_ + "/dnsmasq.log").c_str());
    ::rmdir(directory_.c_str());
  }
}

DnsServer& DnsServer::AddZone(std::string zone) {
  zones_.push_back(std::move(zone));
  return *this;
}

DnsServer& DnsServer::SetTtl(absl::Duration ttl) {
  ttl_ = ttl;
  return *this;
}

DnsServer& DnsServer::AddMx(std::string domain, std::string host, int preference) {
  records_.push_back(absl::StrCat("--mx-host=", domain, ",", host, ",", preference));
  return *this;
}

DnsServer& DnsServer::AddNullMx(std::string domain) {
  // RDATA: preference 0, then the root name (a single zero byte).
  return AddRecord(std::move(domain), 15, "000000");
}

DnsServer& DnsServer::AddAddress(std::string name, std::string ip) {
  records_.push_back(absl::StrCat("--host-record=", name, ",", ip));
  return *this;
}

DnsServer& DnsServer::AddTxt(std::string name, std::vector<std::string> strings) {
  // Through --dns-rr rather than --txt-record: dnsmasq reads quotes only in its configuration
  // file, so a comma inside a string could not be given on the command line.
  std::string rdata;
  for (const std::string& s : strings) {
    size_t offset = 0;
    do {
      const std::string_view chunk = std::string_view(s).substr(offset, 255);
      rdata.push_back(static_cast<char>(chunk.size()));
      rdata.append(chunk);
      offset += chunk.size();
    } while (offset < s.size());
  }
  return AddRecord(std::move(name), 16, Hex(rdata));
}

DnsServer& DnsServer::AddCname(std::string alias, std::string target) {
  records_.push_back(absl::StrCat("--cname=", alias, ",", target));
  return *this;
}

DnsServer& DnsServer::AddRecord(std::string name, int type, std::string hex_rdata) {
  records_.push_back(absl::StrCat("--dns-rr=", name, ",", type, ",", hex_rdata));
  return *this;
}

std::string DnsServer::address() const { return absl::StrCat(host(), ":", port_); }

std::vector<std::string> DnsServer::Arguments() const {
  std::vector<std::string> args = {
      kDnsmasq,
      "--keep-in-foreground",
      "--conf-file=/dev/null",  // whatever /etc holds
      "--pid-file=",            // none: several servers run at once
      "--no-resolv",
      "--no-hosts",
      "--bind-interfaces",
      "--listen-address=127.0.0.1",
      absl::StrCat("--port=", port_),
      absl::StrCat("--auth-server=ns.", zones_.front(), ",127.0.0.1"),
      absl::StrCat("--auth-ttl=", absl::ToInt64Seconds(ttl_)),
      "--log-queries",
      "--log-facility=-",
  };
  for (const std::string& zone : zones_) args.push_back(absl::StrCat("--auth-zone=", zone));
  args.insert(args.end(), records_.begin(), records_.end());
  return args;
}

absl::Status DnsServer::Start() {
  if (running()) return absl::FailedPreconditionError("dnsmasq is already running");
  if (zones_.empty()) zones_.push_back("test");
  if (directory_.empty()) {
    char pattern[] = "/tmp/facteur-dnsmasq-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) {
      return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
    }
    directory_ = pattern;
  }
  absl::Status status;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    bool port_taken = false;
    status = StartOnce(port_taken);
    if (status.ok() || !port_taken) return status;
  }
  return status;
}

absl::Status DnsServer::StartOnce(bool& port_taken) {
  port_ = FreePort();
  if (port_ == 0) return absl::InternalError("no free port on 127.0.0.1");
  const std::string log_path = directory_ + "/dnsmasq.log";
  const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0)
    return absl::InternalError(absl::StrCat("open ", log_path, ": ", std::strerror(errno)));
  std::vector<std::string> args = Arguments();
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, kDnsmasq, &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(log_fd);
  if (rc != 0)
    return absl::InternalError(absl::StrCat("spawn ", kDnsmasq, ": ", std::strerror(rc)));
  pid_ = pid;
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (absl::Now() < deadline) {
    int wait_status = 0;
    if (::waitpid(pid_, &wait_status, WNOHANG) == pid_) {
      pid_ = -1;
      const std::string log = Log();
      port_taken = log.find("Address already in use") != std::string::npos;
      return absl::InternalError(
          absl::StrCat("dnsmasq exited at start: ", log, "\ncommand: ", absl::StrJoin(args, " ")));
    }
    if (Answers(port_, zones_.front())) return absl::OkStatus();  // waits up to 50ms
  }
  Stop();
  return absl::DeadlineExceededError(absl::StrCat(
      "dnsmasq did not answer within ", absl::FormatDuration(kStartTimeout), ": ", Log()));
}

void DnsServer::Stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + kStopTimeout;
  int wait_status = 0;
  while (::waitpid(pid_, &wait_status, WNOHANG) == 0) {
    if (absl::Now() >= deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &wait_status, 0);
      break;
    }
    ::usleep(2000);  // a process exiting: bounded polling, not a test's notion of time
  }
  pid_ = -1;
}

std::string DnsServer::Log() const {
  if (directory_.empty()) return "";
  return ReadFile(directory_ + "/dnsmasq.log");
}

int DnsServer::QueryCount(std::string_view type, std::string_view name) const {
  // "dnsmasq[123]: auth[MX] example.test from 127.0.0.1" (authoritative zones) or
  // "query[MX] …" (anything else dnsmasq answers).
  const std::string auth = absl::StrCat(" auth[", ToAbsl(type), "] ", ToAbsl(name), " from ");
  const std::string query = absl::StrCat(" query[", ToAbsl(type), "] ", ToAbsl(name), " from ");
  int count = 0;
  for (absl::string_view line : absl::StrSplit(Log(), '\n')) {
    if (absl::StrContains(line, auth) || absl::StrContains(line, query)) {
      ++count;
    }
  }
  return count;
}

absl::StatusOr<std::unique_ptr<SilentDnsServer>> SilentDnsServer::Start() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in any = Loopback(0);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("bind: ", std::strerror(error)));
  }
  return std::unique_ptr<SilentDnsServer>(new SilentDnsServer(fd, BoundPort(fd)));
}

SilentDnsServer::~SilentDnsServer() { ::close(fd_); }

std::string SilentDnsServer::address() const { return absl::StrCat("127.0.0.1:", port_); }

int SilentDnsServer::TakeQueries() {
  int queries = 0;
  char datagram[1500];
  while (::recv(fd_, datagram, sizeof(datagram), MSG_DONTWAIT) >= 0) ++queries;
  return queries;
}

absl::StatusOr<std::string> UnusedDnsAddress() {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  sockaddr_in any = Loopback(0);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&any), sizeof(any)) != 0) {
    const int error = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat("bind: ", std::strerror(error)));
  }
  const uint16_t port = BoundPort(fd);
  ::close(fd);  // the port stays unused: the kernel hands out ephemeral ports in turn
  return absl::StrCat("127.0.0.1:", port);
}

}  // namespace facteur::testing
