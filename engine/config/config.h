// File: engine/config/config.h
// facteur's configuration: TOML (toml++) read into one immutable snapshot of each module's
// options, validated once (STYLE.md rule 8). Every key is declared here with its default;
// unknown keys and bad values are errors that name the file, line and key.
// `deploy/facteur.example.toml` documents every key.
// Thread contract: value types; a loaded Config is immutable and shared read-only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace facteur::config {

// What a listener lets its clients do (DESIGN.md §6, issue #2 point 4).
enum class ListenerRole {
  kSubmission,  // AUTH required before MAIL (RFC 6409), except on a Unix socket
  kRelay,       // clients in `trusted_networks` relay without AUTH; others may not relay
};

enum class TlsMode {
  kNone,      // plain text, no STARTTLS offered
  kStartTls,  // plain text, STARTTLS offered (RFC 3207)
  kImplicit,  // TLS from the first byte (RFC 8314 §3.3, port 465)
};

// An IPv4 or IPv6 network in CIDR form: "127.0.0.0/8", "::1/128", "192.0.2.7" (a host).
struct Cidr {
  std::string text;        // as written, for messages
  bool v6 = false;
  uint8_t address[16] = {};  // network address, first 4 bytes used for IPv4
  int prefix_length = 0;

  static absl::StatusOr<Cidr> Parse(std::string_view text);
  // `peer` is 4 (IPv4) or 16 (IPv6) bytes; an IPv4-mapped IPv6 peer matches IPv4 networks.
  bool Contains(const uint8_t* peer, size_t peer_length) const;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const Cidr&, const Cidr&) = default;
};

struct ListenerOptions {
  // Name in logs, metrics and the Received: header. Default: the address.
  std::string name;
  // "127.0.0.1:2525", "[::1]:587", "0.0.0.0:25", or "unix:PATH" (a relative PATH is under
  // data_dir). Required.
  std::string address;
  // Default: "submission" on ports 587 and 465, else "relay".
  ListenerRole role = ListenerRole::kRelay;
  // Default: "implicit" on port 465, "starttls" on 587 and 25, else "none". Unix: always none.
  TlsMode tls = TlsMode::kNone;
  // Networks whose clients relay without AUTH on a "relay" listener.
  // Default: ["127.0.0.0/8", "::1/128"].
  std::vector<Cidr> trusted_networks;

  bool is_unix() const { return address.rfind("unix:", 0) == 0; }
  std::string unix_path() const { return is_unix() ? address.substr(5) : std::string(); }

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const ListenerOptions&, const ListenerOptions&) = default;
};

struct SmtpOptions {
  // Largest message accepted, in bytes, announced with SIZE (RFC 1870). Default: 36700160 (35 MiB).
  uint64_t max_message_size = 35 * 1024 * 1024;
  // Most recipients in one transaction; past it 452 4.5.3 (RFC 5321 §4.5.3.1.10). Default: 1000.
  uint32_t max_recipients = 1000;
  // Errors after which the session gets 421 4.7.0 and is closed. Default: 10.
  uint32_t max_errors = 10;
  // Time without input before 421 4.4.2 (RFC 5321 §4.5.3.2.7). Default: 300s.
  absl::Duration idle_timeout = absl::Seconds(300);
  // Most simultaneous SMTP sessions on all listeners; past it new ones get 421 4.7.0. Default: 1000.
  uint32_t max_sessions = 1000;
  // Failed AUTH attempts from one client address within auth_failure_window after which its
  // further attempts get 454 4.7.0 without a password check, until the window ends. Password
  // hashing is slow by design (argon2id): unthrottled guessing would starve real users.
  // 0 disables the lockout. Default: 5.
  uint32_t auth_max_failures = 5;
  // Default: 10m.
  absl::Duration auth_failure_window = absl::Minutes(10);

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const SmtpOptions&, const SmtpOptions&) = default;
};

struct TlsOptions {
  // PEM certificate chain and private key. Default: empty, and then a self-signed pair is made
  // once into data_dir/tls/ (named after `hostname`). Both or neither. Relative paths are under
  // data_dir: use them through Config::ResolvePath (data_dir may be overridden after parsing).
  std::string certificate_file;
  std::string private_key_file;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const TlsOptions&, const TlsOptions&) = default;
};

struct SpoolOptions {
  // RocksDB directory. Default: "" = data_dir/spool. Use it through SpoolPath().
  std::string path;
  // Most messages committed by one synced write (group commit). Default: 256.
  uint32_t max_batch = 256;
  // Longest a delivery outcome (a removal, a recipient's new state) stays written but not
  // synced when no acknowledged message's sync carries it (queue::SpoolOptions). Default: 1 s.
  absl::Duration max_unsynced = absl::Seconds(1);

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const SpoolOptions&, const SpoolOptions&) = default;
};

struct AdminOptions {
  // HTTP listener for /metrics and the admin API; "" disables it. Default: "127.0.0.1:9464".
  std::string address = "127.0.0.1:9464";
  // A file holding the bearer token the /api/ endpoints then require ("Authorization: Bearer
  // TOKEN"); the CLI reads it too. It must not be readable by group or others. /metrics,
  // /healthz and /readyz stay open. Default: "" = no token (keep the listener on loopback).
  std::string token_file;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const AdminOptions&, const AdminOptions&) = default;
};

struct DnsOptions {
  // Nameservers: "127.0.0.1:5353", "[::1]:53", "192.0.2.53" (port 53).
  // Default: [] = those of /etc/resolv.conf.
  std::vector<std::string> nameservers;
  // Most time one lookup may take, every try included. Default: 5s.
  absl::Duration timeout = absl::Seconds(5);
  // Tries per nameserver. Default: 2.
  uint32_t attempts = 2;
  // Most queries on the wire at once, for the whole relay (shared among the I/O threads'
  // resolvers); more wait for a free slot. Default: 64.
  uint32_t max_queries_in_flight = 64;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const DnsOptions&, const DnsOptions&) = default;
};

// TLS toward a destination (RFC 3207 client side).
enum class DeliveryTlsPolicy {
  kNone,           // never STARTTLS
  kOpportunistic,  // STARTTLS when offered, certificate not checked
  kRequired,       // STARTTLS required, certificate verified against the MX host name
};

// One egress address with its EHLO name (DESIGN.md §4). Sources form pools.
struct SourceOptions {
  // Name in logs and metrics. Required, unique.
  std::string name;
  // IPv4 or IPv6 literal the connections are bound to. Default: "" = the kernel chooses.
  std::string address;
  // Our name in EHLO from this source. Default: hostname.
  std::string ehlo_name;
  // Pool this source belongs to. Default: "default".
  std::string pool = "default";

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const SourceOptions&, const SourceOptions&) = default;
};

// A route's `destination`, split once when the config is read so that delivery never parses
// text. "" → {"", smtp_port, mx_lookup}: the MX hosts of the recipient's own domain.
struct RouteDestination {
  // The host to look up: its MX records (mx_lookup), else its A/AAAA records; an IP literal
  // when ip_literal (without brackets). Lower case.
  std::string host;
  // Port of every host reached through this route. Default: delivery.smtp_port.
  uint16_t port = 25;
  // "host" / "host:port": MX lookup (RFC 5321 §5.1); "[host]:port": no MX lookup.
  bool mx_lookup = true;
  // "[192.0.2.1]:port" / "[2001:db8::1]:port": no DNS at all; `address` holds the binary address
  // (4 bytes used when !v6, 16 when v6).
  bool ip_literal = false;
  bool v6 = false;
  uint8_t address[16] = {};

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const RouteDestination&, const RouteDestination&) = default;
};

// A static route: like Postfix's transport map / relayhost, it overrides MX lookups.
struct RouteOptions {
  // "example.org" (that domain), ".example.org" (its subdomains) or "*" (every other domain,
  // a smart host). Required, unique.
  std::string domain;
  // "[host]:port" or "[192.0.2.1]:port": that host's addresses, no MX lookup; "host" or
  // "host:port": the MX hosts of `host`. Default: "" = the MX hosts of the recipient domain.
  std::string destination;
  // Default: unset = delivery.tls.
  std::optional<DeliveryTlsPolicy> tls;
  // Source pool for this route. Default: "" = delivery.pool.
  std::string pool;
  // `destination` split (filled by ParseConfig; `domain` and the host are kept in lower case,
  // as domains compare case-insensitively).
  RouteDestination next_hop;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const RouteOptions&, const RouteOptions&) = default;
};

// What a stop (SIGTERM) may take beyond delivery.shutdown_grace: closing sessions, the last
// spool commit, closing the store. Past grace + margin the process exits at once (what it
// acknowledged is already synced).
inline constexpr absl::Duration kShutdownMargin = absl::Seconds(8);

struct DeliveryOptions {
  // Deliver queued mail. false holds everything in the queue (maintenance, tests of the
  // submission side). Default: true.
  bool enabled = true;
  // Port of MX hosts (routes name their own). Default: 25.
  uint16_t smtp_port = 25;
  // Source pool used when a route names none. Default: "default".
  std::string pool = "default";
  // Default TLS policy toward MX hosts. Default: "opportunistic".
  DeliveryTlsPolicy tls = DeliveryTlsPolicy::kOpportunistic;
  // PEM certificates trusted besides the system store when verifying servers. Default: "".
  std::string tls_ca_file;
  // Simultaneous connections to one destination (a route or an MX set). Default: 10.
  uint32_t max_connections_per_destination = 10;
  // Messages sent over one connection before it is closed. Default: 100.
  uint32_t max_messages_per_connection = 100;
  // Recipients per transaction (RFC 5321 §4.5.3.1.8: servers accept at least 100). Default: 100.
  uint32_t max_recipients_per_transaction = 100;
  // Messages being delivered at once (read from the spool, not yet settled). Default: 10000.
  uint32_t max_messages_in_flight = 10000;
  // Bytes of message bodies being delivered at once (they stay in memory until they settle).
  // Default: 256 MiB.
  uint64_t max_bytes_in_flight = uint64_t{256} << 20;
  // How long an idle connection is kept for the next message. Default: 10s.
  absl::Duration connection_idle_timeout = absl::Seconds(10);
  // Default: 30s.
  absl::Duration connect_timeout = absl::Seconds(30);
  // RFC 5321 §4.5.3.2 timeouts. Defaults: 5m, 5m, 2m, 3m, 10m.
  absl::Duration greeting_timeout = absl::Minutes(5);
  absl::Duration command_timeout = absl::Minutes(5);
  absl::Duration data_initiation_timeout = absl::Minutes(2);
  absl::Duration data_block_timeout = absl::Minutes(3);
  absl::Duration data_termination_timeout = absl::Minutes(10);
  // Retry schedule: first delay, growth factor, cap, random spread, and the queue lifetime after
  // which undelivered recipients bounce. Defaults: 5m, 2.0, 4h, 0.2, 5d.
  absl::Duration first_retry = absl::Minutes(5);
  double retry_backoff = 2.0;
  absl::Duration max_retry_interval = absl::Hours(4);
  double retry_jitter = 0.2;
  absl::Duration queue_lifetime = absl::Hours(24 * 5);
  // Look recipient domains up at RCPT time and refuse NXDOMAIN (550 5.1.2) and null MX
  // (556 5.1.10) at once. Default: true.
  bool validate_recipient_domains = true;
  // On SIGTERM, how long transactions in progress toward remote servers may take to end before
  // they are abandoned (their messages stay queued, nothing counted). The whole stop then takes
  // at most this plus kShutdownMargin, which the default keeps under systemd's 30 s
  // TimeoutStopSec. Default: 20s.
  absl::Duration shutdown_grace = absl::Seconds(20);
  // Unknown MX sets that get a `site` label of their own in the metrics (the first ones seen;
  // later ones share "other"). 0: every unknown MX set is "other". At most 1000. Default: 0.
  uint32_t metrics_site_labels = 0;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const DeliveryOptions&, const DeliveryOptions&) = default;
};

struct EventsOptions {
  // The events log (JSON lines); relative paths are under data_dir; "" disables it.
  // Default: "events.log".
  std::string path = "events.log";

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const EventsOptions&, const EventsOptions&) = default;
};

// Traffic shaping (issue #5): the provider sites, their limits and reactions, and the rules
// that classify remote replies. Relative paths are under data_dir.
struct ShapingFileOptions {
  // The shaping file (deploy/shaping.toml documents it). Default: "" = the shipped one, built in.
  std::string file;
  // The response classifier rules (deploy/classifier.toml). Default: "" = the shipped ones.
  std::string classifier_file;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const ShapingFileOptions&, const ShapingFileOptions&) = default;
};

// The clock every timer, rate and delay reads (STYLE.md rule 6). For simulations and tests:
// with speed 600, an hour of provider limits and greylisting passes in six real seconds.
struct ClockOptions {
  // How many times faster than real time the clock runs. Default: 1.
  double speed = 1.0;
  // Unix time (seconds) from which the clock runs faster: clock = anchor + (real - anchor) ×
  // speed. Default: 0 = the time facteur starts.
  double anchor = 0;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const ClockOptions&, const ClockOptions&) = default;
};

// The limits of one submission account (issue #5; throttle/account_quota.h). 0 = unlimited.
struct QuotaLimits {
  // Messages per clock hour (UTC); past it 450 4.7.1 until the hour ends. Default: 500.
  uint32_t messages_per_hour = 500;
  // Messages per UTC day; past it 450 4.7.1 until midnight UTC. Default: 5000.
  uint32_t messages_per_day = 5000;
  // Recipients of one message; past it 452 4.5.3 (RFC 5321 §4.5.3.1.10). Default: 100.
  uint32_t recipients_per_message = 100;
  // Suspend the account on a burst far above its own history. Default: true.
  bool anomaly_detection = true;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const QuotaLimits&, const QuotaLimits&) = default;
};

// One [[quota.account]]: an account whose limits differ from [quota]'s. Keys left out keep
// [quota]'s values.
struct QuotaAccountOptions {
  // The account name. Required, unique.
  std::string name;
  QuotaLimits limits;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const QuotaAccountOptions&, const QuotaAccountOptions&) = default;
};

// [quota]: per-account submission quotas and runaway-account containment.
struct QuotaOptions {
  // The limits of every account without a [[quota.account]] of its own. Default: QuotaLimits{}.
  QuotaLimits defaults;
  // The short window whose rate, extrapolated to an hour, is compared with the account's usual
  // hourly rate. Default: 5m.
  absl::Duration anomaly_window = absl::Minutes(5);
  // A rate this many times the usual one suspends the account. Default: 10.
  double anomaly_factor = 10.0;
  // The window must hold more messages than this (the absolute minimum, and the floor that lets
  // a new account send its first messages in one go). Default: 50.
  uint32_t anomaly_min_messages = 50;
  // Half-life of the usual hourly rate's history. Default: 72h.
  absl::Duration history_half_life = absl::Hours(72);
  // [[quota.account]] tables. Default: none.
  std::vector<QuotaAccountOptions> accounts;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const QuotaOptions&, const QuotaOptions&) = default;
};

enum class DkimAlgorithm { kRsaSha256, kEd25519Sha256 };
enum class DkimEngine { kNative, kOpenDkim };

struct DkimKeyOptions {
  // The From: domain this key signs for (d=). Required. Kept in lower case.
  std::string domain;
  // s=. Required.
  std::string selector;
  // "rsa-sha256" or "ed25519-sha256". Default: "rsa-sha256".
  DkimAlgorithm algorithm = DkimAlgorithm::kRsaSha256;
  // PEM private key; relative paths are under data_dir. Required.
  std::string key_file;
  // Only for mail of this account. Default: "" = every sender of the domain.
  std::string account;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const DkimKeyOptions&, const DkimKeyOptions&) = default;
};

struct DkimOptions {
  // "native" (OpenSSL, each key parsed once) or "opendkim" (libopendkim). Default: "native".
  DkimEngine engine = DkimEngine::kNative;
  // Signing threads. Default: 0 = one per core.
  uint32_t threads = 0;
  // Messages waiting for a signer; past it submissions get 451 4.3.0. Default: 1024.
  uint32_t max_queued = 1024;
  // Default: none (mail goes out unsigned and is counted).
  std::vector<DkimKeyOptions> keys;

  // Member-wise: a reload (SIGHUP) tells which sections changed.
  friend bool operator==(const DkimOptions&, const DkimOptions&) = default;
};

struct Config {
  // Where the spool, the Unix socket and generated TLS material live. Default: "./var".
  std::string data_dir = "./var";
  // Our name in the greeting, EHLO and Received:. Default: the machine's host name.
  std::string hostname;
  // I/O threads, each with its own io_uring ring. Default: 0 = one per two cores (at least 1).
  uint32_t io_threads = 0;
  // Threads that verify passwords (argon2id is slow on purpose). Default: 2.
  uint32_t auth_threads = 2;

  SmtpOptions smtp;
  TlsOptions tls;
  SpoolOptions spool;
  AdminOptions admin;
  DnsOptions dns;
  DeliveryOptions delivery;
  EventsOptions events;
  DkimOptions dkim;
  QuotaOptions quota;
  ShapingFileOptions shaping;
  ClockOptions clock;
  // [[source]] tables. Default: one source "default" in pool "default", unbound, EHLO hostname.
  std::vector<SourceOptions> sources;
  // [[route]] tables. Default: none (MX lookups for every domain).
  std::vector<RouteOptions> routes;
  // Default: a "relay" listener on 127.0.0.1:2525 trusting loopback, and "unix:facteur.sock".
  // Addresses stay as written: bind ResolvePath(listener.unix_path()) for a Unix socket.
  std::vector<ListenerOptions> listeners;

  // Where a path from the config lands: absolute paths as they are, others under data_dir.
  // Paths are kept as written and resolved when used, so that --data-dir can move them all.
  std::string ResolvePath(std::string_view path) const;
  // The spool directory: spool.path resolved, data_dir/spool by default.
  std::string SpoolPath() const { return ResolvePath(spool.path.empty() ? "spool" : spool.path); }
};

// A listener or admin address, split: "127.0.0.1:25", "[::1]:587", "localhost:2525" (taken as
// 127.0.0.1: nothing is resolved at startup), "unix:PATH". Port 0 asks the kernel for a free port.
struct ListenAddress {
  enum class Family { kIpv4, kIpv6, kUnix };
  Family family = Family::kIpv4;
  std::string host;          // kIpv4/kIpv6: the literal, without brackets
  uint8_t address[16] = {};  // kIpv4/kIpv6: the binary address (4 or 16 bytes used)
  uint16_t port = 0;         // kIpv4/kIpv6
  std::string path;          // kUnix: PATH as written (relative = under data_dir)
};
absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view address);

// A nameserver address: "192.0.2.53", "127.0.0.1:5353", "2001:db8::53", "[::1]:5353" or
// "[::1]"; the port defaults to 53 and must not be 0. `family` is kIpv4 or kIpv6.
absl::StatusOr<ListenAddress> ParseNameserverAddress(std::string_view text);

// A route destination (see RouteOptions::destination); ports absent take `default_port`.
// "host:port" with an IP literal host, or an unbracketed IPv6 address, are errors.
absl::StatusOr<RouteDestination> ParseRouteDestination(std::string_view text,
                                                       uint16_t default_port);

// The config spellings, for logs, metrics labels and events: "none", "opportunistic",
// "required"; "rsa-sha256", "ed25519-sha256"; "native", "opendkim".
std::string_view DeliveryTlsPolicyName(DeliveryTlsPolicy policy);
std::string_view DkimAlgorithmName(DkimAlgorithm algorithm);
std::string_view DkimEngineName(DkimEngine engine);

// What a [[dkim.key]] accepts as its domain (lower case, ASCII: an internationalised name in its
// xn-- form) and its selector (RFC 6376 §3.1); `dkim keygen` asks the same before it names the
// key file after them.
bool IsDkimDomain(std::string_view domain);
bool IsDkimSelector(std::string_view selector);

// "35MiB", "10MB", "512KiB", "1GiB", "2048B", "2048": B, KB/MB/GB (powers of 1000) and
// KiB/MiB/GiB (powers of 1024); other units, fractions and overflow are errors.
absl::StatusOr<uint64_t> ParseByteSize(std::string_view text);

// The embedded default configuration, as TOML text: what `facteur serve` runs with no --config.
std::string_view DefaultConfigToml();

// Parses and validates `text`; `source_name` (a file name) starts every error message, as in
// "facteur.toml:12:1: key 'smtp.max_errors': must be a positive integer". Keys of array
// elements are 0-based: "listener[1].role". All errors are InvalidArgument.
absl::StatusOr<Config> ParseConfig(std::string_view text, std::string_view source_name);
// Reads `path` and parses it. An unreadable file is an error naming it.
absl::StatusOr<Config> LoadConfigFile(const std::string& path);
// DefaultConfigToml() parsed.
Config DefaultConfig();

}  // namespace facteur::config
