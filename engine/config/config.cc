// File: engine/config/config.cc
// TOML → Config. toml++ throws; every exception is caught here and becomes a Status, so nothing
// crosses the module boundary (STYLE.md rule 1). Validation stops at the first error, and every
// error names the source, the line and column toml++ recorded, and the dotted key.
#include "engine/config/config.h"

#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/base/status.h"
#include "engine/config/toml_reader.h"
#include "engine/mail/address.h"
#include "toml++/toml.h"

namespace facteur::config {
namespace {

constexpr uint64_t kMaxMessageSize = uint64_t{4} << 30;  // 4 GiB: SIZE values stay 32-bit-safe
constexpr uint32_t kMaxThreads = 256;
constexpr uint32_t kMaxBatch = 65536;
constexpr uint32_t kMaxDnsAttempts = 16;
constexpr uint16_t kDnsPort = 53;
// sockaddr_un.sun_path is 108 bytes including the terminating NUL.
constexpr size_t kMaxUnixPath = 107;
// A config file is small; the cap keeps `--config /dev/zero` from eating memory.
constexpr size_t kMaxConfigFileSize = 16 << 20;

constexpr std::string_view kDefaultConfigToml = R"toml(# facteur's embedded defaults: what `facteur serve` runs without --config.
data_dir = "./var"

[admin]
address = "127.0.0.1:9464"

[[listener]]
name = "relay"
address = "127.0.0.1:2525"
role = "relay"
tls = "none"
trusted_networks = ["127.0.0.0/8", "::1/128"]

[[listener]]
name = "local"
address = "unix:facteur.sock"
)toml";

const std::vector<std::string_view> kTopKeys = {
    "data_dir", "hostname", "io_threads", "auth_threads", "smtp",     "tls",    "spool", "admin",
    "dns",      "delivery", "events",     "dkim",         "listener", "source", "route",
    "shaping",  "clock",    "quota"};
const std::vector<std::string_view> kSmtpKeys = {
    "max_message_size", "max_recipients",    "max_errors",         "idle_timeout",
    "max_sessions",     "auth_max_failures", "auth_failure_window"};
const std::vector<std::string_view> kTlsKeys = {"certificate_file", "private_key_file"};
const std::vector<std::string_view> kSpoolKeys = {"path", "max_batch", "max_unsynced"};
const std::vector<std::string_view> kAdminKeys = {"address", "token_file"};
const std::vector<std::string_view> kListenerKeys = {"name", "address", "role", "tls",
                                                     "trusted_networks"};
const std::vector<std::string_view> kDnsKeys = {"nameservers", "timeout", "attempts",
                                                "max_queries_in_flight"};
const std::vector<std::string_view> kDeliveryKeys = {
    "enabled",
    "smtp_port",
    "pool",
    "tls",
    "tls_ca_file",
    "max_connections_per_destination",
    "max_messages_per_connection",
    "max_recipients_per_transaction",
    "max_messages_in_flight",
    "max_bytes_in_flight",
    "metrics_site_labels",
    "connection_idle_timeout",
    "connect_timeout",
    "greeting_timeout",
    "command_timeout",
    "data_initiation_timeout",
    "data_block_timeout",
    "data_termination_timeout",
    "first_retry",
    "retry_backoff",
    "max_retry_interval",
    "retry_jitter",
    "queue_lifetime",
    "validate_recipient_domains",
    "shutdown_grace"};
const std::vector<std::string_view> kEventsKeys = {"path"};
const std::vector<std::string_view> kShapingKeys = {"file", "classifier_file"};
const std::vector<std::string_view> kClockKeys = {"speed", "anchor"};
const std::vector<std::string_view> kDkimKeys = {"engine", "threads", "max_queued", "key"};
const std::vector<std::string_view> kDkimKeyKeys = {"domain", "selector", "algorithm", "key_file",
                                                    "account"};
const std::vector<std::string_view> kQuotaKeys = {
    "messages_per_hour", "messages_per_day",     "recipients_per_message", "anomaly_detection",
    "anomaly_window",    "anomaly_factor",       "anomaly_min_messages",   "history_half_life",
    "account"};
const std::vector<std::string_view> kQuotaAccountKeys = {
    "name", "messages_per_hour", "messages_per_day", "recipients_per_message",
    "anomaly_detection"};
const std::vector<std::string_view> kSourceKeys = {"name", "address", "ehlo_name", "pool"};
const std::vector<std::string_view> kRouteKeys = {"domain", "destination", "tls", "pool"};

// One spelling of an enum value in the config; each table is the only place a spelling lives.
constexpr EnumName<DeliveryTlsPolicy> kDeliveryTlsPolicies[] = {
    {"none", DeliveryTlsPolicy::kNone},
    {"opportunistic", DeliveryTlsPolicy::kOpportunistic},
    {"required", DeliveryTlsPolicy::kRequired},
};
constexpr EnumName<DkimAlgorithm> kDkimAlgorithms[] = {
    {"rsa-sha256", DkimAlgorithm::kRsaSha256},
    {"ed25519-sha256", DkimAlgorithm::kEd25519Sha256},  // RFC 8463
};
constexpr EnumName<DkimEngine> kDkimEngines[] = {
    {"native", DkimEngine::kNative},
    {"opendkim", DkimEngine::kOpenDkim},
};



// Digits only: no sign, no spaces, no hex; absl::SimpleAtoi alone accepts "+5" and " 5".
bool ParseDigits(std::string_view text, uint64_t max, uint64_t& out) {
  if (text.empty() || text.size() > 20) return false;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (max - digit) / 10) return false;
    value = value * 10 + digit;
  }
  out = value;
  return true;
}



// An RFC 5321 §4.1.2 Domain in ASCII (an internationalised name in its A-label form), not an
// address literal, and not all-numeric in its last label (RFC 3696 §2: no top-level domain is),
// so that "192.0.2.1" or "999.1.1.1" is never taken for a host name.
bool IsDomainName(std::string_view domain) {
  if (domain.empty() || domain.front() == '[' || !mail::IsValidDomain(domain, false)) return false;
  size_t dot = domain.rfind('.');
  std::string_view last = dot == std::string_view::npos ? domain : domain.substr(dot + 1);
  return !std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// inet_pton of `text` into `out` (16 bytes); false for anything but an IPv4 (v6 = false) or IPv6
// literal. An embedded NUL must not shorten the input, so it fails.
bool ParseIpLiteral(std::string_view text, bool& v6, uint8_t* out) {
  std::string host(text);
  if (host.find('\0') != std::string::npos) return false;
  if (inet_pton(AF_INET, host.c_str(), out) == 1) {
    v6 = false;
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), out) == 1) {
    v6 = true;
    return true;
  }
  return false;
}

// A port of 1 to 65535 in digits only.
bool ParsePort(std::string_view text, uint16_t& out) {
  uint64_t port = 0;
  if (text.size() > 5 || !ParseDigits(text, 65535, port) || port == 0) return false;
  out = static_cast<uint16_t>(port);
  return true;
}

bool IsOpenRelay(const Cidr& network) {
  if (network.prefix_length == 0) return true;
  // ::ffff:0:0/96 (or shorter) holds every IPv4-mapped peer of a dual-stack socket.
  static const uint8_t kMappedAny[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0};
  return network.v6 && network.prefix_length <= 96 && network.Contains(kMappedAny, 16);
}

// Where a listener's keys were written, for errors found after all listeners are read.
struct ListenerSource {
  toml::source_region table;
  toml::source_region name;
  toml::source_region address;
};

class Parser : private TomlReader {
 public:
  explicit Parser(std::string_view source_name) : TomlReader(source_name) {}

  absl::StatusOr<Config> Parse(const toml::table& root) {
    Config config;
    FACTEUR_RETURN_IF_ERROR(CheckKeys(root, "", kTopKeys));
    FACTEUR_RETURN_IF_ERROR(ReadString(root, "", "data_dir", config.data_dir));
    if (config.data_dir.empty()) {
      return Error(root.get("data_dir")->source(), "data_dir", "must not be empty");
    }
    FACTEUR_RETURN_IF_ERROR(ReadString(root, "", "hostname", config.hostname));
    if (const toml::node* node = root.get("hostname")) {
      FACTEUR_RETURN_IF_ERROR(CheckHostname(*node, "hostname", config.hostname));
    } else {
      config.hostname = MachineHostname();
    }
    FACTEUR_RETURN_IF_ERROR(ReadInteger(root, "", "io_threads", 0, kMaxThreads, config.io_threads));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(root, "", "auth_threads", 1, kMaxThreads, config.auth_threads));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* smtp, SubTable(root, "smtp", kSmtpKeys));
    if (smtp != nullptr) FACTEUR_RETURN_IF_ERROR(ParseSmtp(*smtp, config.smtp));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* tls, SubTable(root, "tls", kTlsKeys));
    if (tls != nullptr) FACTEUR_RETURN_IF_ERROR(ParseTls(*tls, config.tls));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* spool, SubTable(root, "spool", kSpoolKeys));
    if (spool != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadString(*spool, "spool", "path", config.spool.path));
      FACTEUR_RETURN_IF_ERROR(
          ReadInteger(*spool, "spool", "max_batch", 1, kMaxBatch, config.spool.max_batch));
      FACTEUR_RETURN_IF_ERROR(
          ReadDuration(*spool, "spool", "max_unsynced", config.spool.max_unsynced));
    }

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* admin, SubTable(root, "admin", kAdminKeys));
    if (admin != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadString(*admin, "admin", "address", config.admin.address));
      FACTEUR_RETURN_IF_ERROR(
          ReadString(*admin, "admin", "token_file", config.admin.token_file));
      const toml::node* node = admin->get("address");
      if (node != nullptr && !config.admin.address.empty()) {
        const toml::source_region& where = node->source();
        absl::StatusOr<ListenAddress> address = ParseListenAddress(config.admin.address);
        if (!address.ok()) return Error(where, "admin.address", address.status().message());
        if (address->family == ListenAddress::Family::kUnix) {
          return Error(where, "admin.address",
                       "must be HOST:PORT; the admin HTTP listener has no Unix socket");
        }
      }
    }

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* dns, SubTable(root, "dns", kDnsKeys));
    if (dns != nullptr) FACTEUR_RETURN_IF_ERROR(ParseDns(*dns, config.dns));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* delivery,
                             SubTable(root, "delivery", kDeliveryKeys));
    if (delivery != nullptr) FACTEUR_RETURN_IF_ERROR(ParseDelivery(*delivery, config.delivery));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* events, SubTable(root, "events", kEventsKeys));
    if (events != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadString(*events, "events", "path", config.events.path));
    }

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* dkim, SubTable(root, "dkim", kDkimKeys));
    if (dkim != nullptr) FACTEUR_RETURN_IF_ERROR(ParseDkim(*dkim, config.dkim));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* quota, SubTable(root, "quota", kQuotaKeys));
    if (quota != nullptr) FACTEUR_RETURN_IF_ERROR(ParseQuota(*quota, config.quota));

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* shaping, SubTable(root, "shaping", kShapingKeys));
    if (shaping != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadString(*shaping, "shaping", "file", config.shaping.file));
      FACTEUR_RETURN_IF_ERROR(ReadString(*shaping, "shaping", "classifier_file",
                                         config.shaping.classifier_file));
    }

    FACTEUR_ASSIGN_OR_RETURN(const toml::table* clock, SubTable(root, "clock", kClockKeys));
    if (clock != nullptr) {
      FACTEUR_RETURN_IF_ERROR(ReadNumber(*clock, "clock", "speed", 0.001, 1e6, config.clock.speed));
      FACTEUR_RETURN_IF_ERROR(ReadNumber(*clock, "clock", "anchor", 0, 1e11, config.clock.anchor));
    }

    FACTEUR_RETURN_IF_ERROR(ParseListeners(root, config));
    // Sources need `hostname` (their EHLO default) and precede routes, whose pools they define.
    FACTEUR_RETURN_IF_ERROR(ParseSources(root, delivery, config));
    FACTEUR_RETURN_IF_ERROR(ParseRoutes(root, config));
    return config;
  }

 private:

  // Names of listeners, sources and pools land in metric labels, logs and Received: fields.
  absl::Status CheckName(const toml::node& node, std::string_view key,
                         std::string_view name) const {
    bool ok = !name.empty() && name.size() <= 64;
    // Printable ASCII without quotes or backslashes.
    for (char c : name) {
      if (c <= ' ' || c > '~' || c == '"' || c == '\\') ok = false;
    }
    if (!ok) {
      return Error(node.source(), key,
                   "must be 1 to 64 printable characters without spaces, quotes or backslashes");
    }
    return absl::OkStatus();
  }

  absl::Status CheckHostname(const toml::node& node, std::string_view key,
                             std::string_view hostname) const {
    // RFC 5321 §4.1.2 Domain: letters, digits, hyphens and dots; at most 255 octets.
    bool ok = !hostname.empty() && hostname.size() <= 253 && hostname.front() != '.' &&
              hostname.front() != '-';
    for (char c : hostname) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.') ok = false;
    }
    if (!ok) {
      return Error(node.source(), key,
                   absl::StrCat("'", ToAbsl(hostname),
                                "' is not a host name (letters, digits, '-' and '.')"));
    }
    return absl::OkStatus();
  }

  static std::string MachineHostname() {
    char buffer[256] = {};
    if (gethostname(buffer, sizeof(buffer) - 1) != 0 || buffer[0] == '\0') return "localhost";
    // A name without a dot is still better than a made-up one (the operator can set hostname).
    return buffer;
  }

  // A size: an integer (bytes) or a string such as "35MiB", between 1 byte and `max` (named
  // `max_text` in the message). Left unchanged when absent.
  absl::Status ReadByteSize(const toml::table& table, std::string_view key, std::string_view name,
                            uint64_t max, const char* max_text, uint64_t& out) const {
    const toml::node* node = table.get(name);
    if (node == nullptr) return absl::OkStatus();
    const std::string range = absl::StrCat("must be between 1 byte and ", max_text);
    uint64_t size = 0;
    if (const auto* integer = node->as_integer()) {
      if (integer->get() < 0) {
        return Error(node->source(), key, absl::StrCat(range, ", got ", integer->get()));
      }
      size = static_cast<uint64_t>(integer->get());
    } else if (const auto* text = node->as_string()) {
      absl::StatusOr<uint64_t> parsed = ParseByteSize(text->get());
      if (!parsed.ok()) return Error(node->source(), key, parsed.status().message());
      size = *parsed;
    } else {
      return Error(node->source(), key,
                   absl::StrCat("must be an integer (bytes) or a size string such as \"35MiB\", "
                                "not ",
                                TypeName(*node)));
    }
    if (size == 0 || size > max) {
      return Error(node->source(), key, absl::StrCat(range, " (", max, "), got ", size));
    }
    out = size;
    return absl::OkStatus();
  }

  absl::Status ParseSmtp(const toml::table& smtp, SmtpOptions& out) const {
    FACTEUR_RETURN_IF_ERROR(ReadByteSize(smtp, "smtp.max_message_size", "max_message_size",
                                         kMaxMessageSize, "4 GiB", out.max_message_size));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(smtp, "smtp", "max_recipients", 1,
                                        std::numeric_limits<uint32_t>::max(), out.max_recipients));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(smtp, "smtp", "max_errors", 1,
                                        std::numeric_limits<uint32_t>::max(), out.max_errors));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(smtp, "smtp", "max_sessions", 1,
                                        std::numeric_limits<uint32_t>::max(), out.max_sessions));
    FACTEUR_RETURN_IF_ERROR(ReadDuration(smtp, "smtp", "idle_timeout", out.idle_timeout));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(smtp, "smtp", "auth_max_failures", 0,
                                        std::numeric_limits<uint32_t>::max(),
                                        out.auth_max_failures));
    FACTEUR_RETURN_IF_ERROR(
        ReadDuration(smtp, "smtp", "auth_failure_window", out.auth_failure_window));
    return absl::OkStatus();
  }

  absl::Status ParseTls(const toml::table& tls, TlsOptions& out) const {
    FACTEUR_RETURN_IF_ERROR(ReadString(tls, "tls", "certificate_file", out.certificate_file));
    FACTEUR_RETURN_IF_ERROR(ReadString(tls, "tls", "private_key_file", out.private_key_file));
    if (out.certificate_file.empty() != out.private_key_file.empty()) {
      bool has_certificate = !out.certificate_file.empty();
      std::string_view present = has_certificate ? "certificate_file" : "private_key_file";
      return Error(tls.get(present)->source(), Dotted("tls", present),
                   has_certificate ? "set without tls.private_key_file (give both or neither)"
                                   : "set without tls.certificate_file (give both or neither)");
    }
    return absl::OkStatus();
  }

  absl::Status ParseListeners(const toml::table& root, Config& config) const {
    std::vector<ListenerSource> sources;
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "listener", "listener"));
    for (size_t i = 0; i < tables.size(); ++i) {
      ListenerOptions listener;
      ListenerSource source;
      FACTEUR_RETURN_IF_ERROR(ParseListener(*tables[i], i, listener, source));
      config.listeners.push_back(std::move(listener));
      sources.push_back(source);
    }
    if (config.listeners.empty()) {
      // No [[listener]] (or an empty array): the embedded defaults, under this data_dir.
      config.listeners = DefaultConfig().listeners;
      const toml::node* data_dir = root.get("data_dir");
      toml::source_region where = data_dir != nullptr ? data_dir->source() : root.source();
      sources.assign(config.listeners.size(), ListenerSource{where, where, where});
    }

    std::map<std::string, size_t> names;
    std::map<std::string, size_t> addresses;
    for (size_t i = 0; i < config.listeners.size(); ++i) {
      const ListenerOptions& listener = config.listeners[i];
      std::string prefix = absl::StrCat("listener[", i, "]");
      // Parsed when the listener was read, so this cannot fail.
      ListenAddress address = *ParseListenAddress(listener.address);
      std::string identity;
      if (address.family == ListenAddress::Family::kUnix) {
        std::string path = config.ResolvePath(address.path);
        if (path.size() > kMaxUnixPath) {
          return Error(sources[i].address, prefix + ".address",
                       absl::StrCat("Unix socket path '", path, "' is longer than ", kMaxUnixPath,
                                    " bytes"));
        }
        identity = "unix:" + path;
      } else if (address.port != 0) {
        // Port 0 picks a fresh port per listener: two of them never collide.
        size_t length = address.family == ListenAddress::Family::kIpv6 ? 16 : 4;
        identity = absl::StrCat(std::string(reinterpret_cast<const char*>(address.address), length),
                                ":", address.port);
      }
      if (!identity.empty()) {
        auto [address_at, address_new] = addresses.emplace(identity, i);
        if (!address_new) {
          return Error(sources[i].address, prefix + ".address",
                       absl::StrCat("duplicate listener address '", listener.address,
                                    "' (also listener[", address_at->second, "])"));
        }
      }
      // After the address: a listener without a name is named after its address.
      auto [name_at, name_new] = names.emplace(listener.name, i);
      if (!name_new) {
        return Error(sources[i].name, prefix + ".name",
                     absl::StrCat("duplicate listener name '", listener.name, "' (also listener[",
                                  name_at->second, "])"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseListener(const toml::table& table, size_t index, ListenerOptions& out,
                             ListenerSource& source) const {
    std::string prefix = absl::StrCat("listener[", index, "]");
    FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kListenerKeys));
    source.table = table.source();

    const toml::node* address_node = table.get("address");
    if (address_node == nullptr) {
      return Error(table.source(), prefix + ".address",
                   "required (\"HOST:PORT\", \"[IPv6]:PORT\" or \"unix:PATH\")");
    }
    FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "address", out.address));
    source.address = address_node->source();
    absl::StatusOr<ListenAddress> address = ParseListenAddress(out.address);
    if (!address.ok()) return Error(source.address, prefix + ".address", address.status().message());
    bool is_unix = address->family == ListenAddress::Family::kUnix;

    out.name = out.address;
    source.name = source.address;
    if (const toml::node* node = table.get("name")) {
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "name", out.name));
      source.name = node->source();
      FACTEUR_RETURN_IF_ERROR(CheckName(*node, prefix + ".name", out.name));
    }

    uint16_t port = is_unix ? 0 : address->port;
    out.role = (!is_unix && (port == 587 || port == 465)) ? ListenerRole::kSubmission
                                                          : ListenerRole::kRelay;
    if (const toml::node* node = table.get("role")) {
      std::string role;
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "role", role));
      if (role == "submission") {
        out.role = ListenerRole::kSubmission;
      } else if (role == "relay") {
        out.role = ListenerRole::kRelay;
      } else {
        return Error(node->source(), prefix + ".role",
                     absl::StrCat("'", role, "' is not a role (\"submission\" or \"relay\")"));
      }
    }

    out.tls = TlsMode::kNone;
    if (!is_unix && port == 465) out.tls = TlsMode::kImplicit;
    if (!is_unix && (port == 587 || port == 25)) out.tls = TlsMode::kStartTls;
    if (const toml::node* node = table.get("tls")) {
      std::string tls;
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "tls", tls));
      if (tls == "none") {
        out.tls = TlsMode::kNone;
      } else if (tls == "starttls") {
        out.tls = TlsMode::kStartTls;
      } else if (tls == "implicit") {
        out.tls = TlsMode::kImplicit;
      } else {
        return Error(node->source(), prefix + ".tls",
                     absl::StrCat("'", tls,
                                  "' is not a TLS mode (\"none\", \"starttls\" or \"implicit\")"));
      }
      if (is_unix && out.tls != TlsMode::kNone) {
        return Error(node->source(), prefix + ".tls",
                     "a Unix socket listener has no TLS (the socket never leaves the machine)");
      }
    }
    // A submission listener takes mail only after AUTH, and AUTH is offered only over TLS
    // (RFC 4954 §4, Session::AuthAvailable): on TCP without TLS no client could ever send.
    if (out.role == ListenerRole::kSubmission && !is_unix && out.tls == TlsMode::kNone) {
      const toml::node* node = table.get("tls");
      if (node == nullptr) node = table.get("role");
      if (node == nullptr) node = table.get("address");
      return Error(node->source(), prefix + ".tls",
                   "a submission listener on TCP needs tls = \"starttls\" or \"implicit\": AUTH "
                   "is offered only over TLS, so without it no client could send");
    }

    if (const toml::node* node = table.get("trusted_networks")) {
      std::string key = prefix + ".trusted_networks";
      if (out.role != ListenerRole::kRelay) {
        return Error(node->source(), key,
                     "only a relay listener has trusted networks (a submission listener requires "
                     "AUTH from everyone)");
      }
      const toml::array* array = node->as_array();
      if (array == nullptr) {
        return Error(node->source(), key,
                     absl::StrCat("must be an array of CIDR strings, not ", TypeName(*node)));
      }
      for (size_t i = 0; i < array->size(); ++i) {
        const toml::node& element = *array->get(i);
        std::string element_key = absl::StrCat(key, "[", i, "]");
        const auto* text = element.as_string();
        if (text == nullptr) {
          return Error(element.source(), element_key,
                       absl::StrCat("must be a CIDR string, not ", TypeName(element)));
        }
        absl::StatusOr<Cidr> cidr = Cidr::Parse(text->get());
        if (!cidr.ok()) return Error(element.source(), element_key, cidr.status().message());
        if (IsOpenRelay(*cidr)) {
          return Error(element.source(), element_key,
                       absl::StrCat("'", cidr->text,
                                    "' trusts every client: that is an open relay"));
        }
        out.trusted_networks.push_back(*std::move(cidr));
      }
    } else if (out.role == ListenerRole::kRelay) {
      out.trusted_networks = {*Cidr::Parse("127.0.0.0/8"), *Cidr::Parse("::1/128")};
    }
    return absl::OkStatus();
  }

  absl::Status ParseDns(const toml::table& dns, DnsOptions& out) const {
    if (const toml::node* node = dns.get("nameservers")) {
      constexpr std::string_view kKey = "dns.nameservers";
      const toml::array* array = node->as_array();
      if (array == nullptr) {
        return Error(node->source(), kKey,
                     absl::StrCat("must be an array of addresses such as [\"127.0.0.1:53\"], not ",
                                  TypeName(*node)));
      }
      for (size_t i = 0; i < array->size(); ++i) {
        const toml::node& element = *array->get(i);
        std::string element_key = absl::StrCat(ToAbsl(kKey), "[", i, "]");
        const auto* text = element.as_string();
        if (text == nullptr) {
          return Error(element.source(), element_key,
                       absl::StrCat("must be an address string, not ", TypeName(element)));
        }
        absl::StatusOr<ListenAddress> address = ParseNameserverAddress(text->get());
        if (!address.ok()) return Error(element.source(), element_key, address.status().message());
        out.nameservers.push_back(text->get());
      }
    }
    FACTEUR_RETURN_IF_ERROR(ReadDuration(dns, "dns", "timeout", out.timeout));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(dns, "dns", "attempts", 1, kMaxDnsAttempts, out.attempts));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(dns, "dns", "max_queries_in_flight", 1, 100000,
                                        out.max_queries_in_flight));
    return absl::OkStatus();
  }

  absl::Status ParseDelivery(const toml::table& delivery, DeliveryOptions& out) const {
    constexpr std::string_view kPrefix = "delivery";
    constexpr uint64_t kMax32 = std::numeric_limits<uint32_t>::max();
    FACTEUR_RETURN_IF_ERROR(ReadBool(delivery, kPrefix, "enabled", out.enabled));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(delivery, kPrefix, "smtp_port", 1, 65535, out.smtp_port));
    if (const toml::node* node = delivery.get("pool")) {
      FACTEUR_RETURN_IF_ERROR(ReadString(delivery, kPrefix, "pool", out.pool));
      FACTEUR_RETURN_IF_ERROR(CheckName(*node, "delivery.pool", out.pool));
    }
    FACTEUR_RETURN_IF_ERROR(
        ReadEnum(delivery, kPrefix, "tls", "a TLS policy", kDeliveryTlsPolicies, out.tls));
    FACTEUR_RETURN_IF_ERROR(ReadString(delivery, kPrefix, "tls_ca_file", out.tls_ca_file));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(delivery, kPrefix, "max_connections_per_destination", 1,
                                        kMax32, out.max_connections_per_destination));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(delivery, kPrefix, "max_messages_per_connection", 1,
                                        kMax32, out.max_messages_per_connection));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(delivery, kPrefix, "max_recipients_per_transaction", 1,
                                        kMax32, out.max_recipients_per_transaction));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(delivery, kPrefix, "max_messages_in_flight", 1, kMax32,
                                        out.max_messages_in_flight));
    FACTEUR_RETURN_IF_ERROR(ReadByteSize(delivery, "delivery.max_bytes_in_flight",
                                         "max_bytes_in_flight", uint64_t{1} << 40, "1 TiB",
                                         out.max_bytes_in_flight));
    const std::pair<std::string_view, absl::Duration*> durations[] = {
        {"connection_idle_timeout", &out.connection_idle_timeout},
        {"connect_timeout", &out.connect_timeout},
        {"greeting_timeout", &out.greeting_timeout},
        {"command_timeout", &out.command_timeout},
        {"data_initiation_timeout", &out.data_initiation_timeout},
        {"data_block_timeout", &out.data_block_timeout},
        {"data_termination_timeout", &out.data_termination_timeout},
        {"first_retry", &out.first_retry},
        {"max_retry_interval", &out.max_retry_interval},
        {"queue_lifetime", &out.queue_lifetime},
        {"shutdown_grace", &out.shutdown_grace},
    };
    for (const auto& [name, duration] : durations) {
      FACTEUR_RETURN_IF_ERROR(ReadDuration(delivery, kPrefix, name, *duration));
    }
    FACTEUR_RETURN_IF_ERROR(ReadNumber(delivery, kPrefix, "retry_backoff", 1,
                                       std::numeric_limits<double>::infinity(),
                                       out.retry_backoff));
    FACTEUR_RETURN_IF_ERROR(ReadNumber(delivery, kPrefix, "retry_jitter", 0, 1, out.retry_jitter));
    if (out.max_retry_interval < out.first_retry) {
      // Blame the key that was written; when both were, the cap.
      bool cap_written = delivery.get("max_retry_interval") != nullptr;
      std::string_view key = cap_written ? "max_retry_interval" : "first_retry";
      return Error(delivery.get(key)->source(), Dotted(kPrefix, key),
                   absl::StrCat("delivery.max_retry_interval (",
                                absl::FormatDuration(out.max_retry_interval),
                                ") is shorter than delivery.first_retry (",
                                absl::FormatDuration(out.first_retry), ")"));
    }
    FACTEUR_RETURN_IF_ERROR(ReadBool(delivery, kPrefix, "validate_recipient_domains",
                                     out.validate_recipient_domains));
    // Each label is a few series per source: the bound keeps Prometheus's cardinality bounded.
    FACTEUR_RETURN_IF_ERROR(ReadInteger(delivery, kPrefix, "metrics_site_labels", 0, 1000,
                                        out.metrics_site_labels));
    return absl::OkStatus();
  }

  absl::Status ParseDkim(const toml::table& dkim, DkimOptions& out) const {
    FACTEUR_RETURN_IF_ERROR(ReadEnum(dkim, "dkim", "engine", "a DKIM engine", kDkimEngines,
                                     out.engine));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(dkim, "dkim", "threads", 0, kMaxThreads, out.threads));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(dkim, "dkim", "max_queued", 1,
                                        std::numeric_limits<uint32_t>::max(), out.max_queued));
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(dkim, "key", "dkim.key"));
    // (domain, algorithm, account) → index: two keys there would leave the choice to chance.
    std::map<std::tuple<std::string, DkimAlgorithm, std::string>, size_t> seen;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      std::string prefix = absl::StrCat("dkim.key[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kDkimKeyKeys));
      DkimKeyOptions key;
      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(table, prefix, "domain",
                                                 "the From: domain the key signs for", key.domain));
      absl::AsciiStrToLower(&key.domain);
      if (!IsDkimDomain(key.domain)) {
        return Error(table.get("domain")->source(), prefix + ".domain",
                     absl::StrCat("'", key.domain,
                                  "' is not a domain name (letters, digits, '-' and '.'; an "
                                  "internationalised name in its xn-- form)"));
      }
      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(table, prefix, "selector",
                                                 "the s= tag, e.g. \"mail2024\"", key.selector));
      if (!IsDkimSelector(key.selector)) {
        return Error(table.get("selector")->source(), prefix + ".selector",
                     absl::StrCat("'", key.selector,
                                  "' is not a selector (DNS labels of letters, digits and '-' "
                                  "separated by '.', RFC 6376 §3.1)"));
      }
      FACTEUR_RETURN_IF_ERROR(
          ReadEnum(table, prefix, "algorithm", "a DKIM algorithm", kDkimAlgorithms, key.algorithm));
      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(table, prefix, "key_file",
                                                 "the PEM private key", key.key_file));
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "account", key.account));
      auto [at, is_new] = seen.emplace(std::make_tuple(key.domain, key.algorithm, key.account), i);
      if (!is_new) {
        return Error(table.get("domain")->source(), prefix + ".domain",
                     absl::StrCat("a second ", ToAbsl(DkimAlgorithmName(key.algorithm)),
                                  " key for '", key.domain, "'",
                                  key.account.empty()
                                      ? ""
                                      : absl::StrCat(" and account '", key.account, "'"),
                                  " (also dkim.key[", at->second,
                                  "]); give each domain, algorithm and account one key"));
      }
      out.keys.push_back(std::move(key));
    }
    return absl::OkStatus();
  }

  absl::Status ReadQuotaLimits(const toml::table& table, std::string_view prefix,
                               QuotaLimits& out) const {
    constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max();
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "messages_per_hour", 0, kMax, out.messages_per_hour));
    FACTEUR_RETURN_IF_ERROR(
        ReadInteger(table, prefix, "messages_per_day", 0, kMax, out.messages_per_day));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(table, prefix, "recipients_per_message", 0, kMax,
                                        out.recipients_per_message));
    return ReadBool(table, prefix, "anomaly_detection", out.anomaly_detection);
  }

  absl::Status ParseQuota(const toml::table& quota, QuotaOptions& out) const {
    FACTEUR_RETURN_IF_ERROR(ReadQuotaLimits(quota, "quota", out.defaults));
    FACTEUR_RETURN_IF_ERROR(ReadDuration(quota, "quota", "anomaly_window", out.anomaly_window));
    FACTEUR_RETURN_IF_ERROR(
        ReadNumber(quota, "quota", "anomaly_factor", 1.0, 1e6, out.anomaly_factor));
    FACTEUR_RETURN_IF_ERROR(ReadInteger(quota, "quota", "anomaly_min_messages", 0,
                                        std::numeric_limits<uint32_t>::max(),
                                        out.anomaly_min_messages));
    FACTEUR_RETURN_IF_ERROR(
        ReadDuration(quota, "quota", "history_half_life", out.history_half_life));
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(quota, "account", "quota.account"));
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      const std::string prefix = absl::StrCat("quota.account[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kQuotaAccountKeys));
      QuotaAccountOptions account;
      account.limits = out.defaults;  // what the table leaves out
      FACTEUR_RETURN_IF_ERROR(
          ReadRequiredString(table, prefix, "name", "the account's name", account.name));
      // The account names of engine/policy/account_store.h.
      bool valid = account.name.size() <= 64;
      for (char c : account.name) {
        if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' &&
            c != '@' && c != '+' && c != '-') {
          valid = false;
        }
      }
      if (!valid) {
        return Error(table.get("name")->source(), prefix + ".name",
                     "is not an account name (1 to 64 letters, digits and . _ @ + -)");
      }
      auto [at, is_new] = names.emplace(account.name, i);
      if (!is_new) {
        return Error(table.get("name")->source(), prefix + ".name",
                     absl::StrCat("account '", account.name, "' has limits already (quota.account[",
                                  at->second, "])"));
      }
      FACTEUR_RETURN_IF_ERROR(ReadQuotaLimits(table, prefix, account.limits));
      out.accounts.push_back(std::move(account));
    }
    return absl::OkStatus();
  }

  absl::Status ParseSources(const toml::table& root, const toml::table* delivery,
                            Config& config) const {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "source", "source"));
    std::map<std::string, size_t> names;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      std::string prefix = absl::StrCat("source[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kSourceKeys));
      SourceOptions source;
      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(table, prefix, "name",
                                                 "the source's name in logs and metrics",
                                                 source.name));
      const toml::node& name_node = *table.get("name");
      FACTEUR_RETURN_IF_ERROR(CheckName(name_node, prefix + ".name", source.name));
      auto [name_at, name_new] = names.emplace(source.name, i);
      if (!name_new) {
        return Error(name_node.source(), prefix + ".name",
                     absl::StrCat("duplicate source name '", source.name, "' (also source[",
                                  name_at->second, "])"));
      }
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "address", source.address));
      if (!source.address.empty()) {
        bool v6 = false;
        uint8_t bytes[16];
        if (!ParseIpLiteral(source.address, v6, bytes)) {
          return Error(table.get("address")->source(), prefix + ".address",
                       absl::StrCat("'", source.address,
                                    "' is not an IP address (an IPv4 or IPv6 literal, without "
                                    "brackets or port)"));
        }
      }
      source.ehlo_name = config.hostname;
      if (const toml::node* node = table.get("ehlo_name")) {
        FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "ehlo_name", source.ehlo_name));
        FACTEUR_RETURN_IF_ERROR(CheckHostname(*node, prefix + ".ehlo_name", source.ehlo_name));
      }
      if (const toml::node* node = table.get("pool")) {
        FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "pool", source.pool));
        FACTEUR_RETURN_IF_ERROR(CheckName(*node, prefix + ".pool", source.pool));
      }
      config.sources.push_back(std::move(source));
    }
    if (config.sources.empty()) {
      // No [[source]] (or an empty array): one unbound source in pool "default".
      SourceOptions source;
      source.name = "default";
      source.ehlo_name = config.hostname;
      config.sources.push_back(std::move(source));
    }
    if (!HasPool(config, config.delivery.pool)) {
      const toml::node* pool = delivery != nullptr ? delivery->get("pool") : nullptr;
      toml::source_region where = pool != nullptr         ? pool->source()
                                  : delivery != nullptr   ? delivery->source()
                                  : !tables.empty()       ? tables.front()->source()
                                                          : root.source();
      return Error(where, "delivery.pool", UnknownPool(config, config.delivery.pool));
    }
    return absl::OkStatus();
  }

  absl::Status ParseRoutes(const toml::table& root, Config& config) const {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<const toml::table*> tables,
                             ArrayOfTables(root, "route", "route"));
    std::map<std::string, size_t> domains;
    for (size_t i = 0; i < tables.size(); ++i) {
      const toml::table& table = *tables[i];
      std::string prefix = absl::StrCat("route[", i, "]");
      FACTEUR_RETURN_IF_ERROR(CheckKeys(table, prefix, kRouteKeys));
      RouteOptions route;
      FACTEUR_RETURN_IF_ERROR(ReadRequiredString(
          table, prefix, "domain", "\"example.org\", \".example.org\" or \"*\"", route.domain));
      const toml::node& domain_node = *table.get("domain");
      absl::AsciiStrToLower(&route.domain);
      std::string_view domain = route.domain;
      if (domain.front() == '.') domain.remove_prefix(1);
      if (route.domain != "*" && !IsDomainName(domain)) {
        if (route.domain.rfind("*.", 0) == 0 && IsDomainName(domain.substr(2))) {
          return Error(domain_node.source(), prefix + ".domain",
                       absl::StrCat("'", route.domain, "' is not a route domain; write '",
                                    ToAbsl(domain.substr(1)), "' for the subdomains of ",
                                    ToAbsl(domain.substr(2))));
        }
        return Error(domain_node.source(), prefix + ".domain",
                     absl::StrCat("'", route.domain,
                                  "' is not a route domain (\"example.org\", \".example.org\" for "
                                  "its subdomains, or \"*\" for every other domain)"));
      }
      auto [domain_at, domain_new] = domains.emplace(route.domain, i);
      if (!domain_new) {
        return Error(domain_node.source(), prefix + ".domain",
                     absl::StrCat("duplicate route for '", route.domain, "' (also route[",
                                  domain_at->second, "])"));
      }
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "destination", route.destination));
      absl::StatusOr<RouteDestination> next_hop =
          ParseRouteDestination(route.destination, config.delivery.smtp_port);
      if (!next_hop.ok()) {
        return Error(table.get("destination")->source(), prefix + ".destination",
                     next_hop.status().message());
      }
      route.next_hop = *std::move(next_hop);
      if (table.get("tls") != nullptr) {
        DeliveryTlsPolicy tls = config.delivery.tls;
        FACTEUR_RETURN_IF_ERROR(
            ReadEnum(table, prefix, "tls", "a TLS policy", kDeliveryTlsPolicies, tls));
        route.tls = tls;
      }
      FACTEUR_RETURN_IF_ERROR(ReadString(table, prefix, "pool", route.pool));
      if (!route.pool.empty() && !HasPool(config, route.pool)) {
        return Error(table.get("pool")->source(), prefix + ".pool",
                     UnknownPool(config, route.pool));
      }
      config.routes.push_back(std::move(route));
    }
    return absl::OkStatus();
  }

  static bool HasPool(const Config& config, std::string_view pool) {
    return std::any_of(config.sources.begin(), config.sources.end(),
                       [&](const SourceOptions& source) { return source.pool == pool; });
  }

  static std::string UnknownPool(const Config& config, std::string_view pool) {
    std::vector<std::string> pools;
    for (const SourceOptions& source : config.sources) {
      if (std::find(pools.begin(), pools.end(), source.pool) == pools.end()) {
        pools.push_back(source.pool);
      }
    }
    return absl::StrCat("no [[source]] is in pool '", ToAbsl(pool), "' (pools: ",
                        absl::StrJoin(pools, ", "), ")");
  }

};

}  // namespace

absl::StatusOr<Cidr> Cidr::Parse(std::string_view text) {
  Cidr cidr;
  cidr.text = std::string(text);
  std::string_view host = text;
  std::optional<std::string_view> prefix;
  if (size_t slash = text.find('/'); slash != std::string_view::npos) {
    host = text.substr(0, slash);
    prefix = text.substr(slash + 1);
  }
  // inet_pton wants a NUL-terminated string; an embedded NUL must not shorten the input.
  std::string host_string(host);
  if (host_string.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("'", ToAbsl(text), "' is not a CIDR network"));
  }
  int max_prefix = 32;
  if (inet_pton(AF_INET, host_string.c_str(), cidr.address) == 1) {
    cidr.v6 = false;
  } else if (inet_pton(AF_INET6, host_string.c_str(), cidr.address) == 1) {
    cidr.v6 = true;
    max_prefix = 128;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", ToAbsl(text), "' is not a CIDR network (a.b.c.d[/0-32] or an IPv6 address[/0-128])"));
  }
  cidr.prefix_length = max_prefix;
  if (prefix.has_value()) {
    uint64_t length = 0;
    if (!ParseDigits(*prefix, static_cast<uint64_t>(max_prefix), length) || prefix->size() > 3) {
      return absl::InvalidArgumentError(absl::StrCat("'", ToAbsl(text),
                                                     "' has a bad prefix length (0 to ", max_prefix,
                                                     ")"));
    }
    cidr.prefix_length = static_cast<int>(length);
  }
  // Host bits past the prefix are cleared: "10.1.2.3/8" means 10.0.0.0/8.
  for (int bit = cidr.prefix_length; bit < max_prefix; ++bit) {
    cidr.address[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  }
  return cidr;
}

bool Cidr::Contains(const uint8_t* peer, size_t peer_length) const {
  static const uint8_t kMappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  const uint8_t* bytes = nullptr;
  if (!v6) {
    if (peer_length == 4) {
      bytes = peer;
    } else if (peer_length == 16 && std::memcmp(peer, kMappedPrefix, 12) == 0) {
      bytes = peer + 12;  // ::ffff:a.b.c.d, as a dual-stack socket reports an IPv4 client
    }
  } else if (peer_length == 16) {
    bytes = peer;
  }
  if (bytes == nullptr) return false;
  int full_bytes = prefix_length / 8;
  if (std::memcmp(bytes, address, static_cast<size_t>(full_bytes)) != 0) return false;
  int rest = prefix_length % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff00u >> rest);
  return (bytes[full_bytes] & mask) == address[full_bytes];
}

std::string Config::ResolvePath(std::string_view path) const {
  if (!path.empty() && path.front() == '/') return std::string(path);
  if (data_dir.empty()) return std::string(path);
  if (path.empty()) return data_dir;
  std::string resolved = data_dir;
  if (resolved.back() != '/') resolved += '/';
  resolved += path;
  return resolved;
}

absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text) {
  ListenAddress address;
  if (text.rfind("unix:", 0) == 0) {
    address.family = ListenAddress::Family::kUnix;
    address.path = std::string(text.substr(5));
    if (address.path.empty() || address.path.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", ToAbsl(text), "' is not an address: a socket path must follow \"unix:\""));
    }
    return address;
  }
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", ToAbsl(text), "' is not an address: ", ToAbsl(why),
        " (\"a.b.c.d:PORT\", \"[IPv6]:PORT\", \"localhost:PORT\" or \"unix:PATH\")"));
  };
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = text.substr(0, colon);
  uint64_t port = 0;
  if (!ParseDigits(text.substr(colon + 1), 65535, port) || text.size() - colon - 1 > 5) {
    return bad("the port must be 0 to 65535");
  }
  address.port = static_cast<uint16_t>(port);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    address.family = ListenAddress::Family::kIpv6;
    address.host = std::string(host.substr(1, host.size() - 2));
    if (address.host.find('\0') != std::string::npos ||
        inet_pton(AF_INET6, address.host.c_str(), address.address) != 1) {
      return bad("not an IPv6 literal");
    }
    return address;
  }
  address.family = ListenAddress::Family::kIpv4;
  // Only literals: a name would need DNS at startup, and an answer that changes later.
  address.host = host == "localhost" ? "127.0.0.1" : std::string(host);
  if (address.host.find('\0') != std::string::npos ||
      inet_pton(AF_INET, address.host.c_str(), address.address) != 1) {
    return bad(host.find(':') != std::string_view::npos ? "an IPv6 address needs brackets"
                                                        : "the host must be an IPv4 literal");
  }
  return address;
}

absl::StatusOr<ListenAddress> ParseNameserverAddress(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", ToAbsl(text), "' is not a nameserver address: ", ToAbsl(why),
        " (\"192.0.2.53\", \"127.0.0.1:5353\", \"2001:db8::53\" or \"[::1]:5353\")"));
  };
  ListenAddress address;
  address.port = kDnsPort;
  std::string_view host = text;
  std::optional<std::string_view> port;
  bool v6 = false;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return bad("no closing ']'");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return bad("only \":PORT\" may follow ']'");
      port = rest.substr(1);
    }
    if (!ParseIpLiteral(host, v6, address.address) || !v6) return bad("not an IPv6 literal");
  } else if (std::count(text.begin(), text.end(), ':') >= 2) {
    // Two colons or more: a bare IPv6 address, which cannot carry a port without brackets.
    if (!ParseIpLiteral(host, v6, address.address) || !v6) return bad("not an IPv6 literal");
  } else {
    if (size_t colon = text.find(':'); colon != std::string_view::npos) {
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
    }
    // Only literals: looking the resolver's own address up would need a resolver.
    if (!ParseIpLiteral(host, v6, address.address) || v6) {
      return bad("the host must be an IP address literal");
    }
  }
  if (port.has_value() && !ParsePort(*port, address.port)) {
    return bad("the port must be 1 to 65535");
  }
  address.family = v6 ? ListenAddress::Family::kIpv6 : ListenAddress::Family::kIpv4;
  address.host = std::string(host);
  return address;
}

absl::StatusOr<RouteDestination> ParseRouteDestination(std::string_view text,
                                                       uint16_t default_port) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", ToAbsl(text), "' is not a destination: ", ToAbsl(why),
        " (\"[host]:port\" or \"[192.0.2.1]:port\" for that host, \"host\" or \"host:port\" "
        "for its MX hosts)"));
  };
  RouteDestination destination;
  destination.port = default_port;
  if (text.empty()) return destination;  // the recipient domain's own MX hosts
  std::string_view host = text;
  std::optional<std::string_view> port;
  if (text.front() == '[') {
    // Postfix's notation: brackets turn the MX lookup off.
    size_t close = text.find(']');
    if (close == std::string_view::npos) return bad("no closing ']'");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return bad("only \":port\" may follow ']'");
      port = rest.substr(1);
    }
    destination.mx_lookup = false;
    if (ParseIpLiteral(host, destination.v6, destination.address)) {
      destination.ip_literal = true;
    } else if (host.find(':') != std::string_view::npos) {
      return bad("not an IPv6 literal");
    } else if (!IsDomainName(host)) {
      return bad("not a host name or IP literal inside the brackets");
    }
  } else {
    if (size_t colon = text.rfind(':'); colon != std::string_view::npos) {
      host = text.substr(0, colon);
      port = text.substr(colon + 1);
    }
    bool v6 = false;
    uint8_t bytes[16];
    if (host.find(':') != std::string_view::npos || ParseIpLiteral(host, v6, bytes)) {
      // An address has no MX records: it must be written as "[192.0.2.1]:25".
      return bad("an IP address needs brackets");
    }
    if (!IsDomainName(host)) return bad("not a host name");
  }
  if (port.has_value() && !ParsePort(*port, destination.port)) {
    return bad("the port must be 1 to 65535");
  }
  destination.host = absl::AsciiStrToLower(ToAbsl(host));
  return destination;
}

std::string_view DeliveryTlsPolicyName(DeliveryTlsPolicy policy) {
  return NameOf(kDeliveryTlsPolicies, policy);
}
std::string_view DkimAlgorithmName(DkimAlgorithm algorithm) {
  return NameOf(kDkimAlgorithms, algorithm);
}
std::string_view DkimEngineName(DkimEngine engine) { return NameOf(kDkimEngines, engine); }

absl::StatusOr<uint64_t> ParseByteSize(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  std::string_view unit = text.substr(digits);
  if (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  struct Unit {
    std::string_view name;
    uint64_t factor;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},           {"B", 1},
      {"KB", 1000},      {"kB", 1000},
      {"MB", 1000000},   {"GB", 1000000000},
      {"KiB", 1 << 10},  {"MiB", 1 << 20},
      {"GiB", 1 << 30},
  };
  const Unit* found = nullptr;
  for (const Unit& candidate : kUnits) {
    if (candidate.name == unit) found = &candidate;
  }
  uint64_t number = 0;
  if (digits == 0 || found == nullptr ||
      !ParseDigits(text.substr(0, digits), std::numeric_limits<uint64_t>::max(), number)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", ToAbsl(text),
                     "' is not a size (an integer with B, KB, MB, GB, KiB, MiB or GiB, such as "
                     "\"35MiB\")"));
  }
  if (number > std::numeric_limits<uint64_t>::max() / found->factor) {
    return absl::InvalidArgumentError(absl::StrCat("'", ToAbsl(text), "' is too large"));
  }
  return number * found->factor;
}

std::string_view DefaultConfigToml() { return kDefaultConfigToml; }

absl::StatusOr<Config> ParseConfig(std::string_view text, std::string_view source_name) {
  FACTEUR_ASSIGN_OR_RETURN(toml::table root, ParseToml(text, source_name));
  return Parser(source_name).Parse(root);
}

absl::StatusOr<Config> LoadConfigFile(const std::string& path) {
  FACTEUR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, kMaxConfigFileSize));
  return ParseConfig(text, path);
}

Config DefaultConfig() {
  absl::StatusOr<Config> config = ParseConfig(DefaultConfigToml(), "<default config>");
  if (!config.ok()) {
    // The embedded text is ours: failing here is a bug that config_test catches.
    std::fprintf(stderr, "facteur: the embedded default config is invalid: %s\n",
                 std::string(config.status().message()).c_str());
    std::abort();
  }
  return *std::move(config);
}

bool IsDkimDomain(std::string_view domain) { return IsDomainName(domain); }

// RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); "2024" is one.
bool IsDkimSelector(std::string_view selector) {
  return !selector.empty() && selector.front() != '[' && mail::IsValidDomain(selector, false);
}

}  // namespace facteur::config
