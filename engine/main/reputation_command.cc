// File: engine/main/reputation_command.cc
// `facteur reputation [--json]`: per (source IP, site) pair, the health score and the replies of
// the last 24 hours, and the warmup day with today's count against the cap. It opens the spool
// as a secondary (read-only) RocksDB instance, so it works while the server runs (seeing what
// the server last flushed, every few seconds) and when it is stopped. The caps come from the
// shaping file the configuration names and the pools of its [[source]] tables.
// Thread contract: main thread of a short-lived process; blocking I/O is fine here.
#include <algorithm>
#include <array>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "engine/admin/json.h"
#include "engine/base/clock.h"
#include "engine/config/shaping_file.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "queue/reputation_store.h"
#include "queue/store.h"
#include "throttle/reputation.h"
#include "throttle/response_class.h"
#include "throttle/shaping.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur reputation [--json] [--now UNIX_SECONDS]\n"
    "Per (source IP, site) pair: the health score (1 = only deliveries, 0 = only blocks) and\n"
    "the replies of the last 24 hours, the warmup day of the source and today's messages\n"
    "against its cap (caps reset at 00:00 UTC). Reads the spool whether the server runs or\n"
    "not; a running server writes its counts every few seconds.\n"
    "  --now T   evaluate the windows at Unix time T (default: now, on the configured clock)\n"
    "Common options: --config FILE, --data-dir DIR.\n";

constexpr char kNoData[] = "no reputation data yet (nothing delivered from this data directory)\n";

// The time the server's counters were stamped with: its [clock] when it is scaled from a fixed
// anchor (simulations), else the real time.
absl::Time CommandNow(const config::Config& config) {
  if (config.clock.speed != 1.0 && config.clock.anchor > 0) {
    return ScaledClock(absl::FromUnixNanos(static_cast<int64_t>(config.clock.anchor * 1e9)),
                       config.clock.speed)
        .Now();
  }
  return absl::Now();
}

// The warmup plan of each source, through its pool. A shaping file that does not load leaves
// every cap unknown (with a warning): the counters are still worth showing.
class PlanResolver {
 public:
  explicit PlanResolver(const config::Config& config) : config_(config) {
    if (config.shaping.file.empty()) {
      shaping_ = config::DefaultShaping();
      return;
    }
    absl::StatusOr<throttle::ShapingOptions> shaping =
        config::LoadShapingFile(config.ResolvePath(config.shaping.file));
    if (shaping.ok()) {
      shaping_ = *std::move(shaping);
    } else {
      std::cerr << "facteur reputation: warning: " << shaping.status().message()
                << " (warmup caps not shown)\n";
    }
  }

  const throttle::WarmupPlan* PlanOf(const std::string& source) const {
    for (const config::SourceOptions& options : config_.sources) {
      if (options.name == source) return throttle::FindWarmupPlan(shaping_, options.pool);
    }
    return nullptr;  // a source no longer configured
  }

 private:
  const config::Config& config_;
  throttle::ShapingOptions shaping_;
};

// "2027-03-10T12:00:00Z" (RFC 3339, UTC, whole seconds).
std::string Rfc3339(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", t, absl::UTCTimeZone());
}

nlohmann::json ByClassJson(const std::array<uint64_t, throttle::kResponseClassCount>& counts) {
  nlohmann::json by_class = nlohmann::json::object();
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] != 0) by_class[std::string(throttle::kResponseClassNames[i])] = counts[i];
  }
  return by_class;
}

nlohmann::json CountersJson(const throttle::ReputationCounters& c) {
  return nlohmann::json{{"delivered", c.delivered},
                        {"deferred", c.TotalDeferred()},
                        {"deferred_by_class", ByClassJson(c.deferred)},
                        {"bounced", c.TotalBounced()},
                        {"bounced_by_class", ByClassJson(c.bounced)},
                        {"blocked", c.blocked},
                        {"final_answers", c.final_answers}};
}

struct Line {
  const throttle::PairReport* report = nullptr;
  const throttle::WarmupPlan* plan = nullptr;
  std::optional<uint32_t> cap;
  uint32_t sent_today = 0;
};

nlohmann::json LineJson(const Line& line, absl::Time now) {
  const throttle::PairReport& r = *line.report;
  nlohmann::json warmup{{"day", r.warmup_day.has_value() ? nlohmann::json(*r.warmup_day)
                                                         : nlohmann::json(nullptr)},
                        {"plan", line.plan != nullptr ? nlohmann::json(line.plan->name)
                                                      : nlohmann::json(nullptr)},
                        {"cap", line.cap.has_value() ? nlohmann::json(*line.cap)
                                                     : nlohmann::json(nullptr)},
                        {"sent_today", line.sent_today},
                        {"resets_at", Rfc3339(throttle::Reputation::WarmupResetsAt(now))}};
  return nlohmann::json{{"source", r.source},
                        {"site", r.site},
                        {"health", r.health},
                        {"last_24h", CountersJson(r.last_day)},
                        {"today", CountersJson(r.today)},
                        {"lifetime", CountersJson(r.lifetime)},
                        {"warmup", std::move(warmup)},
                        {"last_reply", r.last_record == absl::InfinitePast()
                                           ? nlohmann::json(nullptr)
                                           : nlohmann::json(Rfc3339(r.last_record))}};
}

void PrintTable(const std::vector<Line>& lines) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"SOURCE", "SITE", "HEALTH", "DELIVERED", "DEFERRED", "BOUNCED", "BLOCKED",
                  "WARMUP", "TODAY/CAP"});
  for (const Line& line : lines) {
    const throttle::PairReport& r = *line.report;
    std::string warmup = "-";
    std::string today = absl::StrCat(line.sent_today);
    if (line.plan != nullptr) {
      const uint32_t day = r.warmup_day.value_or(1);
      warmup = line.cap.has_value() ? absl::StrCat("day ", day) : "done";
      absl::StrAppend(&today, "/", line.cap.has_value() ? absl::StrCat(*line.cap) : "-");
    }
    rows.push_back({r.source, r.site, absl::StrFormat("%.2f", r.health),
                    absl::StrCat(r.last_day.delivered), absl::StrCat(r.last_day.TotalDeferred()),
                    absl::StrCat(r.last_day.TotalBounced()), absl::StrCat(r.last_day.blocked),
                    warmup, today});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string text;
    for (size_t i = 0; i < row.size(); ++i) {
      // Names left-aligned, numbers right-aligned, two spaces between columns.
      const bool left = i < 2 || i == 7;
      const std::string pad(widths[i] - row[i].size(), ' ');
      if (i > 0) text += "  ";
      text += left ? row[i] + (i + 1 < row.size() ? pad : "") : pad + row[i];
    }
    std::cout << text << "\n";
  }
  std::cout << "(replies of the last 24 hours; warmup caps reset at 00:00 UTC)\n";
}

}  // namespace

int ReputationMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "reputation", kUsage, {"now"}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (!command_line->positional.empty()) {
    std::cerr << "facteur reputation: unexpected argument '" << command_line->positional[0]
              << "'\n"
              << kUsage;
    return kExitUsage;
  }
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) return ReportError("reputation", config.status());
  absl::Time now = CommandNow(*config);
  if (auto it = command_line->values.find("now"); it != command_line->values.end()) {
    int64_t seconds;
    if (!absl::SimpleAtoi(it->second, &seconds)) {
      std::cerr << "facteur reputation: --now needs a Unix time in seconds\n";
      return kExitUsage;
    }
    now = absl::FromUnixSeconds(seconds);
  }

  throttle::Reputation reputation;
  absl::StatusOr<std::unique_ptr<queue::Store>> store =
      queue::Store::OpenReadOnly(SpoolPath(*config));
  if (store.ok()) {
    absl::StatusOr<queue::ReputationLoadStats> loaded =
        queue::ReputationStore(**store).LoadInto(reputation);
    if (!loaded.ok()) return ReportError("reputation", loaded.status());
  } else if (store.status().code() != absl::StatusCode::kNotFound) {
    return ReportError("reputation", store.status());
  }  // NotFound: no spool yet, so no data either

  const std::vector<throttle::PairReport> reports = reputation.Report(now);
  const PlanResolver plans(*config);
  std::vector<Line> lines;
  for (const throttle::PairReport& report : reports) {
    Line line;
    line.report = &report;
    line.plan = plans.PlanOf(report.source);
    line.cap = reputation.WarmupCap(report.source, line.plan, report.site, now);
    line.sent_today = reputation.SentToday(report.source, report.site, now);
    lines.push_back(line);
  }

  if (command_line->json) {
    nlohmann::json pairs = nlohmann::json::array();
    for (const Line& line : lines) pairs.push_back(LineJson(line, now));
    std::cout << admin::DumpJson(nlohmann::json{{"now", Rfc3339(now)}, {"pairs", std::move(pairs)}})
              << "\n";
    return kExitOk;
  }
  if (lines.empty()) {
    std::cout << kNoData;
    return kExitOk;
  }
  PrintTable(lines);
  return kExitOk;
}

}  // namespace facteur::cli
