// File: engine/delivery/router.cc
#include "engine/delivery/router.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/mail/address.h"
#include "engine/mail/text.h"

namespace facteur::delivery {

absl::StatusOr<Router> Router::Create(const config::Config& config) {
  Router router;
  router.routes_ = config.routes;
  router.defaults_ = config.delivery;
  std::vector<config::SourceOptions> sources = config.sources;
  if (sources.empty()) {
    config::SourceOptions unbound;
    unbound.name = "default";
    sources.push_back(std::move(unbound));
  }
  for (const config::SourceOptions& options : sources) {
    Source source;
    source.name = options.name;
    source.ip = options.address;
    source.ehlo_name = options.ehlo_name.empty() ? config.hostname : options.ehlo_name;
    if (!options.address.empty()) {
      io::SocketAddress bind;
      if (inet_pton(AF_INET, options.address.c_str(),
                    &reinterpret_cast<sockaddr_in*>(&bind.storage)->sin_addr) == 1) {
        bind.storage.ss_family = AF_INET;
        bind.length = sizeof(sockaddr_in);
      } else if (inet_pton(AF_INET6, options.address.c_str(),
                           &reinterpret_cast<sockaddr_in6*>(&bind.storage)->sin6_addr) == 1) {
        bind.storage.ss_family = AF_INET6;
        bind.length = sizeof(sockaddr_in6);
      } else {
        return absl::InvalidArgumentError(absl::StrCat("source '", options.name, "': address '",
                                                       options.address, "' is not an IP literal"));
      }
      source.bind = bind;
    }
    router.pools_[options.pool.empty() ? "default" : options.pool].push_back(std::move(source));
  }
  return router;
}

Destination Router::Route(std::string_view raw_domain) const {
  // Routes, MX lookups and sites go by the A-label form (routes are written so, config.cc).
  const std::string domain = mail::DomainKey(raw_domain);
  // Exact domain, then the longest ".parent" pattern, then "*".
  const config::RouteOptions* best = nullptr;
  size_t best_length = 0;
  const config::RouteOptions* wildcard = nullptr;
  for (const config::RouteOptions& route : routes_) {
    const std::string pattern = mail::LowerAscii(route.domain);
    if (pattern == "*") {
      wildcard = &route;
    } else if (pattern == domain) {
      best = &route;
      break;
    } else if (!pattern.empty() && pattern.front() == '.' && domain.size() > pattern.size() &&
               absl::EndsWith(domain, pattern) && pattern.size() > best_length) {
      best = &route;
      best_length = pattern.size();
    }
  }
  if (best == nullptr) best = wildcard;

  Destination destination;
  destination.tls = defaults_.tls;
  destination.pool = defaults_.pool;
  destination.port = defaults_.smtp_port;
  destination.mx_lookup = true;
  destination.host = domain;
  if (best != nullptr) {
    if (best->tls.has_value()) destination.tls = *best->tls;
    if (!best->pool.empty()) destination.pool = best->pool;
    if (!best->destination.empty()) {
      destination.host = best->next_hop.host;
      destination.port = best->next_hop.port;
      destination.mx_lookup = best->next_hop.mx_lookup && !best->next_hop.ip_literal;
      destination.key = absl::StrCat("route:", best->destination);
      return destination;
    }
  }
  destination.key = absl::StrCat("mx:", domain);
  return destination;
}

const std::vector<Source>& Router::Sources(const std::string& pool) const {
  auto it = pools_.find(pool);
  return it == pools_.end() ? no_sources_ : it->second;
}

const Source* Router::SourceNamed(std::string_view name) const {
  for (const auto& [pool, sources] : pools_) {
    for (const Source& source : sources) {
      if (source.name == name) return &source;
    }
  }
  return nullptr;
}

}  // namespace facteur::delivery
