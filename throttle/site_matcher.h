// File: throttle/site_matcher.h
// Which delivery site a recipient domain belongs to (../shared/DESIGN.md §4): a [[domain]]
// override by name first, then the first provider site one of whose MX patterns matches one of
// the domain's MX hosts, else a site of its own formed by its MX set. Domains that share a
// receiving infrastructure share one site — and so one set of limits per source IP — whatever
// their names: every Google-hosted domain is "google".
// Called at every destination resolution: matching costs one hash lookup per MX host and per
// label of it (no regex), and allocates only the returned key.
// Thread contract: immutable once built; ForDomain is const and thread-safe. Borrows the
// ShapingOptions, which must outlive the matcher.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "throttle/shaping.h"

namespace facteur::throttle {

class SiteMatcher {
 public:
  // The longest key of a site formed by an unknown MX set: a longer MX list is cut and ends in
  // '~' and a hash of the whole list, so that two different sets still get two keys.
  static constexpr size_t kMaxUnknownKeyLength = 200;

  // `options` is borrowed and must outlive the matcher. Patterns are matched case-insensitively;
  // a pattern listed by two sites, or a domain listed twice, keeps its first entry (the shaping
  // file parser refuses both), and a [[domain]] naming no existing site keeps its MX match.
  explicit SiteMatcher(const ShapingOptions& options);

  SiteMatcher(const SiteMatcher&) = delete;
  SiteMatcher& operator=(const SiteMatcher&) = delete;

  struct Match {
    // The site's key in throttle state, events and Redis: the site name ("google"); for an
    // unknown MX set "mx:" followed by its host names — lower case, without trailing dot,
    // sorted, de-duplicated, joined by ',' — (at most kMaxUnknownKeyLength characters); for a
    // domain override with its own limits "<site key>/<domain>" ("google/example.com").
    std::string key;
    // The provider site, or nullptr for an unknown MX set.
    const SiteOptions* site = nullptr;
    // The limits that apply: the override's, the site's, or ShapingOptions::default_limits.
    // Never null; points into the borrowed ShapingOptions.
    const SiteLimits* limits = nullptr;
  };

  // The site of recipient `domain` whose MX hosts are `mx_hosts` (in any order and case, with
  // or without the trailing dot of a fully-qualified name). A domain without MX records is its
  // own implicit MX (RFC 5321 §5.1): pass an empty span and the domain stands for its host.
  Match ForDomain(std::string_view domain, std::span<const std::string> mx_hosts) const;

  // The site named `name`, or nullptr.
  const SiteOptions* SiteByName(std::string_view name) const;
  // The site named `name` in any case ("Google" finds "google"), or nullptr: for names an
  // operator types.
  const SiteOptions* SiteByNameIgnoringCase(std::string_view name) const;

 private:
  // The index in options_.sites of the first site matching `host` (lower case, no trailing
  // dot), or kNoSite.
  uint32_t SiteIndexOfHost(std::string_view host) const;

  static constexpr uint32_t kNoSite = UINT32_MAX;

  const ShapingOptions& options_;
  // Exact host name → site index.
  absl::flat_hash_map<std::string, uint32_t> exact_;
  // ".google.com" (from "*.google.com") → site index.
  absl::flat_hash_map<std::string, uint32_t> suffixes_;
  // Lower-case recipient domain → its override.
  absl::flat_hash_map<std::string, const DomainOverride*> domains_;
  // Site name → site index.
  absl::flat_hash_map<std::string, uint32_t> names_;
};

}  // namespace facteur::throttle
