// File: engine/admin/admin_server.h
// The HTTP admin endpoint (DESIGN.md §6): Prometheus /metrics, /healthz, a read-only view of
// the queue and account management, as JSON. Served by civetweb on loopback or an operator's
// management address; it has no authentication of its own, so it must not listen on a public
// address.
//   GET    /metrics                              text exposition (version 0.0.4)
//   GET    /healthz                              "ok"
//   GET    /api/queue/count                      {"count":N}
//   GET    /api/queue?limit=N&after=ID           {"messages":[...]}, in arrival order
//   GET    /api/queue/<ID>                       one message, with its body size
//   DELETE /api/queue/<ID>                       removes it, no DSN
//   POST   /api/queue/<ID>/retry                 makes it due now
//   POST   /api/queue/<ID>/bounce                bounces its open recipients (DSN to the sender)
//   POST   /api/queue/flush                      {"domain"} optional: makes messages due now
//   POST   /api/queue/bounce                     {"domain"}: bounces that domain's recipients
//   POST   /api/queue/suspend | /api/queue/resume {"domain"}
//   GET    /api/queue/suspended                  {"domains":[...]}
//   Queue operations answer {"messages":N,"recipients":M}, or 503 when delivery is not running.
//   GET    /api/accounts                         {"accounts":[...]}
//   POST   /api/accounts                         {"name","password"} → 201
//   GET    /api/accounts/<name>                  one account
//   DELETE /api/accounts/<name>
//   PUT    /api/accounts/<name>/password         {"password"}
//   PUT    /api/accounts/<name>/suspended        {"suspended":true|false}
//   POST   /api/accounts/<name>/grants           {"pattern"} → 201
//   DELETE /api/accounts/<name>/grants/<pattern>
//   POST   /api/accounts/<name>/resume           clears a suspension → {"name","resumed":bool}
//   GET    /api/accounts/<name>/quota            counts, usual rate, limits, suspension
//   GET    /api/suppression                      {"addresses":[{address,reason,added_at,reply}]}
//   POST   /api/suppression                      {"address","reason"?} → 201
//   DELETE /api/suppression/<address>            (percent-encoded)
//   Quota and suppression endpoints answer 503 until SetAccountQuotas / SetSuppressionList.
//   GET    /api/queue/summary                    {"messages","due_now","scheduled","in_flight",
//                                                "next_due", "sites":[{site, label, ready_jobs,
//                                                ready_recipients, in_flight_jobs,
//                                                held_back_jobs, scheduled}], "totals":{...}}
//                                                (scheduled by site: messages settled since the
//                                                server started; "unknown_site" the rest)
//   GET    /api/sites                            {"sites":[{key, label, name, pool,
//                                                suspended_until, ready_jobs, ready_recipients,
//                                                in_flight_jobs, held_back_jobs,
//                                                open_connections, sources:[{source, state,
//                                                suspended_until, suspended_by ("manual" or a
//                                                reply class), message_rate (per minute, 0: no
//                                                limit), max_connections (0: no limit),
//                                                open_connections, in_flight, pinned_waiting,
//                                                health}]}], "totals":{...}}
//   POST   /api/sites/<site>/suspend             {"source"?, "minutes"? (default 60)}: pauses
//                                                every source (or one) for the site →
//                                                {"sites":[keys],"pairs":N,"until"}
//   POST   /api/sites/<site>/resume              {"source"?}: lifts any suspension, manual or
//                                                not, then makes the site's held-back mail due
//                                                → {"sites","pairs","messages"}
//   <site> is a site key or a shipped site name (percent-encoded); a name also covers its
//   domain overrides ("google/example.com"). An unknown site is 404; a shipped site without
//   mail yet is created paused. Sites and summary answer 503 until SetDeliveryAccess.
//   GET    /api/reputation                       what `facteur reputation --json` prints, from
//                                                the live counters
// Errors are {"error":"..."} with 400 (InvalidArgument), 404 (NotFound), 409 (AlreadyExists,
// FailedPrecondition), 413 (body over 64 KiB), 503 (Unavailable, ResourceExhausted) or 500.
// Thread contract: requests run on civetweb's own small thread pool, never on an io_uring
// shard, so the blocking calls they make (RocksDB reads, argon2 hashing in AccountStore) are
// fine there (STYLE.md rule 3). Start() and the destructor are called from one owning thread.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>

#include <atomic>

#include "absl/status/statusor.h"
#include "engine/base/clock.h"
#include "engine/delivery/queue_manager.h"
#include "engine/delivery/shard_delivery.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/account_quotas.h"
#include "engine/policy/account_store.h"
#include "queue/store.h"
#include "nlohmann/json.hpp"
#include "queue/spool.h"
#include "queue/suppression.h"
#include "throttle/pause_ledger.h"

struct mg_context;
struct mg_connection;

namespace facteur::admin {

struct AdminResponse;  // one HTTP answer; defined in admin_server.cc

// The delivery side as the site, summary and reputation endpoints reach it. Every pointer
// outlives the server, or SetDeliveryAccess(nullptr) comes before it goes.
struct DeliveryAccess {
  delivery::SiteControl* sites = nullptr;  // null: no site endpoints
  // Where site pauses wait to be written (WaitWritten before "suspended" is said); null: none.
  throttle::PauseLedger* pauses = nullptr;
  const queue::Spool* spool = nullptr;     // null: no summary
  const Clock* clock = nullptr;            // the relay's clock (due times are on it); not null
  delivery::SiteLabeler* site_labels = nullptr;  // the metrics' `site` labels; null: SiteLabel()
  // The body of GET /api/reputation at `now` (null: 503); thread-safe.
  std::function<nlohmann::json(absl::Time now)> reputation;
};

// Largest request body accepted; more is refused with 413 before it is read.
inline constexpr size_t kMaxRequestBody = 64 * 1024;

class AdminServer {
 public:
  // Listens on `address`, "host:port" or "[v6]:port"; port 0 picks a free port (tests).
  // InvalidArgument for a malformed address, Unavailable when the address cannot be bound,
  // Unimplemented for IPv6 when the civetweb build lacks it (Debian's 1.15 does).
  // `metrics`, `store` and `accounts` must outlive the server. With a `token`, every /api/
  // request must carry "Authorization: Bearer TOKEN" (401 otherwise); /metrics, /healthz and
  // /readyz stay open.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& address,
                                                            metrics::Metrics& metrics,
                                                            queue::Store& store,
                                                            policy::AccountStore& accounts,
                                                            std::string token = "");
  // Stops listening and waits for requests in progress.
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  // "host:port" with the port actually bound, e.g. "127.0.0.1:41234" or "[::1]:9464".
  std::string BoundAddress() const;
  // Enables the queue operations (null disables them again). `manager` outlives the server or
  // is reset to null before it goes.
  void SetQueueManager(delivery::QueueManager* manager) { queue_manager_.store(manager); }
  // Enable the quota and suppression endpoints; same lifetime rule as SetQueueManager.
  void SetAccountQuotas(policy::AccountQuotas* quotas) { quotas_.store(quotas); }
  void SetSuppressionList(queue::SuppressionList* list) { suppression_.store(list); }
  void SetDeliveryAccess(const DeliveryAccess* access) { delivery_.store(access); }
  // /readyz answers 200 once the relay takes mail and delivers it, 503 before and while it
  // shuts down.
  void SetReady(bool ready) { ready_.store(ready); }

 private:
  using Response = AdminResponse;

  AdminServer(std::string host, metrics::Metrics& metrics, queue::Store& store,
              policy::AccountStore& accounts);
  static int HandleRequest(mg_connection* connection, void* self);
  Response Route(const std::string& method, const std::string& path, const std::string& query,
                 std::string& body);

  Response QueueList(const std::string& query);
  Response QueueCount();
  Response QueueMessage(const std::string& id_text);
  Response AccountList();
  Response AccountGet(const std::string& name);
  Response AccountCreate(std::string& body);
  Response AccountDelete(const std::string& name);
  Response AccountPassword(const std::string& name, std::string& body);
  Response AccountSuspended(const std::string& name, const std::string& body);
  Response GrantAdd(const std::string& name, const std::string& body);
  Response GrantRemove(const std::string& name, const std::string& pattern);
  Response AccountResume(const std::string& name);
  Response AccountQuota(const std::string& name);
  // GET/POST /api/suppression and DELETE /api/suppression/<address>.
  Response Suppression(const std::string& method, const std::string& address,
                       const std::string& body);
  // POST /api/queue/{flush,bounce,suspend,resume} and /api/queue/<ID>[/retry|/bounce].
  Response QueueOperation(const std::string& operation, const std::string& id_text,
                          const std::string& body);
  // Queued messages with a recipient still to deliver in `domain` (case-insensitive): what a
  // suspension of that domain holds. Walks the whole queue.
  absl::StatusOr<uint64_t> CountQueuedFor(std::string_view domain) const;
  Response QueueSummary();
  Response SiteList();
  // Messages each site handed back unattempted that wait in the spool now, by site key (the
  // queue manager's live count); empty without a queue manager.
  std::map<std::string, uint64_t> HeldBackNow() const;
  // The live [quota] state of account `name`; nullopt without quotas or before it sent.
  std::optional<throttle::AccountQuotaState> QuotaStateOf(const std::string& name);
  // Of `scheduled` messages, those with no site known yet (not tried since the start).
  uint64_t NotTriedSinceStart(uint64_t scheduled) const;
  // POST /api/sites/<site>/{suspend,resume}.
  Response SiteOperation(const std::string& site, const std::string& action, std::string& body);
  Response ReputationView();

  const std::string host_;  // as configured, brackets included for IPv6
  metrics::Metrics& metrics_;
  queue::Store& store_;
  policy::AccountStore& accounts_;
  std::atomic<delivery::QueueManager*> queue_manager_{nullptr};
  std::atomic<policy::AccountQuotas*> quotas_{nullptr};
  std::atomic<queue::SuppressionList*> suppression_{nullptr};
  std::atomic<const DeliveryAccess*> delivery_{nullptr};
  mg_context* context_ = nullptr;  // owned: mg_stop() in the destructor
  int port_ = 0;
  std::string token_;  // "" = no bearer token asked; set before the listener starts
  std::atomic<bool> ready_{false};
};

}  // namespace facteur::admin
