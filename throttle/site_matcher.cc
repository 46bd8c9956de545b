// File: throttle/site_matcher.cc
#include "throttle/site_matcher.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace facteur::throttle {
namespace {

// A DNS name is at most 253 characters in text form (RFC 1035 §2.3.4: 255 octets on the wire).
constexpr size_t kMaxHostLength = 253;

absl::string_view AsAbsl(std::string_view s) { return {s.data(), s.size()}; }

// `name` in lower case without its trailing dot, written into `buffer` (kMaxHostLength + 1
// bytes); empty when the name is too long to be a host name.
std::string_view NormalizeInto(std::string_view name, char* buffer) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.size() > kMaxHostLength) return {};
  for (size_t i = 0; i < name.size(); ++i) {
    buffer[i] = absl::ascii_tolower(static_cast<unsigned char>(name[i]));
  }
  return {buffer, name.size()};
}

std::string Normalize(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  return absl::AsciiStrToLower(AsAbsl(name));
}

// FNV-1a, 64 bits: stable across processes and machines (absl::Hash is seeded per process),
// since site keys are shared by the nodes of a fleet through Redis (DESIGN.md §7).
uint64_t StableHash(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

}  // namespace

SiteMatcher::SiteMatcher(const ShapingOptions& options) : options_(options) {
  for (uint32_t index = 0; index < options_.sites.size(); ++index) {
    const SiteOptions& site = options_.sites[index];
    names_.try_emplace(site.name, index);
    for (const std::string& raw : site.mx_patterns) {
      std::string pattern = Normalize(raw);
      if (pattern.size() > 2 && pattern.compare(0, 2, "*.") == 0) {
        // "*.google.com" is stored as ".google.com": any name ending there.
        suffixes_.try_emplace(pattern.substr(1), index);
      } else if (!pattern.empty() && pattern.find('*') == std::string::npos) {
        exact_.try_emplace(std::move(pattern), index);
      }
    }
  }
  for (const DomainOverride& domain : options_.domains) {
    domains_.try_emplace(Normalize(domain.domain), &domain);
  }
}

const SiteOptions* SiteMatcher::SiteByName(std::string_view name) const {
  auto found = names_.find(AsAbsl(name));
  return found == names_.end() ? nullptr : &options_.sites[found->second];
}

const SiteOptions* SiteMatcher::SiteByNameIgnoringCase(std::string_view name) const {
  if (const SiteOptions* exact = SiteByName(name)) return exact;
  for (const SiteOptions& site : options_.sites) {
    if (absl::EqualsIgnoreCase(AsAbsl(site.name), AsAbsl(name))) return &site;
  }
  return nullptr;
}

uint32_t SiteMatcher::SiteIndexOfHost(std::string_view host) const {
  uint32_t best = kNoSite;
  if (host.empty()) return best;
  if (auto found = exact_.find(AsAbsl(host)); found != exact_.end()) best = found->second;
  if (suffixes_.empty()) return best;
  // Every suffix that starts at a dot: "alt1.aspmx.l.google.com" tries ".aspmx.l.google.com",
  // ".l.google.com", ".google.com", ".com". The first site in file order wins.
  for (size_t dot = host.find('.'); dot != std::string_view::npos; dot = host.find('.', dot + 1)) {
    auto found = suffixes_.find(AsAbsl(host.substr(dot)));
    if (found != suffixes_.end()) best = std::min(best, found->second);
  }
  return best;
}

SiteMatcher::Match SiteMatcher::ForDomain(std::string_view domain,
                                          std::span<const std::string> mx_hosts) const {
  char buffer[kMaxHostLength + 1];
  std::string_view recipient_domain = NormalizeInto(domain, buffer);

  const DomainOverride* override = nullptr;
  if (!domains_.empty()) {
    auto found = domains_.find(AsAbsl(recipient_domain));
    if (found != domains_.end()) override = found->second;
  }

  uint32_t index = kNoSite;
  if (override != nullptr && !override->site.empty()) {
    if (auto found = names_.find(override->site); found != names_.end()) index = found->second;
  }
  if (index == kNoSite) {
    char host_buffer[kMaxHostLength + 1];
    for (const std::string& host : mx_hosts) {
      index = std::min(index, SiteIndexOfHost(NormalizeInto(host, host_buffer)));
    }
    if (mx_hosts.empty()) index = SiteIndexOfHost(recipient_domain);
  }

  Match match;
  if (index != kNoSite) {
    match.site = &options_.sites[index];
    match.key = match.site->name;
    match.limits = &match.site->limits;
  } else {
    std::vector<std::string> hosts;
    hosts.reserve(mx_hosts.size());
    for (const std::string& host : mx_hosts) {
      std::string normalized = Normalize(host);
      if (!normalized.empty()) hosts.push_back(std::move(normalized));
    }
    if (hosts.empty()) hosts.emplace_back(recipient_domain);
    std::sort(hosts.begin(), hosts.end());
    hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
    match.key = absl::StrCat("mx:", absl::StrJoin(hosts, ","));
    if (match.key.size() > kMaxUnknownKeyLength) {
      std::string tail = absl::StrFormat("~%016x", StableHash(match.key));
      match.key.resize(kMaxUnknownKeyLength - tail.size());
      match.key += tail;
    }
    match.limits = &options_.default_limits;
  }

  if (override != nullptr && override->limits.has_value()) {
    absl::StrAppend(&match.key, "/", AsAbsl(recipient_domain));
    match.limits = &*override->limits;
  }
  return match;
}

}  // namespace facteur::throttle
