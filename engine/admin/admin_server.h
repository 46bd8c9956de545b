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
// Errors are {"error":"..."} with 400 (InvalidArgument), 404 (NotFound), 409 (AlreadyExists,
// FailedPrecondition), 413 (body over 64 KiB), 503 (Unavailable, ResourceExhausted) or 500.
// Thread contract: requests run on civetweb's own small thread pool, never on an io_uring
// shard, so the blocking calls they make (RocksDB reads, argon2 hashing in AccountStore) are
// fine there (STYLE.md rule 3). Start() and the destructor are called from one owning thread.
#pragma once

#include <memory>
#include <string>

#include <atomic>

#include "absl/status/statusor.h"
#include "engine/delivery/queue_manager.h"
#include "engine/metrics/metrics.h"
#include "engine/policy/account_quotas.h"
#include "engine/policy/account_store.h"
#include "queue/store.h"
#include "queue/suppression.h"

struct mg_context;
struct mg_connection;

namespace facteur::admin {

struct AdminResponse;  // one HTTP answer; defined in admin_server.cc

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

  const std::string host_;  // as configured, brackets included for IPv6
  metrics::Metrics& metrics_;
  queue::Store& store_;
  policy::AccountStore& accounts_;
  std::atomic<delivery::QueueManager*> queue_manager_{nullptr};
  std::atomic<policy::AccountQuotas*> quotas_{nullptr};
  std::atomic<queue::SuppressionList*> suppression_{nullptr};
  mg_context* context_ = nullptr;  // owned: mg_stop() in the destructor
  int port_ = 0;
  std::string token_;  // "" = no bearer token asked; set before the listener starts
  std::atomic<bool> ready_{false};
};

}  // namespace facteur::admin
