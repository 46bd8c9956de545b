// File: engine/main/serve.cc
// `facteur serve`: builds every concrete object of the relay from the configuration — the
// RocksDB store and its spool writer, accounts, metrics, TLS, the io_uring shards with their
// listeners, the admin HTTP server — runs until SIGTERM or SIGINT, then shuts down in the order
// that loses nothing: stop accepting, let outbound transactions end within
// [delivery] shutdown_grace, close sessions, commit what the spool holds, close the store.
// SIGHUP reloads what can change without dropping a connection (Relay::Reload).
// Thread contract: the main thread builds, waits for signals, and tears down. Signals are
// blocked in every thread it starts and taken with sigwait() here.
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/admin/admin_server.h"
#include "engine/admin/json.h"
#include "engine/base/clock.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/base/worker_pool.h"
#include "engine/delivery/shaping.h"
#include "engine/dkim/signing_pool.h"
#include "engine/delivery/queue_manager.h"
#include "engine/delivery/recipient_check.h"
#include "engine/delivery/router.h"
#include "engine/delivery/shard_delivery.h"
#include "engine/delivery/site_labeler.h"
#include "engine/dns/shard_resolvers.h"
#include "engine/events/event_log.h"
#include "engine/io/server.h"
#include "engine/main/cli.h"
#include "engine/main/commands.h"
#include "engine/main/huge_page_arena.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/account_quotas.h"
#include "engine/policy/account_store.h"
#include "engine/policy/auth_throttle.h"
#include "engine/smtp/server/submission_service.h"
#include "engine/tls/tls_client_context.h"
#include "engine/tls/tls_context.h"
#include "absl/synchronization/notification.h"
#include "throttle/retry_policy.h"
#include "nlohmann/json.hpp"
#include "queue/reputation_store.h"
#include "queue/suspension_store.h"
#include "throttle/reputation.h"
#include "queue/spool.h"
#include "queue/store.h"
#include "queue/suppression.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur serve [--config FILE] [--data-dir DIR]\n"
    "Runs the relay. Without --config it reads $FACTEUR_CONFIG, else /etc/facteur/facteur.toml\n"
    "when it exists, else runs on the embedded default configuration: an SMTP relay listener\n"
    "on 127.0.0.1:2525 trusting loopback, a Unix socket and the spool under the data directory\n"
    "(./var), metrics and the admin API on http://127.0.0.1:9464. Its first log line names it.\n"
    "SIGTERM or SIGINT stop it: no new connections, transactions in progress toward remote\n"
    "servers get [delivery] shutdown_grace (20s) to end, the rest stay queued; the spool is\n"
    "committed and nothing acknowledged is lost.\n"
    "SIGHUP (or `facteur reload`) reads the configuration file again without dropping a\n"
    "connection: the TLS certificate (new connections present the new one), the shaping and\n"
    "classifier files (new limits for the sites already known, their learned state kept), the\n"
    "DKIM keys, [quota] (accounts keep their counts and suspensions) and shutdown_grace; the\n"
    "events log is reopened. A file that does not parse changes nothing (its error is logged\n"
    "with file:line); other changed keys are logged as needing a restart.\n";

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

// [quota] as the quota table takes it.
policy::AccountQuotasOptions QuotaOptionsOf(const config::Config& config) {
  const auto limits = [](const config::QuotaLimits& l) {
    return throttle::AccountLimits{.messages_per_hour = l.messages_per_hour,
                                   .messages_per_day = l.messages_per_day,
                                   .recipients_per_message = l.recipients_per_message,
                                   .detect_anomalies = l.anomaly_detection};
  };
  policy::AccountQuotasOptions options;
  const config::QuotaOptions& quota = config.quota;
  options.quota.defaults = limits(quota.defaults);
  for (const config::QuotaAccountOptions& account : quota.accounts) {
    options.quota.per_account.emplace_back(account.name, limits(account.limits));
  }
  options.quota.anomaly = throttle::AnomalyOptions{.enabled = true,
                                                   .window = quota.anomaly_window,
                                                   .factor = quota.anomaly_factor,
                                                   .min_messages = quota.anomaly_min_messages,
                                                   .half_life = quota.history_half_life};
  return options;
}

// How often reputation counters are written to the spool's database.
constexpr absl::Duration kReputationFlushInterval = absl::Seconds(5);
// Longest the shards may take to take back the pauses of before a restart (at start-up, before
// any mail: they answer in microseconds).
constexpr absl::Duration kRestoreTimeout = absl::Seconds(10);

class Relay {
 public:
  explicit Relay(config::Config config)
      : config_(std::move(config)), owned_clock_(MakeClock(config_.clock)), clock_(*owned_clock_) {}

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
    spool_options.max_unsynced = config_.spool.max_unsynced;
    spool_options.on_writer_start = HugePageArenaBinder();
    FACTEUR_ASSIGN_OR_RETURN(spool_, queue::Spool::Open(*store_, spool_options, clock_));
    metrics_.spool_messages().Set(static_cast<double>(spool_->size()));
    spool_->SetCommitObserver([this](size_t batch_size, absl::Duration latency, bool synced) {
      // The commit histograms are about fsyncs (a slow disk shows there); a commit of
      // delivery outcomes only is a write to the page cache.
      if (synced) metrics_.ObserveSpoolCommit(batch_size, absl::ToDoubleSeconds(latency));
      metrics_.spool_messages().Set(static_cast<double>(spool_->size()));
    });
    FACTEUR_ASSIGN_OR_RETURN(accounts_, policy::AccountStore::Open(*store_, clock_));
    FACTEUR_ASSIGN_OR_RETURN(quotas_,
                             policy::AccountQuotas::Open(*store_, clock_, QuotaOptionsOf(config_)));
    FACTEUR_ASSIGN_OR_RETURN(suppression_, queue::SuppressionList::Open(*store_));

    bool needs_tls = false;
    for (const config::ListenerOptions& l : config_.listeners) {
      needs_tls = needs_tls || l.tls != config::TlsMode::kNone;
    }
    if (needs_tls) {
      if (!config_.tls.certificate_file.empty()) {
        FACTEUR_ASSIGN_OR_RETURN(tls_, LoadServerCertificate(config_));
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
    FACTEUR_RETURN_IF_ERROR(PrepareDelivery());
    // Aggregate with an atomic member: built in place, never moved.
    services_.reset(new smtp::SubmissionServices{*spool_, *accounts_, *auth_pool_, *auth_throttle_,
                                                 clock_, metrics_});
    services_->events = events_.get();
    services_->quotas = quotas_.get();
    services_->suppression = suppression_.get();
    services_->routes_address_literal = [router = router_.get()](std::string_view literal) {
      return router->RoutesAddressLiteral(literal);
    };
    if (!config_.dkim.keys.empty()) {  // DKIM (issue #4): every key file read and checked now
      FACTEUR_RETURN_IF_ERROR(StartSigning(config_.dkim));
    }
    if (config_.delivery.validate_recipient_domains) {
      services_->check_recipient_domain =
          [check = recipient_check_.get()](
              io::EventLoop& loop, std::string domain,
              absl::AnyInvocable<void(std::optional<mail::Reply>) &&> done) {
            check->Check(loop, std::move(domain), std::move(done));
          };
    }
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
    const size_t threads = IoThreadCount();
    FACTEUR_RETURN_IF_ERROR(server_->Start(threads));
    loops_running_ = true;
    FACTEUR_RETURN_IF_ERROR(StartDelivery());
    // Read when /metrics is scraped, on the admin server's threads; gone with admin_ (first
    // in Stop()).
    metrics_.AddScrapeHook([this] {
      ReportQueueMetrics();
      ReportWarmupMetrics(clock_.Now());
    });

    if (!config_.admin.address.empty()) {
      FACTEUR_ASSIGN_OR_RETURN(std::string token, ReadAdminToken(config_));
      FACTEUR_ASSIGN_OR_RETURN(admin_, admin::AdminServer::Start(config_.admin.address, metrics_,
                                                                 *store_, *accounts_,
                                                                 std::move(token)));
      admin_->SetQueueManager(queue_manager_.get());
      admin_->SetAccountQuotas(quotas_.get());
      admin_->SetSuppressionList(suppression_.get());
      admin_->SetDeliveryAccess(MakeDeliveryAccess());
      admin_->SetReady(true);
    }
    return Announce(threads);
  }

  // What the admin API's site, summary and reputation endpoints reach. The warmup plans are
  // those of the shaping snapshot at start (a reload changes the limits, rarely the plans).
  const admin::DeliveryAccess* MakeDeliveryAccess() {
    delivery_access_ = std::make_unique<admin::DeliveryAccess>();
    delivery_access_->sites = site_control_.get();
    delivery_access_->pauses = pauses_.get();
    delivery_access_->spool = spool_.get();
    delivery_access_->clock = &clock_;
    delivery_access_->site_labels = site_labels_.get();
    if (reputation_ != nullptr) {
      delivery_access_->reputation = [this](absl::Time now) {
        const WarmupPlans plans = WarmupPlansBySource(*CurrentShaping());
        return admin::ReputationJson(*reputation_, now, [&plans](const std::string& source) {
          return PlanOf(plans, source);
        });
      };
    }
    return delivery_access_.get();
  }

  // Stops in the order that loses nothing: no new sessions, then the password checks in flight
  // finish and the spool commits what it holds (their completions post to loops that no longer
  // run, which the Server keeps alive until it is destroyed), then everything else.
  void Stop() {
    if (admin_ != nullptr) admin_->SetReady(false);  // load balancers stop sending first
    // New clients are refused from now on; sessions already open may end their transactions
    // while delivery has its grace, and are closed after it.
    if (server_ != nullptr && loops_running_) server_->StopAccepting();
    // Only what this process wrote: a second `serve` refused at start (the spool in use) must
    // not take the running server's endpoints away from the CLI.
    if (announced_) {
      std::error_code ignored;
      std::filesystem::remove(EndpointsPath(config_), ignored);
    }
    admin_.reset();
    StopDelivery();
    if (server_ != nullptr) server_->Stop();
    // Both post completions to the loops: drain them while the (stopped) loops still exist.
    auth_pool_.reset();
    if (services_ != nullptr) services_->signer.store(nullptr, std::memory_order_release);
    signing_.reset();  // its tasks hand messages to the spool and post to the loops
    spool_.reset();
    server_.reset();
    services_.reset();
    recipient_check_.reset();
    resolvers_.reset();
    events_.reset();
    quotas_.reset();  // stores the counts that changed since its last write
    suppression_.reset();
    accounts_.reset();
    store_.reset();
  }

  // How long delivery may take to stop (see DeliveryOptions::shutdown_grace).
  absl::Duration shutdown_grace() const { return config_.delivery.shutdown_grace; }

  // SIGHUP (issue #6 point 5): `loaded` is the configuration file read again. The events log
  // is reopened (log rotation) whatever the file says. A file that does not parse or validate
  // changes nothing else. Otherwise, without dropping a connection: the TLS certificate
  // (sessions open keep theirs), the shaping and classifier files (each shard takes the new
  // snapshot; its pairs keep their learned state), the DKIM keys, [quota] (the accounts keep
  // their counts and suspensions) and shutdown_grace. Every other changed key is named in a
  // warning: it needs a restart. One info line sums it up.
  void Reload(const absl::StatusOr<config::Config>& loaded) {
    if (events_ != nullptr) events_->Reopen();
    if (!loaded.ok()) {
      Log(LogLevel::kError,
          "SIGHUP: configuration not reloaded, the running one stays (the events log was "
          "reopened): %s",
          std::string(loaded.status().message()));
      return;
    }
    const config::Config& next = *loaded;
    std::vector<std::string> done;
    if (events_ != nullptr) done.push_back("events log reopened");
    std::vector<std::string> restart = KeysNeedingRestart(next);
    for (const std::string& key : restart) {
      Log(LogLevel::kWarning, "SIGHUP: %s changed: needs a restart (the running value stays)",
          key);
    }
    if (ReloadTls(next)) done.push_back("TLS certificate");
    if (std::optional<std::string> shaping = ReloadShaping(next)) done.push_back(*shaping);
    if (std::optional<std::string> dkim = ReloadDkimKeys(next)) done.push_back(*dkim);
    if (std::optional<std::string> quota = ReloadQuotas(next)) done.push_back(*quota);
    if (next.delivery.shutdown_grace != config_.delivery.shutdown_grace) {
      config_.delivery.shutdown_grace = next.delivery.shutdown_grace;
      done.push_back(absl::StrCat("shutdown_grace ", absl::FormatDuration(shutdown_grace())));
    }
    Log(LogLevel::kInfo, "SIGHUP: reloaded: %s%s", done.empty() ? "nothing" : absl::StrJoin(done, ", "),
        restart.empty() ? "" : absl::StrCat("; needs a restart: ", absl::StrJoin(restart, ", ")));
  }

 private:
  // The keys of `next` that differ from the running configuration and that only a restart
  // applies: listeners, threads, the spool, the admin and DNS settings, delivery, sources, ...
  std::vector<std::string> KeysNeedingRestart(const config::Config& next) const {
    std::vector<std::string> keys;
    const config::Config& now = config_;
    auto check = [&keys](bool same, const char* key) {
      if (!same) keys.push_back(key);
    };
    check(next.data_dir == now.data_dir, "data_dir");
    check(next.hostname == now.hostname, "hostname");
    check(next.io_threads == now.io_threads, "io_threads");
    check(next.auth_threads == now.auth_threads, "auth_threads");
    check(next.listeners == now.listeners, "[[listener]]");
    check(next.smtp == now.smtp, "[smtp]");
    check(next.spool == now.spool, "[spool]");
    check(next.admin == now.admin, "[admin]");
    check(next.dns == now.dns, "[dns]");
    config::DeliveryOptions delivery = next.delivery;
    delivery.shutdown_grace = now.delivery.shutdown_grace;  // reloaded
    check(delivery == now.delivery, "[delivery]");
    check(next.events == now.events, "[events] path");
    // Without a signing pool yet, the reload that brings keys starts one with next's [dkim].
    check(signing_ == nullptr ||
              (next.dkim.engine == now.dkim.engine && next.dkim.threads == now.dkim.threads &&
               next.dkim.max_queued == now.dkim.max_queued),
          "[dkim] engine/threads/max_queued");
    check(next.clock == now.clock, "[clock]");
    check(next.sources == now.sources, "[[source]]");
    check(next.routes == now.routes, "[[route]]");
    // With no TLS listener there is no server certificate to swap.
    check(tls_ != nullptr || next.tls == now.tls, "[tls]");
    return keys;
  }

  // The server certificate of `next` ([tls], or the self-signed pair under data_dir/tls) for
  // the connections accepted from now on. False (logged) when there is none to swap or it does
  // not load: the current one stays.
  bool ReloadTls(const config::Config& next) {
    if (tls_ == nullptr) return false;
    const bool own = !next.tls.certificate_file.empty();
    const std::string cert = own ? next.ResolvePath(next.tls.certificate_file)
                                 : config_.ResolvePath("tls/cert.pem");
    const std::string key = own ? next.ResolvePath(next.tls.private_key_file)
                                : config_.ResolvePath("tls/key.pem");
    if (absl::Status status = tls_->ReloadFromFiles(cert, key); !status.ok()) {
      Log(LogLevel::kError, "SIGHUP: TLS certificate not reloaded, the current one stays: %s",
          status.message());
      return false;
    }
    config_.tls = next.tls;
    return true;
  }

  // The shaping and classifier files of `next`, handed to every shard (ShardDelivery::
  // SetShaping). What it says, or nullopt (logged) when delivery is off or a file is wrong.
  std::optional<std::string> ReloadShaping(const config::Config& next) {
    if (shard_deliveries_.empty() || server_ == nullptr) return std::nullopt;
    absl::StatusOr<std::unique_ptr<delivery::Shaping>> loaded = delivery::Shaping::Load(next);
    if (!loaded.ok()) {
      Log(LogLevel::kError, "SIGHUP: shaping rules not reloaded, the current ones stay: %s",
          loaded.status().message());
      return std::nullopt;
    }
    {
      absl::MutexLock lock(&shaping_mutex_);
      shaping_ = *std::move(loaded);
    }
    for (size_t i = 0; i < shard_deliveries_.size(); ++i) {
      RunOnLoop(server_->loop(i), [this, i, shaping = shaping_] {
        if (shard_deliveries_[i] != nullptr) shard_deliveries_[i]->SetShaping(shaping);
      });
    }
    config_.shaping = next.shaping;
    // The greylist schedule and the reputation settings were copied at start.
    return absl::StrCat("shaping rules (", shaping_->options().sites.size(),
                        " sites) and classifier");
  }

  // [quota] of `next`, for the next check of every account (AccountQuotaTable::Reconfigure):
  // the counts, histories and suspensions stay. What it says, or nullopt when unchanged.
  std::optional<std::string> ReloadQuotas(const config::Config& next) {
    if (quotas_ == nullptr || next.quota == config_.quota) return std::nullopt;
    quotas_->table().Reconfigure(QuotaOptionsOf(next).quota);
    config_.quota = next.quota;
    return std::string("[quota] limits");
  }

  // The signing pool with the keys of `dkim` (every key file read and checked now), handed to
  // the sessions: at start, or at the reload that brings the first keys.
  absl::Status StartSigning(const config::DkimOptions& dkim) {
    FACTEUR_ASSIGN_OR_RETURN(
        std::shared_ptr<const dkim::SigningTable> table,
        dkim::SigningTable::Load(dkim.keys, [this](std::string_view path) {
          return config_.ResolvePath(path);
        }));
    FACTEUR_ASSIGN_OR_RETURN(std::unique_ptr<dkim::Signer> signer, dkim::MakeSigner(dkim.engine));
    signing_ = std::make_unique<dkim::SigningPool>(
        std::move(signer), std::move(table), clock_, &metrics_,
        dkim::SigningPoolOptions{.threads = dkim.threads, .max_queued = dkim.max_queued});
    services_->signer.store(signing_.get(), std::memory_order_release);
    return absl::OkStatus();
  }

  // The [[dkim.key]] entries of `next` replace the signing table; on any error the keys in use
  // stay. Engine and thread changes need a restart, unless these are the first keys. What it
  // says, or nullopt.
  std::optional<std::string> ReloadDkimKeys(const config::Config& next) {
    if (signing_ == nullptr) {
      if (next.dkim.keys.empty()) return std::nullopt;
      // The first keys: the signing pool starts now, with [dkim] as `next` has it.
      if (absl::Status started = StartSigning(next.dkim); !started.ok()) {
        Log(LogLevel::kError, "SIGHUP: DKIM keys not loaded: %s", started.message());
        return std::nullopt;
      }
      config_.dkim = next.dkim;
      return absl::StrCat(next.dkim.keys.size(), " DKIM keys loaded: signing starts");
    }
    absl::StatusOr<std::shared_ptr<const dkim::SigningTable>> table =
        dkim::SigningTable::FromConfig(next);
    if (!table.ok()) {
      Log(LogLevel::kError, "SIGHUP: DKIM keys not reloaded: %s", table.status().message());
      return std::nullopt;
    }
    const size_t keys = (*table)->size();
    signing_->Reload(*std::move(table));
    config_.dkim.keys = next.dkim.keys;
    return absl::StrCat(keys, " DKIM keys loaded");
  }

  // Default: one I/O thread per two cores. Each message also costs the spool writer and the
  // queue manager about as much CPU as it costs the I/O threads (bench/README "Where the time
  // goes"), so an I/O thread per core oversubscribes the cores: on 2 cores, 1,000 destinations,
  // two I/O threads took 0.14-0.16 CPU-ms per message and one 0.12, for the same rate.
  size_t IoThreadCount() const {
    if (config_.io_threads != 0) return config_.io_threads;
    return std::max(1u, std::thread::hardware_concurrency() / 2);
  }

  // What submission needs of delivery before the listeners start: DNS for the RCPT checks,
  // the routes, the events log.
  absl::Status PrepareDelivery() {
    const config::DnsOptions& dns = config_.dns;
    // Each I/O thread has its own resolver: the relay's bound on queries in flight is shared
    // among them, rounded up so that none has less than one.
    const size_t threads = IoThreadCount();
    resolvers_ = std::make_unique<dns::ShardResolvers>(
        dns::ResolverOptions{.nameservers = dns.nameservers,
                             .timeout = dns.timeout,
                             .attempts = static_cast<int>(dns.attempts),
                             .max_queries_in_flight =
                                 (dns.max_queries_in_flight + threads - 1) / threads},
        clock_);
    FACTEUR_ASSIGN_OR_RETURN(delivery::Router router, delivery::Router::Create(config_));
    router_ = std::make_unique<delivery::Router>(std::move(router));
    recipient_check_ = std::make_unique<delivery::RecipientDomainCheck>(*router_, *resolvers_);
    if (!config_.events.path.empty()) {
      FACTEUR_ASSIGN_OR_RETURN(events_,
                               events::EventLog::Open(config_.ResolvePath(config_.events.path)));
    }
    return absl::OkStatus();
  }

  // The queue manager and one delivery pool per shard, on the running loops.
  absl::Status StartDelivery() {
    if (!config_.delivery.enabled) {
      Log(LogLevel::kInfo, "delivery is disabled ([delivery] enabled = false): mail stays queued");
      return absl::OkStatus();
    }
    const config::DeliveryOptions& options = config_.delivery;
    FACTEUR_ASSIGN_OR_RETURN(
        tls_client_, tls::TlsClientContext::Create(
                         options.tls_ca_file.empty() ? "" : config_.ResolvePath(options.tls_ca_file)));
    retry_ = std::make_unique<throttle::RetryPolicy>(throttle::RetryOptions{
        .first_retry = options.first_retry,
        .backoff = options.retry_backoff,
        .max_retry_interval = options.max_retry_interval,
        .jitter = options.retry_jitter,
        .queue_lifetime = options.queue_lifetime});
    FACTEUR_ASSIGN_OR_RETURN(shaping_, delivery::Shaping::Load(config_));
    reputation_ = std::make_unique<throttle::Reputation>(
        throttle::ReputationOptionsFrom(shaping_->options()));
    reputation_store_ = std::make_unique<queue::ReputationStore>(*store_);
    FACTEUR_ASSIGN_OR_RETURN(queue::ReputationLoadStats loaded,
                             reputation_store_->LoadInto(*reputation_));
    if (loaded.skipped > 0) {
      Log(LogLevel::kWarning, "reputation: %d damaged records ignored",
          static_cast<int>(loaded.skipped));
    }
    StartReputationFlusher();
    // The pair pauses of before a restart; those that ended meanwhile are dropped from the spool.
    pauses_ = std::make_unique<throttle::PauseLedger>();
    suspension_store_ = std::make_unique<queue::SuspensionStore>(*store_);
    FACTEUR_ASSIGN_OR_RETURN(queue::PairPauseLoad pauses,
                             suspension_store_->PairPauses(clock_.Now()));
    pauses_->Restore(pauses.running);
    StartPauseWriter();
    site_labels_ = std::make_unique<delivery::SiteLabeler>(options.metrics_site_labels);
    queue_manager_ = std::make_unique<delivery::QueueManager>(
        *store_, *spool_, *retry_, clock_, events_.get(),
        delivery::QueueManagerOptions{
            .hostname = config_.hostname,
            .max_messages_in_flight = options.max_messages_in_flight,
            .max_bytes_in_flight = options.max_bytes_in_flight,
            .max_recipients_per_transaction = options.max_recipients_per_transaction,
            .greylist = shaping_->options().greylist,
            .metrics = &metrics_.delivery(),
            .site_labels = site_labels_.get()});
    if (suppression_ != nullptr) {
      // A recipient its server called unknown is not sent to again (refused at RCPT TO).
      queue_manager_->SetUserUnknownHandler(
          [this](const std::string& address, const mail::DeliveryOutcome& outcome) {
            const std::string reply = absl::StrCat(outcome.reply.code, " ", outcome.reply.enhanced,
                                                   " ", outcome.reply.text);
            absl::Status added =
                suppression_->Add(address, queue::kSuppressedUserUnknown, reply, clock_.Now());
            if (!added.ok()) {
              Log(LogLevel::kError, "suppression list: %s not added: %s", address,
                  added.message());
            }
          });
    }
    delivery_context_ = std::make_unique<delivery::DeliveryContext>(delivery::DeliveryContext{
        .router = *router_,
        .results = *queue_manager_,
        .clock = clock_,
        .shaping = shaping_,
        .reputation = reputation_.get(),
        .metrics = &metrics_.shaping(),
        .site_labels = site_labels_.get(),
        .events = events_.get(),
        .pauses = pauses_.get(),
        .tls = tls_client_.get(),
        .timeouts = smtp::ClientTimeouts{.greeting = options.greeting_timeout,
                                         .command = options.command_timeout,
                                         .data_initiation = options.data_initiation_timeout,
                                         .data_block = options.data_block_timeout,
                                         .data_termination = options.data_termination_timeout},
        .connect_timeout = options.connect_timeout,
        .idle_timeout = options.connection_idle_timeout,
        .max_connections_per_destination = options.max_connections_per_destination,
        .max_messages_per_connection = options.max_messages_per_connection,
        .max_recipients_per_transaction = options.max_recipients_per_transaction});
    std::vector<delivery::ShardHandle> shards;
    shard_deliveries_.resize(server_->loop_count());
    for (size_t i = 0; i < server_->loop_count(); ++i) {
      io::EventLoop& loop = server_->loop(i);
      absl::Status status;
      RunOnLoop(loop, [&] {
        dns::Resolver* resolver = resolvers_->For(loop);
        if (resolver == nullptr) {
          status = absl::InvalidArgumentError("the DNS resolver cannot start (see the log)");
          return;
        }
        shard_deliveries_[i] =
            std::make_unique<delivery::ShardDelivery>(loop, *resolver, *delivery_context_);
      });
      FACTEUR_RETURN_IF_ERROR(status);
      shards.push_back({&loop, shard_deliveries_[i].get()});
    }
    for (size_t i = 0; i < shards.size(); ++i) {
      RunOnLoop(server_->loop(i), [&] { shard_deliveries_[i]->SetShards(shards); });
    }
    site_control_ = std::make_unique<delivery::SiteControl>(shards);
    dispatcher_ = std::make_unique<delivery::ShardedDispatcher>(std::move(shards));
    queue_manager_->SetDispatcher(dispatcher_.get());
    // The holds and pauses of before a restart are back before the first message is leased.
    FACTEUR_ASSIGN_OR_RETURN(std::vector<std::string> held,
                             queue_manager_->RestoreSuspendedDomains());
    // A shard slow to take its pauses back delays nothing: its pauses stay on disk for the
    // next start, and the domain holds (which must hold) are back already.
    if (absl::Status restored = site_control_->RestorePauses(pauses.running, kRestoreTimeout).status();
        !restored.ok()) {
      Log(LogLevel::kError, "suspensions: site pauses not restored: %s", restored.message());
    }
    LogRestoredSuspensions(held, pauses, clock_.Now());
    queue_manager_->Start();
    return absl::OkStatus();
  }

  // The snapshot replaced on SIGHUP, for the threads that are not the one reloading.
  std::shared_ptr<const delivery::Shaping> CurrentShaping() const {
    absl::MutexLock lock(&shaping_mutex_);
    return shaping_;
  }

  // The warmup plan each [[source]] follows under `shaping` (its pool's, [warmup_pools]; null
  // for none), and the lookup of a source's in it: null for a name that is not a source.
  using WarmupPlans = absl::flat_hash_map<std::string, const throttle::WarmupPlan*>;
  WarmupPlans WarmupPlansBySource(const delivery::Shaping& shaping) const {
    WarmupPlans plans;
    for (const config::SourceOptions& source : config_.sources) {
      plans[source.name] = throttle::FindWarmupPlan(
          shaping.options(), source.pool.empty() ? "default" : source.pool);
    }
    // No [[source]]: the router's one unbound source, "default" of the pool "default".
    if (config_.sources.empty()) {
      plans["default"] = throttle::FindWarmupPlan(shaping.options(), "default");
    }
    return plans;
  }
  static const throttle::WarmupPlan* PlanOf(const WarmupPlans& plans, const std::string& source) {
    auto it = plans.find(source);
    return it == plans.end() ? nullptr : it->second;
  }

  // facteur_site_warmup_cap and _sent at scrape time, from the reputation, which every shard
  // shares: one writer, so that a series can go (the source warm, its plan dropped) without a
  // shard setting it at the same time. Of the sites that share a label (a [[domain]] override's
  // site has its site's label), the one nearest its cap; "other" and "route" mix unrelated
  // sites and get none, as for the shards' pair gauges.
  void ReportWarmupMetrics(absl::Time now) {
    if (reputation_ == nullptr || site_labels_ == nullptr) return;
    // Looked up before: plan_of runs for every pair, under the reputation's lock.
    const WarmupPlans plans = WarmupPlansBySource(*CurrentShaping());
    using Series = std::pair<std::string, std::string>;  // site label, source
    absl::flat_hash_map<Series, throttle::WarmupStanding> nearest;
    for (const throttle::Reputation::WarmupReport& report : reputation_->WarmupReports(
             [&plans](const std::string& source) { return PlanOf(plans, source); }, now)) {
      std::string label = site_labels_->LabelGiven(report.site);
      if (label == "other" || label == "route") continue;
      auto [it, added] = nearest.try_emplace(Series(std::move(label), report.source),
                                             report.standing);
      if (!added && report.standing.NearerItsCapThan(it->second)) it->second = report.standing;
    }
    metrics::ShapingMetrics& m = metrics_.shaping();
    for (auto it = warmup_series_.begin(); it != warmup_series_.end();) {
      if (nearest.contains(*it)) {
        ++it;
        continue;
      }
      const std::map<std::string, std::string> labels = {{"site", it->first},
                                                         {"source", it->second}};
      m.warmup_cap.Remove(&m.warmup_cap.Add(labels));
      m.warmup_sent.Remove(&m.warmup_sent.Add(labels));
      warmup_series_.erase(it++);
    }
    for (const auto& [series, standing] : nearest) {
      const std::map<std::string, std::string> labels = {{"site", series.first},
                                                         {"source", series.second}};
      m.warmup_cap.Add(labels).Set(standing.cap);
      m.warmup_sent.Add(labels).Set(standing.sent_today);
      warmup_series_.insert(series);
    }
  }

  // Queue depth and suspended accounts, from the spool's index, the queue manager and the
  // quota table at scrape time (Metrics serialises the hooks: scheduled_labels_ needs no lock).
  void ReportQueueMetrics() {
    const queue::QueueCounts counts = spool_->Counts(clock_.Now());
    metrics::DeliveryMetrics& delivery = metrics_.delivery();
    delivery.queue_ready.Set(static_cast<double>(counts.ready));
    delivery.queue_scheduled.Set(static_cast<double>(counts.scheduled));
    delivery.queue_in_flight.Set(static_cast<double>(counts.leased));
    if (quotas_ != nullptr) {
      metrics_.quota().accounts_suspended.Set(
          static_cast<double>(quotas_->table().SuspendedCount()));
    }
    if (queue_manager_ == nullptr || site_labels_ == nullptr) return;
    absl::flat_hash_map<std::string, double> by_label;
    for (const auto& [site, messages] : queue_manager_->ScheduledBySite()) {
      by_label[site_labels_->Label(site)] += static_cast<double>(messages);
    }
    // Messages waiting that the manager has not settled since the start: no site known yet.
    const uint64_t waiting = counts.ready + counts.scheduled;
    const uint64_t known = queue_manager_->ScheduledWithKnownSite();
    by_label["unattempted"] = static_cast<double>(waiting > known ? waiting - known : 0);
    for (const std::string& label : scheduled_labels_) by_label.try_emplace(label, 0.0);
    for (const auto& [label, messages] : by_label) {
      delivery.scheduled_by_site.Add({{"site", label}}).Set(messages);
      scheduled_labels_.insert(label);
    }
  }

  // One line naming what a restart kept suspended, so that an operator who forgot a hold or a
  // pause sees it: "restored 2 domain holds (a.example, b.example), 1 site pause (gmail/out1
  // until 2026-12-06T13:20Z, blocklist)". Pauses of every source of a site read "gmail/*"; a
  // back-off kept with a pause, or after it, adds its rate, connections, hold and ceiling
  // ("1 back-off (outlook/out1, 6.0/min, 1 connection held until ...)").
  static void LogRestoredSuspensions(const std::vector<std::string>& domains,
                                     const queue::PairPauseLoad& pauses, absl::Time now) {
    std::vector<std::string> parts;
    if (!domains.empty()) {
      parts.push_back(absl::StrCat("restored ", domains.size(), " domain hold",
                                   domains.size() == 1 ? "" : "s", " (",
                                   absl::StrJoin(domains, ", "), ")"));
    }
    if (!pauses.running.empty()) {
      std::vector<std::string> paused;
      std::vector<std::string> backing_off;  // their pause over, what it left not
      auto minute = [](absl::Time t) {
        return absl::FormatTime("%Y-%m-%dT%H:%MZ", t, absl::UTCTimeZone());
      };
      for (const throttle::PairPause& pause : pauses.running) {
        std::string text = absl::StrCat(pause.site, "/",
                                        pause.source.empty() ? "*" : pause.source);
        if (pause.until > now) {
          absl::StrAppend(&text, " until ", minute(pause.until), ", ",
                          pause.manual || !pause.cause.has_value()
                              ? "manual"
                              : ToAbsl(throttle::ResponseClassName(*pause.cause)));
        }
        // What the reply left besides the pause: the pair does not resume at full speed.
        if (const std::optional<throttle::PairBackoff>& b = pause.backoff; b.has_value()) {
          if (b->rate > 0) absl::StrAppend(&text, ", ", absl::StrFormat("%.1f", b->rate), "/min");
          if (b->connections > 0) {
            absl::StrAppend(&text, ", ", b->connections, " connection",
                            b->connections == 1 ? "" : "s");
          }
          if (b->hold_until > now) absl::StrAppend(&text, " held until ", minute(b->hold_until));
          if (b->ceiling_until > now) {
            absl::StrAppend(&text, ", at most ", absl::StrFormat("%.1f", b->ceiling),
                            "/min until ", minute(b->ceiling_until));
          }
        }
        (pause.until > now ? paused : backing_off).push_back(std::move(text));
      }
      auto counted = [&](const std::vector<std::string>& named, std::string_view what) {
        if (named.empty()) return;
        parts.push_back(absl::StrCat(parts.empty() ? "restored " : "", named.size(), " ",
                                     ToAbsl(what), named.size() == 1 ? "" : "s", " (",
                                     absl::StrJoin(named, "; "), ")"));
      };
      counted(paused, "site pause");
      counted(backing_off, "back-off");
    }
    if (pauses.expired > 0) {
      parts.push_back(absl::StrCat(pauses.expired, " site pause",
                                   pauses.expired == 1 ? "" : "s", " ended while stopped"));
    }
    if (parts.empty()) return;
    Log(LogLevel::kInfo, "%s", absl::StrJoin(parts, ", "));
  }

  // Pair pauses reach the spool as soon as they change (one write per change or group of
  // changes: they are few; synced when an operator's is in it), off the loops; the last changes
  // are written before the thread ends.
  void StartPauseWriter() {
    pause_writer_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "suspensions");
      for (;;) {
        throttle::PauseDelta delta = pauses_->TakeDirtyWhenAny(absl::Minutes(1));
        if (delta.empty()) {
          if (pauses_->closed()) return;
          continue;
        }
        absl::Status written = suspension_store_->Write(delta, delta.has_operator_change());
        if (written.ok()) {
          pauses_->Written(delta);
          continue;
        }
        Log(LogLevel::kError, "suspensions: %s", written.message());
        pauses_->Redirty(delta);
        if (pauses_->closed()) return;
        absl::SleepFor(absl::Seconds(1));  // a full disk: try again, without spinning
      }
    });
  }

  // Reputation counters reach the store every few seconds, off the loops (RocksDB blocks).
  void StartReputationFlusher() {
    reputation_flusher_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "reputation");
      bool stopping = false;
      while (!stopping) {
        stopping = reputation_stop_.WaitForNotificationWithTimeout(kReputationFlushInterval);
        absl::Status flushed = reputation_store_->Flush(*reputation_);
        if (!flushed.ok()) Log(LogLevel::kError, "reputation: %s", flushed.message());
      }
    });
  }

  // Connections live on the loops, which must still run to close them: delivery stops first.
  // Every shard lets its transactions end for shutdown_grace at most, all at the same time.
  void StopDelivery() {
    // No new jobs for the shards; the manager still settles what comes back while they close.
    if (queue_manager_ != nullptr) queue_manager_->StopDispatching();
    if (loops_running_) {
      const absl::Duration grace = shutdown_grace();
      std::vector<std::unique_ptr<absl::Notification>> dones;
      for (size_t i = 0; i < shard_deliveries_.size(); ++i) {
        if (shard_deliveries_[i] == nullptr) continue;
        absl::Notification* done = dones.emplace_back(new absl::Notification()).get();
        server_->loop(i).Post([this, i, done, grace] {
          shard_deliveries_[i]->Shutdown([done] { done->Notify(); }, grace);
        });
      }
      for (const std::unique_ptr<absl::Notification>& done : dones) done->WaitForNotification();
      // Destroyed only once every shard has shut down: until then a peer may still post it a
      // job (ShardDelivery::Route), which a shut-down shard drops but a freed one cannot. A
      // shard posts nothing once it is shut down, and its earlier posts run before this one.
      for (size_t i = 0; i < shard_deliveries_.size(); ++i) {
        if (shard_deliveries_[i] == nullptr) continue;
        RunOnLoop(server_->loop(i), [this, i] { shard_deliveries_[i].reset(); });
      }
    }
    if (queue_manager_ != nullptr) queue_manager_->Stop();
    dispatcher_.reset();
    if (loops_running_ && resolvers_ != nullptr) {
      for (size_t i = 0; i < server_->loop_count(); ++i) {
        io::EventLoop& loop = server_->loop(i);
        RunOnLoop(loop, [&] { resolvers_->Close(loop); });
      }
    }
    queue_manager_.reset();
    delivery_context_.reset();
    retry_.reset();
    if (pause_writer_.joinable()) {
      pauses_->Close();  // the shards are gone: nothing changes any more
      pause_writer_.join();
    }
    if (reputation_flusher_.joinable()) {
      reputation_stop_.Notify();
      reputation_flusher_.join();  // its last flush writes what the last deliveries counted
    }
  }

  // Runs `fn` on `loop`'s thread and waits for it.
  static void RunOnLoop(io::EventLoop& loop, absl::AnyInvocable<void() &&> fn) {
    absl::Notification done;
    loop.Post([&] {
      std::move(fn)();
      done.Notify();
    });
    done.WaitForNotification();
  }

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
    FACTEUR_RETURN_IF_ERROR(
        WriteFileAtomically(EndpointsPath(config_), endpoints.dump(2) + "\n"));
    announced_ = true;
    return absl::OkStatus();
  }

  // The real clock, or for simulations ([clock] speed) a faster one.
  static std::unique_ptr<Clock> MakeClock(const config::ClockOptions& options) {
    if (options.speed == 1.0) return std::make_unique<RealClock>();
    const absl::Time anchor =
        options.anchor > 0 ? absl::FromUnixMicros(static_cast<int64_t>(options.anchor * 1e6))
                           : absl::Now();
    Log(LogLevel::kWarning, "[clock] speed = %g: time runs faster than real time (simulation)",
        options.speed);
    return std::make_unique<ScaledClock>(anchor, options.speed);
  }

  config::Config config_;
  std::unique_ptr<Clock> owned_clock_;
  Clock& clock_;
  metrics::Metrics metrics_;
  std::unique_ptr<queue::Store> store_;
  std::unique_ptr<queue::Spool> spool_;
  std::unique_ptr<policy::AccountStore> accounts_;
  std::unique_ptr<policy::AccountQuotas> quotas_;         // issue #5: submission quotas
  std::unique_ptr<queue::SuppressionList> suppression_;  // refused at RCPT TO
  std::unique_ptr<tls::TlsServerContext> tls_;
  std::unique_ptr<WorkerPool> auth_pool_;
  std::unique_ptr<dkim::SigningPool> signing_;  // null when no DKIM key is configured
  std::unique_ptr<policy::AuthThrottle> auth_throttle_;
  std::unique_ptr<smtp::SubmissionServices> services_;
  std::deque<smtp::ListenerPolicy> policies_;  // stable addresses: sessions borrow them
  std::unique_ptr<io::Server> server_;
  bool loops_running_ = false;  // server_->Start() succeeded: posted work runs
  bool announced_ = false;  // this process wrote endpoints.json (Announce)
  // Delivery (issue #3). The resolvers serve the RCPT checks and the delivery pools alike.
  std::unique_ptr<dns::ShardResolvers> resolvers_;
  std::unique_ptr<delivery::Router> router_;
  std::unique_ptr<delivery::RecipientDomainCheck> recipient_check_;
  std::unique_ptr<events::EventLog> events_;
  std::unique_ptr<tls::TlsClientContext> tls_client_;
  std::unique_ptr<throttle::RetryPolicy> retry_;
  // The `site` label of delivery metrics, shared by the manager and the shards (declared
  // before them: they use it until they are gone).
  std::unique_ptr<delivery::SiteLabeler> site_labels_;
  std::unique_ptr<delivery::QueueManager> queue_manager_;
  // The current shaping snapshot, shared with the shards (each holds the one it was last
  // given) and the DeliveryContext (the one at start); replaced on SIGHUP under
  // shaping_mutex_ by the reloading thread only (its own reads need no lock), which other
  // threads read it under (CurrentShaping).
  std::shared_ptr<const delivery::Shaping> shaping_;
  mutable absl::Mutex shaping_mutex_;
  std::unique_ptr<throttle::Reputation> reputation_;  // shared by the shards; thread-safe
  std::unique_ptr<queue::ReputationStore> reputation_store_;
  std::thread reputation_flusher_;
  absl::Notification reputation_stop_;
  std::unique_ptr<throttle::PauseLedger> pauses_;  // shared by the shards; thread-safe
  std::unique_ptr<queue::SuspensionStore> suspension_store_;
  std::thread pause_writer_;
  std::unique_ptr<delivery::DeliveryContext> delivery_context_;
  std::vector<std::unique_ptr<delivery::ShardDelivery>> shard_deliveries_;  // one per loop
  std::unique_ptr<delivery::ShardedDispatcher> dispatcher_;
  std::unique_ptr<delivery::SiteControl> site_control_;   // over the shards, for admin_
  std::unique_ptr<admin::DeliveryAccess> delivery_access_;  // read by admin_
  // Labels of facteur_queue_scheduled_messages set by the last scrape (ReportQueueMetrics);
  // before admin_, whose threads scrape until it is gone.
  absl::flat_hash_set<std::string> scheduled_labels_;
  // {site, source} of the warmup gauges set by the last scrape (ReportWarmupMetrics); likewise.
  absl::flat_hash_set<std::pair<std::string, std::string>> warmup_series_;
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
  // Said first: without --config, $FACTEUR_CONFIG or /etc/facteur/facteur.toml may be read.
  const std::string config_path =
      command_line->config_path.empty() ? DefaultConfigPath() : command_line->config_path;
  Log(LogLevel::kInfo, "configuration: %s, data directory %s",
      config_path.empty() ? "the embedded default" : config_path, config->data_dir);

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
      Log(LogLevel::kInfo, "SIGHUP: reading the configuration again");
      relay.Reload(LoadConfig(*command_line));
      continue;
    }
    Log(LogLevel::kInfo, "signal %d: stopping (transactions in progress have %s to end)",
        signal_number, absl::FormatDuration(relay.shutdown_grace()));
    break;
  }
  // The stop is bounded: should anything hang past grace + margin, exit at once. What was
  // acknowledged is already synced; what was not will be sent again by its client.
  const absl::Duration deadline = relay.shutdown_grace() + config::kShutdownMargin;
  absl::Notification stopped;
  std::thread watchdog([&stopped, deadline] {
    if (stopped.WaitForNotificationWithTimeout(deadline)) return;
    Log(LogLevel::kError, "stop still running after %s: exiting now",
        absl::FormatDuration(deadline));
    std::_Exit(kExitSoftware);
  });
  relay.Stop();
  stopped.Notify();
  watchdog.join();
  Log(LogLevel::kInfo, "stopped");
  return kExitOk;
}

}  // namespace facteur::cli
