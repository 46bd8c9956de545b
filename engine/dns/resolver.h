// File: engine/dns/resolver.h
// Asynchronous DNS for one I/O shard: MX (with RFC 7505 null MX and RFC 5321 §5.1 implicit MX),
// A/AAAA and TXT lookups, answered from a cache that honours record TTLs and negative answers
// (RFC 2308: NXDOMAIN and NODATA cached for the SOA minimum). c-ares does the transport
// (UDP, TCP on truncation, retries over the configured nameservers); its sockets are polled on
// the shard's io_uring ring and its timeouts are loop timers, so a lookup never blocks the shard.
// Answers are parsed here (dns_message.h), because c-ares 1.18's parsers drop the MX TTL.
// Thread contract: shard-confined. Create() and every call on the loop thread; `done` runs on
// the loop thread too, never inside the call that asked (a cache hit is delivered on the next
// loop turn). Destroying the resolver drops pending lookups without calling their `done`.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/io/event_loop.h"

namespace facteur::dns {

struct ResolverOptions {
  // "127.0.0.1:5353", "[::1]:53", "192.0.2.53" (port 53). Default: empty = the nameservers of
  // /etc/resolv.conf.
  std::vector<std::string> nameservers;
  // Most time one lookup may take, every try and nameserver included; then DeadlineExceeded.
  // Default: 5s.
  absl::Duration timeout = absl::Seconds(5);
  // Tries per nameserver. Default: 2.
  int attempts = 2;
  // Cached answers kept (the oldest go first). Default: 100000.
  size_t max_cache_entries = 100000;
  // Longest time a positive answer is cached, whatever its TTL says. Default: 1h.
  absl::Duration max_ttl = absl::Hours(1);
  // Longest time a negative answer (NXDOMAIN, NODATA) is cached. Default: 15m.
  absl::Duration max_negative_ttl = absl::Minutes(15);
  // Most queries on the wire at once; more wait, in order, for an answer to free a slot.
  // Default: 100.
  size_t max_queries_in_flight = 100;
};

struct IpAddress {
  bool v6 = false;
  uint8_t bytes[16] = {};  // IPv4 in the first 4 bytes
  std::string ToString() const;  // "192.0.2.1", "2001:db8::1"
  friend bool operator==(const IpAddress& a, const IpAddress& b);
};

struct MxHost {
  std::string name;  // lower case, without the trailing dot
  uint16_t preference = 0;
};

enum class MxKind {
  kHosts,       // deliver to `hosts`, in order
  kNullMx,      // RFC 7505: the single record "0 ." — the domain accepts no mail (also when
                // every MX record has the unusable target "."; "." beside real hosts is ignored)
  kNxDomain,    // the domain does not exist
  kNoMailHost,  // the domain exists but has neither MX nor A/AAAA records
};

struct MxAnswer {
  MxKind kind = MxKind::kHosts;
  // kHosts: ascending preference, hosts of equal preference in random order (RFC 5321 §5.1),
  // each lookup shuffled anew. Implicit MX (no MX records, but the domain has an address):
  // the domain itself, preference 0, and `implicit` set.
  std::vector<MxHost> hosts;
  bool implicit = false;
};

class Resolver {
 public:
  // Errors: InvalidArgument for a malformed nameserver (naming it), a timeout not in (0, 1h] or
  // attempts not in [1, 16]; Internal from c-ares.
  static absl::StatusOr<std::unique_ptr<Resolver>> Create(io::EventLoop& loop,
                                                          const ResolverOptions& options,
                                                          Clock& clock);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // Lookup errors, for every call: DeadlineExceeded when `timeout` passed without an answer;
  // Unavailable for SERVFAIL, REFUSED or unreachable nameservers; InvalidArgument for a name
  // that is not a valid domain. Negative answers are values, not errors (below).

  // MX of `domain` (a trailing dot is allowed; case does not matter).
  void ResolveMx(std::string_view domain,
                 absl::AnyInvocable<void(absl::StatusOr<MxAnswer>) &&> done);
  // A and AAAA records of `host` (both asked at once), IPv4 first. NotFound when the name does
  // not exist or has no address. When one family's query fails but the other has addresses,
  // those addresses are the answer.
  void ResolveAddresses(std::string_view host,
                        absl::AnyInvocable<void(absl::StatusOr<std::vector<IpAddress>>) &&> done);
  // The addresses ResolveAddresses(host) would answer with now, when both of its record sets
  // are cached and unexpired and hold an address; nullopt otherwise (ask ResolveAddresses).
  // Answers at once, from the cache alone: no query, no callback.
  std::optional<std::vector<IpAddress>> CachedAddresses(std::string_view host);
  // TXT records of `name`, each record's strings joined. NotFound when the name does not exist;
  // an empty vector when it has no TXT record.
  void ResolveTxt(std::string_view name,
                  absl::AnyInvocable<void(absl::StatusOr<std::vector<std::string>>) &&> done);

  // Cached record sets (one per name and type), for metrics and tests. An expired entry counts
  // until it is looked up again or pushed out by newer ones.
  size_t cache_size() const;

 private:
  class Impl;
  explicit Resolver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace facteur::dns
