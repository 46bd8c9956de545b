#include "engine/main/admin_client.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

namespace facteur::cli {
namespace {

// RFC 9112 §7.1: chunk-size [ext] CRLF data CRLF ... 0 CRLF CRLF
absl::StatusOr<std::string> Dechunk(std::string_view body) {
  std::string out;
  while (true) {
    size_t line_end = body.find("\r\n");
    if (line_end == std::string_view::npos) return absl::DataLossError("truncated chunk");
    std::string_view size_text = body.substr(0, line_end);
    if (size_t semi = size_text.find(';'); semi != std::string_view::npos) {
      size_text = size_text.substr(0, semi);
    }
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(ToAbsl(size_text), &size)) {
      return absl::DataLossError("bad chunk size");
    }
    body.remove_prefix(line_end + 2);
    if (size == 0) return out;
    if (body.size() < size + 2) return absl::DataLossError("truncated chunk");
    out.append(body.substr(0, size));
    body.remove_prefix(size + 2);
  }
}

}  // namespace

absl::StatusOr<HttpResponse> HttpRequest(const std::string& address, std::string_view method,
                                         std::string_view path, std::string_view json_body,
                                         std::string_view bearer_token) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("bad admin address ", address));
  }
  std::string host = address.substr(0, colon);
  std::string port = address.substr(colon + 1);
  if (absl::StartsWith(host, "[") && absl::EndsWith(host, "]")) {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad admin address ", address, ": ", ::gai_strerror(rc)));
  }
  absl::Cleanup free_found = [found] { ::freeaddrinfo(found); };
  int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus("socket", errno);
  absl::Cleanup close_fd = [fd] { ::close(fd); };
  timeval timeout{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  if (::connect(fd, found->ai_addr, found->ai_addrlen) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the admin API at ", address, ": ", std::strerror(errno)));
  }
  std::string request = absl::StrCat(
      ToAbsl(method), " ", ToAbsl(path), " HTTP/1.1\r\nHost: ", address,
      "\r\nConnection: close\r\nAccept: application/json\r\n",
      bearer_token.empty() ? "" : absl::StrCat("Authorization: Bearer ", ToAbsl(bearer_token), "\r\n"),
      json_body.empty() ? "" : "Content-Type: application/json\r\n",
      "Content-Length: ", json_body.size(), "\r\n\r\n", ToAbsl(json_body));
  for (std::string_view rest = request; !rest.empty();) {
    ssize_t n = ::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("admin API: send: ", std::strerror(errno)));
    }
    rest.remove_prefix(static_cast<size_t>(n));
  }
  std::string raw;
  char buffer[16384];
  for (;;) {
    ssize_t n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::UnavailableError(absl::StrCat("admin API: recv: ", std::strerror(errno)));
    }
    if (n == 0) break;
    raw.append(buffer, static_cast<size_t>(n));
  }
  size_t header_end = raw.find("\r\n\r\n");
  int status = 0;
  if (header_end == std::string::npos || raw.size() < 12 || !absl::StartsWith(raw, "HTTP/1.") ||
      !absl::SimpleAtoi(absl::string_view(raw).substr(9, 3), &status)) {
    return absl::UnavailableError(absl::StrCat("admin API at ", address, ": malformed answer"));
  }
  HttpResponse response;
  response.status = status;
  std::string headers = absl::AsciiStrToLower(raw.substr(0, header_end));
  response.body = raw.substr(header_end + 4);
  if (absl::StrContains(headers, "transfer-encoding: chunked")) {
    FACTEUR_ASSIGN_OR_RETURN(response.body, Dechunk(response.body));
  }
  return response;
}

absl::StatusOr<nlohmann::json> AdminCall(const AdminEndpoint& admin, std::string_view method,
                                         const std::string& path, const nlohmann::json& body) {
  std::string text =
      body.is_null() ? "" : body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  absl::StatusOr<HttpResponse> response =
      HttpRequest(admin.address, method, path, text, admin.token);
  std::fill(text.begin(), text.end(), '\0');
  if (!response.ok()) return response.status();
  nlohmann::json json = nlohmann::json::parse(response->body, nullptr, false);
  if (response->status >= 200 && response->status < 300) {
    return json.is_discarded() ? nlohmann::json() : json;
  }
  std::string message = !json.is_discarded() && json.is_object() && json.contains("error") &&
                                json["error"].is_string()
                            ? json["error"].get<std::string>()
                            : absl::StrCat("admin API answered HTTP ", response->status);
  switch (response->status) {
    case 400: return absl::InvalidArgumentError(message);
    case 401: return absl::UnauthenticatedError(message);
    case 404: return absl::NotFoundError(message);
    case 409: return absl::AlreadyExistsError(message);
    case 503: return absl::UnavailableError(message);
    default: return absl::InternalError(message);
  }
}

std::string PathSegment(std::string_view text) {
  std::string out;
  for (unsigned char c : text) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

}  // namespace facteur::cli
