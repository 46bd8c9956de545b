// File: engine/dns/shard_resolvers.cc
#include "engine/dns/shard_resolvers.h"

#include "engine/base/log.h"

namespace facteur::dns {

Resolver* ShardResolvers::For(io::EventLoop& loop) {
  absl::MutexLock lock(&mutex_);
  if (closed_.contains(&loop)) return nullptr;
  auto it = resolvers_.find(&loop);
  if (it != resolvers_.end()) return it->second.get();
  absl::StatusOr<std::unique_ptr<Resolver>> resolver = Resolver::Create(loop, options_, clock_);
  if (!resolver.ok()) {
    Log(LogLevel::kError, "DNS resolver: %s", resolver.status().ToString());
    closed_.insert(&loop);
    return nullptr;
  }
  return resolvers_.emplace(&loop, *std::move(resolver)).first->second.get();
}

void ShardResolvers::Close(io::EventLoop& loop) {
  std::unique_ptr<Resolver> resolver;
  {
    absl::MutexLock lock(&mutex_);
    closed_.insert(&loop);
    auto it = resolvers_.find(&loop);
    if (it == resolvers_.end()) return;
    resolver = std::move(it->second);
    resolvers_.erase(it);
  }
  // Destroyed outside the lock: it cancels its polls on the ring.
}

}  // namespace facteur::dns
