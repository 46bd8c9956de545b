#include "engine/delivery/site_labeler.h"

#include "engine/delivery/shaping.h"

namespace facteur::delivery {

std::string SiteLabeler::Label(std::string_view site_key) { return Lookup(site_key, true); }

std::string SiteLabeler::LabelGiven(std::string_view site_key) {
  return Lookup(site_key, false);
}

std::string SiteLabeler::Lookup(std::string_view site_key, bool give) {
  // Only an unknown MX set may get a label of its own; its key without "/domain" (a domain
  // override of an unknown set is the same receiving infrastructure).
  const std::string_view site = site_key.substr(0, site_key.find('/'));
  if (top_n_ == 0 || site.substr(0, 3) != "mx:" || site.size() == 3) return SiteLabel(site_key);
  const std::string key(site);
  {
    absl::ReaderMutexLock lock(&mutex_);
    if (named_.contains(key)) return key;
    if (named_.size() >= top_n_ || !give) return "other";
  }
  absl::MutexLock lock(&mutex_);
  if (named_.contains(key)) return key;
  if (named_.size() >= top_n_) return "other";
  named_.insert(key);
  return key;
}

std::string LabelOf(SiteLabeler* labeler, std::string_view site_key) {
  return labeler == nullptr ? SiteLabel(site_key) : labeler->Label(site_key);
}

}  // namespace facteur::delivery
