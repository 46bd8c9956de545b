#include "engine/config/config.h"

#include <arpa/inet.h>

#include <cstdlib>
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
}

TEST(ParseErrorTest, CertificateWithoutKey) {
  ExpectError("[tls]\ncertificate_file = \"c.pem\"\n", 2, "tls.certificate_file",
              "without tls.private_key_file");
  ExpectError("[tls]\n\nprivate_key_file = \"k.pem\"\n", 3, "tls.private_key_file",
              "without tls.certificate_file");
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

}  // namespace
}  // namespace facteur::config
