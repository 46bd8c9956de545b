// File: engine/main/account_command.cc
// `facteur account add|del|passwd|list|grant|revoke`: the accounts that may submit mail and the
// addresses each may send as. With the server stopped the command opens the store itself; while
// a server runs (it holds the RocksDB lock) the command goes through the server's admin API, so
// that the running server sees the change at once.
// Passwords are read from standard input (a terminal prompt with echo off, or one line from a
// pipe), never from the command line where `ps` would show them.
// Thread contract: main thread of a short-lived process; blocking I/O is fine here.
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "engine/admin/json.h"
#include "engine/base/clock.h"
#include "engine/base/status.h"
#include "engine/main/admin_client.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "engine/policy/account_quotas.h"
#include "engine/policy/account_store.h"
#include "queue/store.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur account add NAME          (password on standard input)\n"
    "       facteur account passwd NAME       (password on standard input)\n"
    "       facteur account del NAME\n"
    "       facteur account list [--json]\n"
    "       facteur account grant NAME ADDRESS|@DOMAIN\n"
    "       facteur account revoke NAME ADDRESS|@DOMAIN\n"
    "       facteur account resume NAME       (after a suspension for unusual volume)\n"
    "An account may send only as the addresses and domains granted to it (MAIL FROM and From:).\n"
    "An account whose sending rate jumps far above its own history is suspended ([quota]);\n"
    "`resume` lets it send again.\n"
    "Works on a stopped server's data directory, or through a running server's admin API.\n"
    "Common options: --config FILE, --data-dir DIR.\n";

// What the account commands need, served by the store itself or by a running server.
class Accounts {
 public:
  virtual ~Accounts() = default;
  virtual absl::Status Create(const std::string& name, const std::string& password) = 0;
  virtual absl::Status Delete(const std::string& name) = 0;
  virtual absl::Status SetPassword(const std::string& name, const std::string& password) = 0;
  virtual absl::Status Grant(const std::string& name, const std::string& pattern) = 0;
  virtual absl::Status Revoke(const std::string& name, const std::string& pattern) = 0;
  // Every account as admin::AccountJson gives it (with its [quota] suspension).
  virtual absl::StatusOr<nlohmann::json> List() = 0;
  // Clears a suspension (volume or manual); whether there was one.
  virtual absl::StatusOr<bool> Resume(const std::string& name) = 0;
};

class LocalAccounts final : public Accounts {
 public:
  LocalAccounts(std::unique_ptr<queue::Store> store, std::unique_ptr<policy::AccountStore> accounts)
      : store_(std::move(store)), accounts_(std::move(accounts)) {}
  absl::Status Create(const std::string& n, const std::string& p) override {
    return accounts_->Create(n, p);
  }
  absl::Status Delete(const std::string& n) override { return accounts_->Delete(n); }
  absl::Status SetPassword(const std::string& n, const std::string& p) override {
    return accounts_->SetPassword(n, p);
  }
  absl::Status Grant(const std::string& n, const std::string& p) override {
    return accounts_->Grant(n, p);
  }
  absl::Status Revoke(const std::string& n, const std::string& p) override {
    return accounts_->Revoke(n, p);
  }
  absl::StatusOr<nlohmann::json> List() override {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<policy::Account> accounts, accounts_->List());
    nlohmann::json items = nlohmann::json::array();
    for (const policy::Account& account : accounts) {
      FACTEUR_ASSIGN_OR_RETURN(std::optional<throttle::AccountQuotaState> quota,
                               policy::ReadStoredAccountQuota(*store_, account.name));
      items.push_back(admin::AccountJson(account, quota.has_value() ? &*quota : nullptr));
    }
    return items;
  }
  absl::StatusOr<bool> Resume(const std::string& n) override {
    FACTEUR_ASSIGN_OR_RETURN(policy::Account account, accounts_->Get(n));
    FACTEUR_ASSIGN_OR_RETURN(bool resumed, policy::ResumeStoredAccount(*store_, n));
    if (account.suspended) {
      FACTEUR_RETURN_IF_ERROR(accounts_->SetSuspended(n, false));
      resumed = true;
    }
    return resumed;
  }

 private:
  std::unique_ptr<queue::Store> store_;  // declared first: outlives accounts_
  std::unique_ptr<policy::AccountStore> accounts_;
};

class RemoteAccounts final : public Accounts {
 public:
  explicit RemoteAccounts(AdminEndpoint admin) : admin_(std::move(admin)) {}

  absl::Status Create(const std::string& name, const std::string& password) override {
    return Call("POST", "/api/accounts", nlohmann::json{{"name", name}, {"password", password}});
  }
  absl::Status Delete(const std::string& name) override {
    return Call("DELETE", absl::StrCat("/api/accounts/", PathSegment(name)), nullptr);
  }
  absl::Status SetPassword(const std::string& name, const std::string& password) override {
    return Call("PUT", absl::StrCat("/api/accounts/", PathSegment(name), "/password"),
                nlohmann::json{{"password", password}});
  }
  absl::Status Grant(const std::string& name, const std::string& pattern) override {
    return Call("POST", absl::StrCat("/api/accounts/", PathSegment(name), "/grants"),
                nlohmann::json{{"pattern", pattern}});
  }
  absl::Status Revoke(const std::string& name, const std::string& pattern) override {
    return Call("DELETE",
                absl::StrCat("/api/accounts/", PathSegment(name), "/grants/", PathSegment(pattern)),
                nullptr);
  }
  absl::StatusOr<nlohmann::json> List() override {
    nlohmann::json answer;
    if (absl::Status s = Call("GET", "/api/accounts", nullptr, &answer); !s.ok()) return s;
    if (!answer.contains("accounts") || !answer["accounts"].is_array()) {
      return absl::DataLossError("admin API: unexpected account list");
    }
    return answer["accounts"];
  }
  absl::StatusOr<bool> Resume(const std::string& name) override {
    nlohmann::json answer;
    FACTEUR_RETURN_IF_ERROR(
        Call("POST", absl::StrCat("/api/accounts/", PathSegment(name), "/resume"), nullptr,
             &answer));
    return answer.is_object() && answer.value("resumed", false);
  }

 private:
  absl::Status Call(std::string_view method, const std::string& path, const nlohmann::json& body,
                    nlohmann::json* answer = nullptr) {
    absl::StatusOr<nlohmann::json> json = AdminCall(admin_, method, path, body);
    if (!json.ok()) return json.status();
    if (answer != nullptr) *answer = *std::move(json);
    return absl::OkStatus();
  }

  AdminEndpoint admin_;
};

absl::StatusOr<std::unique_ptr<Accounts>> OpenAccounts(const config::Config& config) {
  absl::StatusOr<std::unique_ptr<queue::Store>> store = queue::Store::Open(SpoolPath(config));
  if (store.ok()) {
    absl::StatusOr<std::unique_ptr<policy::AccountStore>> accounts =
        policy::AccountStore::Open(**store, RealClock::Get());
    if (!accounts.ok()) return accounts.status();
    return std::make_unique<LocalAccounts>(*std::move(store), *std::move(accounts));
  }
  if (!absl::IsFailedPrecondition(store.status())) return store.status();
  // A running server holds the store: ask it.
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(config);
  if (!endpoints.ok() || endpoints->admin.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        store.status().message(),
        "; and it has no admin listener to take the change: stop it, or enable [admin]"));
  }
  return std::make_unique<RemoteAccounts>(AdminEndpoint{endpoints->admin, endpoints->admin_token});
}

// One line from standard input, or a prompt with echo off when it is a terminal.
absl::StatusOr<std::string> ReadPassword() {
  if (::isatty(STDIN_FILENO)) {
    termios saved{};
    ::tcgetattr(STDIN_FILENO, &saved);
    termios quiet = saved;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    auto prompt = [&](const char* text) {
      std::cerr << text << std::flush;
      ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
      std::string line;
      std::getline(std::cin, line);
      ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
      std::cerr << "\n";
      return line;
    };
    std::string first = prompt("Password: ");
    std::string second = prompt("Again: ");
    if (first != second) return absl::InvalidArgumentError("the two passwords differ");
    return first;
  }
  std::string line;
  if (!std::getline(std::cin, line)) {
    return absl::InvalidArgumentError("no password on standard input");
  }
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

// "NAME (suspended): GRANTS", and for a suspended account a second line: by whom, since when,
// why, and how it ends.
void PrintAccount(const nlohmann::json& account, std::ostream& out) {
  const std::string name = account.value("name", "");
  const bool suspended = account.value("suspended", false);
  std::vector<std::string> grants;
  for (const nlohmann::json& g : account.value("grants", nlohmann::json::array())) {
    if (g.is_string()) grants.push_back(g.get<std::string>());
  }
  out << name << (suspended ? " (suspended)" : "") << ": "
      << (grants.empty() ? "(may send as nobody yet)" : absl::StrJoin(grants, " ")) << "\n";
  if (!suspended) return;
  const nlohmann::json by = account.value("suspended_by", nlohmann::json());
  out << "  suspended by " << (by.is_string() ? by.get<std::string>() : "administrator");
  if (const nlohmann::json at = account.value("suspended_at", nlohmann::json()); at.is_string()) {
    out << " since " << at.get<std::string>();
  }
  if (const nlohmann::json detail = account.value("suspension_detail", nlohmann::json());
      detail.is_string() && !detail.get<std::string>().empty()) {
    out << " (" << detail.get<std::string>() << ")";
  }
  out << ", until `facteur account resume " << name << "`\n";
}

}  // namespace

int AccountMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "account", kUsage, {}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  const std::vector<std::string>& words = command_line->positional;
  const std::string verb = words.empty() ? "" : words[0];
  const size_t arity = verb == "list" ? 1 : (verb == "grant" || verb == "revoke") ? 3 : 2;
  if (verb.empty() || words.size() != arity ||
      !(verb == "add" || verb == "del" || verb == "passwd" || verb == "list" || verb == "grant" ||
        verb == "revoke" || verb == "resume")) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string command = absl::StrCat("account ", verb);
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) return ReportError(command, config.status());
  absl::StatusOr<std::unique_ptr<Accounts>> accounts = OpenAccounts(*config);
  if (!accounts.ok()) return ReportError(command, accounts.status());

  absl::Status status;
  if (verb == "add" || verb == "passwd") {
    absl::StatusOr<std::string> password = ReadPassword();
    if (!password.ok()) return ReportError(command, password.status());
    status = verb == "add" ? (*accounts)->Create(words[1], *password)
                           : (*accounts)->SetPassword(words[1], *password);
    policy::WipeSecret(*password);
  } else if (verb == "del") {
    status = (*accounts)->Delete(words[1]);
  } else if (verb == "grant") {
    status = (*accounts)->Grant(words[1], words[2]);
  } else if (verb == "revoke") {
    status = (*accounts)->Revoke(words[1], words[2]);
  } else if (verb == "resume") {
    absl::StatusOr<bool> resumed = (*accounts)->Resume(words[1]);
    if (!resumed.ok()) return ReportError(command, resumed.status());
    std::cout << "account " << words[1]
              << (*resumed ? " resumed: it may send again" : " was not suspended") << "\n";
    return kExitOk;
  } else {
    absl::StatusOr<nlohmann::json> list = (*accounts)->List();
    if (!list.ok()) return ReportError(command, list.status());
    if (command_line->json) {
      std::cout << admin::DumpJson(nlohmann::json{{"accounts", *std::move(list)}}) << "\n";
    } else {
      for (const nlohmann::json& a : *list) PrintAccount(a, std::cout);
    }
    return kExitOk;
  }
  if (!status.ok()) return ReportError(command, status);
  return kExitOk;
}

}  // namespace facteur::cli
