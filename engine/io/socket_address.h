// File: engine/io/socket_address.h
// Listen-address parsing ("127.0.0.1:25", "[::1]:587", "unix:/run/facteur.sock"), addresses
// for outbound connections (an IP literal and a port), and the formatting of bound and peer
// addresses into text and PeerInfo.
// Thread contract: stateless.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/io/stream.h"

namespace facteur::io {

struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  int family() const { return storage.ss_family; }
};

// Parses a listen spec address. IPv6 needs brackets; a unix path must be absolute.
absl::StatusOr<SocketAddress> ParseListenAddress(std::string_view text);

// An IPv4 ("192.0.2.1") or IPv6 ("2001:db8::1", brackets allowed) literal and a port, e.g. a
// resolved MX address or a source IP (port 0). InvalidArgument names the text otherwise.
absl::StatusOr<SocketAddress> MakeSocketAddress(std::string_view ip_literal, uint16_t port);

// "127.0.0.1:2525", "[::1]:2525", or the unix socket path.
std::string FormatAddress(const SocketAddress& address);

// Fills a PeerInfo from an accepted socket's peer address.
PeerInfo MakePeerInfo(const SocketAddress& address);

}  // namespace facteur::io
