// File: engine/main/site_command.cc
// `facteur site list|suspend|resume` and `facteur top`: the delivery sites of a running server,
// through its admin API (GET /api/sites, POST /api/sites/<site>/{suspend,resume}). `top` scrapes
// /metrics twice, an interval apart, for the delivered / deferred / bounced rates by site, and
// shows them beside what the shards hold (ready, in flight, connections, suspended pairs).
// Thread contract: main thread of a short-lived process; blocking I/O is fine here.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "engine/admin/json.h"
#include "engine/main/admin_client.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"

namespace facteur::cli {
namespace {

constexpr char kSiteUsage[] =
    "usage: facteur site list [--json]\n"
    "       facteur site suspend SITE [--source S] [--minutes N]\n"
    "       facteur site resume SITE [--source S]\n"
    "SITE is a shipped site name (google, outlook, orange, ...), which also covers its domain\n"
    "overrides, or a full site key as `site list` prints it; in any case (Google). suspend\n"
    "pauses every source (or S alone) for the site for N minutes (default 60); resume lifts any\n"
    "suspension of the pairs, manual or not, and makes the mail the site handed back due now\n"
    "(mail queued before a restart keeps its time: `facteur queue flush DOMAIN` sends it).\n"
    "HELD-BACK in `site list`: messages the site handed back unattempted, waiting now.\n"
    "Needs a running server (its admin API). Common options: --config FILE, --data-dir DIR.\n";

constexpr char kTopUsage[] =
    "usage: facteur top [--interval SECONDS] [--once]\n"
    "Live delivery by site: delivered, deferred and bounced messages per minute (from two\n"
    "scrapes of /metrics, SECONDS apart; default 2), jobs ready and in flight, open\n"
    "connections and suspended (source, site) pairs. Redraws the screen on a terminal, prints\n"
    "plain lines otherwise; --once prints one sample after one interval and exits.\n"
    "Needs a running server (its admin API). Common options: --config FILE, --data-dir DIR.\n";

// The admin endpoint of the running server, or an exit code (after a message).
std::optional<AdminEndpoint> RunningServer(const config::Config& config, const std::string& name,
                                           int* exit_code) {
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(config);
  if (!endpoints.ok() || endpoints->admin.empty()) {
    std::cerr << "facteur " << name << ": no running server with an admin API under "
              << config.data_dir << "\n";
    *exit_code = kExitUnavailable;
    return std::nullopt;
  }
  return AdminEndpoint{endpoints->admin, endpoints->admin_token};
}

std::string Number(const nlohmann::json& value) {
  if (value.is_number_integer() || value.is_number_unsigned()) {
    return absl::StrCat(value.get<int64_t>());
  }
  if (value.is_number()) return absl::StrFormat("%.1f", value.get<double>());
  return "-";
}

// Columns two spaces apart: the first `left` columns left-aligned, the rest right-aligned.
void PrintColumns(const std::vector<std::vector<std::string>>& rows, size_t left,
                  std::ostream& out) {
  if (rows.empty()) return;
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  for (const auto& row : rows) {
    std::string text;
    for (size_t i = 0; i < row.size() && i < widths.size(); ++i) {
      const std::string pad(widths[i] - row[i].size(), ' ');
      if (i > 0) text += "  ";
      text += i < left ? row[i] + (i + 1 < row.size() ? pad : "") : pad + row[i];
    }
    out << text << "\n";
  }
}

// "12:04:05" of an RFC 3339 time, or "-".
std::string Until(const nlohmann::json& value) {
  if (!value.is_string()) return "-";
  absl::Time t;
  std::string error;
  if (!absl::ParseTime(absl::RFC3339_full, value.get<std::string>(), &t, &error)) return "?";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", t, absl::UTCTimeZone());
}

int List(const AdminEndpoint& admin, bool json) {
  absl::StatusOr<nlohmann::json> answer = AdminCall(admin, "GET", "/api/sites", nullptr);
  if (!answer.ok()) return ReportError("site list", answer.status());
  if (json) {
    std::cout << admin::DumpJson(*answer) << "\n";
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"SITE", "SOURCE", "STATE", "UNTIL (UTC)", "BY", "RATE/MIN", "CONNS", "MAX",
                  "IN-FLIGHT", "HEALTH", "READY", "HELD-BACK"});
  for (const nlohmann::json& site : answer->value("sites", nlohmann::json::array())) {
    const std::string key = site.value("key", "");
    const std::string ready = absl::StrCat(Number(site.value("ready_jobs", nlohmann::json())));
    const std::string held = Number(site.value("held_back_jobs", nlohmann::json()));
    const nlohmann::json sources = site.value("sources", nlohmann::json::array());
    if (sources.empty()) {
      rows.push_back({key, "-", "-", Until(site.value("suspended_until", nlohmann::json())), "-",
                      "-", "0", "-", Number(site.value("in_flight_jobs", nlohmann::json())), "-",
                      ready, held});
      continue;
    }
    bool first = true;
    for (const nlohmann::json& p : sources) {
      const double rate = p.value("message_rate", 0.0);
      const int64_t max = p.value("max_connections", int64_t{0});
      const nlohmann::json by = p.value("suspended_by", nlohmann::json());
      rows.push_back({first ? key : "", p.value("source", ""), p.value("state", ""),
                      Until(p.value("suspended_until", nlohmann::json())),
                      by.is_string() ? by.get<std::string>() : "-",
                      rate > 0 ? absl::StrFormat("%.1f", rate) : "-",
                      Number(p.value("open_connections", nlohmann::json())),
                      max > 0 ? absl::StrCat(max) : "-",
                      Number(p.value("in_flight", nlohmann::json())),
                      absl::StrFormat("%.2f", p.value("health", 1.0)), first ? ready : "",
                      first ? held : ""});
      first = false;
    }
  }
  if (rows.size() == 1) {
    std::cout << "no site has had mail since the server started\n";
    return kExitOk;
  }
  PrintColumns(rows, 5, std::cout);
  return kExitOk;
}

int SuspendOrResume(const AdminEndpoint& admin, const CommandLine& command_line) {
  const std::string& verb = command_line.positional[0];
  const std::string name = absl::StrCat("site ", verb);
  if (command_line.positional.size() != 2) {
    std::cerr << "facteur " << name << ": needs one SITE\n" << kSiteUsage;
    return kExitUsage;
  }
  const std::string& site = command_line.positional[1];
  nlohmann::json body = nlohmann::json::object();
  if (auto it = command_line.values.find("source"); it != command_line.values.end()) {
    body["source"] = it->second;
  }
  if (auto it = command_line.values.find("minutes"); it != command_line.values.end()) {
    int64_t minutes = 0;
    if (verb != "suspend" || !absl::SimpleAtoi(it->second, &minutes) || minutes < 1) {
      std::cerr << "facteur " << name << ": --minutes needs a positive number (suspend only)\n";
      return kExitUsage;
    }
    body["minutes"] = minutes;
  }
  absl::StatusOr<nlohmann::json> answer =
      AdminCall(admin, "POST", absl::StrCat("/api/sites/", PathSegment(site), "/", verb), body);
  if (!answer.ok()) return ReportError(name, answer.status());
  if (command_line.json) {
    std::cout << admin::DumpJson(*answer) << "\n";
    return kExitOk;
  }
  std::vector<std::string> keys;
  for (const nlohmann::json& key : answer->value("sites", nlohmann::json::array())) {
    if (key.is_string()) keys.push_back(key.get<std::string>());
  }
  std::cout << (verb == "suspend" ? "suspended" : "resumed") << ": "
            << answer->value("pairs", 0) << " pair(s) of site(s) " << absl::StrJoin(keys, ", ");
  if (verb == "suspend") {
    std::cout << " until " << Until(answer->value("until", nlohmann::json())) << " UTC";
  } else {
    std::cout << "; " << answer->value("messages", 0) << " message(s) due now";
  }
  std::cout << "\n";
  const uint64_t unattempted = answer->value("unattempted", uint64_t{0});
  if (verb == "resume" && (answer->value("messages", 0) == 0 || unattempted > 0)) {
    // What the site handed back before a restart, or what waits after a real reply, keeps its
    // time: only a flush of its domains sends it now.
    std::cout << "mail waiting for a retry time keeps it";
    if (unattempted > 0) {
      std::cout << " (" << unattempted << " message(s) not tried since the server started)";
    }
    std::cout << ": `facteur queue flush DOMAIN` sends it now\n";
  }
  return kExitOk;
}

// ---- top ----

// The delivery counters of one /metrics scrape, by site label and kind.
struct Counters {
  std::map<std::string, std::map<std::string, double>> by_site;  // site → kind → value
};

// The value of label `name` in a Prometheus label set `{a="x",b="y"}` ("" when absent).
std::string LabelValue(std::string_view labels, std::string_view name) {
  const std::string key = std::string(name) + "=\"";
  size_t at = labels.find(key);
  while (at != std::string_view::npos && at > 0 && labels[at - 1] != '{' && labels[at - 1] != ',') {
    at = labels.find(key, at + 1);
  }
  if (at == std::string_view::npos) return "";
  const size_t start = at + key.size();
  const size_t end = labels.find('"', start);
  return std::string(labels.substr(start, end == std::string_view::npos ? end : end - start));
}

absl::StatusOr<Counters> Scrape(const AdminEndpoint& admin) {
  absl::StatusOr<HttpResponse> response =
      HttpRequest(admin.address, "GET", "/metrics", "", admin.token);
  if (!response.ok()) return response.status();
  if (response->status != 200) {
    return absl::UnavailableError(absl::StrCat("/metrics answered ", response->status));
  }
  static constexpr std::pair<std::string_view, std::string_view> kSeries[] = {
      {"facteur_messages_delivered_total{", "delivered"},
      {"facteur_messages_deferred_total{", "deferred"},
      {"facteur_messages_bounced_total{", "bounced"}};
  Counters counters;
  std::istringstream lines(response->body);
  std::string line;
  while (std::getline(lines, line)) {
    for (const auto& [prefix, kind] : kSeries) {
      if (line.compare(0, prefix.size(), prefix) != 0) continue;
      const size_t close = line.rfind('}');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 1));
      double value = 0;
      if (!(rest >> value)) continue;
      const std::string site = LabelValue(std::string_view(line).substr(0, close + 1), "site");
      counters.by_site[site.empty() ? "other" : site][std::string(kind)] += value;
    }
  }
  return counters;
}

struct TopRow {
  double delivered = 0, deferred = 0, bounced = 0;  // per minute
  uint64_t ready = 0, in_flight = 0, connections = 0, suspended = 0, pairs = 0;
};

int Top(const AdminEndpoint& admin, const CommandLine& command_line) {
  double interval = 2;
  if (auto it = command_line.values.find("interval"); it != command_line.values.end()) {
    if (!absl::SimpleAtod(it->second, &interval) || !(interval >= 0.1) || interval > 3600) {
      std::cerr << "facteur top: --interval needs a number of seconds from 0.1 to 3600\n";
      return kExitUsage;
    }
  }
  const bool once = command_line.switches.count("once") > 0;
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  absl::StatusOr<Counters> before = Scrape(admin);
  if (!before.ok()) return ReportError("top", before.status());
  absl::Time before_at = absl::Now();
  for (;;) {
    std::this_thread::sleep_for(std::chrono::duration<double>(interval));
    absl::StatusOr<Counters> after = Scrape(admin);
    if (!after.ok()) return ReportError("top", after.status());
    const absl::Time after_at = absl::Now();
    absl::StatusOr<nlohmann::json> sites = AdminCall(admin, "GET", "/api/sites", nullptr);
    if (!sites.ok()) return ReportError("top", sites.status());
    const double minutes = std::max(1e-3, absl::ToDoubleSeconds(after_at - before_at) / 60);

    std::map<std::string, TopRow> rows;  // by site label
    for (const auto& [site, kinds] : after->by_site) {
      TopRow& row = rows[site];
      auto rate = [&](const std::string& kind) {
        const double now = kinds.contains(kind) ? kinds.at(kind) : 0;
        double then = 0;
        if (auto s = before->by_site.find(site); s != before->by_site.end()) {
          if (auto k = s->second.find(kind); k != s->second.end()) then = k->second;
        }
        return std::max(0.0, now - then) / minutes;
      };
      row.delivered = rate("delivered");
      row.deferred = rate("deferred");
      row.bounced = rate("bounced");
    }
    for (const nlohmann::json& site : sites->value("sites", nlohmann::json::array())) {
      TopRow& row = rows[site.value("label", site.value("key", ""))];
      row.ready += site.value("ready_jobs", uint64_t{0});
      row.in_flight += site.value("in_flight_jobs", uint64_t{0});
      row.connections += site.value("open_connections", uint64_t{0});
      for (const nlohmann::json& p : site.value("sources", nlohmann::json::array())) {
        ++row.pairs;
        if (p.value("state", "") == "suspended") ++row.suspended;
      }
    }
    std::vector<std::vector<std::string>> table;
    table.push_back({"SITE", "DELIVERED/MIN", "DEFERRED/MIN", "BOUNCED/MIN", "READY",
                     "IN-FLIGHT", "CONNS", "SUSPENDED"});
    for (const auto& [site, row] : rows) {
      table.push_back({site, absl::StrFormat("%.1f", row.delivered),
                       absl::StrFormat("%.1f", row.deferred), absl::StrFormat("%.1f", row.bounced),
                       absl::StrCat(row.ready), absl::StrCat(row.in_flight),
                       absl::StrCat(row.connections),
                       absl::StrCat(row.suspended, "/", row.pairs)});
    }
    if (tty && !once) std::cout << "\033[H\033[2J";  // home, clear screen
    std::cout << "facteur top  "
              << absl::FormatTime("%Y-%m-%d %H:%M:%S", after_at, absl::LocalTimeZone())
              << "  (rates over the last " << absl::StrFormat("%.1f", minutes * 60) << " s)\n";
    PrintColumns(table, 1, std::cout);
    if (!tty) std::cout << "\n";
    std::cout << std::flush;
    if (once) return kExitOk;
    before = std::move(after);
    before_at = after_at;
  }
}

}  // namespace

int SiteMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "site", kSiteUsage, {"source", "minutes"}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (command_line->positional.empty()) {
    std::cerr << kSiteUsage;
    return kExitUsage;
  }
  const std::string& verb = command_line->positional[0];
  if (verb != "list" && verb != "suspend" && verb != "resume") {
    std::cerr << "facteur site: unknown command '" << verb << "'\n" << kSiteUsage;
    return kExitUsage;
  }
  if (verb == "list" && command_line->positional.size() != 1) {
    std::cerr << kSiteUsage;
    return kExitUsage;
  }
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) return ReportError("site", config.status());
  std::optional<AdminEndpoint> admin =
      RunningServer(*config, absl::StrCat("site ", verb), &exit_code);
  if (!admin.has_value()) return exit_code;
  if (verb == "list") return List(*admin, command_line->json);
  return SuspendOrResume(*admin, *command_line);
}

int TopMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "top", kTopUsage, {"interval"}, {"once"}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (!command_line->positional.empty()) {
    std::cerr << "facteur top: unexpected argument '" << command_line->positional[0] << "'\n"
              << kTopUsage;
    return kExitUsage;
  }
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) return ReportError("top", config.status());
  std::optional<AdminEndpoint> admin = RunningServer(*config, "top", &exit_code);
  if (!admin.has_value()) return exit_code;
  return Top(*admin, *command_line);
}

}  // namespace facteur::cli
