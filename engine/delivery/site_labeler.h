// File: engine/delivery/site_labeler.h
// The `site` label of delivery metrics, bounded (DESIGN.md §6): a shipped site keeps its name,
// static routes are "route", and of the unknown MX sets the first `top_n` distinct ones seen
// get a label of their own (their site key without the recipient domain, e.g.
// "mx:mx1.example.net,mx2.example.net"); every later one is "other" ([delivery]
// metrics_site_labels). A label once given is kept for the life of the process, so a series
// never changes its meaning; with top_n = 0 this is exactly SiteLabel() (shaping.h).
// Thread contract: thread-safe; shared by every delivery shard and the queue manager.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"

namespace facteur::delivery {

class SiteLabeler {
 public:
  explicit SiteLabeler(size_t top_n) : top_n_(top_n) {}
  SiteLabeler(const SiteLabeler&) = delete;
  SiteLabeler& operator=(const SiteLabeler&) = delete;

  // The label of `site_key` (throttle/site_matcher.h); "other" for "" (no site known yet).
  std::string Label(std::string_view site_key);
  // Label() without giving a label away: an unknown MX set not labelled yet is "other". For
  // what only reports on sites (the reputation of past ones), not what delivers to them.
  std::string LabelGiven(std::string_view site_key);

  size_t top_n() const { return top_n_; }

 private:
  std::string Lookup(std::string_view site_key, bool give);

  const size_t top_n_;
  absl::Mutex mutex_;
  // The unknown MX sets that have a label of their own; never more than top_n_.
  absl::flat_hash_set<std::string> named_ ABSL_GUARDED_BY(mutex_);
};

// `labeler`'s label of `site_key`, or SiteLabel(site_key) when there is no labeler.
std::string LabelOf(SiteLabeler* labeler, std::string_view site_key);

}  // namespace facteur::delivery
