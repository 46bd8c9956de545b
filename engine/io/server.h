// File: engine/io/server.h
// Server owns N EventLoop threads (shards), the listening sockets of every ListenSpec, and every
// accepted connection. TCP listeners use SO_REUSEPORT with one listening socket per shard, each
// accepted by a multishot accept on its own ring; a Unix socket is accepted on one shard and
// its connections are handed round-robin to the shards through EventLoop::Post(). Start()
// binds every listener before it returns; Stop() stops accepting, closes every connection (each
// handler gets OnClosed()), and joins the threads.
// Thread contract: Start(), Stop(), BoundAddress() and the destructor from one controlling
// thread (not a loop thread); active_connections() is thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/io/connection.h"
#include "engine/io/event_loop.h"
#include "engine/io/stream.h"
#include "engine/tls/tls_context.h"

namespace facteur::io {

struct ListenSpec {
  // "127.0.0.1:25", "[::1]:587", "0.0.0.0:0" (port 0: the kernel picks), "unix:/abs/path".
  std::string address;
  // kStartTls offers StartTls() to the handler; kImplicit handshakes before OnStart() (465).
  TlsMode tls = TlsMode::kNone;
  // Makes one handler per connection, on the connection's loop thread. Required.
  StreamHandlerFactory factory;
  // Borrowed, must outlive the Server; required unless tls is kNone.
  const tls::TlsServerContext* tls_context = nullptr;
};

class Server {
 public:
  explicit Server(std::vector<ListenSpec> specs);
  ~Server();  // Stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds every listener (an error names the address: in use, permission, bad spec), then
  // starts `threads` loops (at least 1) and begins accepting. Call once.
  absl::Status Start(size_t threads);
  // Closes the listening sockets (new clients are refused by the kernel); the connections
  // already accepted go on. Returns once every shard has stopped its acceptors. Idempotent.
  void StopAccepting();
  // Idempotent; returns when every connection is closed and every thread joined.
  void Stop();

  // After Start(): "127.0.0.1:34567", "[::1]:34567", or the unix socket path of specs[i].
  std::string BoundAddress(size_t i) const;
  size_t active_connections() const { return active_connections_.load(); }
  size_t loop_count() const;
  // The loops, e.g. to Post() work to a shard. Valid between Start() and destruction.
  EventLoop& loop(size_t i);

 private:
  class Shard;
  class Acceptor;
  struct Bound {
    std::vector<int> fds;  // one per shard for TCP, one for unix
    std::string text;
    bool is_unix = false;
    std::string unix_path;
  };

  absl::Status Bind(const ListenSpec& spec, size_t shards, Bound* bound);

  std::vector<ListenSpec> specs_;
  std::vector<Bound> bound_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<size_t> active_connections_{0};
  bool started_ = false;
  bool accepting_stopped_ = false;
  bool stopped_ = false;
};

}  // namespace facteur::io
