#include "engine/io/socket_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <charconv>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

namespace facteur::io {
namespace {

absl::StatusOr<uint16_t> ParsePort(std::string_view text, std::string_view whole) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("listen address \"", ToAbsl(whole),
                                                   "\": bad port"));
  }
  return static_cast<uint16_t>(value);
}

}  // namespace

absl::StatusOr<SocketAddress> ParseListenAddress(std::string_view text) {
  SocketAddress out;
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen address \"", ToAbsl(text), "\": ", ToAbsl(why)));
  };
  if (text.substr(0, 5) == "unix:") {
    std::string_view path = text.substr(5);
    auto* un = reinterpret_cast<sockaddr_un*>(&out.storage);
    if (path.empty() || path[0] != '/') return bad("unix socket path must be absolute");
    if (path.size() >= sizeof(un->sun_path)) return bad("unix socket path too long");
    un->sun_family = AF_UNIX;
    std::memcpy(un->sun_path, path.data(), path.size());
    out.length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return out;
  }
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("expected host:port");
  FACTEUR_ASSIGN_OR_RETURN(uint16_t port, ParsePort(text.substr(colon + 1), text));
  std::string host(text.substr(0, colon));
  if (!host.empty() && host.front() == '[') {
    if (host.back() != ']') return bad("unbalanced brackets");
    host = host.substr(1, host.size() - 2);
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
    if (inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) != 1) return bad("bad IPv6 address");
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    out.length = sizeof(sockaddr_in6);
    return out;
  }
  auto* in4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) != 1) {
    return bad("bad IPv4 address (IPv6 needs brackets)");
  }
  in4->sin_family = AF_INET;
  in4->sin_port = htons(port);
  out.length = sizeof(sockaddr_in);
  return out;
}

absl::StatusOr<SocketAddress> MakeSocketAddress(std::string_view ip_literal, uint16_t port) {
  std::string host(ip_literal);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  SocketAddress out;
  auto* in4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  if (inet_pton(AF_INET, host.c_str(), &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons(port);
    out.length = sizeof(sockaddr_in);
    return out;
  }
  out = SocketAddress();
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    out.length = sizeof(sockaddr_in6);
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", ToAbsl(ip_literal), "\" is not an IPv4 or IPv6 address"));
}

std::string FormatAddress(const SocketAddress& address) {
  char buffer[INET6_ADDRSTRLEN] = {};
  switch (address.family()) {
    case AF_INET: {
      const auto* in4 = reinterpret_cast<const sockaddr_in*>(&address.storage);
      inet_ntop(AF_INET, &in4->sin_addr, buffer, sizeof(buffer));
      return absl::StrCat(buffer, ":", ntohs(in4->sin_port));
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
      inet_ntop(AF_INET6, &in6->sin6_addr, buffer, sizeof(buffer));
      return absl::StrCat("[", buffer, "]:", ntohs(in6->sin6_port));
    }
    case AF_UNIX: {
      const auto* un = reinterpret_cast<const sockaddr_un*>(&address.storage);
      size_t max = address.length > offsetof(sockaddr_un, sun_path)
                       ? address.length - offsetof(sockaddr_un, sun_path)
                       : 0;
      return std::string(un->sun_path, strnlen(un->sun_path, max));
    }
    default:
      return "unknown";
  }
}

PeerInfo MakePeerInfo(const SocketAddress& address) {
  PeerInfo peer;
  char buffer[INET6_ADDRSTRLEN] = {};
  switch (address.family()) {
    case AF_INET: {
      const auto* in4 = reinterpret_cast<const sockaddr_in*>(&address.storage);
      std::memcpy(peer.address, &in4->sin_addr, 4);
      peer.address_length = 4;
      peer.port = ntohs(in4->sin_port);
      inet_ntop(AF_INET, &in4->sin_addr, buffer, sizeof(buffer));
      peer.ip_text = buffer;
      break;
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address.storage);
      std::memcpy(peer.address, &in6->sin6_addr, 16);
      peer.address_length = 16;
      peer.port = ntohs(in6->sin6_port);
      inet_ntop(AF_INET6, &in6->sin6_addr, buffer, sizeof(buffer));
      peer.ip_text = buffer;
      break;
    }
    default:
      peer.is_unix = true;
      peer.text = "unix";
      return peer;
  }
  peer.text = absl::StrCat("[", peer.ip_text, "]:", peer.port);
  return peer;
}

}  // namespace facteur::io
