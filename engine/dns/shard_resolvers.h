// File: engine/dns/shard_resolvers.h
// One Resolver per I/O shard, made on first use on that shard's thread (a Resolver is
// shard-confined and its sockets live on its ring), shared there by the SMTP sessions' RCPT
// checks and the shard's delivery pool, and destroyed on that thread before the loop stops.
// Thread contract: thread-safe; For() and Close() must be called on the thread of `loop`.
#pragma once

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "engine/base/clock.h"
#include "engine/dns/resolver.h"
#include "engine/io/event_loop.h"

namespace facteur::dns {

class ShardResolvers {
 public:
  ShardResolvers(ResolverOptions options, Clock& clock)
      : options_(std::move(options)), clock_(clock) {}

  // The resolver of `loop`, created on first use; null after Close(loop), or when it cannot be
  // created (logged once per loop).
  Resolver* For(io::EventLoop& loop);
  // Destroys the resolver of `loop` (pending lookups are dropped); For(loop) is null afterwards.
  void Close(io::EventLoop& loop);

 private:
  const ResolverOptions options_;
  Clock& clock_;
  absl::Mutex mutex_;
  absl::flat_hash_map<io::EventLoop*, std::unique_ptr<Resolver>> resolvers_ ABSL_GUARDED_BY(mutex_);
  absl::flat_hash_set<io::EventLoop*> closed_ ABSL_GUARDED_BY(mutex_);
};

}  // namespace facteur::dns
