// File: engine/main/serve.cc
// `facteur serve`: builds every concrete object of the relay from the configuration — the
// RocksDB store and its spool writer, accounts, metrics, TLS, the io_uring shards with their
// listeners, the admin HTTP server — runs until SIGTERM or SIGINT, then shuts down in the order
// that loses nothing: stop accepting and close sessions, commit what the spool holds, close the
// store.
// Thread contract: the main thread builds, waits for signals, and tears down. Signals are
// blocked in every thread it starts and taken with sigwait() here.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/admin/admin_server.h"
#include "engine/base/clock.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/base/worker_pool.h"
#include "engine/io/server.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/account_store.h"
#include "engine/policy/auth_throttle.h"
#include "engine/smtp/server/submission_service.h"
#include "engine/tls/tls_context.h"
#include "nlohmann/json.hpp"
#include "queue/spool.h"
#include "queue/store.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur serve [--config FILE] [--data-dir DIR]\n"
    "Runs the relay. Without --config it runs on the embedded default configuration: an SMTP\n"
    "relay listener on 127.0.0.1:2525 trusting loopback, a Unix socket and the spool under the\n"
    "data directory (./var), metrics and the admin API on http://127.0.0.1:9464.\n"
    "SIGTERM or SIGINT stop it cleanly; nothing acknowledged is lost.\n";

io::TlsMode ToIoTlsMode(config::TlsMode mode) {
  switch (mode) {
    case config::TlsMode::kNone: return io::TlsMode::kNone;
    case config::TlsMode::kStartTls: return io::TlsMode::kStartTls;
    case config::TlsMode::kImplicit: return io::TlsMode::kImplicit;
  }
  return io::TlsMode::kNone;
}

const char* RoleName(config::ListenerRole role) {
  return role == config::ListenerRole::kSubmission ? "submission" : "relay";
}

const char* TlsName(config::TlsMode mode) {
  switch (mode) {
    case config::TlsMode::kNone: return "none";
    case config::TlsMode::kStartTls: return "starttls";
    case config::TlsMode::kImplicit: return "implicit";
  }
  return "none";
}

// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string temporary = absl::StrCat(path, ".tmp");
  {
    std::ofstream out(temporary, std::ios::trunc);
    out << text;
    if (!out.good()) return ErrnoStatus(absl::StrCat("write ", temporary), errno);
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    return ErrnoStatus(absl::StrCat("rename ", temporary), errno);
  }
  return absl::OkStatus();
}

class Relay {
 public:
  explicit Relay(config::Config config) : config_(std::move(config)) {}

  absl::Status Start() {
    std::error_code error;
    std::filesystem::create_directories(config_.data_dir, error);
    if (error) {
      return absl::PermissionDeniedError(
          absl::StrCat("data directory ", config_.data_dir, ": ", error.message()));
    }
    const std::string spool_path = SpoolPath(config_);
    FACTEUR_ASSIGN_OR_RETURN(store_, queue::Store::Open(spool_path));
    queue::SpoolOptions spool_options;
    spool_options.max_batch = config_.spool.max_batch;
    FACTEUR_ASSIGN_OR_RETURN(spool_, queue::Spool::Open(*store_, spool_options, clock_));
    metrics_.spool_messages().Set(static_cast<double>(spool_->size()));
    spool_->SetCommitObserver([this](size_t batch_size, absl::Duration latency) {
      metrics_.ObserveSpoolCommit(batch_size, absl::ToDoubleSeconds(latency));
      metrics_.spool_messages().Set(static_cast<double>(spool_->size()));
    });
    FACTEUR_ASSIGN_OR_RETURN(accounts_, policy::AccountStore::Open(*store_, clock_));

    bool needs_tls = false;
    for (const config::ListenerOptions& l : config_.listeners) {
      needs_tls = needs_tls || l.tls != config::TlsMode::kNone;
    }
    if (needs_tls) {
      if (!config_.tls.certificate_file.empty()) {
        FACTEUR_ASSIGN_OR_RETURN(
            tls_, tls::TlsServerContext::FromFiles(config_.ResolvePath(config_.tls.certificate_file),
                                                   config_.ResolvePath(config_.tls.private_key_file)));
      } else {
        FACTEUR_ASSIGN_OR_RETURN(
            tls_, tls::TlsServerContext::SelfSigned(config_.ResolvePath("tls"), config_.hostname));
      }
    }

    auth_pool_ = std::make_unique<WorkerPool>("facteur-auth", config_.auth_threads,
                                              /*max_queued=*/256);
    auth_throttle_ = std::make_unique<policy::AuthThrottle>(
        clock_, policy::AuthThrottleOptions{.max_failures = config_.smtp.auth_max_failures,
                                            .window = config_.smtp.auth_failure_window});
    // Aggregate with an atomic member: built in place, never moved.
    services_.reset(new smtp::SubmissionServices{*spool_, *accounts_, *auth_pool_, *auth_throttle_,
                                                 clock_, metrics_});
    std::vector<io::ListenSpec> specs;
    for (const config::ListenerOptions& l : config_.listeners) {
      smtp::ListenerPolicy& policy = policies_.emplace_back();
      policy.listener_name = l.name;
      policy.hostname = config_.hostname;
      policy.role = l.role;
      policy.tls_mode = l.tls;
      policy.is_unix = l.is_unix();
      policy.trusted_networks = l.trusted_networks;
      policy.limits = config_.smtp;
      io::ListenSpec spec;
      spec.address =
          l.is_unix() ? absl::StrCat("unix:", config_.ResolvePath(l.unix_path())) : l.address;
      spec.tls = ToIoTlsMode(l.tls);
      spec.factory = smtp::MakeSessionFactory(policy, *services_);
      spec.tls_context = tls_.get();
      specs.push_back(std::move(spec));
    }
    server_ = std::make_unique<io::Server>(std::move(specs));
    size_t threads = config_.io_threads;
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
    FACTEUR_RETURN_IF_ERROR(server_->Start(threads));

    if (!config_.admin.address.empty()) {
      FACTEUR_ASSIGN_OR_RETURN(
          admin_, admin::AdminServer::Start(config_.admin.address, metrics_, *store_, *accounts_));
    }
    return Announce(threads);
  }

  // Stops in the order that loses nothing: no new sessions, then the password checks in flight
  // finish and the spool commits what it holds (their completions post to loops that no longer
  // run, which the Server keeps alive until it is destroyed), then everything else.
  void Stop() {
    std::error_code ignored;
    std::filesystem::remove(EndpointsPath(config_), ignored);
    admin_.reset();
    if (server_ != nullptr) server_->Stop();
    // Both post completions to the loops: drain them while the (stopped) loops still exist.
    auth_pool_.reset();
    spool_.reset();
    server_.reset();
    services_.reset();
    accounts_.reset();
    store_.reset();
  }

 private:
  absl::Status Announce(size_t threads) {
    nlohmann::json listeners = nlohmann::json::array();
    std::string socket;
    std::cout << "facteur " << FACTEUR_VERSION << " ready (" << threads << " I/O threads)\n";
    for (size_t i = 0; i < config_.listeners.size(); ++i) {
      const config::ListenerOptions& l = config_.listeners[i];
      std::string bound = server_->BoundAddress(i);
      std::string address = l.is_unix() ? absl::StrCat("unix:", bound) : bound;
      if (l.is_unix() && socket.empty()) socket = bound;
      listeners.push_back({{"name", l.name},
                           {"address", address},
                           {"role", RoleName(l.role)},
                           {"tls", TlsName(l.tls)}});
      std::vector<std::string> trusted;
      for (const config::Cidr& c : l.trusted_networks) trusted.push_back(c.text);
      std::cout << "  submit mail  " << address << "  (" << l.name << ": "
                << (l.is_unix() ? "local applications, no AUTH" : RoleName(l.role))
                << (l.is_unix() ? "" : absl::StrCat(", tls ", TlsName(l.tls)))
                << (l.role == config::ListenerRole::kRelay && !l.is_unix()
                        ? absl::StrCat(", trusts ", absl::StrJoin(trusted, " "))
                        : "")
                << ")\n";
    }
    const std::string admin = admin_ != nullptr ? admin_->BoundAddress() : "";
    if (!admin.empty()) {
      std::cout << "  metrics      http://" << admin << "/metrics\n"
                << "  admin API    http://" << admin << "/api/\n";
    }
    std::cout << "  spool        " << SpoolPath(config_) << " (" << spool_->size()
              << " messages queued)\n"
              << "  data dir     " << config_.data_dir << "\n"
              << std::flush;
    nlohmann::json endpoints = {{"pid", ::getpid()},
                                {"listeners", std::move(listeners)},
                                {"admin", admin},
                                {"spool", SpoolPath(config_)},
                                {"socket", socket}};
    return WriteFileAtomically(EndpointsPath(config_), endpoints.dump(2) + "\n");
  }

  config::Config config_;
  RealClock clock_;
  metrics::Metrics metrics_;
  std::unique_ptr<queue::Store> store_;
  std::unique_ptr<queue::Spool> spool_;
  std::unique_ptr<policy::AccountStore> accounts_;
  std::unique_ptr<tls::TlsServerContext> tls_;
  std::unique_ptr<WorkerPool> auth_pool_;
  std::unique_ptr<policy::AuthThrottle> auth_throttle_;
  std::unique_ptr<smtp::SubmissionServices> services_;
  std::deque<smtp::ListenerPolicy> policies_;  // stable addresses: sessions borrow them
  std::unique_ptr<io::Server> server_;
  std::unique_ptr<admin::AdminServer> admin_;
};

}  // namespace

int ServeMain(const std::vector<std::string>& args) {
  int exit_code = kExitOk;
  std::optional<CommandLine> command_line =
      ParseOrExit(args, "serve", kUsage, {}, {}, &exit_code);
  if (!command_line.has_value()) return exit_code;
  absl::StatusOr<config::Config> config = LoadConfig(*command_line);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return kExitConfig;
  }

  // Every thread started from here on inherits this mask: only the main thread takes signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  Relay relay(*std::move(config));
  if (absl::Status status = relay.Start(); !status.ok()) {
    relay.Stop();
    int code = ReportError("serve", status);
    return absl::IsInvalidArgument(status) ? kExitConfig : code;
  }
  for (;;) {
    int signal_number = 0;
    if (sigwait(&signals, &signal_number) != 0) continue;
    if (signal_number == SIGHUP) {
      Log(LogLevel::kInfo, "SIGHUP: nothing to reopen yet");
      continue;
    }
    Log(LogLevel::kInfo, "signal %d: stopping", signal_number);
    break;
  }
  relay.Stop();
  Log(LogLevel::kInfo, "stopped");
  return kExitOk;
}

}  // namespace facteur::cli
