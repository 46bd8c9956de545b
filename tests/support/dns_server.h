// File: tests/support/dns_server.h
// Real DNS servers on loopback for tests of the resolver and of everything that resolves.
// DnsServer runs Debian's dnsmasq (/usr/sbin/dnsmasq, package dnsmasq-base) in the foreground,
// authoritative for the test's zones on 127.0.0.1 and a free port, with the records the test
// gives. Authoritative mode (--auth-server/--auth-zone) is what makes its negative answers carry
// an SOA, hence RFC 2308 negative TTLs; it only works on an address of an interface, which is why
// the server is on 127.0.0.1 rather than another 127.x address. What dnsmasq does, as verified:
//   - every record and the SOA (whose MINIMUM is the negative TTL) get the same TTL (--auth-ttl);
//     per-record TTLs are ignored in authoritative mode;
//   - a name under a zone that has no record is NXDOMAIN; a name that has records of other types
//     (or a name with only descendants) is NODATA; both with the zone's SOA in authority;
//   - a name outside every zone is REFUSED;
//   - answers above 512 bytes are truncated over UDP (TC) and complete over TCP;
//   - --log-queries lines ("auth[MX] name from 127.0.0.1") are written before the answer is
//     sent, so QueryCount() is exact once the answer has arrived.
// SilentDnsServer is a bound UDP socket that reads nothing and answers nothing (timeouts).
// Thread contract: a DnsServer is used by one thread; QueryCount() and Log() read the log file
// and may be called while a resolver runs on another thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace facteur::testing {

class DnsServer {
 public:
  DnsServer() = default;
  ~DnsServer();  // stops dnsmasq and removes its log directory
  DnsServer(const DnsServer&) = delete;
  DnsServer& operator=(const DnsServer&) = delete;

  // Configuration, before Start(). Names are without the trailing dot and must lie in a zone.
  // Zones served authoritatively. Default: {"test"} when none is added.
  DnsServer& AddZone(std::string zone);
  // The TTL of every record, and the negative TTL. Default: 600s.
  DnsServer& SetTtl(absl::Duration ttl);
  DnsServer& AddMx(std::string domain, std::string host, int preference);
  // RFC 7505: the single MX record "0 .".
  DnsServer& AddNullMx(std::string domain);
  // An A or AAAA record, from the address's text ("127.0.0.5", "2001:db8::1").
  DnsServer& AddAddress(std::string name, std::string ip);
  // One TXT record holding `strings` in order; a string longer than 255 bytes is split into
  // 255-byte character-strings, as a DKIM key publisher does.
  DnsServer& AddTxt(std::string name, std::vector<std::string> strings);
  DnsServer& AddCname(std::string alias, std::string target);
  // A record of any type from its RDATA in hex (--dns-rr), e.g. AddRecord("x.test", 15, "000000").
  DnsServer& AddRecord(std::string name, int type, std::string hex_rdata);

  // Starts dnsmasq and waits (bounded) until it answers. Retries on another port if the chosen
  // one was taken in between.
  absl::Status Start();
  // Kills dnsmasq. Idempotent; the log stays readable.
  void Stop();
  bool running() const { return pid_ > 0; }

  std::string host() const { return "127.0.0.1"; }
  uint16_t port() const { return port_; }
  // "127.0.0.1:PORT", for ResolverOptions::nameservers.
  std::string address() const;

  // Queries dnsmasq received for (`type`, `name`), e.g. QueryCount("MX", "example.test").
  int QueryCount(std::string_view type, std::string_view name) const;
  // dnsmasq's output so far.
  std::string Log() const;

 private:
  std::vector<std::string> Arguments() const;
  absl::Status StartOnce(bool& port_taken);

  std::vector<std::string> zones_;
  absl::Duration ttl_ = absl::Seconds(600);
  std::vector<std::string> records_;  // dnsmasq options, one record each
  std::string directory_;             // holds dnsmasq.log
  pid_t pid_ = -1;
  uint16_t port_ = 0;
};

// A UDP socket on 127.0.0.1 that never answers: every query to it times out.
class SilentDnsServer {
 public:
  static absl::StatusOr<std::unique_ptr<SilentDnsServer>> Start();
  ~SilentDnsServer();
  SilentDnsServer(const SilentDnsServer&) = delete;
  SilentDnsServer& operator=(const SilentDnsServer&) = delete;

  uint16_t port() const { return port_; }
  std::string address() const;  // "127.0.0.1:PORT"
  // The queries received since the last call (read and dropped, still unanswered).
  int TakeQueries();

 private:
  SilentDnsServer(int fd, uint16_t port) : fd_(fd), port_(port) {}
  int fd_;
  uint16_t port_;
};

// "127.0.0.1:PORT" where no UDP socket listens: queries there are refused at once (ICMP port
// unreachable), as with a nameserver that is down.
absl::StatusOr<std::string> UnusedDnsAddress();

}  // namespace facteur::testing
