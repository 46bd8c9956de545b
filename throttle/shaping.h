// File: throttle/shaping.h
// What the shaping file says (../shared/DESIGN.md §4, deploy/shaping.toml): the provider sites,
// recognised by their MX host names; the limits that apply to each (source IP, site) pair; what
// each class of reply does to that pair; per-domain overrides; warmup ramps per source pool.
// engine/config/shaping_file.cc reads the TOML into these structs; throttle/ acts on them.
// Thread contract: plain values; a ShapingOptions is immutable once built and shared read-only.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "throttle/response_class.h"

namespace facteur::throttle {

// Limits on one (source IP, site) pair. A rate of 0 means "no limit of this kind".
struct SiteLimits {
  // Simultaneous connections. Default: 2.
  uint32_t max_connections = 2;
  // Messages sent over one connection before it is closed. Default: 50.
  uint32_t max_messages_per_connection = 50;
  // Recipients per transaction. Default: 50.
  uint32_t max_recipients_per_message = 50;
  // Messages (transactions) started, per minute / hour / day. Defaults: 0 (no limit).
  uint32_t messages_per_minute = 0;
  uint32_t messages_per_hour = 0;
  uint32_t messages_per_day = 0;
  // Connections opened, per minute / hour. Defaults: 0 (no limit).
  uint32_t connections_per_minute = 0;
  uint32_t connections_per_hour = 0;
};

// What a reply of one class does to the (source, site) pair that received it.
struct ClassAction {
  // Pause the pair for this long (0: no pause). Default: 0.
  absl::Duration suspend = absl::ZeroDuration();
  // Multiply the pair's current message rate by this (multiplicative decrease; 1: unchanged).
  // Default: 1.
  double rate_factor = 1.0;
  // While backing off, allow at most this many connections (0: unchanged). Default: 0.
  uint32_t max_connections = 0;
  // Keep the cut rate and the connection cap for this long after the reply, the pause
  // included, before deliveries start to bring them back (0: from the first delivery after the
  // pause). Microsoft's throttling wants 1 connection at 1 message a minute for 90 minutes, not
  // a climb back within a few deliveries (providers.md §1.3, §6). Default: 0.
  absl::Duration hold = absl::ZeroDuration();
  // Pause only this source and prefer another healthy source of the pool (blocklist).
  // Default: false.
  bool prefer_other_source = false;
  // The reply counts against the pair's reputation (greylist does not). Default: true.
  bool reputation_hit = true;
};

// How a backed-off pair recovers, and the bound on suspensions.
struct BackoffOptions {
  // After a successful delivery the rate grows back by this fraction of the site's nominal rate
  // (additive increase), and one connection is added back, until the nominal limits are reached.
  // Default: 0.1.
  double recovery_step = 0.1;
  // The lowest a cut can take the rate, as a fraction of the nominal rate. Default: 0.05.
  double min_rate_fraction = 0.05;
  // No suspension, however many replies extend it, ends later than this after it began.
  // Default: 24h.
  absl::Duration max_suspension = absl::Hours(24);
  // A rate-limit reply also teaches the pair a ceiling: 90% of the rate it was sending at when
  // the site complained. Recovery climbs back to that ceiling, not past it, for this long after
  // the last complaint (a site whose real limit is under the configured one then says "slow
  // down" once, not once per recovery). Default: 1h.
  absl::Duration rate_memory = absl::Hours(1);
};

// Greylisting (../shared/research/providers.md §3): the retry comes from the same source IP with
// the same sender and recipient, after the delay the reply announces or this ladder.
struct GreylistOptions {
  // First retry delay when the reply names none. Default: 5m.
  absl::Duration first_delay = absl::Minutes(5);
  // Each further greylisting of the same triplet multiplies the delay by this. Default: 2.
  double backoff = 2.0;
  // Longest delay. Default: 1h.
  absl::Duration max_delay = absl::Hours(1);
};

struct SiteOptions {
  // Name in metrics, events and `facteur reputation` ("google", "orange"). Unique.
  std::string name;
  // MX host name patterns, matched case-insensitively against every MX host of a domain:
  // "*.google.com" matches any name ending in ".google.com"; a name without '*' must match
  // exactly. A domain belongs to the first site one of whose patterns matches one of its MX
  // hosts.
  std::vector<std::string> mx_patterns;
  SiteLimits limits;
  // Reactions by class, indexed by ResponseClass; unset entries take ShapingOptions::actions.
  std::array<std::optional<ClassAction>, kResponseClassCount> actions;
};

// A recipient domain handled differently from what its MX hosts say.
struct DomainOverride {
  // The recipient domain, lower case.
  std::string domain;
  // Put it in this site (by name) whatever its MX hosts. Default: "" (keep the MX match).
  std::string site;
  // Replace the site's limits for this domain alone (the domain then forms its own site
  // "<site>/<domain>"). Default: none.
  std::optional<SiteLimits> limits;
};

// A new source's cap per site per day: day 1 sends at most daily_caps[0] messages to each site,
// day 2 daily_caps[1], and so on; past the last entry the source is warm (no cap).
struct WarmupPlan {
  std::string name;
  std::vector<uint32_t> daily_caps;
};

struct ShapingOptions {
  // Known providers, matched in order.
  std::vector<SiteOptions> sites;
  // Limits of a site formed by an unknown MX set (conservative). Its name is derived from the
  // MX set (see SiteMatcher).
  SiteLimits default_limits;
  // Default reactions by class (every entry set by the parser: built-in defaults, then the
  // file's [actions.<class>] tables).
  std::array<ClassAction, kResponseClassCount> actions;
  BackoffOptions backoff;
  GreylistOptions greylist;
  std::vector<DomainOverride> domains;
  std::vector<WarmupPlan> warmup_plans;
  // Source pool name → warmup plan name. A pool not listed has no warmup cap.
  std::vector<std::pair<std::string, std::string>> pool_warmup;
};

}  // namespace facteur::throttle
