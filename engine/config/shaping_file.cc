// File: engine/config/shaping_file.cc
// TOML → throttle::ShapingOptions. Validation stops at the first error; toml++'s exceptions are
// caught in ParseToml (toml_reader.cc), so none leaves this file.
#include "engine/config/shaping_file.h"

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "engine/base/status.h"
#include "engine/config/embedded_files.h"
#include "engine/config/toml_reader.h"
#include "toml++/toml.h"

namespace facteur::config {
namespace {

using throttle::ClassAction;
using throttle::DomainOverride;
using throttle::kResponseClassCount;
using throttle::kResponseClassNames;
using throttle::ResponseClass;
using throttle::ShapingOptions;
using throttle::SiteLimits;
using throttle::SiteOptions;
using throttle::WarmupPlan;

// A shaping file is small; the cap keeps `--shaping /dev/zero` from eating memory.
constexpr size_t kMaxShapingFileSize = 16 << 20;
// Site and warmup plan names are metric labels and key parts: short, lower case.
constexpr size_t kMaxSiteNameLength = 32;
// Sanity bounds: a value past them is a typo, not a plan. Microsoft, the most generous, allows
// 500 simultaneous connections per sender (providers.md [10]).
constexpr uint64_t kMaxConnections = 10000;
constexpr uint64_t kMaxMessagesPerConnection = 1000000;
constexpr uint64_t kMaxRecipientsPerMessage = 100000;
constexpr uint64_t kMaxRate = std::numeric_limits<uint32_t>::max();
const absl::Duration kMaxSuspend = absl::Hours(7 * 24);
const absl::Duration kMaxGreylistDelay = absl::Hours(24);
constexpr size_t kMaxWarmupDays = 366;
constexpr uint64_t kMaxDailyCap = 1000000000;

const std::vector<std::string_view> kTopKeys = {"defaults", "actions", "backoff",  "greylist",
                                                "site",     "domain",  "warmup", "warmup_pools"};
const std::vector<std::string_view> kLimitKeys = {
    "max_connections",        "max_messages_per_connection", "max_recipients_per_message",
    "messages_per_minute",    "messages_per_hour",           "messages_per_day",
    "connections_per_minute", "connections_per_hour"};
const std::vector<std::string_view> kActionKeys = {"suspend", "rate_factor", "max_connections",
                                                   "hold", "prefer_other_source",
                                                   "reputation_hit"};
const std::vector<std::string_view> kBackoffKeys = {"recovery_step", "min_rate_fraction",
                                                    "max_suspension", "rate_memory"};
const std::vector<std::string_view> kGreylistKeys = {"first_delay", "backoff", "max_delay"};
const std::vector<std::string_view> kSiteKeys = {"name", "mx", "limits", "actions"};
const std::vector<std::string_view> kDomainKeys = {"domain", "site", "limits"};
const std::vector<std::string_view> kWarmupKeys = {"name", "daily_caps"};

ClassAction Action(absl::Duration suspend, double rate_factor, uint32_t max_connections,
                   bool prefer_other_source, bool reputation_hit) {
  ClassAction action;
  action.suspend = suspend;
  action.rate_factor = rate_factor;
  action.max_connections = max_connections;
  action.prefer_other_source = prefer_other_source;
  action.reputation_hit = reputation_hit;
  return action;
}

size_t ClassIndex(ResponseClass c) { return static_cast<size_t>(c); }

// The classes a file may give a reaction to: all but success.
std::string ActionClassList() {
  std::vector<std::string> names;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    if (i != ClassIndex(ResponseClass::kSuccess)) names.emplace_back(kResponseClassNames[i]);
  }
  return absl::StrJoin(names, ", ");
}

// "did you mean 'rate_limit'? " when one class is clearly the closest to `name` (≤ 2 edits).
std::string ClassSuggestion(std::string_view name) {
  size_t best = 3;
  std::string_view suggestion;
  bool tie = false;
  for (size_t i = 0; i < kResponseClassCount; ++i) {
    if (i == ClassIndex(ResponseClass::kSuccess)) continue;
    size_t distance = EditDistance(name, kResponseClassNames[i]);
    if (distance < best) {
      best = distance;
      suggestion = kResponseClassNames[i];
      tie = false;
    } else if (distance == best) {
      tie = true;
    }
  }
  if (suggestion.empty() || tie) return "";
  return absl::StrCat("did you mean '", ToAbsl(suggestion), "'? ");
}

class ShapingParser : private TomlReader {
 public:
  explicit ShapingParser(std::string_view source_name) : TomlReader(source_name) {}

  absl::StatusOr<ShapingOptions> Parse(const toml::table& root) {
    ShapingOptions options;
    options.actions = BuiltinClassActions();
    FACTEUR_RETURN_IF_ERROR(CheckKeys(root, "", kTopKeys));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* defaults,
                             SubTable(root, "defaults", kLimitKeys));
    if (defaults != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadLimits(*defaults, "defaults", options.default_limits));
    }
    FACTEUR_ASSIGN_OR_RETURN(const toml::table* backoff, SubTable(root, "backoff", kBackoffKeys));
    if (backoff != nullptr) FACTEUR_RETURN_IF_ERROR(ReadBackoff(*backoff, options.backoff));
    FACTEUR_ASSIGN_OR_RETURN(const toml::table* greylist,
                             SubTable(root, "greylist", kGreylistKeys));
    if (greylist != nullptr) FACTEUR_RETURN_IF_ERROR(ReadGreylist(*greylist, options.greylist));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* actions, Table(root, "", "actions"));
    if (actions != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadActions(*actions, "actions", [&](size_t index) {
        return options.actions[index];
      }, [&](size_t index, const ClassAction& action) { options.actions[index] = action; }));
    }
    FACTEUR_RETURN_IF_ERROR(ParseSites(root, options));
    FACTEUR_RETURN_IF_ERROR(ParseDomains(root, options));
    FACTEUR_RETURN_IF_ERROR(ParseWarmup(root, options));
    return options;
  }

 private:
  // The table `name` in `table` (whose dotted name is `prefix`), or nullptr when absent.
  absl::StatusOr<const toml::table*> Table(const toml::table& table, std::string_view prefix,
                                           std::string_view name) const {
    const toml::node* node = table.get(name);
    if (node == nullptr) return nullptr;
    if (!node->is_table()) {
      return Error(node->source(), Dotted(prefix, name),
                   absl::StrCat("must be a table, not ", TypeName(*node)));
    }
    return node->as_table();
  }

  absl::Status ReadLimits(const toml::table& table, std::string_view prefix,
                          SiteLimits& out) const {
    FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kLimitKeys));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "max_connections", 1, kMaxConnections, out.max_connections));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(table, prefix, "max_messages_per_connection", 1,
                                        kMaxMessagesPerConnection,
                                        out.max_messages_per_connection));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(table, prefix, "max_recipients_per_message", 1,
                                        kMaxRecipientsPerMessage, out.max_recipients_per_message));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "messages_per_minute", 0, kMaxRate, out.messages_per_minute));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "messages_per_hour", 0, kMaxRate, out.messages_per_hour));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "messages_per_day", 0, kMaxRate, out.messages_per_day));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(table, prefix, "connections_per_minute", 0, kMaxRate,
                                        out.connections_per_minute));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(table, prefix, "connections_per_hour", 0, kMaxRate,
                                        out.connections_per_hour));
    return absl::OkStatus();
  }

  // A duration that may be zero ("0", "0s"), at most `max`.
  absl::Status ReadDurationOrZero(const toml::table& table, std::string_view prefix,
                                  std::string_view name, absl::Duration max,
                                  absl::Duration& out) const {
    const toml::node* node = table.get(name);
    if (node == nullptr) return absl::OkStatus();
    absl::Duration zero;
    if (const auto* integer = node->as_integer(); integer != nullptr && integer->get() == 0) {
      out = absl::ZeroDuration();
      return absl::OkStatus();
    }
    if (const auto* text = node->as_string();
        text != nullptr && absl::ParseDuration(ToAbsl(text->get()), &zero) &&
        zero == absl::ZeroDuration()) {
      out = absl::ZeroDuration();
      return absl::OkStatus();
    }
    absl::Duration duration;
    FACTEUR_RETURN_IF_ERROR(ReadDuration(table, prefix, name, duration));
    FACTEUR_RETURN_IF_ERROR(CheckAtMost(*node, Dotted(prefix, name), duration, max));
    out = duration;
    return absl::OkStatus();
  }

  absl::Status CheckAtMost(const toml::node& node, std::string_view key, absl::Duration value,
                           absl::Duration max) const {
    if (value > max) {
      return Error(node.source(), key,
                   absl::StrCat("must be at most ", absl::FormatDuration(max), ", got ",
                                absl::FormatDuration(value)));
    }
    return absl::OkStatus();
  }

  absl::Status ReadAction(const toml::table& table, std::string_view prefix,
                          ClassAction& out) const {
    FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kActionKeys));
    FACTEUR_RETURN_IF_ERROR(ReadDurationOrZero(table, prefix, "suspend", kMaxSuspend, out.suspend));
    // A factor of 0 would stop the pair for good: a pause is what `suspend` is for.
    FACTEUR_RETURN_IF_ERROR(ReadNumber(table, prefix, "rate_factor", 0.01, 1.0, out.rate_factor));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "max_connections", 0, kMaxConnections, out.max_connections));
    FACTEUR_RETURN_IF_ERROR(ReadDurationOrZero(table, prefix, "hold", kMaxSuspend, out.hold));
    FACTEUR_RETURN_IF_ERROR(
        ReadBool(table, prefix, "prefer_other_source", out.prefer_other_source));
    FACTEUR_RETURN_IF_ERROR(ReadBool(table, prefix, "reputation_hit", out.reputation_hit));
    return absl::OkStatus();
  }

  // Each [<prefix>.<class>] table overlays `base(class)` and is handed to `store`.
  template <typename Base, typename Store>
  absl::Status ReadActions(const toml::table& actions, std::string_view prefix, Base base,
                           Store store) const {
    for (const auto& [key, node] : actions) {
      std::string_view name = key.str();
      std::string dotted = Dotted(prefix, name);
      std::optional<ResponseClass> reply_class = throttle::ParseResponseClass(name);
      if (!reply_class.has_value() || *reply_class == ResponseClass::kSuccess) {
        return Error(key.source(), dotted,
                     absl::StrCat("unknown reply class; ", ClassSuggestion(name),
                                  "the classes are ", ActionClassList()));
      }
      const toml::table* table = node.as_table();
      if (table == nullptr) {
        return Error(node.source(), dotted, absl::StrCat("must be a table, not ", TypeName(node)));
      }
      size_t index = ClassIndex(*reply_class);
      ClassAction action = base(index);
      FACTEUR_RETURN_IF_ERROR(ReadAction(*table, dotted, action));
      store(index, action);
    }
    return absl::OkStatus();
  }

  absl::Status ReadBackoff(const toml::table& table, throttle::BackoffOptions& out) const {
    FACTEUR_RETURN_IF_ERROR(
        ReadNumber(table, "backoff", "recovery_step", 0.001, 1.0, out.recovery_step));
    FACTEUR_RETURN_IF_ERROR(
        ReadNumber(table, "backoff", "min_rate_fraction", 0.001, 1.0, out.min_rate_fraction));
    FACTEUR_RETURN_IF_ERROR(ReadDuration(table, "backoff", "max_suspension", out.max_suspension));
    if (const toml::node* node = table.get("max_suspension")) {
      FACTEUR_RETURN_IF_ERROR(
          CheckAtMost(*node, "backoff.max_suspension", out.max_suspension, absl::Hours(30 * 24)));
    }
    FACTEUR_RETURN_IF_ERROR(ReadDuration(table, "backoff", "rate_memory", out.rate_memory));
    if (const toml::node* node = table.get("rate_memory")) {
      FACTEUR_RETURN_IF_ERROR(
          CheckAtMost(*node, "backoff.rate_memory", out.rate_memory, absl::Hours(30 * 24)));
    }
    return absl::OkStatus();
  }

  absl::Status ReadGreylist(const toml::table& table, throttle::GreylistOptions& out) const {
    FACTEUR_RETURN_IF_ERROR(ReadDuration(table, "greylist", "first_delay", out.first_delay));
    if (const toml::node* node = table.get("first_delay")) {
      FACTEUR_RETURN_IF_ERROR(
          CheckAtMost(*node, "greylist.first_delay", out.first_delay, kMaxGreylistDelay));
    }
    FACTEUR_RETURN_IF_ERROR(ReadNumber(table, "greylist", "backoff", 1.0, 10.0, out.backoff));
    FACTEUR_RETURN_IF_ERROR(ReadDuration(table, "greylist", "max_delay", out.max_delay));
    if (const toml::node* node = table.get("max_delay")) {
      FACTEUR_RETURN_IF_ERROR(
          CheckAtMost(*node, "greylist.max_delay", out.max_delay, kMaxGreylistDelay));
    }
    if (out.max_delay < out.first_delay) {
      // Point at the key the file gave (one of them was, or the defaults would hold).
      bool max_given = table.get("max_delay") != nullptr;
      std::string_view name = max_given ? "max_delay" : "first_delay";
      return Error(table.get(name)->source(), Dotted("greylist", name),
                   absl::StrCat("greylist.max_delay (", absl::FormatDuration(out.max_delay),
                                ") is shorter than greylist.first_delay (",
                                absl::FormatDuration(out.first_delay), ")"));
    }
    return absl::OkStatus();
  }

  // Metric labels and key parts: [a-z0-9_-], 1 to 32 characters.
  absl::Status CheckLabel(const toml::node& node, std::string_view key,
                          std::string_view name) const {
    bool ok = !name.empty() && name.size() <= kMaxSiteNameLength;
    for (char c : name) {
      if (!(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') && c != '_' && c != '-') ok = false;
    }
    if (!ok) {
      return Error(node.source(), key,
                   absl::StrCat("'", ToAbsl(name), "' must be 1 to ", kMaxSiteNameLength,
                                " characters among a-z, 0-9, '_' and '-' (it is a metric label)"));
    }
    return absl::OkStatus();
  }

  // A host name (RFC 1035 §2.3.1 letters, digits and hyphens; RFC 5321 §2.3.5), lower case,
  // without a trailing dot; empty when `text` is not one. `labels` counts its labels.
  static std::string NormalizeHost(std::string_view text, size_t& labels) {
    labels = 0;
    if (!text.empty() && text.back() == '.') text.remove_suffix(1);
    if (text.empty() || text.size() > 253) return "";
    std::string host = absl::AsciiStrToLower(ToAbsl(text));
    size_t label_length = 0;
    for (size_t i = 0; i <= host.size(); ++i) {
      if (i == host.size() || host[i] == '.') {
        if (label_length == 0 || label_length > 63) return "";
        if (host[i - 1] == '-' || host[i - label_length] == '-') return "";
        ++labels;
        label_length = 0;
        continue;
      }
      char c = host[i];
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-') return "";
      ++label_length;
    }
    return host;
  }

  // An MX pattern: a host name, or "*." and a name of at least two labels.
  absl::StatusOr<std::string> ReadPattern(const toml::node& node, std::string_view key) const {
    const auto* text = node.as_string();
    if (text == nullptr) {
      return Error(node.source(), key,
                   absl::StrCat("must be a host name pattern string, not ", TypeName(node)));
    }
    std::string_view pattern = text->get();
    bool suffix = pattern.size() >= 2 && pattern.substr(0, 2) == "*.";
    std::string_view host = suffix ? pattern.substr(2) : pattern;
    if (host.find('*') != std::string_view::npos) {
      return Error(node.source(), key,
                   absl::StrCat("'", ToAbsl(pattern),
                                "': '*' is allowed only as a whole first label "
                                "(\"*.google.com\")"));
    }
    size_t labels = 0;
    std::string normalized = NormalizeHost(host, labels);
    if (normalized.empty()) {
      return Error(node.source(), key,
                   absl::StrCat("'", ToAbsl(pattern),
                                "' is not a host name or \"*.\" and a host name"));
    }
    if (suffix && labels < 2) {
      return Error(node.source(), key,
                   absl::StrCat("'", ToAbsl(pattern),
                                "' would match a whole top-level domain; name the provider's "
                                "domain (\"*.provider.example\")"));
    }
    return suffix ? absl::StrCat("*.", normalized) : normalized;
  }

  absl::Status ParseSites(const toml::table& root, ShapingOptions& options) const {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "site", "site"));
    std::map<std::string, size_t> names;
    std::map<std::string, size_t> patterns;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      std::string prefix = absl::StrCat("site[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kSiteKeys));
      SiteOptions site;
      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(
          table, prefix, "name", "the site's name in metrics and events", site.name));
      const toml::node& name_node = *table.get("name");
      FACTEUR_RETURN_IF_ERROR(CheckLabel(name_node, prefix + ".name", site.name));
      auto [name_at, name_new] = names.emplace(site.name, i);
      if (!name_new) {
        return Error(name_node.source(), prefix + ".name",
                     absl::StrCat("duplicate site name '", site.name, "' (also site[",
                                  name_at->second, "])"));
      }

      const toml::node* mx = table.get("mx");
      std::string mx_key = prefix + ".mx";
      if (mx == nullptr) {
        return Error(table.source(), mx_key,
                     "required (the provider's MX host names, such as [\"*.google.com\"])");
      }
      const toml::array* array = mx->as_array();
      if (array == nullptr) {
        return Error(mx->source(), mx_key,
                     absl::StrCat("must be an array of host name patterns, not ", TypeName(*mx)));
      }
      if (array->empty()) {
        return Error(mx->source(), mx_key, "must list at least one MX host name pattern");
      }
      for (size_t j = 0; j < array->size(); ++j) {
        const toml::node& element = *array->get(j);
        std::string element_key = absl::StrCat(mx_key, "[", j, "]");
        FACTEUR_ASSIGN_OR_RETURN(std::string pattern, ReadPattern(element, element_key));
        auto [at, is_new] = patterns.emplace(pattern, i);
        if (!is_new) {
          return Error(element.source(), element_key,
                       absl::StrCat("'", pattern, "' is listed twice (also by site[", at->second,
                                    "], '", options.sites.size() > at->second
                                                ? options.sites[at->second].name
                                                : site.name,
                                    "')"));
        }
        site.mx_patterns.push_back(std::move(pattern));
      }

      // Limits the site does not state are those of [defaults].
      site.limits = options.default_limits;
      FACTEUR_ASSIGN_OR_RETURN(const toml::table* limits, Table(table, prefix, "limits"));
      if (limits != nullptr) {
        FACTEUR_RETURN_IF_ERROR(ReadLimits(*limits, prefix + ".limits", site.limits));
      }
      FACTEUR_ASSIGN_OR_RETURN(const toml::table* actions, Table(table, prefix, "actions"));
      if (actions != nullptr) {
        // A site's reaction overlays the file-wide one for the same class.
        FACTEUR_RETURN_IF_ERROR(ReadActions(
            *actions, prefix + ".actions",
            [&](size_t index) { return options.actions[index]; },
            [&](size_t index, const ClassAction& action) { site.actions[index] = action; }));
      }
      options.sites.push_back(std::move(site));
    }
    return absl::OkStatus();
  }

  const SiteOptions* FindSite(const ShapingOptions& options, std::string_view name) const {
    for (const SiteOptions& site : options.sites) {
      if (site.name == name) return &site;
    }
    return nullptr;
  }

  absl::Status ParseDomains(const toml::table& root, ShapingOptions& options) const {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "domain", "domain"));
    std::map<std::string, size_t> domains;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      std::string prefix = absl::StrCat("domain[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kDomainKeys));
      DomainOverride domain;
      std::string text;
      FACTEUR_RETURN_IF_ERROR(
          ReadRequiredString(table, prefix, "domain", "a recipient domain", text));
      const toml::node& domain_node = *table.get("domain");
      size_t labels = 0;
      domain.domain = NormalizeHost(text, labels);
      if (domain.domain.empty()) {
        return Error(domain_node.source(), prefix + ".domain",
                     absl::StrCat("'", text, "' is not a domain name"));
      }
      auto [at, is_new] = domains.emplace(domain.domain, i);
      if (!is_new) {
        return Error(domain_node.source(), prefix + ".domain",
                     absl::StrCat("duplicate domain '", domain.domain, "' (also domain[",
                                  at->second, "])"));
      }
      const SiteOptions* site = nullptr;
      if (const toml::node* node = table.get("site")) {
        FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "site", domain.site));
        site = FindSite(options, domain.site);
        if (site == nullptr) {
          std::vector<std::string> names;
          for (const SiteOptions& known : options.sites) names.push_back(known.name);
          return Error(node->source(), prefix + ".site",
                       absl::StrCat("no [[site]] is named '", domain.site, "'",
                                    names.empty() ? std::string()
                                                  : absl::StrCat(" (the sites are ",
                                                                 absl::StrJoin(names, ", "), ")")));
        }
      }
      FACTEUR_ASSIGN_OR_RETURN(const toml::table* limits, Table(table, prefix, "limits"));
      if (limits != nullptr) {
        // Limits the override does not state are those of its site, else of [defaults].
        domain.limits = site != nullptr ? site->limits : options.default_limits;
        FACTEUR_RETURN_IF_ERROR(ReadLimits(*limits, prefix + ".limits", *domain.limits));
      }
      if (site == nullptr && !domain.limits.has_value()) {
        return Error(table.source(), prefix,
                     "changes nothing: give it a `site`, a `limits` table, or both");
      }
      options.domains.push_back(std::move(domain));
    }
    return absl::OkStatus();
  }

  absl::Status ParseWarmup(const toml::table& root, ShapingOptions& options) const {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "warmup", "warmup"));
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      std::string prefix = absl::StrCat("warmup[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kWarmupKeys));
      WarmupPlan plan;
      FACTEUR_RETURN_IF_ERROR(
          ReadRequiredString(table, prefix, "name", "the plan's name", plan.name));
      const toml::node& name_node = *table.get("name");
      FACTEUR_RETURN_IF_ERROR(CheckLabel(name_node, prefix + ".name", plan.name));
      auto [at, is_new] = names.emplace(plan.name, i);
      if (!is_new) {
        return Error(name_node.source(), prefix + ".name",
                     absl::StrCat("duplicate warmup plan '", plan.name, "' (also warmup[",
                                  at->second, "])"));
      }
      const toml::node* caps = table.get("daily_caps");
      std::string caps_key = prefix + ".daily_caps";
      if (caps == nullptr) {
        return Error(table.source(), caps_key,
                     "required (messages per site on day 1, day 2, ...: [50, 100, 200])");
      }
      const toml::array* array = caps->as_array();
      if (array == nullptr || array->empty() || array->size() > kMaxWarmupDays) {
        return Error(caps->source(), caps_key,
                     absl::StrCat("must be an array of 1 to ", kMaxWarmupDays,
                                  " daily message counts"));
      }
      for (size_t day = 0; day < array->size(); ++day) {
        const toml::node& element = *array->get(day);
        std::string element_key = absl::StrCat(caps_key, "[", day, "]");
        const auto* integer = element.as_integer();
        if (integer == nullptr || integer->get() < 1 ||
            static_cast<uint64_t>(integer->get()) > kMaxDailyCap) {
          return Error(element.source(), element_key,
                       absl::StrCat("must be an integer between 1 and ", kMaxDailyCap));
        }
        uint32_t cap = static_cast<uint32_t>(integer->get());
        if (!plan.daily_caps.empty() && cap < plan.daily_caps.back()) {
          return Error(element.source(), element_key,
                       absl::StrCat("a warmup ramp must not go down (", cap, " after ",
                                    plan.daily_caps.back(), ")"));
        }
        plan.daily_caps.push_back(cap);
      }
      options.warmup_plans.push_back(std::move(plan));
    }

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* pools, Table(root, "", "warmup_pools"));
    if (pools == nullptr) return absl::OkStatus();
    for (const auto& [key, node] : *pools) {
      std::string_view pool = key.str();
      std::string dotted = Dotted("warmup_pools", pool);
      // The pool names of [[source]] in the main config (engine/config/config.cc CheckName).
      bool ok = !pool.empty() && pool.size() <= 64;
      for (char c : pool) {
        if (c <= ' ' || c > '~' || c == '"' || c == '\\') ok = false;
      }
      if (!ok) {
        return Error(key.source(), dotted,
                     "a pool name is 1 to 64 printable characters without spaces, quotes or "
                     "backslashes");
      }
      const auto* plan = node.as_string();
      if (plan == nullptr) {
        return Error(node.source(), dotted,
                     absl::StrCat("must be a warmup plan name, not ", TypeName(node)));
      }
      if (names.find(plan->get()) == names.end()) {
        std::vector<std::string> known;
        for (const WarmupPlan& p : options.warmup_plans) known.push_back(p.name);
        return Error(node.source(), dotted,
                     absl::StrCat("no [[warmup]] plan is named '", ToAbsl(plan->get()), "'",
                                  known.empty() ? std::string()
                                                : absl::StrCat(" (the plans are ",
                                                               absl::StrJoin(known, ", "), ")")));
      }
      options.pool_warmup.emplace_back(std::string(pool), plan->get());
    }
    return absl::OkStatus();
  }
};

}  // namespace

std::array<ClassAction, kResponseClassCount> BuiltinClassActions() {
  std::array<ClassAction, kResponseClassCount> actions;
  const absl::Duration none = absl::ZeroDuration();
  // Nothing for the pair: the message's own retry schedule or bounce deals with these.
  for (ClassAction& action : actions) action = Action(none, 1.0, 0, false, false);
  // Retry from the same source after the announced delay; says nothing of the source's
  // reputation (providers.md §3, practice 4).
  actions[ClassIndex(ResponseClass::kGreylist)] = Action(none, 1.0, 0, false, false);
  // Google's published 4.7.28 back-off (providers.md [1]): stop at least 10 minutes, resume on
  // one connection, never jump back to the old rate.
  actions[ClassIndex(ResponseClass::kRateLimit)] = Action(absl::Minutes(10), 0.5, 1, false, true);
  // We opened more connections than the site takes at once: fewer connections fix it; the
  // message rate is not the problem and the mail is not judged.
  actions[ClassIndex(ResponseClass::kTooManyConnections)] =
      Action(absl::Minutes(1), 1.0, 1, false, false);
  // Listings take hours to clear (providers.md §1.5, §5); another source of the pool may be
  // clean.
  actions[ClassIndex(ResponseClass::kBlocklist)] = Action(absl::Hours(4), 1.0, 0, true, true);
  // Counted against the pair's health, which alerts; pausing would not change the verdict.
  actions[ClassIndex(ResponseClass::kContent)] = Action(none, 1.0, 0, false, true);
  actions[ClassIndex(ResponseClass::kAuthentication)] = Action(none, 1.0, 0, false, true);
  return actions;
}

absl::StatusOr<ShapingOptions> ParseShapingFile(std::string_view text,
                                                std::string_view source_name) {
  FACTEUR_ASSIGN_OR_RETURN(toml::table root, ParseToml(text, source_name));
  return ShapingParser(source_name).Parse(root);
}

absl::StatusOr<ShapingOptions> LoadShapingFile(const std::string& path) {
  FACTEUR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, kMaxShapingFileSize));
  return ParseShapingFile(text, path);
}

ShapingOptions DefaultShaping() {
  absl::StatusOr<ShapingOptions> options =
      ParseShapingFile(EmbeddedShapingToml(), "<shipped deploy/shaping.toml>");
  if (!options.ok()) {
    // The embedded text is ours: failing here is a bug that shaping_file_test catches.
    std::fprintf(stderr, "facteur: the shipped shaping file is invalid: %s\n",
                 std::string(options.status().message()).c_str());
    std::abort();
  }
  return *std::move(options);
}

}  // namespace facteur::config
