// File: engine/main/reputation_command.cc
// `facteur reputation [--json]`: per (source IP, site) pair, the health score and the replies of
// the last 24 hours, and the warmup day with today's count against the cap. A running server
// answers from its live counters (GET /api/reputation); otherwise, or with --now, the command
// opens the spool as a secondary (read-only) RocksDB instance, seeing what the server last
// flushed. The caps come from the
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
#include "engine/main/admin_client.h"
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
    "against its cap (caps reset at 00:00 UTC). Asks a running server for its live counts,\n"
    "else (or with --now) reads the spool, where the server writes them every few seconds.\n"
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

// The table of a ReputationJson() view (from the API or the spool alike).
void PrintTable(const nlohmann::json& pairs) {
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"SOURCE", "SITE", "HEALTH", "DELIVERED", "DEFERRED", "BOUNCED", "BLOCKED",
                  "WARMUP", "TODAY/CAP"});
  for (const nlohmann::json& pair : pairs) {
    const nlohmann::json day = pair.value("last_24h", nlohmann::json::object());
    const nlohmann::json warmup = pair.value("warmup", nlohmann::json::object());
    const nlohmann::json cap = warmup.value("cap", nlohmann::json());
    std::string warmup_text = "-";
    std::string today = absl::StrCat(warmup.value("sent_today", uint64_t{0}));
    if (warmup.value("plan", nlohmann::json()).is_string()) {
      const nlohmann::json day_number = warmup.value("day", nlohmann::json());
      const uint64_t number = day_number.is_number() ? day_number.get<uint64_t>() : 1;
      warmup_text = cap.is_number() ? absl::StrCat("day ", number) : "done";
      absl::StrAppend(&today, "/", cap.is_number() ? absl::StrCat(cap.get<uint64_t>()) : "-");
    }
    rows.push_back({pair.value("source", ""), pair.value("site", ""),
                    absl::StrFormat("%.2f", pair.value("health", 1.0)),
                    absl::StrCat(day.value("delivered", uint64_t{0})),
                    absl::StrCat(day.value("deferred", uint64_t{0})),
                    absl::StrCat(day.value("bounced", uint64_t{0})),
                    absl::StrCat(day.value("blocked", uint64_t{0})), warmup_text, today});
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

// The live counters of a running server (GET /api/reputation); nullopt when no server answers
// (the spool is read instead).
std::optional<nlohmann::json> FromServer(const config::Config& config) {
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(config);
  if (!endpoints.ok() || endpoints->admin.empty()) return std::nullopt;
  absl::StatusOr<nlohmann::json> answer = AdminCall(
      AdminEndpoint{endpoints->admin, endpoints->admin_token}, "GET", "/api/reputation", nullptr);
  if (!answer.ok() || !answer->is_object()) return std::nullopt;
  return *std::move(answer);
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

  // A running server answers from its live counters, unless an evaluation time is asked for.
  std::optional<nlohmann::json> view;
  if (!command_line->values.contains("now")) view = FromServer(*config);
  if (!view.has_value()) {
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
    const PlanResolver plans(*config);
    view = admin::ReputationJson(reputation, now, [&plans](const std::string& source) {
      return plans.PlanOf(source);
    });
  }

  if (command_line->json) {
    std::cout << admin::DumpJson(*view) << "\n";
    return kExitOk;
  }
  const nlohmann::json pairs = view->value("pairs", nlohmann::json::array());
  if (pairs.empty()) {
    std::cout << kNoData;
    return kExitOk;
  }
  PrintTable(pairs);
  return kExitOk;
}

}  // namespace facteur::cli
