// File: tests/support/fake_stream.h
// An io::Stream that records what a protocol handler does with it, for unit tests of
// handlers without sockets. Thread contract: single-threaded, like a real stream.
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>

#include "engine/io/stream.h"

namespace facteur::testing {

class FakeStream final : public io::Stream {
 public:
  void Write(std::string_view bytes) override {
    if (!closed) output.append(bytes);
  }
  void StartTls() override { tls_requested = true; }
  void Close() override { closed = true; }
  void SetReading(bool r) override { reading = r; }
  void SetIdleTimeout(absl::Duration timeout) override {
    idle_timeout = timeout;
    ++idle_timer_restarts;
  }
  void SetSendTimeout(absl::Duration timeout) override { send_timeout = timeout; }
  bool tls_active() const override { return tls; }
  const io::PeerInfo& peer() const override { return peer_info; }
  [[noreturn]] io::EventLoop& loop() override { std::abort(); }

  // Everything written since the last call.
  std::string TakeOutput() { return std::exchange(output, {}); }

  std::string output;
  bool tls_requested = false;
  bool tls = false;
  bool closed = false;
  bool reading = true;
  absl::Duration idle_timeout = absl::ZeroDuration();
  int idle_timer_restarts = 0;  // SetIdleTimeout() calls: each re-arms the timer from now
  absl::Duration send_timeout = absl::ZeroDuration();
  io::PeerInfo peer_info;
};

// A loopback IPv4 peer, or any other address given as four bytes.
inline io::PeerInfo Ipv4Peer(uint8_t a, uint8_t b, uint8_t c, uint8_t d, uint16_t port = 40000) {
  io::PeerInfo peer;
  peer.address[0] = a;
  peer.address[1] = b;
  peer.address[2] = c;
  peer.address[3] = d;
  peer.address_length = 4;
  peer.port = port;
  peer.ip_text = std::to_string(a) + "." + std::to_string(b) + "." + std::to_string(c) + "." +
                 std::to_string(d);
  peer.text = "[" + peer.ip_text + "]:" + std::to_string(port);
  return peer;
}

}  // namespace facteur::testing
