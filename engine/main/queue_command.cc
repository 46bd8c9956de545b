// File: engine/main/queue_command.cc
// `facteur queue ls|show|count`: read-only views of the spool. They open the RocksDB spool as a
// secondary (read-only) instance, which works both while a server runs and when it is stopped.
// `facteur queue flush|retry|bounce|delete|suspend|resume`: operations, carried out by a running
// server's queue manager through its admin API (so that they never race a delivery).
// Thread contract: main thread of a short-lived process; blocking I/O is fine here.
#include "engine/main/commands.h"

#include <algorithm>
#include <iostream>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "engine/admin/json.h"
#include "engine/base/message_id.h"
#include "engine/main/admin_client.h"
#include "engine/main/cli.h"
#include "queue/spool.h"
#include "queue/store.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur queue ls [--limit N | --all] [--json]  the first N messages (default 100)\n"
    "       facteur queue show ID [--json] [--body]\n"
    "       facteur queue count [--json]\n"
    "       facteur queue summary [--json]      due now, scheduled, in flight; by site\n"
    "       facteur queue flush [DOMAIN]        make queued mail (for DOMAIN) due now\n"
    "       facteur queue retry ID              make one message due now\n"
    "       facteur queue bounce ID | --domain D  bounce open recipients, DSN to the sender\n"
    "       facteur queue delete ID             remove a message, without a DSN\n"
    "       facteur queue suspend|resume DOMAIN  hold / release a domain's mail\n"
    "       facteur queue suspended             the domains held\n"
    "summary's HELD-BACK: messages a paused or throttled site handed back, waiting now; the\n"
    "(not tried since start) row: scheduled mail whose site is not known yet (after a restart).\n"
    "ls, show and count read the spool whether the server runs or not; summary and the\n"
    "operations need a running server (its admin API).\n"
    "Common options: --config FILE, --data-dir DIR.\n";

constexpr size_t kDefaultListLimit = 100;

int List(queue::Store& store, const CommandLine& command_line) {
  size_t limit = kDefaultListLimit;
  if (command_line.switches.count("all")) {
    limit = std::numeric_limits<size_t>::max();
  } else if (auto it = command_line.values.find("limit"); it != command_line.values.end()) {
    if (!absl::SimpleAtoi(it->second, &limit) || limit == 0) {
      std::cerr << "facteur queue ls: --limit needs a positive number\n";
      return kExitUsage;
    }
  }
  absl::StatusOr<std::vector<queue::Envelope>> envelopes = queue::ListEnvelopes(store, limit);
  if (!envelopes.ok()) return ReportError("queue ls", envelopes.status());
  // Only a full page may leave messages out: then the whole queue is counted.
  uint64_t total = envelopes->size();
  if (envelopes->size() >= limit) {
    absl::StatusOr<uint64_t> count = queue::CountMessages(store);
    if (!count.ok()) return ReportError("queue ls", count.status());
    total = std::max<uint64_t>(*count, envelopes->size());
  }
  if (command_line.json) {
    nlohmann::json messages = nlohmann::json::array();
    for (const queue::Envelope& e : *envelopes) messages.push_back(admin::EnvelopeSummaryJson(e));
    std::cout << admin::DumpJson(nlohmann::json{{"messages", std::move(messages)},
                                                {"total", total}})
              << "\n";
    return kExitOk;
  }
  for (const queue::Envelope& e : *envelopes) {
    const std::vector<std::string> recipients = admin::PendingRecipients(e);
    std::cout << absl::StrFormat(
        "%s  %s  <%s>  %s\n", e.id.ToString(),
        absl::FormatTime("%Y-%m-%d %H:%M:%S", e.received_at, absl::UTCTimeZone()), e.sender,
        absl::StrJoin(recipients, ", "));
  }
  if (total > envelopes->size()) {
    std::cout << absl::StrFormat("... %d of %d messages shown; --limit N or --all for more\n",
                                 envelopes->size(), total);
  }
  return kExitOk;
}

int Show(queue::Store& store, const CommandLine& command_line) {
  if (command_line.positional.size() != 2) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  std::optional<MessageId> id = MessageId::Parse(command_line.positional[1]);
  if (!id.has_value()) {
    std::cerr << "facteur queue show: " << command_line.positional[1]
              << " is not a message id (26 base32 characters)\n";
    return kExitDataError;
  }
  absl::StatusOr<std::optional<queue::Envelope>> envelope = queue::ReadEnvelope(store, *id);
  if (!envelope.ok()) return ReportError("queue show", envelope.status());
  if (!envelope->has_value()) {
    std::cerr << "facteur queue show: no message " << id->ToString() << " in the queue\n";
    return kExitNoInput;
  }
  absl::StatusOr<std::optional<std::string>> body = queue::ReadBody(store, *id);
  if (!body.ok()) return ReportError("queue show", body.status());
  const size_t body_size = body->has_value() ? (*body)->size() : 0;
  if (command_line.switches.count("body")) {
    if (body->has_value()) std::cout << **body;
    return kExitOk;
  }
  if (command_line.json) {
    std::cout << admin::DumpJson(admin::MessageJson(**envelope, body_size)) << "\n";
    return kExitOk;
  }
  const queue::Envelope& e = **envelope;
  std::cout << "id:          " << e.id.ToString() << "\n"
            << "received:    " << absl::FormatTime(absl::RFC3339_sec, e.received_at, absl::UTCTimeZone())
            << "\n"
            << "sender:      <" << e.sender << ">\n"
            << "listener:    " << e.listener << "\n"
            << "client:      " << e.client << "\n"
            << "account:     " << (e.account.empty() ? "-" : e.account) << "\n"
            << "size:        " << body_size << "\n"
            << "attempts:    " << e.attempts << "\n"
            << "next try:    " << absl::FormatTime(absl::RFC3339_sec, e.next_attempt, absl::UTCTimeZone())
            << "\n";
  for (const queue::RecipientRecord& r : e.recipients) {
    // A recipient waiting for a time of its own (greylisted for longer than another waits).
    const bool own_time = r.state == queue::RecipientState::kPending && r.retry_at > e.next_attempt;
    std::cout << "recipient:   <" << r.address << "> " << admin::RecipientStateName(r.state)
              << (own_time ? absl::StrCat(" until ", absl::FormatTime(absl::RFC3339_sec, r.retry_at,
                                                                         absl::UTCTimeZone()))
                           : "")
              << (r.last_reply.empty() ? "" : absl::StrCat(" (", r.last_reply, ")")) << "\n";
  }
  return kExitOk;
}

// The operations: one admin API call each.
int Operate(const config::Config& config, const CommandLine& command_line) {
  const std::vector<std::string>& words = command_line.positional;
  const std::string& verb = words[0];
  const std::string name = absl::StrCat("queue ", verb);
  auto domain_option = command_line.values.find("domain");
  std::string method = "POST";
  std::string path;
  nlohmann::json body;
  auto need_argument = [&](const char* what) {
    std::cerr << "facteur " << name << ": needs " << what << "\n" << kUsage;
    return kExitUsage;
  };
  auto need_id = [&]() -> std::optional<std::string> {
    if (words.size() != 2) return std::nullopt;
    std::optional<MessageId> id = MessageId::Parse(words[1]);
    if (!id.has_value()) return std::nullopt;
    return id->ToString();
  };
  if (verb == "flush") {
    if (words.size() > 2) return need_argument("at most one DOMAIN");
    path = "/api/queue/flush";
    if (words.size() == 2) body = nlohmann::json{{"domain", words[1]}};
  } else if (verb == "suspended") {
    if (words.size() != 1) return need_argument("no argument");
    method = "GET";
    path = "/api/queue/suspended";
  } else if (verb == "suspend" || verb == "resume") {
    if (words.size() != 2) return need_argument("a DOMAIN");
    path = absl::StrCat("/api/queue/", verb);
    body = nlohmann::json{{"domain", words[1]}};
  } else if (verb == "bounce" && domain_option != command_line.values.end()) {
    if (words.size() != 1) return need_argument("either an ID or --domain D");
    path = "/api/queue/bounce";
    body = nlohmann::json{{"domain", domain_option->second}};
  } else {
    std::optional<std::string> id = need_id();
    if (!id.has_value()) return need_argument("a message ID (26 base32 characters)");
    path = absl::StrCat("/api/queue/", *id);
    if (verb == "delete") {
      method = "DELETE";
    } else {
      absl::StrAppend(&path, "/", verb);
    }
  }
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(config);
  if (!endpoints.ok() || endpoints->admin.empty()) {
    std::cerr << "facteur " << name
              << ": no running server with an admin API under " << config.data_dir
              << " (queue operations are carried out by the server)\n";
    return kExitUnavailable;
  }
  absl::StatusOr<nlohmann::json> answer =
      AdminCall(AdminEndpoint{endpoints->admin, endpoints->admin_token}, method, path, body);
  if (!answer.ok()) return ReportError(name, answer.status());
  if (command_line.json) {
    std::cout << admin::DumpJson(*answer) << "\n";
  } else if (verb == "suspended") {
    const nlohmann::json& domains = (*answer)["domains"];
    if (!domains.is_array() || domains.empty()) std::cout << "no domain is held\n";
    if (domains.is_array()) {
      for (const nlohmann::json& domain : domains) std::cout << domain.get<std::string>() << "\n";
    }
  } else {
    if (answer->value("was_held", true) == false) {
      std::cout << verb << ": " << words[1] << " was not held\n";
    }
    std::cout << verb << ": " << answer->value("messages", 0) << " message(s)";
    if (answer->value("recipients", 0) > 0) {
      std::cout << ", " << answer->value("recipients", 0) << " recipient(s)";
    }
    if (const uint64_t in_delivery = answer->value("in_delivery", uint64_t{0}); in_delivery > 0) {
      // The attempt under way is not cut: a server may be taking the message right now.
      std::cout << "; " << in_delivery << " of them out for delivery now: done when that "
                << "attempt ends, and what it delivers has gone (see the events log)";
    }
    std::cout << "\n";
  }
  return kExitOk;
}

// `queue summary`: GET /api/queue/summary.
int Summary(const config::Config& config, const CommandLine& command_line) {
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(config);
  if (!endpoints.ok() || endpoints->admin.empty()) {
    std::cerr << "facteur queue summary: no running server with an admin API under "
              << config.data_dir << "\n";
    return kExitUnavailable;
  }
  absl::StatusOr<nlohmann::json> answer =
      AdminCall(AdminEndpoint{endpoints->admin, endpoints->admin_token}, "GET",
                "/api/queue/summary", nullptr);
  if (!answer.ok()) return ReportError("queue summary", answer.status());
  if (command_line.json) {
    std::cout << admin::DumpJson(*answer) << "\n";
    return kExitOk;
  }
  const nlohmann::json& a = *answer;
  std::cout << "messages:   " << a.value("messages", 0) << "\n"
            << "due now:    " << a.value("due_now", 0) << "\n"
            << "scheduled:  " << a.value("scheduled", 0) << "\n"
            << "in flight:  " << a.value("in_flight", 0) << "\n"
            << "next due:   "
            << (a.contains("next_due") && a["next_due"].is_string()
                    ? a["next_due"].get<std::string>()
                    : std::string("-"))
            << "\n";
  const nlohmann::json sites = a.value("sites", nlohmann::json::array());
  // Scheduled mail not tried since the server started: no site is known for it yet.
  const uint64_t unattempted =
      a.value("totals", nlohmann::json::object()).value("unknown_site", uint64_t{0});
  if (sites.empty() && unattempted == 0) return kExitOk;
  std::cout << "\n";
  std::vector<std::vector<std::string>> rows = {
      {"SITE", "READY", "RECIPIENTS", "IN-FLIGHT", "HELD-BACK", "SCHEDULED"}};
  for (const nlohmann::json& site : sites) {
    rows.push_back({site.value("site", ""), absl::StrCat(site.value("ready_jobs", uint64_t{0})),
                    absl::StrCat(site.value("ready_recipients", uint64_t{0})),
                    absl::StrCat(site.value("in_flight_jobs", uint64_t{0})),
                    absl::StrCat(site.value("held_back_jobs", uint64_t{0})),
                    absl::StrCat(site.value("scheduled", uint64_t{0}))});
  }
  if (unattempted > 0) {
    rows.push_back({"(not tried since start)", "-", "-", "-", "-", absl::StrCat(unattempted)});
  }
  std::vector<size_t> widths(rows[0].size(), 0);
  for (const auto& row : rows) {
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line = absl::StrFormat("%-*s", static_cast<int>(widths[0]), row[0]);
    for (size_t i = 1; i < row.size(); ++i) {
      absl::StrAppend(&line, "  ", absl::StrFormat("%*s", static_cast<int>(widths[i]), row[i]));
    }
    std::cout << line << "\n";
  }
  return kExitOk;
}

}  // namespace

int QueueMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "queue", kUsage, {"limit", "domain"}, {"body", "all"}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (command_line->positional.empty()) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string& verb = command_line->positional[0];
  const bool operation = verb == "flush" || verb == "retry" || verb == "bounce" ||
                         verb == "delete" || verb == "suspend" || verb == "resume" ||
                         verb == "suspended";
  if (verb != "ls" && verb != "show" && verb != "count" && verb != "summary" && !operation) {
    std::cerr << "facteur queue: unknown command '" << verb << "'\n" << kUsage;
    return kExitUsage;
  }
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) return ReportError("queue", config.status());
  if (operation) return Operate(*config, *command_line);
  if (verb == "summary") return Summary(*config, *command_line);
  absl::StatusOr<std::unique_ptr<queue::Store>> store =
      queue::Store::OpenReadOnly(SpoolPath(*config));
  if (!store.ok()) return ReportError("queue", store.status());

  if (verb == "ls") return List(**store, *command_line);
  if (verb == "show") return Show(**store, *command_line);
  absl::StatusOr<uint64_t> count = queue::CountMessages(**store);
  if (!count.ok()) return ReportError("queue count", count.status());
  if (command_line->json) {
    std::cout << admin::DumpJson(nlohmann::json{{"count", *count}}) << "\n";
  } else {
    std::cout << *count << "\n";
  }
  return kExitOk;
}

}  // namespace facteur::cli
