#include "engine/config/config.h"

#include <arpa/inet.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace facteur::config {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The error message for `text`, which must fail to parse.
std::string ErrorOf(std::string_view text) {
  absl::StatusOr<Config> config = ParseConfig(text, "test.toml");
  EXPECT_FALSE(config.ok()) << "parsed:\n" << text;
  if (config.ok()) return "";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

// `text` fails at `line`, naming `key`, with a reason containing `reason`.
void ExpectError(std::string_view text, int line, std::string_view key, std::string_view reason) {
  std::string message = ErrorOf(text);
  EXPECT_THAT(message, StartsWith("test.toml:" + std::to_string(line) + ":")) << text;
  EXPECT_THAT(message, HasSubstr("key '" + std::string(key) + "': ")) << text;
  EXPECT_THAT(message, HasSubstr(std::string(reason))) << text;
}

Config ParseOk(std::string_view text) {
  absl::StatusOr<Config> config = ParseConfig(text, "test.toml");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : Config();
}

// --- Defaults -----------------------------------------------------------------------------------

TEST(DefaultConfigTest, EmbeddedTomlParsesToTheDocumentedDefaults) {
  absl::StatusOr<Config> parsed = ParseConfig(DefaultConfigToml(), "default");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  Config config = DefaultConfig();
  EXPECT_EQ(config.data_dir, "./var");
  EXPECT_FALSE(config.hostname.empty());
  EXPECT_EQ(config.io_threads, 0u);
  EXPECT_EQ(config.auth_threads, 2u);
  EXPECT_EQ(config.smtp.max_message_size, 36700160u);
  EXPECT_EQ(config.smtp.max_recipients, 1000u);
  EXPECT_EQ(config.smtp.max_errors, 10u);
  EXPECT_EQ(config.smtp.idle_timeout, absl::Seconds(300));
  EXPECT_EQ(config.smtp.max_sessions, 1000u);
  EXPECT_EQ(config.smtp.auth_max_failures, 5u);
  EXPECT_EQ(config.smtp.auth_failure_window, absl::Minutes(10));
  EXPECT_TRUE(config.tls.certificate_file.empty());
  EXPECT_EQ(config.SpoolPath(), "./var/spool");
  EXPECT_EQ(config.spool.max_batch, 256u);
  EXPECT_EQ(config.spool.max_unsynced, absl::Seconds(1));
  EXPECT_EQ(config.admin.address, "127.0.0.1:9464");
  ASSERT_EQ(config.listeners.size(), 2u);
  const ListenerOptions& relay = config.listeners[0];
  EXPECT_EQ(relay.name, "relay");
  EXPECT_EQ(relay.address, "127.0.0.1:2525");
  EXPECT_EQ(relay.role, ListenerRole::kRelay);
  EXPECT_EQ(relay.tls, TlsMode::kNone);
  ASSERT_EQ(relay.trusted_networks.size(), 2u);
  EXPECT_EQ(relay.trusted_networks[0].text, "127.0.0.0/8");
  EXPECT_EQ(relay.trusted_networks[1].text, "::1/128");
  const ListenerOptions& local = config.listeners[1];
  EXPECT_EQ(local.name, "local");
  EXPECT_TRUE(local.is_unix());
  EXPECT_EQ(local.unix_path(), "facteur.sock");
  EXPECT_EQ(config.ResolvePath(local.unix_path()), "./var/facteur.sock");
  EXPECT_EQ(local.tls, TlsMode::kNone);

  EXPECT_TRUE(config.dns.nameservers.empty());
  EXPECT_EQ(config.dns.timeout, absl::Seconds(5));
  EXPECT_EQ(config.dns.attempts, 2u);
  EXPECT_EQ(config.dns.max_queries_in_flight, 64u);
  const DeliveryOptions& delivery = config.delivery;
  EXPECT_TRUE(delivery.enabled);
  EXPECT_EQ(delivery.smtp_port, 25);
  EXPECT_EQ(delivery.pool, "default");
  EXPECT_EQ(delivery.tls, DeliveryTlsPolicy::kOpportunistic);
  EXPECT_EQ(delivery.tls_ca_file, "");
  EXPECT_EQ(delivery.max_connections_per_destination, 10u);
  EXPECT_EQ(delivery.max_messages_per_connection, 100u);
  EXPECT_EQ(delivery.max_recipients_per_transaction, 100u);
  EXPECT_EQ(delivery.max_messages_in_flight, 10000u);
  EXPECT_EQ(delivery.max_bytes_in_flight, 256u << 20);
  EXPECT_EQ(delivery.connection_idle_timeout, absl::Seconds(10));
  EXPECT_EQ(delivery.shutdown_grace, absl::Seconds(20));
  // SIGTERM: the whole stop stays under systemd's TimeoutStopSec=30s (deploy/systemd).
  EXPECT_LT(delivery.shutdown_grace + kShutdownMargin, absl::Seconds(30));
  EXPECT_EQ(delivery.connect_timeout, absl::Seconds(30));
  EXPECT_EQ(delivery.greeting_timeout, absl::Minutes(5));
  EXPECT_EQ(delivery.command_timeout, absl::Minutes(5));
  EXPECT_EQ(delivery.data_initiation_timeout, absl::Minutes(2));
  EXPECT_EQ(delivery.data_block_timeout, absl::Minutes(3));
  EXPECT_EQ(delivery.data_termination_timeout, absl::Minutes(10));
  EXPECT_EQ(delivery.first_retry, absl::Minutes(5));
  EXPECT_EQ(delivery.retry_backoff, 2.0);
  EXPECT_EQ(delivery.max_retry_interval, absl::Hours(4));
  EXPECT_EQ(delivery.retry_jitter, 0.2);
  EXPECT_EQ(delivery.queue_lifetime, absl::Hours(120));
  EXPECT_TRUE(delivery.validate_recipient_domains);
  EXPECT_EQ(delivery.metrics_site_labels, 0u);
  EXPECT_EQ(config.events.path, "events.log");
  EXPECT_EQ(config.ResolvePath(config.events.path), "./var/events.log");
  EXPECT_EQ(config.dkim.engine, DkimEngine::kNative);
  EXPECT_EQ(config.dkim.threads, 0u);
  EXPECT_EQ(config.dkim.max_queued, 1024u);
  EXPECT_TRUE(config.dkim.keys.empty());
  ASSERT_EQ(config.sources.size(), 1u);
  EXPECT_EQ(config.sources[0].name, "default");
  EXPECT_EQ(config.sources[0].address, "");
  EXPECT_EQ(config.sources[0].ehlo_name, config.hostname);
  EXPECT_EQ(config.sources[0].pool, "default");
  EXPECT_TRUE(config.routes.empty());
}

TEST(DefaultConfigTest, DefaultSourceTakesTheConfiguredHostname) {
  Config config = ParseOk("hostname = \"mx.example.net\"\n[delivery]\nsmtp_port = 2525\n");
  ASSERT_EQ(config.sources.size(), 1u);
  EXPECT_EQ(config.sources[0].ehlo_name, "mx.example.net");
  config = ParseOk("hostname = \"mx.example.net\"\nsource = []\n");
  ASSERT_EQ(config.sources.size(), 1u);
  EXPECT_EQ(config.sources[0].name, "default");
}

TEST(DefaultConfigTest, EmptyFileGetsDefaultListenersUnderItsDataDir) {
  Config config = ParseOk("");
  EXPECT_EQ(config.data_dir, "./var");
  ASSERT_EQ(config.listeners.size(), 2u);
  EXPECT_EQ(config.listeners[0].address, "127.0.0.1:2525");

  config = ParseOk("data_dir = \"/srv/mail\"\n");
  ASSERT_EQ(config.listeners.size(), 2u);
  EXPECT_EQ(config.ResolvePath(config.listeners[1].unix_path()), "/srv/mail/facteur.sock");
  EXPECT_EQ(config.SpoolPath(), "/srv/mail/spool");
}

TEST(DefaultConfigTest, ListenerDefaultsFollowThePort) {
  Config config = ParseOk(R"(
[[listener]]
address = "0.0.0.0:587"
[[listener]]
address = "0.0.0.0:465"
[[listener]]
address = "0.0.0.0:25"
[[listener]]
address = "[::1]:2526"
[[listener]]
address = "unix:/run/facteur.sock"
[[listener]]
address = "localhost:0"
)");
  ASSERT_EQ(config.listeners.size(), 6u);
  EXPECT_EQ(config.listeners[0].name, "0.0.0.0:587");
  EXPECT_EQ(config.listeners[0].role, ListenerRole::kSubmission);
  EXPECT_EQ(config.listeners[0].tls, TlsMode::kStartTls);
  EXPECT_TRUE(config.listeners[0].trusted_networks.empty());
  EXPECT_EQ(config.listeners[1].role, ListenerRole::kSubmission);
  EXPECT_EQ(config.listeners[1].tls, TlsMode::kImplicit);
  EXPECT_EQ(config.listeners[2].role, ListenerRole::kRelay);
  EXPECT_EQ(config.listeners[2].tls, TlsMode::kStartTls);
  ASSERT_EQ(config.listeners[2].trusted_networks.size(), 2u);
  EXPECT_EQ(config.listeners[3].role, ListenerRole::kRelay);
  EXPECT_EQ(config.listeners[3].tls, TlsMode::kNone);
  EXPECT_EQ(config.listeners[4].role, ListenerRole::kRelay);
  EXPECT_EQ(config.listeners[4].tls, TlsMode::kNone);
  EXPECT_EQ(config.listeners[4].unix_path(), "/run/facteur.sock");
  EXPECT_EQ(config.listeners[5].name, "localhost:0");
}

// --- Every key ----------------------------------------------------------------------------------

TEST(ParseConfigTest, EveryKeyIsRead) {
  Config config = ParseOk(R"(
data_dir = "/var/lib/facteur"
hostname = "mail.example.org"
io_threads = 4
auth_threads = 3
[smtp]
max_message_size = "10MB"
max_recipients = 50
max_errors = 3
idle_timeout = "1h30m"
max_sessions = 77
auth_max_failures = 0
auth_failure_window = 90
[tls]
certificate_file = "tls/cert.pem"
private_key_file = "/etc/key.pem"
[spool]
path = "/data/spool"
max_batch = 65536
max_unsynced = "250ms"
[admin]
address = "[::1]:9000"
[[listener]]
name = "mx"
address = "192.0.2.1:2500"
role = "submission"
tls = "implicit"
[[listener]]
name = "lan"
address = "[2001:db8::1]:25"
role = "relay"
tls = "none"
trusted_networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
)");
  EXPECT_EQ(config.data_dir, "/var/lib/facteur");
  EXPECT_EQ(config.hostname, "mail.example.org");
  EXPECT_EQ(config.io_threads, 4u);
  EXPECT_EQ(config.auth_threads, 3u);
  EXPECT_EQ(config.smtp.max_message_size, 10'000'000u);
  EXPECT_EQ(config.smtp.max_recipients, 50u);
  EXPECT_EQ(config.smtp.max_errors, 3u);
  EXPECT_EQ(config.smtp.idle_timeout, absl::Minutes(90));
  EXPECT_EQ(config.smtp.max_sessions, 77u);
  EXPECT_EQ(config.smtp.auth_max_failures, 0u);
  EXPECT_EQ(config.smtp.auth_failure_window, absl::Seconds(90));
  EXPECT_EQ(config.ResolvePath(config.tls.certificate_file), "/var/lib/facteur/tls/cert.pem");
  EXPECT_EQ(config.ResolvePath(config.tls.private_key_file), "/etc/key.pem");
  EXPECT_EQ(config.SpoolPath(), "/data/spool");
  EXPECT_EQ(config.spool.max_batch, 65536u);
  EXPECT_EQ(config.spool.max_unsynced, absl::Milliseconds(250));
  EXPECT_EQ(config.admin.address, "[::1]:9000");
  ASSERT_EQ(config.listeners.size(), 2u);
  EXPECT_EQ(config.listeners[0].name, "mx");
  EXPECT_EQ(config.listeners[0].role, ListenerRole::kSubmission);
  EXPECT_EQ(config.listeners[0].tls, TlsMode::kImplicit);
  EXPECT_EQ(config.listeners[1].role, ListenerRole::kRelay);
  EXPECT_EQ(config.listeners[1].tls, TlsMode::kNone);
  ASSERT_EQ(config.listeners[1].trusted_networks.size(), 3u);
  EXPECT_EQ(config.listeners[1].trusted_networks[2].prefix_length, 32);
}

TEST(ParseConfigTest, EveryOutboundKeyIsRead) {
  Config config = ParseOk(R"(
hostname = "mail.example.org"
[dns]
nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"]
timeout = "1500ms"
attempts = 3
max_queries_in_flight = 7
[delivery]
enabled = false
smtp_port = 2525
pool = "bulk"
tls = "required"
tls_ca_file = "ca/private.pem"
max_connections_per_destination = 3
max_messages_per_connection = 7
max_recipients_per_transaction = 50
max_messages_in_flight = 999
max_bytes_in_flight = "64MiB"
connection_idle_timeout = "2s"
shutdown_grace = "3s"
connect_timeout = 4
greeting_timeout = "61s"
command_timeout = "62s"
data_initiation_timeout = "63s"
data_block_timeout = "64s"
data_termination_timeout = "65s"
first_retry = "1m"
retry_backoff = 3
max_retry_interval = "2h"
retry_jitter = 0.5
queue_lifetime = "48h"
validate_recipient_domains = false
metrics_site_labels = 25
[events]
path = "/var/log/facteur/events.log"
[dkim]
engine = "opendkim"
threads = 4
max_queued = 16
[[dkim.key]]
domain = "Example.ORG"
selector = "rsa2024"
key_file = "dkim/rsa.pem"
[[dkim.key]]
domain = "example.org"
selector = "ed.2024"
algorithm = "ed25519-sha256"
key_file = "/etc/dkim/ed.pem"
account = "newsletter"
[[source]]
name = "ip1"
address = "192.0.2.10"
ehlo_name = "mta1.example.org"
[[source]]
name = "ip2"
address = "2001:db8::20"
pool = "bulk"
[[route]]
domain = "Example.NET"
destination = "[Relay.Example.net]:2526"
tls = "none"
pool = "default"
[[route]]
domain = ".example.com"
destination = "mx.example.com"
[[route]]
domain = "*"
destination = "[192.0.2.99]"
[[route]]
domain = "v6.example"
destination = "[2001:db8::99]:26"
tls = "opportunistic"
[[route]]
domain = "mx-port.example"
destination = "mx.example.com:2600"
[[route]]
domain = "tls-only.example"
)");
  EXPECT_EQ(config.dns.nameservers,
            (std::vector<std::string>{"127.0.0.1:5353", "[::1]:53", "192.0.2.53"}));
  EXPECT_EQ(config.dns.timeout, absl::Milliseconds(1500));
  EXPECT_EQ(config.dns.attempts, 3u);
  EXPECT_EQ(config.dns.max_queries_in_flight, 7u);
  const DeliveryOptions& delivery = config.delivery;
  EXPECT_FALSE(delivery.enabled);
  EXPECT_EQ(delivery.smtp_port, 2525);
  EXPECT_EQ(delivery.pool, "bulk");
  EXPECT_EQ(delivery.tls, DeliveryTlsPolicy::kRequired);
  EXPECT_EQ(delivery.tls_ca_file, "ca/private.pem");
  EXPECT_EQ(delivery.max_connections_per_destination, 3u);
  EXPECT_EQ(delivery.max_messages_per_connection, 7u);
  EXPECT_EQ(delivery.max_recipients_per_transaction, 50u);
  EXPECT_EQ(delivery.max_messages_in_flight, 999u);
  EXPECT_EQ(delivery.max_bytes_in_flight, 64u << 20);
  EXPECT_EQ(delivery.connection_idle_timeout, absl::Seconds(2));
  EXPECT_EQ(delivery.shutdown_grace, absl::Seconds(3));
  EXPECT_EQ(delivery.connect_timeout, absl::Seconds(4));
  EXPECT_EQ(delivery.greeting_timeout, absl::Seconds(61));
  EXPECT_EQ(delivery.command_timeout, absl::Seconds(62));
  EXPECT_EQ(delivery.data_initiation_timeout, absl::Seconds(63));
  EXPECT_EQ(delivery.data_block_timeout, absl::Seconds(64));
  EXPECT_EQ(delivery.data_termination_timeout, absl::Seconds(65));
  EXPECT_EQ(delivery.first_retry, absl::Minutes(1));
  EXPECT_EQ(delivery.retry_backoff, 3.0);
  EXPECT_EQ(delivery.max_retry_interval, absl::Hours(2));
  EXPECT_EQ(delivery.retry_jitter, 0.5);
  EXPECT_EQ(delivery.queue_lifetime, absl::Hours(48));
  EXPECT_FALSE(delivery.validate_recipient_domains);
  EXPECT_EQ(delivery.metrics_site_labels, 25u);
  EXPECT_EQ(config.ResolvePath(config.events.path), "/var/log/facteur/events.log");
  EXPECT_EQ(config.dkim.engine, DkimEngine::kOpenDkim);
  EXPECT_EQ(config.dkim.threads, 4u);
  EXPECT_EQ(config.dkim.max_queued, 16u);

  ASSERT_EQ(config.dkim.keys.size(), 2u);
  EXPECT_EQ(config.dkim.keys[0].domain, "example.org");  // lower-cased
  EXPECT_EQ(config.dkim.keys[0].selector, "rsa2024");
  EXPECT_EQ(config.dkim.keys[0].algorithm, DkimAlgorithm::kRsaSha256);
  EXPECT_EQ(config.dkim.keys[0].key_file, "dkim/rsa.pem");  // kept as written
  EXPECT_EQ(config.ResolvePath(config.dkim.keys[0].key_file), "./var/dkim/rsa.pem");
  EXPECT_EQ(config.dkim.keys[0].account, "");
  EXPECT_EQ(config.dkim.keys[1].selector, "ed.2024");
  EXPECT_EQ(config.dkim.keys[1].algorithm, DkimAlgorithm::kEd25519Sha256);
  EXPECT_EQ(config.dkim.keys[1].key_file, "/etc/dkim/ed.pem");
  EXPECT_EQ(config.dkim.keys[1].account, "newsletter");

  ASSERT_EQ(config.sources.size(), 2u);
  EXPECT_EQ(config.sources[0].name, "ip1");
  EXPECT_EQ(config.sources[0].address, "192.0.2.10");
  EXPECT_EQ(config.sources[0].ehlo_name, "mta1.example.org");
  EXPECT_EQ(config.sources[0].pool, "default");
  EXPECT_EQ(config.sources[1].name, "ip2");
  EXPECT_EQ(config.sources[1].address, "2001:db8::20");
  EXPECT_EQ(config.sources[1].ehlo_name, "mail.example.org");  // hostname
  EXPECT_EQ(config.sources[1].pool, "bulk");

  ASSERT_EQ(config.routes.size(), 6u);
  const RouteOptions& relay = config.routes[0];
  EXPECT_EQ(relay.domain, "example.net");
  EXPECT_EQ(relay.destination, "[Relay.Example.net]:2526");
  EXPECT_EQ(relay.next_hop.host, "relay.example.net");
  EXPECT_EQ(relay.next_hop.port, 2526);
  EXPECT_FALSE(relay.next_hop.mx_lookup);
  EXPECT_FALSE(relay.next_hop.ip_literal);
  EXPECT_EQ(relay.tls, DeliveryTlsPolicy::kNone);
  EXPECT_EQ(relay.pool, "default");
  const RouteOptions& subdomains = config.routes[1];
  EXPECT_EQ(subdomains.domain, ".example.com");
  EXPECT_EQ(subdomains.next_hop.host, "mx.example.com");
  EXPECT_EQ(subdomains.next_hop.port, 2525);  // delivery.smtp_port
  EXPECT_TRUE(subdomains.next_hop.mx_lookup);
  EXPECT_FALSE(subdomains.tls.has_value());
  EXPECT_EQ(subdomains.pool, "");
  const RouteOptions& smart_host = config.routes[2];
  EXPECT_EQ(smart_host.domain, "*");
  EXPECT_EQ(smart_host.next_hop.host, "192.0.2.99");
  EXPECT_EQ(smart_host.next_hop.port, 2525);
  EXPECT_FALSE(smart_host.next_hop.mx_lookup);
  EXPECT_TRUE(smart_host.next_hop.ip_literal);
  EXPECT_FALSE(smart_host.next_hop.v6);
  EXPECT_EQ(smart_host.next_hop.address[0], 192);
  EXPECT_EQ(smart_host.next_hop.address[3], 99);
  const RouteOptions& v6 = config.routes[3];
  EXPECT_EQ(v6.next_hop.host, "2001:db8::99");
  EXPECT_EQ(v6.next_hop.port, 26);
  EXPECT_TRUE(v6.next_hop.ip_literal);
  EXPECT_TRUE(v6.next_hop.v6);
  EXPECT_EQ(v6.next_hop.address[0], 0x20);
  EXPECT_EQ(v6.next_hop.address[15], 0x99);
  EXPECT_EQ(v6.tls, DeliveryTlsPolicy::kOpportunistic);
  EXPECT_EQ(config.routes[4].next_hop.host, "mx.example.com");
  EXPECT_EQ(config.routes[4].next_hop.port, 2600);
  EXPECT_TRUE(config.routes[4].next_hop.mx_lookup);
  const RouteOptions& recipient_mx = config.routes[5];
  EXPECT_EQ(recipient_mx.destination, "");
  EXPECT_EQ(recipient_mx.next_hop.host, "");
  EXPECT_EQ(recipient_mx.next_hop.port, 2525);
  EXPECT_TRUE(recipient_mx.next_hop.mx_lookup);
  EXPECT_FALSE(recipient_mx.next_hop.ip_literal);
}

TEST(ParseConfigTest, NumbersAcceptIntegersAndFloats) {
  Config config = ParseOk("[delivery]\nretry_backoff = 1\nretry_jitter = 0\n");
  EXPECT_EQ(config.delivery.retry_backoff, 1.0);
  EXPECT_EQ(config.delivery.retry_jitter, 0.0);
  config = ParseOk("[delivery]\nretry_backoff = 1.5\nretry_jitter = 1.0\n");
  EXPECT_EQ(config.delivery.retry_backoff, 1.5);
  EXPECT_EQ(config.delivery.retry_jitter, 1.0);
}

TEST(ParseConfigTest, PoolsOfAnEmptySourceListAreTheDefault) {
  // No [[source]]: the implicit source is in pool "default", which routes may name.
  Config config = ParseOk("[[route]]\ndomain = \"example.org\"\npool = \"default\"\n");
  EXPECT_EQ(config.routes[0].pool, "default");
  // delivery.pool may name any pool that a source is in.
  config = ParseOk(R"(
[delivery]
pool = "bulk"
[[source]]
name = "b"
pool = "bulk"
)");
  EXPECT_EQ(config.delivery.pool, "bulk");
  EXPECT_EQ(config.sources[0].address, "");
}

TEST(ParseConfigTest, IntegerFormsAndAdminDisabled) {
  Config config = ParseOk(R"(
smtp.max_message_size = 1024
smtp.idle_timeout = 60
admin.address = ""
)");
  EXPECT_EQ(config.smtp.max_message_size, 1024u);
  EXPECT_EQ(config.smtp.idle_timeout, absl::Seconds(60));
  EXPECT_EQ(config.admin.address, "");
}

TEST(ParseConfigTest, EmptyTablesKeepDefaults) {
  Config config = ParseOk("[admin]\n[smtp]\n[tls]\n[spool]\n");
  EXPECT_EQ(config.admin.address, "127.0.0.1:9464");
  EXPECT_EQ(config.smtp.max_errors, 10u);
  EXPECT_EQ(config.SpoolPath(), "./var/spool");
}

TEST(ParseConfigTest, ExampleFileParses) {
  const char* root = std::getenv("FACTEUR_SOURCE_DIR");
  ASSERT_NE(root, nullptr) << "FACTEUR_SOURCE_DIR is not set (run through ctest)";
  absl::StatusOr<Config> config =
      LoadConfigFile(std::string(root) + "/deploy/facteur.example.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->hostname, "mail.example.org");
  ASSERT_EQ(config->listeners.size(), 5u);
  EXPECT_EQ(config->listeners[3].name, "internal");
  EXPECT_EQ(config->listeners[3].trusted_networks[0].text, "10.0.0.0/8");
  EXPECT_EQ(config->SpoolPath(), "/var/lib/facteur/spool");
  // The outbound sections are written out with their defaults.
  Config defaults = DefaultConfig();
  EXPECT_EQ(config->dns.timeout, defaults.dns.timeout);
  EXPECT_EQ(config->dns.attempts, defaults.dns.attempts);
  EXPECT_EQ(config->delivery.tls, defaults.delivery.tls);
  EXPECT_EQ(config->delivery.queue_lifetime, defaults.delivery.queue_lifetime);
  EXPECT_EQ(config->delivery.data_termination_timeout, defaults.delivery.data_termination_timeout);
  EXPECT_EQ(config->delivery.retry_jitter, defaults.delivery.retry_jitter);
  EXPECT_EQ(config->events.path, defaults.events.path);
  EXPECT_EQ(config->dkim.max_queued, defaults.dkim.max_queued);
  EXPECT_TRUE(config->dkim.keys.empty());
  ASSERT_EQ(config->sources.size(), 1u);
  EXPECT_EQ(config->sources[0].ehlo_name, "mail.example.org");
  EXPECT_TRUE(config->routes.empty());
}

// The example's commented-out tables ("#[[source]]", "#name = ...") must be valid too: with
// every such line uncommented, the file still parses, and yields what those lines say.
TEST(ParseConfigTest, ExampleFileCommentedExamplesParse) {
  const char* root = std::getenv("FACTEUR_SOURCE_DIR");
  ASSERT_NE(root, nullptr) << "FACTEUR_SOURCE_DIR is not set (run through ctest)";
  std::ifstream file(std::string(root) + "/deploy/facteur.example.toml");
  ASSERT_TRUE(file.good());
  std::string uncommented;
  int examples = 0;
  for (std::string line; std::getline(file, line);) {
    if (line.size() > 1 && line[0] == '#' && line[1] != ' ' && line[1] != '#') {
      line.erase(0, 1);
      ++examples;
    }
    uncommented += line + "\n";
  }
  EXPECT_GT(examples, 20);
  absl::StatusOr<Config> config = ParseConfig(uncommented, "facteur.example.toml (uncommented)");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->dkim.keys.size(), 3u);
  ASSERT_EQ(config->sources.size(), 3u);
  EXPECT_EQ(config->sources[2].pool, "bulk");
  ASSERT_EQ(config->routes.size(), 4u);
  EXPECT_EQ(config->routes[0].domain, ".corp.example.org");
  EXPECT_EQ(config->routes[0].next_hop.port, 2525);
  EXPECT_EQ(config->routes[3].domain, "*");
}

TEST(ParseConfigTest, PortZeroListenersMayRepeat) {
  Config config = ParseOk(R"(
[[listener]]
name = "a"
address = "127.0.0.1:0"
[[listener]]
name = "b"
address = "127.0.0.1:0"
)");
  EXPECT_EQ(config.listeners.size(), 2u);
}

// --- Errors -------------------------------------------------------------------------------------

TEST(ParseErrorTest, TomlSyntaxErrorHasLineAndColumn) {
  std::string message = ErrorOf("data_dir = \"./var\"\n\nio_threads = = 3\n");
  EXPECT_THAT(message, StartsWith("test.toml:3:"));
  EXPECT_THAT(message, ::testing::Not(HasSubstr("key '")));
}

TEST(ParseErrorTest, UnknownKeys) {
  ExpectError("[smtp]\nmax_errors = 3\nmax_eror = 4\n", 3, "smtp.max_eror",
              "unknown key; did you mean 'smtp.max_errors'?");
  ExpectError("\n\ncolour = 3\n", 3, "colour", "unknown key");
  EXPECT_THAT(ErrorOf("colour = 3\n"), ::testing::Not(HasSubstr("did you mean")));
  ExpectError("[smpt]\nmax_errors = 3\n", 1, "smpt", "did you mean 'smtp'?");
  ExpectError("[[listener]]\naddress = \"127.0.0.1:25\"\n[[listener]]\nadress = \"x\"\n", 4,
              "listener[1].adress", "did you mean 'listener[1].address'?");
  ExpectError("[tls]\ncert = \"x\"\n", 2, "tls.cert", "unknown key");
  ExpectError("[spool]\nmax_bach = 2\n", 2, "spool.max_bach", "did you mean 'spool.max_batch'?");
  ExpectError("[admin]\nadres = \"\"\n", 2, "admin.adres", "did you mean 'admin.address'?");
}

TEST(ParseErrorTest, WrongTypes) {
  ExpectError("data_dir = 3\n", 1, "data_dir", "must be a string, not an integer");
  ExpectError("\nio_threads = \"4\"\n", 2, "io_threads", "must be an integer, not a string");
  ExpectError("smtp = 3\n", 1, "smtp", "must be a table");
  ExpectError("[smtp]\nmax_errors = 1.5\n", 2, "smtp.max_errors", "must be an integer, not a float");
  ExpectError("[smtp]\nmax_message_size = true\n", 2, "smtp.max_message_size", "not a boolean");
  ExpectError("[smtp]\nidle_timeout = [1]\n", 2, "smtp.idle_timeout", "not an array");
  ExpectError("listener = 1\n", 1, "listener", "must be an array of tables");
  ExpectError("listener = [1]\n", 1, "listener[0]", "must be a table");
  ExpectError("[[listener]]\naddress = 25\n", 2, "listener[0].address", "must be a string");
  ExpectError("[[listener]]\naddress = \"127.0.0.1:25\"\ntrusted_networks = \"10.0.0.0/8\"\n", 3,
              "listener[0].trusted_networks", "must be an array");
  ExpectError("[[listener]]\naddress = \"127.0.0.1:25\"\ntrusted_networks = [10]\n", 3,
              "listener[0].trusted_networks[0]", "must be a CIDR string");
}

TEST(ParseErrorTest, OutOfRange) {
  ExpectError("[smtp]\nmax_errors = 0\n", 2, "smtp.max_errors", "must be a positive integer");
  ExpectError("[smtp]\nmax_recipients = 0\n", 2, "smtp.max_recipients", "positive");
  ExpectError("[smtp]\nmax_recipients = -5\n", 2, "smtp.max_recipients", "positive");
  ExpectError("[smtp]\nmax_sessions = 4294967296\n", 2, "smtp.max_sessions", "positive");
  ExpectError("[smtp]\nauth_failure_window = \"soon\"\n", 2, "smtp.auth_failure_window",
              "not a duration");
  ExpectError("[smtp]\nauth_failure_window = 0\n", 2, "smtp.auth_failure_window", "positive");
  ExpectError("[smtp]\nmax_message_size = 0\n", 2, "smtp.max_message_size", "4 GiB");
  ExpectError("[smtp]\nmax_message_size = \"5GiB\"\n", 2, "smtp.max_message_size", "4 GiB");
  ExpectError("[smtp]\nmax_message_size = 4294967297\n", 2, "smtp.max_message_size", "4 GiB");
  EXPECT_EQ(ParseOk("smtp.max_message_size = \"4GiB\"").smtp.max_message_size, 4294967296u);
  ExpectError("io_threads = 257\n", 1, "io_threads", "between 0 and 256");
  ExpectError("auth_threads = 0\n", 1, "auth_threads", "between 1 and 256");
  ExpectError("[spool]\nmax_batch = 0\n", 2, "spool.max_batch", "between 1 and 65536");
  ExpectError("[spool]\nmax_batch = 65537\n", 2, "spool.max_batch", "between 1 and 65536");
  ExpectError("[spool]\nmax_unsynced = \"0s\"\n", 2, "spool.max_unsynced", "positive");
  ExpectError("[smtp]\nidle_timeout = 0\n", 2, "smtp.idle_timeout", "positive");
  ExpectError("[smtp]\nidle_timeout = -3\n", 2, "smtp.idle_timeout", "positive");
  ExpectError("[smtp]\nidle_timeout = \"-5m\"\n", 2, "smtp.idle_timeout", "positive");
  ExpectError("[smtp]\nidle_timeout = \"0s\"\n", 2, "smtp.idle_timeout", "positive");
  ExpectError("[smtp]\nidle_timeout = \"inf\"\n", 2, "smtp.idle_timeout", "finite");
  ExpectError("data_dir = \"\"\n", 1, "data_dir", "must not be empty");
  ExpectError("hostname = \"mail example\"\n", 1, "hostname", "not a host name");
}

TEST(ParseErrorTest, BadDurationAndSizeStrings) {
  ExpectError("[smtp]\nidle_timeout = \"5 minutes\"\n", 2, "smtp.idle_timeout", "not a duration");
  ExpectError("[smtp]\nidle_timeout = \"300\"\n", 2, "smtp.idle_timeout", "not a duration");
  ExpectError("[smtp]\nmax_message_size = \"100k\"\n", 2, "smtp.max_message_size", "not a size");
  ExpectError("[smtp]\nmax_message_size = \"1.5MiB\"\n", 2, "smtp.max_message_size", "not a size");
  ExpectError("[smtp]\nmax_message_size = \"MiB\"\n", 2, "smtp.max_message_size", "not a size");
}

TEST(ParseErrorTest, ListenerValues) {
  const char* kHead = "[[listener]]\naddress = \"127.0.0.1:25\"\n";
  ExpectError(std::string(kHead) + "role = \"mx\"\n", 3, "listener[0].role", "not a role");
  ExpectError(std::string(kHead) + "tls = \"ssl\"\n", 3, "listener[0].tls", "not a TLS mode");
  ExpectError(std::string(kHead) + "trusted_networks = [\"10.0.0.0/8\", \"10.0.0/8\"]\n", 3,
              "listener[0].trusted_networks[1]", "not a CIDR network");
  ExpectError(std::string(kHead) + "trusted_networks = [\"10.0.0.0/33\"]\n", 3,
              "listener[0].trusted_networks[0]", "prefix length");
  ExpectError(std::string(kHead) + "trusted_networks = [\"::/129\"]\n", 3,
              "listener[0].trusted_networks[0]", "prefix length");
  ExpectError(std::string(kHead) + "trusted_networks = [\"0.0.0.0/0\"]\n", 3,
              "listener[0].trusted_networks[0]", "open relay");
  ExpectError(std::string(kHead) + "trusted_networks = [\"::/0\"]\n", 3,
              "listener[0].trusted_networks[0]", "open relay");
  ExpectError(std::string(kHead) + "trusted_networks = [\"::ffff:0.0.0.0/96\"]\n", 3,
              "listener[0].trusted_networks[0]", "open relay");
  ExpectError("[[listener]]\naddress = \"unix:x.sock\"\ntls = \"starttls\"\n", 3,
              "listener[0].tls", "Unix socket");
  ExpectError("[[listener]]\naddress = \"0.0.0.0:587\"\ntrusted_networks = [\"10.0.0.0/8\"]\n", 3,
              "listener[0].trusted_networks", "only a relay listener");
  ExpectError("[[listener]]\naddress = \"0.0.0.0:25\"\nrole = \"submission\"\n"
              "trusted_networks = [\"10.0.0.0/8\"]\n",
              4, "listener[0].trusted_networks", "only a relay listener");
  // A TCP submission listener without TLS could never offer AUTH, hence never take mail.
  ExpectError("[[listener]]\naddress = \"127.0.0.1:2588\"\nrole = \"submission\"\n", 3,
              "listener[0].tls", "needs tls = \"starttls\" or \"implicit\"");
  ExpectError("[[listener]]\naddress = \"127.0.0.1:587\"\ntls = \"none\"\n", 3,
              "listener[0].tls", "needs tls");
  ExpectError("\n[[listener]]\nname = \"x\"\n", 2, "listener[0].address", "required");
  ExpectError("[[listener]]\nname = \"a b\"\naddress = \"127.0.0.1:25\"\n", 2, "listener[0].name",
              "printable");
}

TEST(ParseErrorTest, BadAddresses) {
  for (const char* address : {"mail.example.org:25", "127.0.0.1", "127.0.0.1:65536", "127.0.0.1:-1",
                              "::1:25", "[::1]", "[::1:25", "[127.0.0.1]:25", "unix:", ":25",
                              "127.0.0.1:+25", "127.0.0.1: 25"}) {
    ExpectError("[[listener]]\naddress = \"" + std::string(address) + "\"\n", 2,
                "listener[0].address", "not");
  }
  ExpectError("[admin]\naddress = \"example.org:80\"\n", 2, "admin.address", "not an address");
  ExpectError("[admin]\naddress = \"unix:admin.sock\"\n", 2, "admin.address", "no Unix socket");
  ExpectError("data_dir = \"/" + std::string(120, 'd') + "\"\n", 1, "listener[1].address",
              "longer than 107 bytes");
}

TEST(ParseErrorTest, Duplicates) {
  ExpectError(R"([[listener]]
name = "a"
address = "127.0.0.1:25"
[[listener]]
name = "a"
address = "127.0.0.1:26"
)",
              5, "listener[1].name", "duplicate listener name 'a' (also listener[0])");
  ExpectError(R"([[listener]]
name = "a"
address = "127.0.0.1:25"
[[listener]]
name = "b"
address = "localhost:25"
)",
              6, "listener[1].address", "duplicate listener address");
  ExpectError(R"([[listener]]
address = "[::1]:25"
[[listener]]
name = "other"
address = "[0:0::1]:25"
)",
              5, "listener[1].address", "duplicate listener address");
  ExpectError(R"(data_dir = "/d"
[[listener]]
name = "a"
address = "unix:s.sock"
[[listener]]
name = "b"
address = "unix:/d/s.sock"
)",
              7, "listener[1].address", "duplicate listener address");
  // Without names, each is named after its address: the address is what is wrong.
  ExpectError(R"([[listener]]
address = "127.0.0.1:25"
[[listener]]
address = "127.0.0.1:25"
)",
              4, "listener[1].address",
              "duplicate listener address '127.0.0.1:25' (also listener[0])");
}

TEST(ParseErrorTest, CertificateWithoutKey) {
  ExpectError("[tls]\ncertificate_file = \"c.pem\"\n", 2, "tls.certificate_file",
              "without tls.private_key_file");
  ExpectError("[tls]\n\nprivate_key_file = \"k.pem\"\n", 3, "tls.private_key_file",
              "without tls.certificate_file");
}

TEST(ParseErrorTest, UnknownKeysInOutboundTables) {
  ExpectError("[dns]\nnameserver = []\n", 2, "dns.nameserver",
              "did you mean 'dns.nameservers'?");
  ExpectError("[delivery]\nenabled = true\nfirst_rety = \"1m\"\n", 3, "delivery.first_rety",
              "did you mean 'delivery.first_retry'?");
  ExpectError("[delivery]\nqueue_lifetme = 1\n", 2, "delivery.queue_lifetme",
              "did you mean 'delivery.queue_lifetime'?");
  ExpectError("[events]\npaht = \"x\"\n", 2, "events.paht", "did you mean 'events.path'?");
  ExpectError("[dkim]\nengnie = \"native\"\n", 2, "dkim.engnie", "did you mean 'dkim.engine'?");
  ExpectError("[dkim]\nkeys = []\n", 2, "dkim.keys", "did you mean 'dkim.key'?");
  ExpectError("[[dkim.key]]\ndomain = \"example.org\"\nselectr = \"s\"\n", 3,
              "dkim.key[0].selectr", "did you mean 'dkim.key[0].selector'?");
  ExpectError("[[source]]\nname = \"a\"\nehlo = \"x.example\"\n", 3, "source[0].ehlo",
              "unknown key");
  ExpectError("[[source]]\nname = \"a\"\nadress = \"192.0.2.1\"\n", 3, "source[0].adress",
              "did you mean 'source[0].address'?");
  ExpectError("[[route]]\ndomain = \"a.example\"\n[[route]]\ndomian = \"b.example\"\n", 4,
              "route[1].domian", "did you mean 'route[1].domain'?");
  ExpectError("[[routes]]\ndomain = \"a.example\"\n", 1, "routes", "did you mean 'route'?");
  ExpectError("[deliverry]\n", 1, "deliverry", "did you mean 'delivery'?");
}

TEST(ParseErrorTest, OutboundWrongTypes) {
  ExpectError("dns = []\n", 1, "dns", "must be a table");
  ExpectError("[dns]\nnameservers = \"127.0.0.1\"\n", 2, "dns.nameservers", "must be an array");
  ExpectError("[dns]\nnameservers = [\"127.0.0.1\", 53]\n", 2, "dns.nameservers[1]",
              "must be an address string, not an integer");
  ExpectError("[delivery]\nenabled = \"yes\"\n", 2, "delivery.enabled",
              "must be true or false, not a string");
  ExpectError("[delivery]\nvalidate_recipient_domains = 1\n", 2,
              "delivery.validate_recipient_domains", "must be true or false");
  ExpectError("[delivery]\nretry_backoff = \"2\"\n", 2, "delivery.retry_backoff",
              "must be a number, not a string");
  ExpectError("[delivery]\ntls = true\n", 2, "delivery.tls", "must be a string");
  ExpectError("[events]\npath = 1\n", 2, "events.path", "must be a string");
  ExpectError("[dkim]\nkey = 1\n", 2, "dkim.key", "must be an array of tables ([[dkim.key]])");
  ExpectError("[dkim]\nkey = [1]\n", 2, "dkim.key[0]", "must be a table ([[dkim.key]])");
  ExpectError("source = \"x\"\n", 1, "source", "must be an array of tables ([[source]])");
  ExpectError("route = [\"x\"]\n", 1, "route[0]", "must be a table ([[route]])");
  ExpectError("[[route]]\ndomain = 5\n", 2, "route[0].domain", "must be a string");
}

TEST(ParseErrorTest, DnsValues) {
  for (const char* address :
       {"", "localhost", "dns.example", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:", ":53",
        "127.0.0.1:+53", "[::1", "[::1]53", "[127.0.0.1]:53", "::1:53:x", "[::1]:", "10.0.0/8",
        "1.2.3.4:53:53"}) {
    ExpectError("[dns]\n\nnameservers = [\"" + std::string(address) + "\"]\n", 3,
                "dns.nameservers[0]", "is not a nameserver address");
  }
  ExpectError("[dns]\ntimeout = 0\n", 2, "dns.timeout", "positive");
  ExpectError("[dns]\ntimeout = \"5\"\n", 2, "dns.timeout", "not a duration");
  ExpectError("[dns]\nattempts = 0\n", 2, "dns.attempts", "between 1 and 16");
  ExpectError("[dns]\nattempts = 17\n", 2, "dns.attempts", "between 1 and 16");
  ExpectError("[dns]\nmax_queries_in_flight = 0\n", 2, "dns.max_queries_in_flight",
              "between 1 and 100000");
}

TEST(ParseErrorTest, DeliveryValues) {
  ExpectError("[delivery]\nsmtp_port = 0\n", 2, "delivery.smtp_port", "between 1 and 65535");
  ExpectError("[delivery]\nmetrics_site_labels = 1001\n", 2, "delivery.metrics_site_labels",
              "between 0 and 1000");
  ExpectError("[delivery]\nsmtp_port = 65536\n", 2, "delivery.smtp_port", "between 1 and 65535");
  ExpectError("[delivery]\ntls = \"always\"\n", 2, "delivery.tls",
              "'always' is not a TLS policy (\"none\", \"opportunistic\" or \"required\")");
  ExpectError("[delivery]\npool = \"\"\n", 2, "delivery.pool", "1 to 64 printable");
  ExpectError("[delivery]\npool = \"a b\"\n", 2, "delivery.pool", "1 to 64 printable");
  for (const char* key : {"max_connections_per_destination", "max_messages_per_connection",
                          "max_recipients_per_transaction", "max_messages_in_flight"}) {
    ExpectError("[delivery]\n" + std::string(key) + " = 0\n", 2, "delivery." + std::string(key),
                "must be a positive integer, got 0");
  }
  for (const char* key : {"connection_idle_timeout", "connect_timeout", "greeting_timeout",
                          "command_timeout", "data_initiation_timeout", "data_block_timeout",
                          "data_termination_timeout", "first_retry", "max_retry_interval",
                          "queue_lifetime", "shutdown_grace"}) {
    ExpectError("[delivery]\n\n" + std::string(key) + " = \"-1s\"\n", 3,
                "delivery." + std::string(key), "positive");
    ExpectError("[delivery]\n" + std::string(key) + " = \"5d\"\n", 2,
                "delivery." + std::string(key), "not a duration");
  }
  ExpectError("[delivery]\nmax_bytes_in_flight = 0\n", 2, "delivery.max_bytes_in_flight",
              "between 1 byte and 1 TiB");
  ExpectError("[delivery]\nmax_bytes_in_flight = \"2000GiB\"\n", 2, "delivery.max_bytes_in_flight",
              "between 1 byte and 1 TiB");
  ExpectError("[delivery]\nmax_bytes_in_flight = [1]\n", 2, "delivery.max_bytes_in_flight",
              "not an array");
  ExpectError("[delivery]\nretry_backoff = 0.5\n", 2, "delivery.retry_backoff",
              "must be at least 1, got 0.5");
  ExpectError("[delivery]\nretry_backoff = inf\n", 2, "delivery.retry_backoff", "at least 1");
  ExpectError("[delivery]\nretry_backoff = nan\n", 2, "delivery.retry_backoff", "at least 1");
  ExpectError("[delivery]\nretry_jitter = 1.5\n", 2, "delivery.retry_jitter",
              "must be between 0 and 1, got 1.5");
  ExpectError("[delivery]\nretry_jitter = -0.1\n", 2, "delivery.retry_jitter", "between 0 and 1");
  ExpectError("[delivery]\nfirst_retry = \"5m\"\nmax_retry_interval = \"1m\"\n", 3,
              "delivery.max_retry_interval", "is shorter than delivery.first_retry");
  ExpectError("[delivery]\nfirst_retry = \"5h\"\n", 2, "delivery.first_retry",
              "delivery.max_retry_interval (4h) is shorter than delivery.first_retry (5h)");
}

TEST(ParseErrorTest, DkimValues) {
  ExpectError("[dkim]\nengine = \"fast\"\n", 2, "dkim.engine",
              "'fast' is not a DKIM engine (\"native\" or \"opendkim\")");
  ExpectError("[dkim]\nthreads = 257\n", 2, "dkim.threads", "between 0 and 256");
  ExpectError("[dkim]\nmax_queued = 0\n", 2, "dkim.max_queued", "positive");
  const std::string kKey = "[dkim]\n[[dkim.key]]\n";
  ExpectError(kKey + "selector = \"s\"\nkey_file = \"k.pem\"\n", 2, "dkim.key[0].domain",
              "required");
  ExpectError(kKey + "domain = \"example.org\"\nkey_file = \"k.pem\"\n", 2,
              "dkim.key[0].selector", "required");
  ExpectError(kKey + "domain = \"example.org\"\nselector = \"s\"\n", 2, "dkim.key[0].key_file",
              "required");
  ExpectError(kKey + "domain = \"example.org\"\nselector = \"s\"\nkey_file = \"\"\n", 5,
              "dkim.key[0].key_file", "must not be empty");
  for (const char* domain : {"", "exa mple.org", "-example.org", "example..org", "[192.0.2.1]",
                             "192.0.2.1", "exämple.org", "example.org."}) {
    ExpectError(kKey + "domain = \"" + domain + "\"\nselector = \"s\"\nkey_file = \"k\"\n", 3,
                "dkim.key[0].domain", "");
  }
  for (const char* selector : {"sel_ector", "-s", "s..t", "s.", "[s]", "a b"}) {
    ExpectError(kKey + "domain = \"example.org\"\nselector = \"" + selector +
                    "\"\nkey_file = \"k\"\n",
                4, "dkim.key[0].selector", "is not a selector");
  }
  ExpectError(kKey + "domain = \"example.org\"\nselector = \"s\"\nkey_file = \"k\"\n"
                     "algorithm = \"ed25519\"\n",
              6, "dkim.key[0].algorithm",
              "'ed25519' is not a DKIM algorithm (\"rsa-sha256\" or \"ed25519-sha256\")");
  // One key per (domain, algorithm, account): a second one would be chosen by chance.
  ExpectError(R"([[dkim.key]]
domain = "example.org"
selector = "a"
key_file = "a.pem"
[[dkim.key]]
domain = "EXAMPLE.org"
selector = "b"
algorithm = "rsa-sha256"
key_file = "b.pem"
)",
              6, "dkim.key[1].domain",
              "a second rsa-sha256 key for 'example.org' (also dkim.key[0])");
  ExpectError(R"([[dkim.key]]
domain = "example.org"
selector = "a"
key_file = "a.pem"
account = "news"
[[dkim.key]]
domain = "example.org"
selector = "b"
key_file = "b.pem"
account = "news"
)",
              7, "dkim.key[1].domain", "and account 'news' (also dkim.key[0])");
  // Different algorithms (dual signing) or accounts are fine.
  Config config = ParseOk(R"([[dkim.key]]
domain = "example.org"
selector = "a"
key_file = "a.pem"
[[dkim.key]]
domain = "example.org"
selector = "b"
algorithm = "ed25519-sha256"
key_file = "b.pem"
[[dkim.key]]
domain = "example.org"
selector = "c"
key_file = "c.pem"
account = "news"
[[dkim.key]]
domain = "example.org"
selector = "2024"
key_file = "d.pem"
account = "other"
)");
  EXPECT_EQ(config.dkim.keys.size(), 4u);
}

TEST(ParseErrorTest, SourceValues) {
  ExpectError("\n[[source]]\naddress = \"192.0.2.1\"\n", 2, "source[0].name", "required");
  ExpectError("[[source]]\nname = \"\"\n", 2, "source[0].name", "must not be empty");
  ExpectError("[[source]]\nname = \"a\\\"b\"\n", 2, "source[0].name", "1 to 64 printable");
  ExpectError("[[source]]\nname = \"a\"\n[[source]]\nname = \"a\"\n", 4, "source[1].name",
              "duplicate source name 'a' (also source[0])");
  for (const char* address : {"192.0.2.1:25", "[::1]", "mta.example.org", "192.0.2", "10.0.0.0/8",
                              "fe80::1%eth0", " 192.0.2.1"}) {
    ExpectError("[[source]]\nname = \"a\"\naddress = \"" + std::string(address) + "\"\n", 3,
                "source[0].address", "is not an IP address");
  }
  ExpectError("[[source]]\nname = \"a\"\nehlo_name = \"mta one\"\n", 3, "source[0].ehlo_name",
              "not a host name");
  ExpectError("[[source]]\nname = \"a\"\nehlo_name = \"\"\n", 3, "source[0].ehlo_name",
              "not a host name");
  ExpectError("[[source]]\nname = \"a\"\npool = \"\"\n", 3, "source[0].pool", "1 to 64 printable");
}

TEST(ParseErrorTest, PoolsMustHaveASource) {
  // Sources given, none in pool "default", delivery.pool left as is.
  ExpectError("\n[[source]]\nname = \"a\"\npool = \"bulk\"\n", 2, "delivery.pool",
              "no [[source]] is in pool 'default' (pools: bulk)");
  ExpectError("[delivery]\n\npool = \"bulk\"\n", 3, "delivery.pool",
              "no [[source]] is in pool 'bulk' (pools: default)");
  ExpectError("[delivery]\nenabled = true\n[[source]]\nname = \"a\"\npool = \"bulk\"\n", 1,
              "delivery.pool", "pool 'default'");
  // Without any [[source]], the implicit one is in pool "default" only.
  ExpectError("[[route]]\ndomain = \"example.org\"\npool = \"bulk\"\n", 3, "route[0].pool",
              "no [[source]] is in pool 'bulk' (pools: default)");
  ExpectError(R"([[source]]
name = "a"
[[source]]
name = "b"
pool = "bulk"
[[route]]
domain = "example.org"
pool = "Bulk"
)",
              8, "route[0].pool", "no [[source]] is in pool 'Bulk' (pools: default, bulk)");
}

TEST(ParseErrorTest, RouteValues) {
  ExpectError("[[route]]\ndestination = \"[192.0.2.1]:25\"\n", 1, "route[0].domain", "required");
  for (const char* domain : {"", ".", "..example.org", "*.example.org", "example.*", "**",
                             "192.0.2.1", "[192.0.2.1]", "exa_mple.org", "example.org."}) {
    ExpectError("[[route]]\ndomain = \"" + std::string(domain) + "\"\n", 2, "route[0].domain", "");
  }
  ExpectError("[[route]]\ndomain = \"*.example.org\"\n", 2, "route[0].domain",
              "is not a route domain; write '.example.org' for the subdomains of example.org");
  ExpectError("[[route]]\ndomain = \"example..org\"\n", 2, "route[0].domain",
              "is not a route domain (\"example.org\", \".example.org\" for its subdomains");
  ExpectError(R"([[route]]
domain = "example.org"
[[route]]
domain = ".example.org"
[[route]]
domain = "Example.org"
)",
              6, "route[2].domain", "duplicate route for 'example.org' (also route[0])");
  ExpectError("[[route]]\ndomain = \"*\"\n[[route]]\ndomain = \"*\"\n", 4, "route[1].domain",
              "duplicate route for '*'");
  ExpectError("[[route]]\ndomain = \"example.org\"\ntls = \"maybe\"\n", 3, "route[0].tls",
              "not a TLS policy");
  for (const char* destination :
       {"[relay.example.org", "[relay.example.org]25", "[relay.example.org]:", "[]:25",
        "[192.0.2.1]:0", "[192.0.2.1]:65536", "192.0.2.1:25", "192.0.2.1", "2001:db8::1",
        "[2001:db8::zz]:25", "relay.example.org:", "relay.example.org:x", ":25",
        "relay example.org", "[relay.example.org]:+25", "[999.1.1.1]:25", "smtp:[relay]:25"}) {
    ExpectError("[[route]]\ndomain = \"example.org\"\n\ndestination = \"" +
                    std::string(destination) + "\"\n",
                4, "route[0].destination", "is not a destination");
  }
}

TEST(ParseErrorTest, SourceNameStartsEveryMessage) {
  absl::StatusOr<Config> config = ParseConfig("io_threads = -1\n", "/etc/facteur.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()),
              StartsWith("/etc/facteur.toml:1:14: key 'io_threads': "));
}

TEST(LoadConfigFileTest, MissingFileNamesThePath) {
  absl::StatusOr<Config> config = LoadConfigFile("/nonexistent/facteur.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("/nonexistent/facteur.toml"));
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("No such file"));
}

TEST(LoadConfigFileTest, DirectoryIsAnError) {
  absl::StatusOr<Config> config = LoadConfigFile("/");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("/"));
}

// --- Cidr ---------------------------------------------------------------------------------------

struct Peer {
  uint8_t bytes[16] = {};
  size_t length = 0;
};

Peer MakePeer(const char* text) {
  Peer peer;
  if (inet_pton(AF_INET, text, peer.bytes) == 1) {
    peer.length = 4;
  } else if (inet_pton(AF_INET6, text, peer.bytes) == 1) {
    peer.length = 16;
  }
  EXPECT_NE(peer.length, 0u) << text;
  return peer;
}

TEST(CidrTest, ContainsTable) {
  struct Case {
    const char* network;
    const char* peer;
    bool contains;
  };
  const Case kCases[] = {
      {"127.0.0.0/8", "127.0.0.1", true},
      {"127.0.0.0/8", "127.255.255.255", true},
      {"127.0.0.0/8", "128.0.0.1", false},
      {"127.0.0.0/8", "::ffff:127.0.0.1", true},  // IPv4-mapped peer
      {"127.0.0.0/8", "::ffff:10.0.0.1", false},
      {"127.0.0.0/8", "::1", false},
      {"127.0.0.0/8", "::127.0.0.1", false},  // not mapped
      {"10.1.2.3/8", "10.200.0.1", true},     // host bits masked
      {"192.0.2.7", "192.0.2.7", true},       // /32 implied
      {"192.0.2.7/32", "192.0.2.8", false},
      {"192.0.2.0/25", "192.0.2.127", true},
      {"192.0.2.0/25", "192.0.2.128", false},
      {"0.0.0.0/0", "203.0.113.9", true},
      {"0.0.0.0/0", "::ffff:203.0.113.9", true},
      {"0.0.0.0/0", "2001:db8::1", false},
      {"::1/128", "::1", true},
      {"::1", "::1", true},
      {"::1/128", "::2", false},
      {"::1/128", "127.0.0.1", false},
      {"2001:db8::/32", "2001:db8:ffff::1", true},
      {"2001:db8::/32", "2001:db9::1", false},
      {"2001:db8::/33", "2001:db8:8000::1", false},
      {"::/0", "2001:db8::1", true},
      {"::/0", "10.0.0.1", false},  // IPv6 networks match IPv6 peers only
      {"::ffff:10.0.0.0/104", "::ffff:10.1.1.1", true},
  };
  for (const Case& c : kCases) {
    absl::StatusOr<Cidr> network = Cidr::Parse(c.network);
    ASSERT_TRUE(network.ok()) << c.network << ": " << network.status();
    Peer peer = MakePeer(c.peer);
    EXPECT_EQ(network->Contains(peer.bytes, peer.length), c.contains)
        << c.network << " contains " << c.peer;
  }
}

TEST(CidrTest, ParseRejectsMalformedText) {
  for (const char* text : {"", "/8", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/+8", "10.0.0.0/ 8",
                           "10.0.0.0/33", "10.0.0/8", "010.0.0.0/8", "::/129", "::1/0128",
                           "host.example/32", "10.0.0.0/8/8"}) {
    EXPECT_FALSE(Cidr::Parse(text).ok()) << text;
  }
  absl::StatusOr<Cidr> cidr = Cidr::Parse("10.1.2.3/8");
  ASSERT_TRUE(cidr.ok());
  EXPECT_EQ(cidr->text, "10.1.2.3/8");
  EXPECT_FALSE(cidr->v6);
  EXPECT_EQ(cidr->address[0], 10);
  EXPECT_EQ(cidr->address[1], 0);
  EXPECT_EQ(cidr->prefix_length, 8);
}

// --- Paths, sizes, durations, addresses -----------------------------------------------------------

TEST(ResolvePathTest, RelativeUnderDataDirAbsoluteUnchanged) {
  Config config;
  config.data_dir = "./var";
  EXPECT_EQ(config.ResolvePath("spool"), "./var/spool");
  EXPECT_EQ(config.ResolvePath("tls/key.pem"), "./var/tls/key.pem");
  EXPECT_EQ(config.ResolvePath("/etc/key.pem"), "/etc/key.pem");
  EXPECT_EQ(config.ResolvePath(""), "./var");
  config.data_dir = "/srv/facteur/";
  EXPECT_EQ(config.ResolvePath("spool"), "/srv/facteur/spool");
}

TEST(ParseByteSizeTest, Units) {
  EXPECT_EQ(*ParseByteSize("35MiB"), 36700160u);
  EXPECT_EQ(*ParseByteSize("10MB"), 10000000u);
  EXPECT_EQ(*ParseByteSize("512KiB"), 524288u);
  EXPECT_EQ(*ParseByteSize("1GiB"), 1073741824u);
  EXPECT_EQ(*ParseByteSize("2GB"), 2000000000u);
  EXPECT_EQ(*ParseByteSize("3KB"), 3000u);
  EXPECT_EQ(*ParseByteSize("3kB"), 3000u);
  EXPECT_EQ(*ParseByteSize("7B"), 7u);
  EXPECT_EQ(*ParseByteSize("2048"), 2048u);
  EXPECT_EQ(*ParseByteSize("35 MiB"), 36700160u);
  for (const char* text : {"", "MiB", "100k", "1.5GiB", "-1MB", "10 mb", "1TB", "5MiBs",
                           "99999999999999999999GiB", "18446744073709551616"}) {
    EXPECT_FALSE(ParseByteSize(text).ok()) << text;
  }
}

TEST(DurationTest, Forms) {
  EXPECT_EQ(ParseOk("smtp.idle_timeout = \"300s\"").smtp.idle_timeout, absl::Seconds(300));
  EXPECT_EQ(ParseOk("smtp.idle_timeout = \"5m\"").smtp.idle_timeout, absl::Minutes(5));
  EXPECT_EQ(ParseOk("smtp.idle_timeout = \"1h30m\"").smtp.idle_timeout, absl::Minutes(90));
  EXPECT_EQ(ParseOk("smtp.idle_timeout = \"250ms\"").smtp.idle_timeout, absl::Milliseconds(250));
  EXPECT_EQ(ParseOk("smtp.idle_timeout = 42").smtp.idle_timeout, absl::Seconds(42));
}

TEST(ParseListenAddressTest, Forms) {
  absl::StatusOr<ListenAddress> v4 = ParseListenAddress("192.0.2.1:25");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->family, ListenAddress::Family::kIpv4);
  EXPECT_EQ(v4->host, "192.0.2.1");
  EXPECT_EQ(v4->port, 25);
  EXPECT_EQ(v4->address[0], 192);
  absl::StatusOr<ListenAddress> v6 = ParseListenAddress("[::1]:0");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->family, ListenAddress::Family::kIpv6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);
  EXPECT_EQ(v6->address[15], 1);
  absl::StatusOr<ListenAddress> local = ParseListenAddress("localhost:65535");
  ASSERT_TRUE(local.ok());
  EXPECT_EQ(local->host, "127.0.0.1");
  EXPECT_EQ(local->port, 65535);
  absl::StatusOr<ListenAddress> unix_socket = ParseListenAddress("unix:run/f.sock");
  ASSERT_TRUE(unix_socket.ok());
  EXPECT_EQ(unix_socket->family, ListenAddress::Family::kUnix);
  EXPECT_EQ(unix_socket->path, "run/f.sock");
}

TEST(ParseNameserverAddressTest, Forms) {
  struct Case {
    const char* text;
    ListenAddress::Family family;
    const char* host;
    uint16_t port;
  };
  const Case kCases[] = {
      {"192.0.2.53", ListenAddress::Family::kIpv4, "192.0.2.53", 53},
      {"127.0.0.1:5353", ListenAddress::Family::kIpv4, "127.0.0.1", 5353},
      {"2001:db8::53", ListenAddress::Family::kIpv6, "2001:db8::53", 53},
      {"::1", ListenAddress::Family::kIpv6, "::1", 53},
      {"[::1]:5353", ListenAddress::Family::kIpv6, "::1", 5353},
      {"[::1]", ListenAddress::Family::kIpv6, "::1", 53},
  };
  for (const Case& c : kCases) {
    absl::StatusOr<ListenAddress> address = ParseNameserverAddress(c.text);
    ASSERT_TRUE(address.ok()) << c.text << ": " << address.status();
    EXPECT_EQ(address->family, c.family) << c.text;
    EXPECT_EQ(address->host, c.host) << c.text;
    EXPECT_EQ(address->port, c.port) << c.text;
  }
  absl::StatusOr<ListenAddress> v4 = ParseNameserverAddress("127.0.0.1:5353");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->address[0], 127);
  EXPECT_EQ(v4->address[3], 1);
  EXPECT_FALSE(ParseNameserverAddress(std::string_view("127.0.0.1\0:53", 13)).ok());
}

TEST(ParseRouteDestinationTest, Forms) {
  absl::StatusOr<RouteDestination> empty = ParseRouteDestination("", 25);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->host, "");
  EXPECT_EQ(empty->port, 25);
  EXPECT_TRUE(empty->mx_lookup);

  absl::StatusOr<RouteDestination> mx = ParseRouteDestination("MX.Example.org", 2525);
  ASSERT_TRUE(mx.ok());
  EXPECT_EQ(mx->host, "mx.example.org");
  EXPECT_EQ(mx->port, 2525);
  EXPECT_TRUE(mx->mx_lookup);
  EXPECT_FALSE(mx->ip_literal);

  absl::StatusOr<RouteDestination> host = ParseRouteDestination("[localhost]", 25);
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(host->host, "localhost");
  EXPECT_EQ(host->port, 25);
  EXPECT_FALSE(host->mx_lookup);
  EXPECT_FALSE(host->ip_literal);

  absl::StatusOr<RouteDestination> v4 = ParseRouteDestination("[127.0.0.1]:65535", 25);
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 65535);
  EXPECT_TRUE(v4->ip_literal);
  EXPECT_FALSE(v4->v6);
  EXPECT_EQ(v4->address[0], 127);

  absl::StatusOr<RouteDestination> v6 = ParseRouteDestination("[::1]:2525", 25);
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_TRUE(v6->ip_literal);
  EXPECT_TRUE(v6->v6);
  EXPECT_EQ(v6->address[15], 1);

  absl::StatusOr<RouteDestination> bad = ParseRouteDestination("192.0.2.1:25", 25);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("an IP address needs brackets"));
}

TEST(EnumNamesTest, SpellingsMatchTheConfig) {
  EXPECT_EQ(DeliveryTlsPolicyName(DeliveryTlsPolicy::kNone), "none");
  EXPECT_EQ(DeliveryTlsPolicyName(DeliveryTlsPolicy::kOpportunistic), "opportunistic");
  EXPECT_EQ(DeliveryTlsPolicyName(DeliveryTlsPolicy::kRequired), "required");
  EXPECT_EQ(DkimAlgorithmName(DkimAlgorithm::kRsaSha256), "rsa-sha256");
  EXPECT_EQ(DkimAlgorithmName(DkimAlgorithm::kEd25519Sha256), "ed25519-sha256");
  EXPECT_EQ(DkimEngineName(DkimEngine::kNative), "native");
  EXPECT_EQ(DkimEngineName(DkimEngine::kOpenDkim), "opendkim");
  // Each name parses back to its value.
  for (DeliveryTlsPolicy policy : {DeliveryTlsPolicy::kNone, DeliveryTlsPolicy::kOpportunistic,
                                   DeliveryTlsPolicy::kRequired}) {
    Config config =
        ParseOk("delivery.tls = \"" + std::string(DeliveryTlsPolicyName(policy)) + "\"\n");
    EXPECT_EQ(config.delivery.tls, policy);
  }
}

TEST(ParseConfigTest, QuotaDefaultsAndPerAccountLimits) {
  Config defaults = ParseOk("");
  EXPECT_EQ(defaults.quota.defaults.messages_per_hour, 500u);
  EXPECT_EQ(defaults.quota.defaults.messages_per_day, 5000u);
  EXPECT_EQ(defaults.quota.defaults.recipients_per_message, 100u);
  EXPECT_TRUE(defaults.quota.defaults.anomaly_detection);
  EXPECT_EQ(defaults.quota.anomaly_window, absl::Minutes(5));
  EXPECT_EQ(defaults.quota.anomaly_factor, 10.0);
  EXPECT_EQ(defaults.quota.anomaly_min_messages, 50u);
  EXPECT_TRUE(defaults.quota.accounts.empty());

  Config config = ParseOk(R"(
[quota]
messages_per_hour = 3
recipients_per_message = 0
anomaly_window = "2m"
anomaly_factor = 4.5
history_half_life = "24h"
[[quota.account]]
name = "bulk@example.org"
messages_per_day = 100000
anomaly_detection = false
)");
  EXPECT_EQ(config.quota.defaults.messages_per_hour, 3u);
  EXPECT_EQ(config.quota.defaults.messages_per_day, 5000u);
  EXPECT_EQ(config.quota.defaults.recipients_per_message, 0u);
  EXPECT_EQ(config.quota.anomaly_window, absl::Minutes(2));
  EXPECT_EQ(config.quota.anomaly_factor, 4.5);
  EXPECT_EQ(config.quota.history_half_life, absl::Hours(24));
  ASSERT_EQ(config.quota.accounts.size(), 1u);
  const QuotaAccountOptions& bulk = config.quota.accounts[0];
  EXPECT_EQ(bulk.name, "bulk@example.org");
  EXPECT_EQ(bulk.limits.messages_per_hour, 3u);  // from [quota]
  EXPECT_EQ(bulk.limits.messages_per_day, 100000u);
  EXPECT_FALSE(bulk.limits.anomaly_detection);
}

TEST(ParseErrorTest, QuotaErrors) {
  ExpectError("[quota]\nmessages_per_houre = 3\n", 2, "quota.messages_per_houre",
              "did you mean 'quota.messages_per_hour'?");
  ExpectError("[quota]\nanomaly_factor = 0.5\n", 2, "quota.anomaly_factor", "");
  ExpectError("[[quota.account]]\nname = \"a b\"\n", 2, "quota.account[0].name",
              "is not an account name");
  ExpectError("[[quota.account]]\nname = \"a\"\n[[quota.account]]\nname = \"a\"\n", 4,
              "quota.account[1].name", "has limits already");
  ExpectError("[[quota.account]]\nmessages_per_hour = 1\n", 1, "quota.account[0].name", "");
}

}  // namespace
}  // namespace facteur::config
