// File: engine/main/reload_command.cc
// `facteur reload`: asks the running server to read its configuration again (SIGHUP, what
// systemd's ExecReload sends). The configuration and the files it names (shaping, classifier,
// DKIM keys) are checked first, as `facteur config check` does: a file the server would refuse is reported here, with its
// file:line, and no signal is sent. The server is found through the pid in
// <data_dir>/endpoints.json, and only signalled if that pid still runs `facteur serve`.
// What the server reloaded, and what needs a restart, is in its log.
// Thread contract: main thread of a short-lived process.
#include <signal.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur reload [--config FILE] [--data-dir DIR]\n"
    "Checks the configuration, then sends SIGHUP to the running server (its pid is in\n"
    "DATA_DIR/endpoints.json). The server then swaps its TLS certificate, shaping and classifier\n"
    "rules, DKIM keys and shutdown_grace without dropping a connection, reopens its events log,\n"
    "and logs the keys that need a restart. Exits 78 on a configuration error (nothing sent),\n"
    "69 when no server runs.\n";

// Whether `pid` runs `facteur serve` (its command line holds the word "serve"): a stale
// endpoints.json must not make us signal whatever process got its pid since.
bool RunsServe(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"), std::ios::binary);
  if (!in) return false;
  std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t start = 0;
  while (start < cmdline.size()) {
    size_t end = cmdline.find('\0', start);
    if (end == std::string::npos) end = cmdline.size();
    if (cmdline.compare(start, end - start, "serve") == 0) return true;
    start = end + 1;
  }
  return false;
}

}  // namespace

int ReloadMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "reload", kUsage, {}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (!command_line->positional.empty()) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) {
    std::cerr << "facteur reload: not sent, the server would refuse it: "
              << config.status().message() << "\n";
    return kExitConfig;
  }
  if (absl::Status files = CheckFilesItNames(*config); !files.ok()) {
    std::cerr << "facteur reload: not sent, the server would refuse it: " << files.message()
              << "\n";
    return kExitConfig;
  }
  absl::StatusOr<Endpoints> endpoints = ReadEndpoints(*config);
  if (!endpoints.ok() || endpoints->pid <= 0 || !RunsServe(endpoints->pid)) {
    std::cerr << "facteur reload: no running server for data directory " << config->data_dir
              << "\n";
    return kExitUnavailable;
  }
  if (::kill(endpoints->pid, SIGHUP) != 0) {
    std::cerr << "facteur reload: signal to pid " << endpoints->pid
              << " failed: " << std::strerror(errno) << "\n";
    return errno == EPERM ? kExitUnavailable : kExitSoftware;
  }
  std::cout << "SIGHUP sent to facteur (pid " << endpoints->pid
            << "): its log says what was reloaded\n";
  return kExitOk;
}

}  // namespace facteur::cli
