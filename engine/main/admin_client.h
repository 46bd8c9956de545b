// File: engine/main/admin_client.h
// A small blocking HTTP/1.1 client for the CLI to reach a running server's admin API
// (engine/admin). Loopback and short-lived: one request per connection.
// Thread contract: stateless; blocking (CLI processes only, never a loop thread).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace facteur::cli {

struct HttpResponse {
  int status = 0;
  std::string body;
};

// Where the admin API of a running server answers, and its bearer token ("" when none).
struct AdminEndpoint {
  std::string address;
  std::string token;
};

// `address` is "HOST:PORT" or "[IPv6]:PORT" with a numeric host. The body is sent as JSON, with
// "Authorization: Bearer TOKEN" when `bearer_token` is not empty. Fails (Unavailable) only when
// no HTTP answer came back; any HTTP status is a response.
absl::StatusOr<HttpResponse> HttpRequest(const std::string& address, std::string_view method,
                                         std::string_view path, std::string_view json_body = "",
                                         std::string_view bearer_token = "");

// A JSON call of the admin API: `body` is sent unless null; a 2xx answer's JSON comes back
// (null when it is not JSON); other statuses become the Status of their {"error": ...}:
// 400 InvalidArgument, 401 Unauthenticated, 404 NotFound, 409 AlreadyExists, 503 Unavailable,
// others Internal. The request text is wiped after sending (it may hold a password).
absl::StatusOr<nlohmann::json> AdminCall(const AdminEndpoint& admin, std::string_view method,
                                         const std::string& path, const nlohmann::json& body);

// `text` as one path segment of an admin URL: everything but RFC 3986 §2.3's unreserved
// characters percent-encoded ("bob@example.org" → "bob%40example.org").
std::string PathSegment(std::string_view text);

}  // namespace facteur::cli
