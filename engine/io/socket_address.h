// File: engine/io/socket_address.h
// Listen-address parsing ("127.0.0.1:25", "[::1]:587", "unix:/run/facteur.sock") and the
// formatting of bound and peer addresses into text and PeerInfo.
// Thread contract: stateless.
#pragma once

#include <sys/socket.h>

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

// "127.0.0.1:2525", "[::1]:2525", or the unix socket path.
std::string FormatAddress(const SocketAddress& address);

// Fills a PeerInfo from an accepted socket's peer address.
PeerInfo MakePeerInfo(const SocketAddress& address);

}  // namespace facteur::io
