// File: engine/main/main.cc
// The facteur binary: one executable, subcommands (serve, queue, account, dkim, reputation,
// config, version, sendmail). When invoked under the name "sendmail" it behaves as `facteur
// sendmail`, so it can be installed as /usr/sbin/sendmail for PHP's mail(), cron and scripts.
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include <openssl/crypto.h>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "engine/config/config.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "engine/main/sendmail.h"
#include "nlohmann/json.hpp"
#include "rocksdb/version.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur COMMAND [OPTIONS]\n"
    "Commands:\n"
    "  serve      run the relay (SMTP listeners, queue, admin HTTP)\n"
    "  queue      ls | show ID | count | summary: what the queue holds; flush, retry, ...\n"
    "  account    add | del | passwd | list | grant | revoke | resume: who may submit, as whom\n"
    "  suppression list | add | remove: addresses refused at RCPT TO (unknown mailboxes)\n"
    "  dkim       keygen | check: DKIM keys and their DNS records\n"
    "  reputation health, recent replies and warmup caps per (source IP, site)\n"
    "  site       list | suspend SITE | resume SITE: delivery sites and their (source, site) pairs\n"
    "  top        live delivery rates by site\n"
    "  config     check FILE: validate a configuration file\n"
    "  reload     check the configuration, then make the running server read it again (SIGHUP)\n"
    "  version    print the version\n"
    "  sendmail   sendmail(1)-compatible submission through the Unix socket\n"
    "Every command accepts --help. Common options: --config FILE, --data-dir DIR, --json.\n";

constexpr char kConfigUsage[] =
    "usage: facteur config check FILE\n"
    "Validates FILE, and the shaping, classifier and DKIM key files it names; on error prints\n"
    "FILE:LINE:COLUMN, the key and the reason (or the file named and what is wrong with it),\n"
    "and exits 78.\n";

}  // namespace

int ConfigMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "config", kConfigUsage, {}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (command_line->positional.size() != 2 || command_line->positional[0] != "check") {
    std::cerr << kConfigUsage;
    return kExitUsage;
  }
  const std::string& path = command_line->positional[1];
  absl::StatusOr<config::Config> config = config::LoadConfigFile(path);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return kExitConfig;
  }
  // The shaping, classifier and key files it names are part of the configuration too.
  if (absl::Status files = CheckFilesItNames(*config); !files.ok()) {
    std::cerr << path << ": " << files.message() << "\n";
    return kExitConfig;
  }
  std::cout << path << ": ok\n";
  return kExitOk;
}

int VersionMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "version", "usage: facteur version [--json]\n", {}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  const std::string rocksdb = std::to_string(ROCKSDB_MAJOR) + "." + std::to_string(ROCKSDB_MINOR) +
                              "." + std::to_string(ROCKSDB_PATCH);
  if (command_line->json) {
    std::cout << nlohmann::json{{"version", FACTEUR_VERSION},
                                {"openssl", OpenSSL_version(OPENSSL_VERSION_STRING)},
                                {"rocksdb", rocksdb}}
                     .dump()
              << "\n";
  } else {
    std::cout << "facteur " << FACTEUR_VERSION << " (OpenSSL "
              << OpenSSL_version(OPENSSL_VERSION_STRING) << ", RocksDB " << rocksdb << ")\n";
  }
  return kExitOk;
}

int SendmailCommand(const std::vector<std::string>& args) {
  // --config / --data-dir choose the socket; every other word is sendmail's.
  CommandLine command_line;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--config") command_line.config_path = args[i + 1];
    if (args[i] == "--data-dir") command_line.data_dir = args[i + 1];
  }
  SendmailContext context;
  absl::StatusOr<config::Config> config = LoadConfig(command_line);
  if (!config.ok()) {
    std::cerr << "facteur sendmail: " << config.status().message() << "\n";
    return kExitTempFail;  // a mail submitter retries later; the admin fixes the file
  }
  context.default_socket_path = SocketPath(*config);
  context.hostname = config->hostname;
  return SendmailMain(args, context);
}

}  // namespace facteur::cli

int main(int argc, char** argv) {
  using namespace facteur::cli;
#ifdef NDEBUG
  // Debian builds abseil without NDEBUG, so its Mutex keeps a global lock-order graph on every
  // Lock() (absl deadlock detection: a debugging aid, a few percent of the relay's CPU and a
  // global spinlock). Our debug and sanitizer builds keep it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
#endif
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string_view program(argv[0]);
  if (size_t slash = program.rfind('/'); slash != std::string_view::npos) {
    program.remove_prefix(slash + 1);
  }
  if (program == "sendmail") return SendmailCommand(args);
  // The common options may come before the command too ("facteur --config F queue ls"): they
  // go right after it, before anything a "--" would make positional (sendmail's recipients).
  std::vector<std::string> common;
  auto is_common = [](const std::string& arg) {
    return arg == "--config" || arg == "--data-dir" || arg == "--json" ||
           absl::StartsWith(arg, "--config=") || absl::StartsWith(arg, "--data-dir=");
  };
  while (!args.empty() && is_common(args[0])) {
    if (const size_t eq = args[0].find('='); eq != std::string::npos) {
      // "--config=F" as two words: sendmail reads only that form.
      common.push_back(args[0].substr(0, eq));
      common.push_back(args[0].substr(eq + 1));
      args.erase(args.begin());
      continue;
    }
    const bool takes_next = (args[0] == "--config" || args[0] == "--data-dir") && args.size() > 1;
    const size_t words = takes_next ? 2 : 1;
    common.insert(common.end(), args.begin(), args.begin() + words);
    args.erase(args.begin(), args.begin() + words);
  }
  if (args.empty()) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  args.insert(args.begin(), common.begin(), common.end());
  if (command == "serve") return ServeMain(args);
  if (command == "queue") return QueueMain(args);
  if (command == "account") return AccountMain(args);
  if (command == "suppression") return SuppressionMain(args);
  if (command == "dkim") return DkimMain(args);
  if (command == "reputation") return ReputationMain(args);
  if (command == "site") return SiteMain(args);
  if (command == "top") return TopMain(args);
  if (command == "config") return ConfigMain(args);
  if (command == "reload") return ReloadMain(args);
  if (command == "version" || command == "--version") return VersionMain(args);
  if (command == "sendmail") return SendmailCommand(args);
  if (command == "help" || command == "--help" || command == "-h") {
    std::cout << kUsage;
    return kExitOk;
  }
  std::cerr << "facteur: unknown command '" << command << "'\n" << kUsage;
  return kExitUsage;
}
