// File: engine/admin/admin_server.cc
#include "engine/admin/admin_server.h"

#include <openssl/crypto.h>

#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "engine/admin/json.h"
#include "engine/base/log.h"
#include "engine/base/message_id.h"
#include "engine/base/status.h"
#include "engine/delivery/shaping.h"
#include "engine/mail/address.h"
#include "engine/mail/text.h"
#include "nlohmann/json.hpp"
#include "queue/spool.h"

namespace facteur::admin {

using Json = nlohmann::json;

struct AdminResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

namespace {

constexpr size_t kDefaultQueueLimit = 100;
constexpr size_t kMaxQueueLimit = 1000;

AdminResponse JsonResponse(int status, const Json& value) {
  return {status, "application/json", DumpJson(value) + "\n"};
}

AdminResponse Error(int status, std::string_view message) {
  return JsonResponse(status, Json{{"error", std::string(message)}});
}

int HttpStatusFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted: return 409;
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

AdminResponse StatusError(const absl::Status& status) {
  const int http = HttpStatusFor(status);
  if (http >= 500) Log(LogLevel::kWarning, "admin API: %s", status.ToString());
  return Error(http, ToStd(status.message()));
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
  }
}

// A JSON object from a request body, or nullopt when the body is not one.
std::optional<Json> ParseObject(const std::string& body) {
  Json value = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded() || !value.is_object()) return std::nullopt;
  return value;
}

// The string member `key` of `object`, or nullptr when absent or not a string.
std::string* StringField(Json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return nullptr;
  return &it->get_ref<std::string&>();
}

// "host:port" or "[v6]:port" → (host with brackets, port); nullopt when malformed.
std::optional<std::pair<std::string, int>> SplitAddress(const std::string& address) {
  size_t colon;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return std::nullopt;
    }
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos || address.find(':') != colon) return std::nullopt;
  }
  const std::string host = address.substr(0, colon);
  const std::string port_text = address.substr(colon + 1);
  int port = 0;
  if (host.empty() || port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != std::string::npos ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return std::nullopt;
  }
  return std::make_pair(host, port);
}

int LogCivetweb(const mg_connection*, const char* message) {
  Log(LogLevel::kWarning, "admin http: %s", message);
  return 1;  // handled: civetweb must not print to stderr itself
}

// Opens and at once closes a connection to 127.0.0.1:`port`. civetweb's master thread sleeps in
// poll() for up to 2 s (SOCKET_TIMEOUT_QUANTUM) before it notices mg_stop(); an incoming
// connection wakes it. The connection carries no request, so a worker that picks it up reads
// EOF and drops it at once.
void PokeLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  sockaddr_in peer{};
  peer.sin_family = AF_INET;
  peer.sin_port = htons(static_cast<uint16_t>(port));
  peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  (void)connect(fd, reinterpret_cast<const sockaddr*>(&peer), sizeof peer);
  close(fd);
}

void InitCivetweb() {
  static const unsigned features = mg_init_library(0);  // once, thread-safe static init
  (void)features;
}

// "Bearer TOKEN" against the expected token, in constant time (a timing difference would let a
// local process guess the token byte by byte).
bool BearerMatches(const char* header, const std::string& token) {
  if (header == nullptr) return false;
  std::string_view value(header);
  constexpr std::string_view kScheme = "Bearer ";
  if (value.size() < kScheme.size() ||
      !absl::EqualsIgnoreCase(ToAbsl(value.substr(0, kScheme.size())), ToAbsl(kScheme))) {
    return false;
  }
  value.remove_prefix(kScheme.size());
  return value.size() == token.size() &&
         CRYPTO_memcmp(value.data(), token.data(), token.size()) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& address,
                                                                metrics::Metrics& metrics,
                                                                queue::Store& store,
                                                                policy::AccountStore& accounts,
                                                                std::string token) {
  auto split = SplitAddress(address);
  if (!split) {
    return absl::InvalidArgumentError(absl::StrCat(
        "admin address '", address, "' is not host:port or [ipv6]:port"));
  }
  const bool ipv6 = split->first.front() == '[';
  if (ipv6 && mg_check_feature(MG_FEATURES_IPV6) == 0) {
    return absl::UnimplementedError(absl::StrCat(
        "admin address '", address,
        "': this civetweb build has no IPv6 support; listen on an IPv4 address"));
  }
  InitCivetweb();

  auto server = std::unique_ptr<AdminServer>(new AdminServer(split->first, metrics, store, accounts));
  server->token_ = std::move(token);
  const std::string ports = address;
  // A few threads: the admin API serves an operator and a Prometheus scraper, not the public.
  const char* options[] = {"listening_ports",    ports.c_str(),
                           "num_threads",        "4",
                           "request_timeout_ms", "10000",
                           "enable_keep_alive",  "no",
                           nullptr};
  mg_callbacks callbacks{};
  callbacks.log_message = LogCivetweb;
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = options;
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof error_text;
  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("admin HTTP server cannot listen on '", address,
                                               "': ", error_text));
  }
  mg_set_request_handler(server->context_, "/", &AdminServer::HandleRequest, server.get());

  mg_server_port bound[4] = {};
  const int count = mg_get_server_ports(server->context_, 4, bound);
  if (count < 1) return absl::InternalError("admin HTTP server reports no listening port");
  server->port_ = bound[0].port;
  Log(LogLevel::kInfo, "admin HTTP listening on %s", server->BoundAddress());
  return server;
}

AdminServer::AdminServer(std::string host, metrics::Metrics& metrics, queue::Store& store,
                         policy::AccountStore& accounts)
    : host_(std::move(host)), metrics_(metrics), store_(store), accounts_(accounts) {}

AdminServer::~AdminServer() {
  if (context_ == nullptr) return;
  // mg_stop() joins civetweb's threads. Its master thread only notices the stop after its
  // poll() times out (2 s) unless a connection wakes it: poke it while mg_stop() runs, when we
  // can reach it over IPv4 loopback (a loopback or wildcard listener).
  const bool reachable = host_ == "127.0.0.1" || host_ == "0.0.0.0" || host_ == "localhost";
  if (!reachable) {
    mg_stop(context_);
    return;
  }
  std::atomic<bool> stopped{false};
  std::thread stopper([this, &stopped] {
    mg_stop(context_);
    stopped.store(true);
  });
  while (!stopped.load()) {
    PokeLoopback(port_);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stopper.join();
}

std::string AdminServer::BoundAddress() const { return absl::StrCat(host_, ":", port_); }

int AdminServer::HandleRequest(mg_connection* connection, void* self_pointer) {
  auto& self = *static_cast<AdminServer*>(self_pointer);
  const mg_request_info* request = mg_get_request_info(connection);
  Response response;
  std::string body;
  try {
    const std::string method = request->request_method ? request->request_method : "";
    const char* uri = request->local_uri_raw ? request->local_uri_raw : request->local_uri;
    const std::string path = uri ? uri : "";
    const std::string query = request->query_string ? request->query_string : "";

    bool too_large = request->content_length > static_cast<long long>(kMaxRequestBody);
    if (!too_large && request->content_length != 0) {
      // content_length is -1 for a chunked body: read until the end or past the limit.
      char buffer[8192];
      for (;;) {
        const int n = mg_read(connection, buffer, sizeof buffer);
        if (n <= 0) break;
        body.append(buffer, static_cast<size_t>(n));
        if (body.size() > kMaxRequestBody) {
          too_large = true;
          break;
        }
      }
    }
    if (!self.token_.empty() && absl::StartsWith(path, "/api/") &&
        !BearerMatches(mg_get_header(connection, "Authorization"), self.token_)) {
      response = Error(401, "This admin API asks for its bearer token ([admin] token_file).");
    } else if (too_large) {
      response = Error(413, "Request body is larger than 64 KiB.");
    } else {
      response = self.Route(method, path, query, body);
    }
  } catch (const std::exception& e) {
    // Only nlohmann::json or the allocator can throw here; the exception stops at this boundary.
    Log(LogLevel::kError, "admin API: exception: %s", e.what());
    response = Error(500, "internal error");
  }
  policy::WipeSecret(body);  // it may have held a password

  mg_printf(connection,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            response.status, ReasonPhrase(response.status), response.content_type.c_str(),
            response.body.size());
  mg_write(connection, response.body.data(), response.body.size());
  return response.status;
}

AdminServer::Response AdminServer::Route(const std::string& method, const std::string& path,
                                         const std::string& query, std::string& body) {
  const auto method_not_allowed = [] { return Error(405, "Method not allowed on this path."); };
  if (path == "/metrics") {
    if (method != "GET") return method_not_allowed();
    return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_.Serialize()};
  }
  if (path == "/healthz") {
    if (method != "GET") return method_not_allowed();
    return {200, "text/plain; charset=utf-8", "ok\n"};
  }
  if (path == "/readyz") {
    if (method != "GET") return method_not_allowed();
    if (!ready_.load()) return {503, "text/plain; charset=utf-8", "not ready\n"};
    return {200, "text/plain; charset=utf-8", "ready\n"};
  }
  if (path == "/api/queue" || path == "/api/queue/") {
    if (method != "GET") return method_not_allowed();
    return QueueList(query);
  }
  if (path == "/api/queue/count") {
    if (method != "GET") return method_not_allowed();
    return QueueCount();
  }
  if (path == "/api/queue/suspended") {
    if (method != "GET") return method_not_allowed();
    delivery::QueueManager* manager = queue_manager_.load();
    if (manager == nullptr) return Error(503, "Delivery is not running.");
    return JsonResponse(200, Json{{"domains", manager->SuspendedDomains()}});
  }
  if (path == "/api/queue/flush" || path == "/api/queue/bounce" || path == "/api/queue/suspend" ||
      path == "/api/queue/resume") {
    if (method != "POST") return method_not_allowed();
    return QueueOperation(path.substr(std::string_view("/api/queue/").size()), "", body);
  }
  if (path == "/api/queue/summary") {
    if (method != "GET") return method_not_allowed();
    return QueueSummary();
  }
  if (absl::StartsWith(path, "/api/queue/")) {
    const std::string rest = path.substr(std::string_view("/api/queue/").size());
    const size_t slash = rest.find('/');
    const std::string id = rest.substr(0, slash);
    const std::string action = slash == std::string::npos ? "" : rest.substr(slash + 1);
    if (action.empty()) {
      if (method == "GET") return QueueMessage(id);
      if (method == "DELETE") return QueueOperation("delete", id, body);
      return method_not_allowed();
    }
    if (action == "retry" || action == "bounce") {
      if (method != "POST") return method_not_allowed();
      return QueueOperation(action, id, body);
    }
    return Error(404, "No such endpoint.");
  }
  if (path == "/api/accounts" || path == "/api/accounts/") {
    if (method == "GET") return AccountList();
    if (method == "POST") return AccountCreate(body);
    return method_not_allowed();
  }
  constexpr std::string_view kAccountsPrefix = "/api/accounts/";
  if (absl::StartsWith(path, ToAbsl(kAccountsPrefix))) {
    // Account names hold no '/', so the first segment is the name; a grant pattern may hold
    // one (it is an address), so it is everything after "/grants/".
    const std::string rest = path.substr(kAccountsPrefix.size());
    const size_t slash = rest.find('/');
    const std::string name = rest.substr(0, slash);
    const std::string tail = slash == std::string::npos ? "" : rest.substr(slash);
    if (name.empty()) return Error(404, "No such endpoint.");
    if (tail.empty()) {
      if (method == "GET") return AccountGet(name);
      if (method == "DELETE") return AccountDelete(name);
      return method_not_allowed();
    }
    if (tail == "/password") {
      if (method != "PUT") return method_not_allowed();
      return AccountPassword(name, body);
    }
    if (tail == "/suspended") {
      if (method != "PUT") return method_not_allowed();
      return AccountSuspended(name, body);
    }
    if (tail == "/grants") {
      if (method != "POST") return method_not_allowed();
      return GrantAdd(name, body);
    }
    if (tail == "/resume") {
      if (method != "POST") return method_not_allowed();
      return AccountResume(name);
    }
    if (tail == "/quota") {
      if (method != "GET") return method_not_allowed();
      return AccountQuota(name);
    }
    constexpr std::string_view kGrantsPrefix = "/grants/";
    if (absl::StartsWith(tail, ToAbsl(kGrantsPrefix)) && tail.size() > kGrantsPrefix.size()) {
      if (method != "DELETE") return method_not_allowed();
      return GrantRemove(name, tail.substr(kGrantsPrefix.size()));
    }
  }
  if (path == "/api/suppression" || path == "/api/suppression/") {
    if (method != "GET" && method != "POST") return method_not_allowed();
    return Suppression(method, "", body);
  }
  constexpr std::string_view kSuppressionPrefix = "/api/suppression/";
  if (absl::StartsWith(path, ToAbsl(kSuppressionPrefix))) {
    if (method != "DELETE") return method_not_allowed();
    // The path is raw (local_uri_raw): the address arrives percent-encoded ('@' as %40).
    const std::string raw = path.substr(kSuppressionPrefix.size());
    std::string address(raw.size() + 1, '\0');
    const int length = mg_url_decode(raw.data(), static_cast<int>(raw.size()), address.data(),
                                     static_cast<int>(address.size()), /*is_form_url_encoded=*/0);
    if (length < 0) return Error(400, "Malformed address in the path.");
    address.resize(static_cast<size_t>(length));
    return Suppression(method, address, body);
  }
  if (path == "/api/sites" || path == "/api/sites/") {
    if (method != "GET") return method_not_allowed();
    return SiteList();
  }
  constexpr std::string_view kSitesPrefix = "/api/sites/";
  if (absl::StartsWith(path, ToAbsl(kSitesPrefix))) {
    // A site key may hold '/' ("google/example.com", percent-encoded as %2F): the action is
    // the last segment, the site everything before it.
    const std::string rest = path.substr(kSitesPrefix.size());
    const size_t slash = rest.rfind('/');
    if (slash == std::string::npos || slash == 0) return Error(404, "No such endpoint.");
    const std::string action = rest.substr(slash + 1);
    if (action != "suspend" && action != "resume") return Error(404, "No such endpoint.");
    if (method != "POST") return method_not_allowed();
    const std::string raw = rest.substr(0, slash);
    std::string site(raw.size() + 1, '\0');
    const int length = mg_url_decode(raw.data(), static_cast<int>(raw.size()), site.data(),
                                     static_cast<int>(site.size()), /*is_form_url_encoded=*/0);
    if (length <= 0) return Error(400, "Malformed site in the path.");
    site.resize(static_cast<size_t>(length));
    return SiteOperation(site, action, body);
  }
  if (path == "/api/reputation") {
    if (method != "GET") return method_not_allowed();
    return ReputationView();
  }
  return Error(404, "No such endpoint.");
}

AdminServer::Response AdminServer::QueueList(const std::string& query) {
  size_t limit = kDefaultQueueLimit;
  char value[64];
  if (mg_get_var(query.data(), query.size(), "limit", value, sizeof value) >= 0) {
    if (!absl::SimpleAtoi(value, &limit) || limit < 1 || limit > kMaxQueueLimit) {
      return Error(400, "limit must be a number from 1 to 1000.");
    }
  }
  MessageId after;
  if (mg_get_var(query.data(), query.size(), "after", value, sizeof value) >= 0) {
    auto parsed = MessageId::Parse(value);
    if (!parsed) return Error(400, "after must be a message id.");
    after = *parsed;
  }
  auto envelopes = queue::ListEnvelopes(store_, limit, after);
  if (!envelopes.ok()) return StatusError(envelopes.status());
  Json messages = Json::array();
  for (const queue::Envelope& envelope : *envelopes) messages.push_back(EnvelopeSummaryJson(envelope));
  return JsonResponse(200, Json{{"messages", std::move(messages)}});
}

AdminServer::Response AdminServer::QueueCount() {
  auto count = queue::CountMessages(store_);
  if (!count.ok()) return StatusError(count.status());
  return JsonResponse(200, Json{{"count", *count}});
}

AdminServer::Response AdminServer::QueueMessage(const std::string& id_text) {
  auto id = MessageId::Parse(id_text);
  if (!id) return Error(400, "Not a message id (26 base32 characters).");
  auto envelope = queue::ReadEnvelope(store_, *id);
  if (!envelope.ok()) return StatusError(envelope.status());
  if (!envelope->has_value()) return Error(404, "No message with this id in the queue.");
  auto body = queue::ReadBody(store_, *id);
  if (!body.ok()) return StatusError(body.status());

  return JsonResponse(200, MessageJson(**envelope, body->has_value() ? (*body)->size() : 0));
}

AdminServer::Response AdminServer::QueueOperation(const std::string& operation,
                                                  const std::string& id_text,
                                                  const std::string& body) {
  delivery::QueueManager* manager = queue_manager_.load();
  if (manager == nullptr) return Error(503, "Delivery is not running: queue operations need it.");
  absl::StatusOr<delivery::OperationResult> result;
  std::optional<std::string> domain;
  if (!id_text.empty()) {
    auto id = MessageId::Parse(id_text);
    if (!id) return Error(400, "Not a message id (26 base32 characters).");
    if (operation == "retry") result = manager->Retry(*id);
    if (operation == "bounce") result = manager->Bounce(*id);
    if (operation == "delete") result = manager->Delete(*id);
  } else {
    if (!body.empty()) {
      std::optional<Json> request = ParseObject(body);
      if (!request) return Error(400, R"(Expected a JSON object {"domain": ...}.)");
      if (request->contains("domain")) {
        std::string* text = StringField(*request, "domain");
        if (text == nullptr || !mail::IsValidDomain(*text, /*allow_utf8=*/true)) {
          return Error(400, R"("domain" must be a domain name.)");
        }
        domain = *text;
      }
    }
    if (operation == "flush") {
      result = manager->Flush(domain);
    } else if (!domain.has_value()) {
      return Error(400, R"(This operation needs {"domain": ...}.)");
    } else if (operation == "bounce") {
      result = manager->BounceDomain(*domain);
    } else if (operation == "suspend") {
      result = manager->Suspend(*domain);
      if (result.ok()) {
        // The messages the suspension now holds, counted here rather than on the queue
        // manager's thread, which delivers meanwhile.
        absl::StatusOr<uint64_t> held = CountQueuedFor(*domain);
        if (!held.ok()) return StatusError(held.status());
        result->messages = *held;
      }
    } else {
      result = manager->Resume(*domain);
    }
  }
  if (!result.ok()) return StatusError(result.status());
  // The server log keeps what the operator did to the queue (the events log keeps what
  // happened to each recipient).
  // The id and the domain were checked above: they print as they are.
  std::string target = id_text;
  if (target.empty()) target = domain.has_value() ? absl::StrCat("domain=", *domain) : "(all)";
  Log(LogLevel::kInfo, "admin: queue %s %s: %d message(s), %d recipient(s)%s", operation, target,
      result->messages, result->recipients,
      result->in_delivery > 0 ? absl::StrCat(", ", result->in_delivery, " out for delivery") : "");
  Json answer{{"messages", result->messages},
              {"recipients", result->recipients},
              {"in_delivery", result->in_delivery}};
  if (result->was_held.has_value()) answer["was_held"] = *result->was_held;
  return JsonResponse(200, answer);
}

absl::StatusOr<uint64_t> AdminServer::CountQueuedFor(std::string_view domain) const {
  const std::string wanted = mail::LowerAscii(domain);
  uint64_t count = 0;
  MessageId after;
  constexpr size_t kBatch = 1000;
  for (;;) {
    FACTEUR_ASSIGN_OR_RETURN(std::vector<queue::Envelope> batch,
                             queue::ListEnvelopes(store_, kBatch, after));
    for (const queue::Envelope& envelope : batch) {
      after = envelope.id;
      const bool holds = std::any_of(
          envelope.recipients.begin(), envelope.recipients.end(),
          [&wanted](const queue::RecipientRecord& r) {
            return r.state == queue::RecipientState::kPending &&
                   mail::LowerDomainOf(r.address) == wanted;
          });
      if (holds) ++count;
    }
    if (batch.size() < kBatch) return count;
  }
}

AdminServer::Response AdminServer::AccountList() {
  auto accounts = accounts_.List();
  if (!accounts.ok()) return StatusError(accounts.status());
  Json list = Json::array();
  for (const policy::Account& account : *accounts) {
    const std::optional<throttle::AccountQuotaState> quota = QuotaStateOf(account.name);
    list.push_back(AccountJson(account, quota.has_value() ? &*quota : nullptr));
  }
  return JsonResponse(200, Json{{"accounts", std::move(list)}});
}

std::optional<throttle::AccountQuotaState> AdminServer::QuotaStateOf(const std::string& name) {
  policy::AccountQuotas* quotas = quotas_.load();
  if (quotas == nullptr) return std::nullopt;
  return quotas->table().Get(name, quotas->clock().Now());
}

AdminServer::Response AdminServer::AccountGet(const std::string& name) {
  auto account = accounts_.Get(name);
  if (!account.ok()) return StatusError(account.status());
  const std::optional<throttle::AccountQuotaState> quota = QuotaStateOf(name);
  return JsonResponse(200, AccountJson(*account, quota.has_value() ? &*quota : nullptr));
}

AdminServer::Response AdminServer::AccountCreate(std::string& body) {
  std::optional<Json> request = ParseObject(body);
  policy::WipeSecret(body);
  if (!request) return Error(400, R"(Expected a JSON object {"name": ..., "password": ...}.)");
  std::string* name = StringField(*request, "name");
  std::string* password = StringField(*request, "password");
  Response response;
  if (name == nullptr || password == nullptr) {
    response = Error(400, R"(Both "name" and "password" must be strings.)");
  } else if (absl::Status status = accounts_.Create(*name, *password); !status.ok()) {
    response = StatusError(status);
  } else {
    auto account = accounts_.Get(*name);
    response = account.ok() ? JsonResponse(201, AccountJson(*account)) : StatusError(account.status());
  }
  if (password != nullptr) policy::WipeSecret(*password);
  return response;
}

AdminServer::Response AdminServer::AccountDelete(const std::string& name) {
  if (absl::Status status = accounts_.Delete(name); !status.ok()) return StatusError(status);
  if (policy::AccountQuotas* quotas = quotas_.load()) {
    // A new account of the same name must not inherit the old one's history or suspension.
    if (absl::Status status = quotas->Forget(name); !status.ok()) return StatusError(status);
  }
  return JsonResponse(200, Json{{"deleted", name}});
}

AdminServer::Response AdminServer::AccountPassword(const std::string& name, std::string& body) {
  std::optional<Json> request = ParseObject(body);
  policy::WipeSecret(body);
  if (!request) return Error(400, R"(Expected a JSON object {"password": ...}.)");
  std::string* password = StringField(*request, "password");
  if (password == nullptr) return Error(400, R"("password" must be a string.)");
  const absl::Status status = accounts_.SetPassword(name, *password);
  policy::WipeSecret(*password);
  if (!status.ok()) return StatusError(status);
  return JsonResponse(200, Json{{"name", name}, {"password_changed", true}});
}

AdminServer::Response AdminServer::AccountSuspended(const std::string& name,
                                                    const std::string& body) {
  std::optional<Json> request = ParseObject(body);
  if (!request) return Error(400, R"(Expected a JSON object {"suspended": true|false}.)");
  auto it = request->find("suspended");
  if (it == request->end() || !it->is_boolean()) {
    return Error(400, R"("suspended" must be true or false.)");
  }
  if (absl::Status status = accounts_.SetSuspended(name, it->get<bool>()); !status.ok()) {
    return StatusError(status);
  }
  return AccountGet(name);
}

AdminServer::Response AdminServer::GrantAdd(const std::string& name, const std::string& body) {
  std::optional<Json> request = ParseObject(body);
  if (!request) return Error(400, R"(Expected a JSON object {"pattern": ...}.)");
  std::string* pattern = StringField(*request, "pattern");
  if (pattern == nullptr) return Error(400, R"("pattern" must be a string.)");
  if (absl::Status status = accounts_.Grant(name, *pattern); !status.ok()) {
    return StatusError(status);
  }
  auto account = accounts_.Get(name);
  if (!account.ok()) return StatusError(account.status());
  return JsonResponse(201, AccountJson(*account));
}

AdminServer::Response AdminServer::GrantRemove(const std::string& name,
                                               const std::string& pattern) {
  if (absl::Status status = accounts_.Revoke(name, pattern); !status.ok()) {
    return StatusError(status);
  }
  auto account = accounts_.Get(name);
  if (!account.ok()) return StatusError(account.status());
  return JsonResponse(200, AccountJson(*account));
}

}  // namespace facteur::admin

namespace facteur::admin {

AdminServer::Response AdminServer::AccountResume(const std::string& name) {
  policy::AccountQuotas* quotas = quotas_.load();
  if (quotas == nullptr) return Error(503, "Account quotas are not running.");
  auto account = accounts_.Get(name);
  if (!account.ok()) return StatusError(account.status());
  auto resumed = quotas->Resume(name);
  if (!resumed.ok()) return StatusError(resumed.status());
  bool changed = *resumed;
  // "Resume" lets the account send again, whichever suspension held it: the volume one above,
  // or one set through PUT .../suspended.
  if (account->suspended) {
    if (absl::Status status = accounts_.SetSuspended(name, false); !status.ok()) {
      return StatusError(status);
    }
    changed = true;
  }
  return JsonResponse(200, Json{{"name", name}, {"resumed", changed}});
}

AdminServer::Response AdminServer::AccountQuota(const std::string& name) {
  policy::AccountQuotas* quotas = quotas_.load();
  if (quotas == nullptr) return Error(503, "Account quotas are not running.");
  auto account = accounts_.Get(name);
  if (!account.ok()) return StatusError(account.status());
  const throttle::AccountLimits limits = quotas->table().LimitsOf(name);
  const std::optional<throttle::AccountQuotaState> state =
      quotas->table().Get(name, quotas->clock().Now());
  const throttle::AccountQuotaState none;
  const throttle::AccountQuotaState& s = state.has_value() ? *state : none;
  Json answer{{"name", name},
              {"messages_per_hour", limits.messages_per_hour},
              {"messages_per_day", limits.messages_per_day},
              {"recipients_per_message", limits.recipients_per_message},
              {"anomaly_detection", limits.detect_anomalies},
              {"hour_count", s.hour_count},
              {"day_count", s.day_count},
              {"usual_per_hour", throttle::AccountQuotaTable::UsualRate(s)},
              {"suspended", s.suspended}};
  if (s.suspended) {
    answer["suspended_at"] = Rfc3339(s.suspended_at);
    answer["suspension_detail"] = s.suspension_detail;
  }
  return JsonResponse(200, answer);
}

namespace {

Json SuppressionJson(const queue::SuppressionEntry& entry) {
  return Json{{"address", entry.address},
              {"reason", entry.reason},
              {"added_at", Rfc3339(entry.added_at)},
              {"reply", entry.reply}};
}

}  // namespace

AdminServer::Response AdminServer::Suppression(const std::string& method,
                                               const std::string& address,
                                               const std::string& body) {
  queue::SuppressionList* list = suppression_.load();
  if (list == nullptr) return Error(503, "The suppression list is not running.");
  if (method == "GET") {
    auto entries = list->List();
    if (!entries.ok()) return StatusError(entries.status());
    Json items = Json::array();
    for (const queue::SuppressionEntry& entry : *entries) items.push_back(SuppressionJson(entry));
    return JsonResponse(200, Json{{"addresses", std::move(items)}});
  }
  if (method == "DELETE") {
    if (absl::Status status = list->Remove(address); !status.ok()) return StatusError(status);
    auto normalized = queue::NormalizeSuppressedAddress(address);
    return JsonResponse(200, Json{{"removed", normalized.ok() ? *normalized : address}});
  }
  std::optional<Json> request = ParseObject(body);
  if (!request) return Error(400, R"(Expected a JSON object {"address": ..., "reason": ...}.)");
  std::string* text = StringField(*request, "address");
  if (text == nullptr) return Error(400, R"("address" must be a string.)");
  std::string reason(queue::kSuppressedManual);
  if (request->contains("reason")) {
    std::string* given = StringField(*request, "reason");
    if (given == nullptr || given->size() > 64) {
      return Error(400, R"("reason" must be a string of at most 64 characters.)");
    }
    if (!given->empty()) reason = *given;
  }
  if (absl::Status status = list->Add(*text, reason, "", absl::Now()); !status.ok()) {
    return StatusError(status);
  }
  auto normalized = queue::NormalizeSuppressedAddress(*text);
  return JsonResponse(201, Json{{"address", normalized.ok() ? *normalized : *text},
                                {"reason", reason}});
}

// ---- Sites, summary, reputation (the delivery side through DeliveryAccess) ----

namespace {

// How long a request waits for every delivery shard to answer.
constexpr absl::Duration kShardTimeout = absl::Seconds(5);
constexpr int kDefaultSuspendMinutes = 60;
// Longest manual suspension: a week (resume lifts it sooner).
constexpr int64_t kMaxSuspendMinutes = 7 * 24 * 60;

Json TimeOrNull(absl::Time t) {
  if (t == absl::InfinitePast() || t == absl::InfiniteFuture()) return Json(nullptr);
  return Json(Rfc3339(t));
}

}  // namespace

std::map<std::string, uint64_t> AdminServer::HeldBackNow() const {
  delivery::QueueManager* manager = queue_manager_.load();
  return manager == nullptr ? std::map<std::string, uint64_t>() : manager->HeldBackBySite();
}

uint64_t AdminServer::NotTriedSinceStart(uint64_t scheduled) const {
  delivery::QueueManager* manager = queue_manager_.load();
  // Each message once, though it may be owed at several sites.
  const uint64_t known = manager == nullptr ? 0 : manager->ScheduledWithKnownSite();
  return scheduled > known ? scheduled - known : 0;
}

AdminServer::Response AdminServer::SiteList() {
  const DeliveryAccess* access = delivery_.load();
  if (access == nullptr || access->sites == nullptr) return Error(503, "Delivery is not running.");
  absl::StatusOr<std::vector<delivery::SiteSnapshot>> sites = access->sites->Sites(kShardTimeout);
  if (!sites.ok()) return StatusError(sites.status());
  const std::map<std::string, uint64_t> held_now = HeldBackNow();
  Json items = Json::array();
  uint64_t ready_jobs = 0, ready_recipients = 0, in_flight = 0, held_back = 0, connections = 0,
           suspended = 0, pairs = 0;
  for (const delivery::SiteSnapshot& site : *sites) {
    Json sources = Json::array();
    uint64_t open = 0;
    for (const delivery::PairSnapshot& p : site.sources) {
      open += p.open_connections;
      ++pairs;
      if (p.state == throttle::PairState::kSuspended) ++suspended;
      sources.push_back(Json{{"source", p.source},
                             {"state", std::string(throttle::PairStateName(p.state))},
                             {"suspended_until", TimeOrNull(p.suspended_until)},
                             {"suspended_by", p.suspended_by.empty() ? Json(nullptr)
                                                                     : Json(p.suspended_by)},
                             {"message_rate", p.message_rate},
                             {"max_connections", p.max_connections},
                             {"open_connections", p.open_connections},
                             {"in_flight", p.in_flight},
                             {"pinned_waiting", p.pinned_waiting},
                             {"health", p.health}});
    }
    ready_jobs += site.ready_jobs;
    ready_recipients += site.ready_recipients;
    in_flight += site.in_flight_jobs;
    const auto held = held_now.find(site.key);
    const uint64_t held_back_jobs = held == held_now.end() ? 0 : held->second;
    held_back += held_back_jobs;
    connections += open;
    items.push_back(Json{{"key", site.key},
                         {"label", site.label},
                         {"name", site.name},
                         {"pool", site.pool},
                         {"suspended_until", TimeOrNull(site.suspended_until)},
                         {"ready_jobs", site.ready_jobs},
                         {"ready_recipients", site.ready_recipients},
                         {"in_flight_jobs", site.in_flight_jobs},
                         {"held_back_jobs", held_back_jobs},
                         {"held_back_since_start", site.held_back_jobs},
                         {"open_connections", open},
                         {"sources", std::move(sources)}});
  }
  return JsonResponse(200, Json{{"sites", std::move(items)},
                                {"totals", Json{{"sites", sites->size()},
                                                {"pairs", pairs},
                                                {"suspended_pairs", suspended},
                                                {"ready_jobs", ready_jobs},
                                                {"ready_recipients", ready_recipients},
                                                {"in_flight_jobs", in_flight},
                                                {"held_back_jobs", held_back},
                                                {"open_connections", connections}}}});
}

AdminServer::Response AdminServer::QueueSummary() {
  const DeliveryAccess* access = delivery_.load();
  if (access == nullptr || access->spool == nullptr || access->clock == nullptr) {
    return Error(503, "Delivery is not running.");
  }
  const absl::Time now = access->clock->Now();
  const queue::QueueCounts counts = access->spool->Counts(now);
  // By site key: the shards' ready and in-flight jobs, the manager's scheduled messages.
  std::map<std::string, Json> by_site;
  auto entry = [&by_site, access](const std::string& key) -> Json& {
    Json& site = by_site[key];
    if (site.is_null()) {
      site = Json{{"site", key}, {"label", delivery::LabelOf(access->site_labels, key)}, {"ready_jobs", 0},
                  {"ready_recipients", 0}, {"in_flight_jobs", 0}, {"held_back_jobs", 0},
                  {"held_back_since_start", 0}, {"scheduled", 0}};
    }
    return site;
  };
  if (access->sites != nullptr) {
    absl::StatusOr<std::vector<delivery::SiteSnapshot>> sites =
        access->sites->Sites(kShardTimeout);
    if (!sites.ok()) return StatusError(sites.status());
    for (const delivery::SiteSnapshot& site : *sites) {
      Json& e = entry(site.key);
      e["ready_jobs"] = site.ready_jobs;
      e["ready_recipients"] = site.ready_recipients;
      e["in_flight_jobs"] = site.in_flight_jobs;
      e["held_back_since_start"] = site.held_back_jobs;
    }
  }
  for (const auto& [key, count] : HeldBackNow()) entry(key)["held_back_jobs"] = count;
  uint64_t scheduled_known = 0;
  if (delivery::QueueManager* manager = queue_manager_.load()) {
    for (const auto& [key, count] : manager->ScheduledBySite()) {
      entry(key)["scheduled"] = count;
      scheduled_known += count;
    }
  }
  Json sites = Json::array();
  uint64_t ready_jobs = 0, ready_recipients = 0, in_flight = 0;
  for (auto& [key, site] : by_site) {
    ready_jobs += site["ready_jobs"].get<uint64_t>();
    ready_recipients += site["ready_recipients"].get<uint64_t>();
    in_flight += site["in_flight_jobs"].get<uint64_t>();
    sites.push_back(std::move(site));
  }
  const absl::Time next_due = access->spool->NextDue();
  return JsonResponse(
      200, Json{{"messages", access->spool->size()},
                {"due_now", counts.ready},
                {"scheduled", counts.scheduled},
                {"in_flight", counts.leased},
                {"next_due", TimeOrNull(next_due)},
                {"sites", std::move(sites)},
                {"totals", Json{{"ready_jobs", ready_jobs},
                                {"ready_recipients", ready_recipients},
                                {"in_flight_jobs", in_flight},
                                {"scheduled_by_site", scheduled_known},
                                {"unknown_site", NotTriedSinceStart(counts.scheduled)}}}});
}

AdminServer::Response AdminServer::SiteOperation(const std::string& site, const std::string& action,
                                                 std::string& body) {
  const DeliveryAccess* access = delivery_.load();
  if (access == nullptr || access->sites == nullptr || access->clock == nullptr) {
    return Error(503, "Delivery is not running.");
  }
  delivery::SiteSuspension request;
  request.site = site;
  if (!body.empty()) {
    std::optional<Json> object = ParseObject(body);
    if (!object.has_value()) return Error(400, "The body must be a JSON object.");
    if (auto it = object->find("source"); it != object->end() && !it->is_null()) {
      if (!it->is_string()) return Error(400, "source must be a string.");
      request.source = it->get<std::string>();
    }
    if (auto it = object->find("minutes"); it != object->end() && !it->is_null()) {
      if (action != "suspend") return Error(400, "minutes is for suspend only.");
      if (!it->is_number_integer() || it->get<int64_t>() < 1 ||
          it->get<int64_t>() > kMaxSuspendMinutes) {
        return Error(400, "minutes must be a whole number from 1 to 10080 (a week).");
      }
      request.until = access->clock->Now() + absl::Minutes(it->get<int64_t>());
    }
  }
  if (action == "suspend" && request.until == absl::InfinitePast()) {
    request.until = access->clock->Now() + absl::Minutes(kDefaultSuspendMinutes);
  }
  absl::StatusOr<delivery::SiteSuspensionResult> result =
      access->sites->Suspend(request, kShardTimeout);
  if (!result.ok()) return StatusError(result.status());
  // Said done only once on disk: a restart must not forget it (the writer syncs an operator's).
  if (access->pauses != nullptr && !access->pauses->WaitWritten(kShardTimeout)) {
    return Error(503, absl::StrCat("The ", action, " holds now, but it could not be written to "
                                   "the spool (see the server log): a restart would undo it."));
  }
  Json answer{{"site", result->site}, {"sites", result->sites}, {"pairs", result->pairs}};
  const std::string sources =
      request.source.empty() ? "every source"
                             : absl::StrCat("source ", absl::CHexEscape(request.source));
  if (action == "suspend") {
    answer["until"] = Rfc3339(request.until);
    Log(LogLevel::kInfo, "admin: site suspend %s (%s) until %s: %d pair(s) of %s", result->site,
        sources, Rfc3339(request.until), result->pairs, absl::StrJoin(result->sites, ", "));
    return JsonResponse(200, answer);
  }
  // What the paused site handed back waits in the spool for the end of the pause: due now.
  // Mail not tried since the start (a restart) has no known site: its time stays, and the
  // operator is told how many such messages wait (`queue flush DOMAIN` sends them).
  uint64_t messages = 0, unattempted = 0;
  if (delivery::QueueManager* manager = queue_manager_.load()) {
    absl::StatusOr<delivery::OperationResult> flushed = manager->FlushSite(result->site);
    if (!flushed.ok()) return StatusError(flushed.status());
    messages = flushed->messages;
    if (access->spool != nullptr) {
      unattempted = NotTriedSinceStart(access->spool->Counts(access->clock->Now()).scheduled);
    }
  }
  answer["messages"] = messages;
  answer["unattempted"] = unattempted;
  Log(LogLevel::kInfo, "admin: site resume %s (%s): %d pair(s) of %s, %d message(s) due now",
      result->site, sources, result->pairs, absl::StrJoin(result->sites, ", "), messages);
  return JsonResponse(200, answer);
}

AdminServer::Response AdminServer::ReputationView() {
  const DeliveryAccess* access = delivery_.load();
  if (access == nullptr || !access->reputation || access->clock == nullptr) {
    return Error(503, "Delivery is not running.");
  }
  return JsonResponse(200, access->reputation(access->clock->Now()));
}

}  // namespace facteur::admin
