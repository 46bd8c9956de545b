// File: engine/main/admin_client.h
// A small blocking HTTP/1.1 client for the CLI to reach a running server's admin API
// (engine/admin). Loopback and short-lived: one request per connection.
// Thread contract: stateless; blocking (CLI processes only, never a loop thread).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace facteur::cli {

struct HttpResponse {
  int status = 0;
  std::string body;
};

// `address` is "HOST:PORT" or "[IPv6]:PORT" with a numeric host. The body is sent as JSON.
// Fails (Unavailable) only when no HTTP answer came back; any HTTP status is a response.
absl::StatusOr<HttpResponse> HttpRequest(const std::string& address, std::string_view method,
                                         std::string_view path, std::string_view json_body = "");

}  // namespace facteur::cli
