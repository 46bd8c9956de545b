#include "engine/main/cli.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/secret_file.h"
#include "engine/base/status.h"
#include "engine/delivery/shaping.h"
#include "engine/dkim/signing_table.h"
#include "engine/tls/tls_context.h"
#include "nlohmann/json.hpp"

namespace facteur::cli {

absl::StatusOr<CommandLine> ParseCommandLine(const std::vector<std::string>& args,
                                             const std::set<std::string>& value_flags,
                                             const std::set<std::string>& switch_flags) {
  CommandLine result;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--") {
      result.positional.insert(result.positional.end(), args.begin() + i + 1, args.end());
      break;
    }
    if (arg == "-h" || arg == "--help") {
      result.help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--")) {
      result.positional.push_back(arg);
      continue;
    }
    std::string value;
    bool has_inline_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_inline_value = true;
    }
    const std::string name = arg.substr(2);
    const bool takes_value = name == "config" || name == "data-dir" || value_flags.count(name);
    if (takes_value) {
      if (!has_inline_value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(absl::StrCat("option ", arg, " needs a value"));
        }
        value = args[++i];
      }
      if (name == "config") {
        result.config_path = value;
      } else if (name == "data-dir") {
        result.data_dir = value;
      } else {
        result.values[name] = value;
      }
    } else if (name == "json" || switch_flags.count(name)) {
      if (has_inline_value) {
        return absl::InvalidArgumentError(absl::StrCat("option ", arg, " takes no value"));
      }
      if (name == "json") {
        result.json = true;
      } else {
        result.switches.insert(name);
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option ", arg));
    }
  }
  return result;
}

std::optional<CommandLine> ParseOrExit(const std::vector<std::string>& args,
                                       std::string_view command, std::string_view usage,
                                       const std::set<std::string>& value_flags,
                                       const std::set<std::string>& switch_flags, int* exit_code) {
  absl::StatusOr<CommandLine> command_line = ParseCommandLine(args, value_flags, switch_flags);
  if (!command_line.ok()) {
    std::cerr << "facteur " << command << ": " << command_line.status().message() << "\n"
              << usage;
    *exit_code = kExitUsage;
    return std::nullopt;
  }
  if (command_line->help) {
    std::cout << usage;
    *exit_code = kExitOk;
    return std::nullopt;
  }
  return *std::move(command_line);
}

std::string DefaultConfigPath() {
  if (const char* named = std::getenv("FACTEUR_CONFIG"); named != nullptr && *named != '\0') {
    return named;
  }
  std::error_code error;
  if (std::filesystem::exists(kSystemConfigPath, error)) return kSystemConfigPath;
  return "";
}

absl::StatusOr<config::Config> LoadConfig(const CommandLine& command_line) {
  config::Config config;
  const std::string path =
      command_line.config_path.empty() ? DefaultConfigPath() : command_line.config_path;
  if (path.empty()) {
    config = config::DefaultConfig();
  } else {
    FACTEUR_ASSIGN_OR_RETURN(config, config::LoadConfigFile(path));
  }
  if (!command_line.data_dir.empty()) config.data_dir = command_line.data_dir;
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(config.data_dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("data directory ", config.data_dir, ": ", error.message()));
  }
  config.data_dir = absolute.lexically_normal().string();
  if (config.data_dir.size() > 1 && config.data_dir.back() == '/') config.data_dir.pop_back();
  return config;
}

namespace {

// A file the server reads as its own user (a systemd DynamicUser, say) may be closed to an
// administrator running a command as another user, which says nothing of the server: noted,
// not an error.
absl::Status NotedIfPermissionDenied(absl::Status status) {
  if (!absl::IsPermissionDenied(status)) return status;
  std::cerr << "facteur: note: " << status.message() << ": not checked as uid " << ::getuid()
            << " (the server reads it as its own user)\n";
  return absl::OkStatus();
}

// The server's own certificate ([tls], when a listener has TLS): both files there, readable,
// and a pair, as `serve` will load them.
absl::Status CheckTlsFiles(const config::Config& config) {
  const bool needs_tls =
      std::any_of(config.listeners.begin(), config.listeners.end(),
                  [](const config::ListenerOptions& l) { return l.tls != config::TlsMode::kNone; });
  if (!needs_tls || config.tls.certificate_file.empty()) return absl::OkStatus();
  const std::string certificate = config.ResolvePath(config.tls.certificate_file);
  const std::string key = config.ResolvePath(config.tls.private_key_file);
  for (const auto& [name, path] : {std::pair{"tls.certificate_file", &certificate},
                                   std::pair{"tls.private_key_file", &key}}) {
    if (::access(path->c_str(), R_OK) != 0) {
      return NotedIfPermissionDenied(ErrnoStatus(absl::StrCat(name, " ", *path), errno));
    }
  }
  return LoadServerCertificate(config).status();
}

}  // namespace

absl::StatusOr<std::unique_ptr<tls::TlsServerContext>> LoadServerCertificate(
    const config::Config& config) {
  absl::StatusOr<std::unique_ptr<tls::TlsServerContext>> loaded =
      tls::TlsServerContext::FromFiles(config.ResolvePath(config.tls.certificate_file),
                                       config.ResolvePath(config.tls.private_key_file));
  if (!loaded.ok()) {
    return WithContext("tls.certificate_file and tls.private_key_file", loaded.status());
  }
  return loaded;
}

absl::Status CheckFilesItNames(const config::Config& config) {
  FACTEUR_RETURN_IF_ERROR(delivery::Shaping::Load(config).status());
  FACTEUR_RETURN_IF_ERROR(NotedIfPermissionDenied(dkim::SigningTable::FromConfig(config).status()));
  FACTEUR_RETURN_IF_ERROR(CheckTlsFiles(config));
  if (config.admin.token_file.empty()) return absl::OkStatus();
  return NotedIfPermissionDenied(WithContext("admin.token_file", ReadAdminToken(config).status()));
}

std::string SpoolPath(const config::Config& config) { return config.SpoolPath(); }

std::string SocketPath(const config::Config& config) {
  for (const config::ListenerOptions& listener : config.listeners) {
    if (listener.is_unix()) return config.ResolvePath(listener.unix_path());
  }
  return "";
}

absl::StatusOr<std::string> ReadAdminToken(const config::Config& config) {
  if (config.admin.token_file.empty()) return std::string();
  const std::string path = config.ResolvePath(config.admin.token_file);
  FACTEUR_ASSIGN_OR_RETURN(std::string text, ReadSecretFile(path, "admin token file"));
  std::string token = text.substr(0, text.find('\n'));
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("admin token file ", path, " is empty"));
  }
  return token;
}

std::string EndpointsPath(const config::Config& config) {
  return config.ResolvePath("endpoints.json");
}

absl::StatusOr<Endpoints> ReadEndpoints(const config::Config& config) {
  const std::string path = EndpointsPath(config);
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": no running server left it"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not JSON"));
  }
  Endpoints endpoints;
  FACTEUR_ASSIGN_OR_RETURN(endpoints.admin_token, ReadAdminToken(config));
  endpoints.pid = json.value("pid", 0);
  endpoints.admin = json.value("admin", "");
  endpoints.socket = json.value("socket", "");
  return endpoints;
}

int ReportError(std::string_view command, const absl::Status& status) {
  std::cerr << "facteur " << command << ": " << status.message() << "\n";
  switch (status.code()) {
    case absl::StatusCode::kNotFound:
      return kExitNoInput;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kAlreadyExists:
      return kExitDataError;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kFailedPrecondition:
      return kExitTempFail;
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDataLoss:
      return kExitIoError;
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
      return kExitUnavailable;
    default:
      return kExitSoftware;
  }
}

}  // namespace facteur::cli
