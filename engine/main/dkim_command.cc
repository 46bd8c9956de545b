// File: engine/main/dkim_command.cc
// `facteur dkim keygen`: makes a DKIM key pair, writes the private key (mode 0600) and prints
// the DNS TXT record that publishes the public key (RFC 6376 §3.6.2.1) and the [[dkim.key]]
// entry for the configuration. `facteur dkim check`: looks the record up in DNS (the resolver of
// engine/dns, on a loop of its own) and says whether it matches the private key.
// Thread contract: main thread of a short-lived process; `check` runs one io_uring loop on it.
#include <fcntl.h>
#include <sys/fsuid.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <iostream>
#include <optional>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/base/clock.h"
#include "engine/base/status.h"
#include "engine/dkim/key.h"
#include "engine/dns/resolver.h"
#include "engine/io/event_loop.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "nlohmann/json.hpp"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur dkim keygen --domain D --selector S [--algorithm A] [--out FILE] [--json]\n"
    "       facteur dkim check DOMAIN [--selector S] [--key FILE]\n"
    "keygen  writes a new private key (mode 0600; default DATA_DIR/dkim/DOMAIN.SELECTOR.pem)\n"
    "        and prints the DNS TXT record to publish and the [[dkim.key]] entry to configure.\n"
    "        Run as root, the key (and the directories made for it) goes to the owner of the\n"
    "        nearest existing directory above it: the service's user, in its data directory.\n"
    "        A: rsa-2048 (default), rsa-1024, rsa-3072, rsa-4096 or ed25519 (RFC 8463; sign\n"
    "        with RSA too: not every verifier knows Ed25519).\n"
    "check   looks up SELECTOR._domainkey.DOMAIN in DNS ([dns] nameservers) and says whether\n"
    "        it publishes the public half of the private key: the configured [[dkim.key]]\n"
    "        entries of DOMAIN (with --selector, that one), or --key FILE with --selector.\n"
    "        Exit status 0 when every key matches, 65 when one does not, 75 on DNS failure.\n"
    "Common options: --config FILE, --data-dir DIR.\n";

struct Algorithm {
  dkim::DkimAlgorithm algorithm;
  int bits;
};

std::optional<Algorithm> ParseAlgorithm(std::string_view name) {
  if (name == "ed25519" || name == "ed25519-sha256") {
    return Algorithm{dkim::DkimAlgorithm::kEd25519Sha256, 0};
  }
  if (name == "rsa" || name == "rsa-sha256") return Algorithm{dkim::DkimAlgorithm::kRsaSha256, 2048};
  int bits = 0;
  if (name.rfind("rsa-", 0) == 0 && absl::SimpleAtoi(ToAbsl(name.substr(4)), &bits) &&
      (bits == 1024 || bits == 2048 || bits == 3072 || bits == 4096)) {
    return Algorithm{dkim::DkimAlgorithm::kRsaSha256, bits};
  }
  return std::nullopt;
}

// A TXT record as a zone file writes it: strings of at most 255 octets (RFC 1035 §3.3.14).
std::string ZoneStrings(const std::string& value) {
  std::string out;
  for (size_t i = 0; i < value.size(); i += 255) {
    if (!out.empty()) out.push_back(' ');
    absl::StrAppend(&out, "\"", value.substr(i, 255), "\"");
  }
  return out;
}

// Who is to own what keygen creates. Run as root (`sudo facteur dkim keygen`, the usual way),
// the key would belong to root, mode 0600, and the service, an unprivileged user owning its data
// directory (deploy/systemd/facteur.service), could not read it at the next reload. So the key,
// and the directories made for it, take the owner of the nearest directory that was there
// before. Nothing changes for another user: a process cannot give a file away.
struct Owner {
  uid_t uid;
  gid_t gid;
};

// File system operations as `owner` (setfsuid(2), setfsgid(2): this thread only, and keygen
// has no other) while it lives: what keygen makes is then the owner's, and the kernel checks
// each step as for the owner, so no link or rename of theirs can reach anything they could not.
class ActingAs {
 public:
  explicit ActingAs(const std::optional<Owner>& owner) : switched_(owner.has_value()) {
    if (!switched_) return;
    ::setfsgid(owner->gid);
    ::setfsuid(owner->uid);
    // Both return the previous id, never an error: read them back.
    failed_ = static_cast<uid_t>(::setfsuid(static_cast<uid_t>(-1))) != owner->uid ||
              static_cast<gid_t>(::setfsgid(static_cast<gid_t>(-1))) != owner->gid;
  }
  ~ActingAs() {
    if (!switched_) return;
    ::setfsuid(::geteuid());
    ::setfsgid(::getegid());
  }
  ActingAs(const ActingAs&) = delete;
  ActingAs& operator=(const ActingAs&) = delete;
  bool failed() const { return failed_; }

 private:
  const bool switched_;
  bool failed_ = false;
};

// Opens the key's directory (O_PATH): from `fd`, the nearest existing directory (opened as
// ourselves: its path may cross directories only root may search, like DynamicUser's
// /var/lib/private; taken over), each of `missing` (innermost first) is made in turn as
// `owner`, through descriptors only.
absl::StatusOr<int> OpenKeyDirectory(int fd, const std::filesystem::path& existing,
                                     const std::vector<std::string>& missing,
                                     const std::optional<Owner>& owner) {
  ActingAs acting(owner);
  if (acting.failed()) {
    ::close(fd);
    return absl::InternalError("cannot act as the owner of " + existing.string());
  }
  std::filesystem::path made = existing;
  for (auto name = missing.rbegin(); name != missing.rend(); ++name) {
    made /= *name;
    int saved = 0;
    if (::mkdirat(fd, name->c_str(), 0755) != 0 && errno != EEXIST) saved = errno;
    const int next =
        saved != 0 ? -1 : ::openat(fd, name->c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (saved == 0 && next < 0) saved = errno;
    ::close(fd);
    if (next < 0) return ErrnoStatus(absl::StrCat("make ", made.string()), saved);
    fd = next;
  }
  return fd;
}

// The user name owning `path` (its uid when it has no name), for the keygen report.
std::string FileOwner(const std::string& path) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) return "?";
  if (const passwd* user = ::getpwuid(info.st_uid); user != nullptr) return user->pw_name;
  return absl::StrCat("uid ", info.st_uid);
}

absl::Status WritePrivateKey(const std::string& path, const std::string& pem) {
  const std::filesystem::path key_path(path);
  const std::string name = key_path.filename().string();
  if (name.empty() || name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat(path, " names a directory, not a key file"));
  }
  // The nearest existing directory above the key, and the names to make below it.
  const std::filesystem::path parent = key_path.parent_path();
  std::filesystem::path existing = parent.empty() ? std::filesystem::path(".") : parent;
  std::vector<std::string> missing;  // innermost first
  std::error_code error;
  while (!std::filesystem::exists(existing, error) && existing.has_filename()) {
    missing.push_back(existing.filename().string());
    existing = existing.has_parent_path() ? existing.parent_path() : std::filesystem::path(".");
  }
  const int existing_fd = ::open(existing.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (existing_fd < 0) return ErrnoStatus(absl::StrCat("open ", existing.string()), errno);
  std::optional<Owner> owner;
  struct stat info;
  if (::geteuid() == 0 && ::fstat(existing_fd, &info) == 0 && info.st_uid != 0) {
    owner = Owner{info.st_uid, info.st_gid};
  }
  absl::StatusOr<int> directory = OpenKeyDirectory(existing_fd, existing, missing, owner);
  if (!directory.ok()) return directory.status();
  const int directory_fd = *directory;
  int fd;
  int open_errno;
  {
    ActingAs acting(owner);  // the key is the owner's from its creation
    // O_EXCL: never overwrite a key that may be published already.
    fd = acting.failed() ? -1
                         : ::openat(directory_fd, name.c_str(),
                                    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    open_errno = acting.failed() ? EPERM : errno;
  }
  if (fd < 0) {
    ::close(directory_fd);
    if (open_errno == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat(path, " exists: remove it or choose another --out / --selector"));
    }
    return ErrnoStatus(absl::StrCat("create ", path), open_errno);
  }
  absl::Status status;
  if (::fchmod(fd, 0600) != 0) status = ErrnoStatus(absl::StrCat("chmod ", path), errno);
  size_t written = 0;
  while (status.ok() && written < pem.size()) {
    ssize_t n = ::write(fd, pem.data() + written, pem.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      status = ErrnoStatus(absl::StrCat("write ", path), errno);
      break;
    }
    written += static_cast<size_t>(n);
  }
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoStatus(absl::StrCat("fsync ", path), errno);
  ::close(fd);
  if (!status.ok()) {
    ActingAs acting(owner);
    ::unlinkat(directory_fd, name.c_str(), 0);
  }
  ::close(directory_fd);
  return status;
}

int Keygen(const config::Config& config, const CommandLine& command_line) {
  auto value = [&](const char* flag) -> std::string {
    auto it = command_line.values.find(flag);
    return it == command_line.values.end() ? "" : it->second;
  };
  const std::string domain = absl::AsciiStrToLower(value("domain"));
  const std::string selector = value("selector");
  if (domain.empty() || selector.empty()) {
    std::cerr << "facteur dkim keygen: --domain and --selector are required\n" << kUsage;
    return kExitUsage;
  }
  // Checked as [[dkim.key]] checks them: they also name the key file.
  if (!config::IsDkimDomain(domain)) {
    std::cerr << "facteur dkim keygen: --domain '" << domain
              << "' is not a domain name (letters, digits, '-' and '.'; an internationalised "
                 "name in its xn-- form)\n";
    return kExitUsage;
  }
  if (!config::IsDkimSelector(selector)) {
    std::cerr << "facteur dkim keygen: --selector '" << selector
              << "' is not a selector (DNS labels of letters, digits and '-' separated by '.', "
                 "RFC 6376 §3.1)\n";
    return kExitUsage;
  }
  std::string algorithm_name = value("algorithm");
  if (algorithm_name.empty()) algorithm_name = "rsa-2048";
  std::optional<Algorithm> algorithm = ParseAlgorithm(algorithm_name);
  if (!algorithm.has_value()) {
    std::cerr << "facteur dkim keygen: unknown --algorithm '" << algorithm_name
              << "' (rsa-1024, rsa-2048, rsa-3072, rsa-4096 or ed25519)\n";
    return kExitUsage;
  }
  std::string path = value("out");
  if (path.empty()) {
    path = config.ResolvePath(absl::StrCat("dkim/", domain, ".", selector, ".pem"));
  }
  absl::StatusOr<std::unique_ptr<dkim::PrivateKey>> key =
      dkim::PrivateKey::Generate(algorithm->algorithm, algorithm->bits);
  if (!key.ok()) return ReportError("dkim keygen", key.status());
  if (absl::Status status = WritePrivateKey(path, (*key)->pem()); !status.ok()) {
    return ReportError("dkim keygen", status);
  }
  const std::string name = absl::StrCat(selector, "._domainkey.", domain);
  const std::string record = (*key)->DnsRecord();
  const char* a = dkim::AlgorithmName(algorithm->algorithm);
  if (command_line.json) {
    std::cout << nlohmann::json{{"key_file", path},     {"domain", domain},
                                {"selector", selector}, {"algorithm", a},
                                {"name", name},         {"value", record}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::cout << "Private key written to " << path << " (mode 0600, owner " << FileOwner(path)
            << ").\n\n"
            << "Publish this DNS TXT record:\n"
            << "  name:  " << name << "\n"
            << "  value: " << record << "\n\n"
            << "In a zone file:\n"
            << "  " << name << ". IN TXT ( " << ZoneStrings(record) << " )\n\n"
            << "Then add to the configuration and reload (SIGHUP):\n"
            << "  [[dkim.key]]\n"
            << "  domain = \"" << domain << "\"\n"
            << "  selector = \"" << selector << "\"\n"
            << "  algorithm = \"" << a << "\"\n"
            << "  key_file = \"" << path << "\"\n";
  return kExitOk;
}

// One TXT lookup on a loop of our own; the resolver lives and dies on the loop thread.
absl::StatusOr<std::vector<std::string>> LookupTxt(const config::Config& config,
                                                   const std::string& name) {
  FACTEUR_ASSIGN_OR_RETURN(std::unique_ptr<io::EventLoop> loop, io::EventLoop::Create(64));
  dns::ResolverOptions options;
  options.nameservers = config.dns.nameservers;
  options.timeout = config.dns.timeout;
  options.attempts = static_cast<int>(config.dns.attempts);
  absl::StatusOr<std::vector<std::string>> result = absl::UnknownError("no answer");
  std::unique_ptr<dns::Resolver> resolver;
  loop->Post([&] {
    absl::StatusOr<std::unique_ptr<dns::Resolver>> created =
        dns::Resolver::Create(*loop, options, RealClock::Get());
    if (!created.ok()) {
      result = created.status();
      loop->Stop();
      return;
    }
    resolver = std::move(*created);
    resolver->ResolveTxt(name, [&](absl::StatusOr<std::vector<std::string>> answer) {
      result = std::move(answer);
      loop->Stop();
    });
  });
  FACTEUR_RETURN_IF_ERROR(loop->Run());
  resolver.reset();  // Stop() returned Run() on this thread: still the loop thread
  return result;
}

// Reads a key whose algorithm is not declared: RSA first, else Ed25519.
absl::StatusOr<std::unique_ptr<dkim::PrivateKey>> LoadAnyKey(const std::string& path) {
  absl::StatusOr<std::unique_ptr<dkim::PrivateKey>> key =
      dkim::PrivateKey::LoadFile(path, dkim::DkimAlgorithm::kRsaSha256);
  if (key.ok() || !absl::IsInvalidArgument(key.status()) ||
      key.status().message().find("not an RSA key") == absl::string_view::npos) {
    return key;
  }
  return dkim::PrivateKey::LoadFile(path, dkim::DkimAlgorithm::kEd25519Sha256);
}

int Check(const config::Config& config, const CommandLine& command_line) {
  if (command_line.positional.size() != 2) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  const std::string domain = absl::AsciiStrToLower(command_line.positional[1]);
  auto value = [&](const char* flag) -> std::string {
    auto it = command_line.values.find(flag);
    return it == command_line.values.end() ? "" : it->second;
  };
  const std::string selector = value("selector");
  struct Candidate {
    std::string selector;
    std::string path;
  };
  std::vector<Candidate> candidates;
  if (!value("key").empty()) {
    if (selector.empty()) {
      std::cerr << "facteur dkim check: --key needs --selector\n";
      return kExitUsage;
    }
    candidates.push_back({selector, value("key")});
  } else {
    for (const config::DkimKeyOptions& k : config.dkim.keys) {
      if (absl::AsciiStrToLower(k.domain) != domain) continue;
      if (!selector.empty() && k.selector != selector) continue;
      candidates.push_back({k.selector, config.ResolvePath(k.key_file)});
    }
    if (candidates.empty()) {
      std::cerr << "facteur dkim check: no [[dkim.key]] for " << domain
                << (selector.empty() ? "" : absl::StrCat(" with selector ", selector))
                << " in the configuration (or give --selector S --key FILE)\n";
      return kExitNoInput;
    }
  }
  int exit_code = kExitOk;
  for (const Candidate& c : candidates) {
    absl::StatusOr<std::unique_ptr<dkim::PrivateKey>> key = LoadAnyKey(c.path);
    if (!key.ok()) return ReportError("dkim check", key.status());
    const std::string name = absl::StrCat(c.selector, "._domainkey.", domain);
    absl::StatusOr<std::vector<std::string>> records = LookupTxt(config, name);
    if (!records.ok()) {
      if (absl::IsNotFound(records.status())) {
        std::cout << "missing   " << name << ": no such name in DNS; publish the record that "
                  << "`facteur dkim keygen` printed:\n          " << (*key)->DnsRecord() << "\n";
        exit_code = kExitDataError;
        continue;
      }
      std::cerr << "facteur dkim check: " << name << ": " << records.status().message() << "\n";
      return kExitTempFail;
    }
    const std::string expected = (*key)->PublicKeyBase64();
    bool found = false;
    bool matched = false;
    bool revoked = false;
    for (const std::string& record : *records) {
      absl::StatusOr<std::string> p = dkim::PublicKeyOfRecord(record);
      if (!p.ok()) continue;
      found = true;
      if (p->empty()) revoked = true;  // RFC 6376 §3.6.1: an empty p= revokes the key
      if (*p == expected) matched = true;
    }
    const std::string what = absl::StrCat(dkim::AlgorithmName((*key)->algorithm()),
                                          (*key)->algorithm() == dkim::DkimAlgorithm::kRsaSha256
                                              ? absl::StrCat(" ", (*key)->bits(), " bits")
                                              : "");
    if (matched) {
      std::cout << "ok        " << name << " publishes the public key of " << c.path << " ("
                << what << ")\n";
      continue;
    }
    exit_code = kExitDataError;
    if (!found) {
      std::cout << "missing   " << name << ": no DKIM key record (TXT with p=) there; publish:\n"
                << "          " << (*key)->DnsRecord() << "\n";
    } else if (revoked) {
      std::cout << "revoked   " << name << ": the record has an empty p= (key revoked)\n";
    } else {
      std::cout << "MISMATCH  " << name << " publishes another key than " << c.path << " ("
                << what << "); expected:\n          " << (*key)->DnsRecord() << "\n";
    }
  }
  return exit_code;
}

}  // namespace

int DkimMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line = ParseOrExit(
      args, "dkim", kUsage, {"domain", "selector", "algorithm", "out", "key"}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  if (command_line->positional.empty()) {
    std::cerr << kUsage;
    return kExitUsage;
  }
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return kExitConfig;
  }
  const std::string& action = command_line->positional[0];
  if (action == "keygen" && command_line->positional.size() == 1) return Keygen(*config, *command_line);
  if (action == "check") return Check(*config, *command_line);
  std::cerr << kUsage;
  return kExitUsage;
}

}  // namespace facteur::cli
