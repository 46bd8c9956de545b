// File: engine/delivery/router.h
// Where mail for a domain goes: a static route ([[route]], like Postfix's transport map or
// relayhost) when one matches — exact domain first, then the longest ".parent" pattern, then
// "*" — else the MX hosts of the domain itself. Also the egress sources of each pool.
// Thread contract: immutable after construction; shared by every shard.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config/config.h"
#include "engine/io/socket_address.h"

namespace facteur::delivery {

struct Destination {
  // Names the destination in logs, events and metrics, and keys its connection pool:
  // "mx:example.org" or "route:[smtp.example.net]:587".
  std::string key;
  // true: deliver to the MX hosts of `host`; false: to the addresses of `host` itself.
  bool mx_lookup = true;
  std::string host;
  uint16_t port = 25;
  config::DeliveryTlsPolicy tls = config::DeliveryTlsPolicy::kOpportunistic;
  std::string pool;
};

struct Source {
  std::string name;
  std::string ip;                        // "" when unbound
  std::optional<io::SocketAddress> bind;  // port 0
  std::string ehlo_name;
};

class Router {
 public:
  // InvalidArgument for a source address that is not an IP literal (config validation catches it
  // first) or a pool without sources.
  static absl::StatusOr<Router> Create(const config::Config& config);

  Destination Route(std::string_view domain) const;
  // Whether mail for an address literal ("[192.0.2.1]") has a way out: a static route that
  // takes it (a smarthost for "*"). Without one no lookup can answer for it.
  bool RoutesAddressLiteral(std::string_view literal) const {
    return Route(literal).key.starts_with("route:");
  }
  // The sources of `pool` (never empty for a pool named by the config).
  const std::vector<Source>& Sources(const std::string& pool) const;
  // The source named `name`, of whichever pool; null when none is (names are unique).
  const Source* SourceNamed(std::string_view name) const;

 private:
  Router() = default;
  std::vector<config::RouteOptions> routes_;
  config::DeliveryOptions defaults_;
  std::map<std::string, std::vector<Source>> pools_;
  std::vector<Source> no_sources_;
};

}  // namespace facteur::delivery
