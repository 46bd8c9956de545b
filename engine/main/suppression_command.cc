// File: engine/main/suppression_command.cc
// `facteur suppression list|add|remove`: the addresses refused at RCPT TO because their server
// said they do not exist (or because an operator said so). Like `facteur account`: with the
// server stopped the command opens the store itself; while a server runs (it holds the RocksDB
// lock) it goes through the admin API, so that the running server's in-memory list changes at
// once.
// Thread contract: main thread of a short-lived process; blocking I/O is fine here.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/admin/json.h"
#include "engine/base/status.h"
#include "engine/main/admin_client.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "engine/mail/address.h"
#include "queue/store.h"
#include "queue/suppression.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur suppression list [--json]\n"
    "       facteur suppression add ADDRESS [--reason WORD]\n"
    "       facteur suppression remove ADDRESS\n"
    "Mail to a suppressed address is refused at RCPT TO (550 5.1.1) instead of being sent.\n"
    "Delivery adds the addresses their servers reject as unknown; `add` adds one by hand\n"
    "(reason \"manual\" unless --reason says otherwise), `remove` lets mail go to it again.\n"
    "Works on a stopped server's data directory, or through a running server's admin API.\n"
    "Common options: --config FILE, --data-dir DIR.\n";

// What the commands need, served by the store itself or by a running server.
class Suppressions {
 public:
  virtual ~Suppressions() = default;
  virtual absl::StatusOr<std::vector<queue::SuppressionEntry>> List() = 0;
  virtual absl::Status Add(const std::string& address, const std::string& reason) = 0;
  virtual absl::Status Remove(const std::string& address) = 0;
};

class LocalSuppressions final : public Suppressions {
 public:
  LocalSuppressions(std::unique_ptr<queue::Store> store,
                    std::unique_ptr<queue::SuppressionList> list)
      : store_(std::move(store)), list_(std::move(list)) {}
  absl::StatusOr<std::vector<queue::SuppressionEntry>> List() override { return list_->List(); }
  absl::Status Add(const std::string& address, const std::string& reason) override {
    return list_->Add(address, reason, "", absl::Now());
  }
  absl::Status Remove(const std::string& address) override { return list_->Remove(address); }

 private:
  std::unique_ptr<queue::Store> store_;  // declared first: outlives list_
  std::unique_ptr<queue::SuppressionList> list_;
};

class RemoteSuppressions final : public Suppressions {
 public:
  explicit RemoteSuppressions(AdminEndpoint admin) : admin_(std::move(admin)) {}

  absl::StatusOr<std::vector<queue::SuppressionEntry>> List() override {
    FACTEUR_ASSIGN_OR_RETURN(nlohmann::json answer,
                             AdminCall(admin_, "GET", "/api/suppression", nullptr));
    if (!answer.is_object() || !answer.contains("addresses") || !answer["addresses"].is_array()) {
      return absl::DataLossError("admin API: unexpected suppression list");
    }
    std::vector<queue::SuppressionEntry> entries;
    for (const nlohmann::json& item : answer["addresses"]) {
      if (!item.is_object()) continue;
      queue::SuppressionEntry entry;
      entry.address = item.value("address", "");
      entry.reason = item.value("reason", "");
      entry.reply = item.value("reply", "");
      absl::Time added;
      std::string error;
      if (absl::ParseTime(absl::RFC3339_full, item.value("added_at", ""), &added, &error)) {
        entry.added_at = added;
      }
      entries.push_back(std::move(entry));
    }
    return entries;
  }
  absl::Status Add(const std::string& address, const std::string& reason) override {
    return AdminCall(admin_, "POST", "/api/suppression",
                     nlohmann::json{{"address", address}, {"reason", reason}})
        .status();
  }
  absl::Status Remove(const std::string& address) override {
    return AdminCall(admin_, "DELETE", absl::StrCat("/api/suppression/", PathSegment(address)),
                     nullptr)
        .status();
  }

 private:
  AdminEndpoint admin_;
};

absl::StatusOr<std::unique_ptr<Suppressions>> OpenSuppressions(const config::Config& config) {
  absl::StatusOr<std::unique_ptr<queue::Store>> store = queue::Store::Open(SpoolPath(config));
  if (store.ok()) {
    FACTEUR_ASSIGN_OR_RETURN(std::unique_ptr<queue::SuppressionList> list,
                             queue::SuppressionList::Open(**store));
    return std::make_unique<LocalSuppressions>(*std::move(store), std::move(list));
  }
  if (!absl::IsFailedPrecondition(store.status())) return store.status();
  // A running server holds the store: ask it.
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(config);
  if (!endpoints.ok() || endpoints->admin.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        store.status().message(),
        "; and it has no admin listener to take the change: stop it, or enable [admin]"));
  }
  return std::make_unique<RemoteSuppressions>(
      AdminEndpoint{endpoints->admin, endpoints->admin_token});
}

}  // namespace

int SuppressionMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "suppression", kUsage, {"reason"}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  const std::vector<std::string>& words = command_line->positional;
  const std::string verb = words.empty() ? "" : words[0];
  const size_t arity = verb == "list" ? 1 : 2;
  if (words.size() != arity || !(verb == "list" || verb == "add" || verb == "remove")) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string command = absl::StrCat("suppression ", verb);
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) return ReportError(command, config.status());

  std::string reason(queue::kSuppressedManual);
  if (auto it = command_line->values.find("reason"); it != command_line->values.end()) {
    reason = it->second;
  }
  if (verb == "add") {
    // The same rules as a RCPT TO address (RFC 5321 §4.1.2), so that what is added can match.
    std::string address = words[1];
    if (address.size() >= 2 && address.front() == '<' && address.back() == '>') {
      address = address.substr(1, address.size() - 2);
    }
    if (absl::StatusOr<mail::Mailbox> mailbox = mail::ParseMailbox(address, /*allow_utf8=*/true);
        !mailbox.ok()) {
      return ReportError(command, absl::InvalidArgumentError(absl::StrCat(
                                      "'", words[1], "' is not an address: ",
                                      mailbox.status().message())));
    }
    if (reason.empty() || reason.size() > 64) {
      return ReportError(command, absl::InvalidArgumentError(
                                      "--reason must be 1 to 64 characters long"));
    }
  }

  absl::StatusOr<std::unique_ptr<Suppressions>> list = OpenSuppressions(*config);
  if (!list.ok()) return ReportError(command, list.status());
  if (verb == "add" || verb == "remove") {
    absl::Status status =
        verb == "add" ? (*list)->Add(words[1], reason) : (*list)->Remove(words[1]);
    if (!status.ok()) return ReportError(command, status);
    return kExitOk;
  }
  absl::StatusOr<std::vector<queue::SuppressionEntry>> entries = (*list)->List();
  if (!entries.ok()) return ReportError(command, entries.status());
  if (command_line->json) {
    nlohmann::json items = nlohmann::json::array();
    for (const queue::SuppressionEntry& e : *entries) {
      items.push_back({{"address", e.address},
                       {"reason", e.reason},
                       {"added_at", admin::Rfc3339(e.added_at)},
                       {"reply", e.reply}});
    }
    std::cout << admin::DumpJson(nlohmann::json{{"addresses", std::move(items)}}) << "\n";
    return kExitOk;
  }
  for (const queue::SuppressionEntry& e : *entries) {
    std::cout << e.address << "  " << admin::Rfc3339(e.added_at) << "  " << e.reason
              << (e.reply.empty() ? "" : absl::StrCat("  ", e.reply)) << "\n";
  }
  return kExitOk;
}

}  // namespace facteur::cli
