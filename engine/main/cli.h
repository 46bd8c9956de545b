// File: engine/main/cli.h
// What every subcommand of the facteur binary shares: option parsing, loading the
// configuration (a file, or the embedded default) with --data-dir applied, the endpoints file a
// running server leaves in its data directory, and the exit codes (sysexits.h).
// Thread contract: main thread of the process.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string_view>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/config/config.h"
#include "engine/tls/tls_context.h"

namespace facteur::cli {

struct CommandLine {
  std::string config_path;  // --config FILE; empty: the embedded default
  std::string data_dir;     // --data-dir DIR; overrides the configuration's data_dir
  bool json = false;        // --json
  bool help = false;        // --help / -h
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;  // other --flag VALUE options
  std::set<std::string> switches;             // other --flag options
};

// Parses `args` (the words after the subcommand). `value_flags` take a value ("--limit 10" or
// "--limit=10"); `switch_flags` do not. --config, --data-dir, --json and --help always exist.
absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args,
                                             const std::set<std::string>& value_flags,
                                             const std::set<std::string>& switch_flags);

// ParseCommandLine for subcommand `command`, with the usual endings handled: on --help prints
// `usage` and sets *exit_code to 0; on a usage error prints the error and `usage` to stderr and
// sets *exit_code to 64. Returns the command line only when the command should run.
std::optional<CommandLine> ParseOrExit(const std::vector<std::string>& args,
                                       std::string_view command, std::string_view usage,
                                       const std::set<std::string>& value_flags,
                                       const std::set<std::string>& switch_flags, int* exit_code);

// The configuration a command reads when no --config names one: $FACTEUR_CONFIG when set, else
// kSystemConfigPath when it exists (so that `facteur account add` beside a systemd service
// finds its spool, as Postfix's commands find /etc/postfix), else "": the embedded default.
inline constexpr char kSystemConfigPath[] = "/etc/facteur/facteur.toml";
std::string DefaultConfigPath();

// The configuration the command line names (or DefaultConfigPath()), with --data-dir applied
// and data_dir made absolute (so that paths stay right whatever the working directory of a
// later process).
absl::StatusOr<config::Config> LoadConfig(const CommandLine& command_line);

// The server certificate pair [tls] names (when it names one: check first), as `serve` loads
// it; an error names the keys.
absl::StatusOr<std::unique_ptr<tls::TlsServerContext>> LoadServerCertificate(
    const config::Config& config);

// The files `config` names that a start or a reload reads besides it: the shaping and
// classifier files, and every [[dkim.key]] file (found, private to its owner, a key). What
// `config check` and `reload` check before they say ok; the error names the file.
absl::Status CheckFilesItNames(const config::Config& config);

// Where the spool of `config` lives.
std::string SpoolPath(const config::Config& config);
// The Unix socket of `config` (its first unix: listener), or "" when it has none.
std::string SocketPath(const config::Config& config);

// <data_dir>/endpoints.json, written by `facteur serve` once it listens.
struct Endpoints {
  int pid = 0;
  std::string admin;   // "127.0.0.1:9464", or "" when disabled
  std::string socket;  // Unix socket path, or ""
  std::string admin_token;  // from [admin] token_file; "" when none
};

// The bearer token of [admin] token_file ("" when none is set): the first line of the file,
// refused when the file is open to group or others or the token is empty.
absl::StatusOr<std::string> ReadAdminToken(const config::Config& config);
std::string EndpointsPath(const config::Config& config);
absl::StatusOr<Endpoints> ReadEndpoints(const config::Config& config);

// sysexits.h codes used by the CLI.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 64;        // EX_USAGE
inline constexpr int kExitDataError = 65;    // EX_DATAERR
inline constexpr int kExitNoInput = 66;      // EX_NOINPUT
inline constexpr int kExitUnavailable = 69;  // EX_UNAVAILABLE
inline constexpr int kExitSoftware = 70;     // EX_SOFTWARE
inline constexpr int kExitIoError = 74;      // EX_IOERR
inline constexpr int kExitTempFail = 75;     // EX_TEMPFAIL
inline constexpr int kExitConfig = 78;       // EX_CONFIG

// Prints "facteur <command>: <status message>" on stderr; returns the exit code that fits the
// status (NotFound → 66, InvalidArgument → 65, Unavailable → 75, …).
int ReportError(std::string_view command, const absl::Status& status);

}  // namespace facteur::cli
