// File: engine/delivery/shaping.cc
#include "engine/delivery/shaping.h"

#include <utility>

#include "engine/base/status.h"
#include "engine/config/classifier_file.h"
#include "engine/config/shaping_file.h"

namespace facteur::delivery {

std::string SiteLabel(std::string_view site_key) {
  if (site_key.substr(0, 6) == "route:") return "route";
  const std::string_view site = site_key.substr(0, site_key.find('/'));
  if (site.empty() || site.substr(0, 3) == "mx:") return "other";
  return std::string(site);
}

Shaping::Shaping(throttle::ShapingOptions options, throttle::ResponseClassifier classifier)
    : options_(std::move(options)),
      matcher_(std::make_unique<throttle::SiteMatcher>(options_)),
      classifier_(std::move(classifier)) {}

absl::StatusOr<std::unique_ptr<Shaping>> Shaping::Create(
    throttle::ShapingOptions options, std::vector<throttle::ClassifierRule> rules) {
  FACTEUR_ASSIGN_OR_RETURN(throttle::ResponseClassifier classifier,
                           throttle::ResponseClassifier::Create(std::move(rules)));
  return std::unique_ptr<Shaping>(new Shaping(std::move(options), std::move(classifier)));
}

throttle::SiteMatcher::Match Shaping::ForKey(std::string_view key) const {
  throttle::SiteMatcher::Match match;
  match.key = std::string(key);
  if (key.substr(0, 6) == "route:") return match;
  const size_t slash = key.find('/');
  const std::string_view base = key.substr(0, slash);
  if (base.substr(0, 3) != "mx:") match.site = matcher_->SiteByName(base);
  match.limits = match.site != nullptr ? &match.site->limits : &options_.default_limits;
  if (slash != std::string_view::npos) {
    const std::string_view domain = key.substr(slash + 1);
    for (const throttle::DomainOverride& override : options_.domains) {
      if (override.domain == domain && override.limits.has_value()) {
        match.limits = &*override.limits;
        break;
      }
    }
  }
  return match;
}

absl::StatusOr<std::unique_ptr<Shaping>> Shaping::Load(const config::Config& config) {
  throttle::ShapingOptions options;
  if (config.shaping.file.empty()) {
    options = config::DefaultShaping();
  } else {
    FACTEUR_ASSIGN_OR_RETURN(options,
                             config::LoadShapingFile(config.ResolvePath(config.shaping.file)));
  }
  std::vector<throttle::ClassifierRule> rules;
  if (config.shaping.classifier_file.empty()) {
    rules = config::DefaultClassifierRules();
  } else {
    FACTEUR_ASSIGN_OR_RETURN(
        rules, config::LoadClassifierFile(config.ResolvePath(config.shaping.classifier_file)));
  }
  return Create(std::move(options), std::move(rules));
}

}  // namespace facteur::delivery
