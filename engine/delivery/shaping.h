// File: engine/delivery/shaping.h
// Everything delivery needs from the shaping and classifier files: the shaping options (sites,
// limits, reactions, warmup), the site matcher over them and the response classifier. Built
// from [shaping] (the shipped files when no path is given) at start, and again on SIGHUP: a
// reload builds a new snapshot and hands it to every shard (ShardDelivery::SetShaping), never
// changes one in place.
// Thread contract: immutable once built; shared read-only (std::shared_ptr<const Shaping>) by
// the Relay and every shard, each keeping the snapshot it was last given.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config/config.h"
#include "throttle/classifier.h"
#include "throttle/shaping.h"
#include "throttle/site_matcher.h"

namespace facteur::delivery {

// A site key as a bounded metric label: the shipped site's name ("google", also for a domain
// override "google/example.com"), "route" for a static route, "other" for any unknown MX set
// (and for "", a job that failed before its site was known).
std::string SiteLabel(std::string_view site_key);

class Shaping {
 public:
  // Reads [shaping] file and classifier_file (resolved under data_dir), or the built-in ones.
  // Errors name the file, line and key.
  static absl::StatusOr<std::unique_ptr<Shaping>> Load(const config::Config& config);
  // From parts (tests, benchmarks).
  static absl::StatusOr<std::unique_ptr<Shaping>> Create(
      throttle::ShapingOptions options, std::vector<throttle::ClassifierRule> rules);

  const throttle::ShapingOptions& options() const { return options_; }
  const throttle::SiteMatcher& matcher() const { return *matcher_; }
  const throttle::ResponseClassifier& classifier() const { return classifier_; }

  // The site and limits that the site key `key` (as SiteMatcher::ForDomain makes it, or a
  // route's "route:..." key) stands for in this snapshot: for a reload, which must find the
  // new limits of the sites a shard already knows. A route, or a site this snapshot no longer
  // names, gets site null; a route also gets limits null (its limits are [delivery]'s); an
  // unknown site gets default_limits. Pointers point into this snapshot.
  throttle::SiteMatcher::Match ForKey(std::string_view key) const;

 private:
  Shaping(throttle::ShapingOptions options, throttle::ResponseClassifier classifier);

  const throttle::ShapingOptions options_;
  std::unique_ptr<throttle::SiteMatcher> matcher_;  // borrows options_
  throttle::ResponseClassifier classifier_;
};

}  // namespace facteur::delivery
