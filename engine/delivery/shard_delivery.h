// File: engine/delivery/shard_delivery.h
// The delivery side of one I/O shard (DESIGN.md §2: each destination is owned by one shard, so
// its queue of jobs and its connections are single-threaded). For each destination it keeps
// the jobs waiting and a pool of SMTP client sessions: a session is opened when jobs wait and
// the destination has fewer than max_connections_per_destination; it resolves the MX hosts
// (or the route's host), tries their addresses in order — falling through to the next on a
// connect failure or a refused greeting (RFC 5321 §5.1) — and, once ready, carries one job
// after another (up to max_messages_per_connection), then idles for connection_idle_timeout
// before QUIT. Every job comes back to the ResultSink with one outcome per recipient.
// ShardedDispatcher spreads jobs over the shards by destination.
// Thread contract: ShardDelivery is shard-confined (constructed, used and shut down on its loop
// thread); ShardedDispatcher is thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "engine/base/clock.h"
#include "engine/delivery/job.h"
#include "engine/delivery/router.h"
#include "engine/dns/resolver.h"
#include "engine/io/connector.h"
#include "engine/io/event_loop.h"
#include "engine/smtp/client/client_session.h"
#include "engine/tls/tls_client_context.h"

namespace facteur::delivery {

// What every shard shares. Immutable; outlives the shards.
struct DeliveryContext {
  const Router& router;
  ResultSink& results;
  Clock& clock;
  const tls::TlsClientContext* tls = nullptr;  // null: no STARTTLS
  smtp::ClientTimeouts timeouts;
  absl::Duration connect_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Seconds(10);
  uint32_t max_connections_per_destination = 10;
  uint32_t max_messages_per_connection = 100;
  // Addresses tried for one connection, over all MX hosts (Postfix: smtp_mx_address_limit).
  uint32_t max_addresses_per_connection = 5;
};

class ShardDelivery {
 public:
  // `resolver` outlives the ShardDelivery (or at least its Shutdown()).
  ShardDelivery(io::EventLoop& loop, dns::Resolver& resolver, const DeliveryContext& context);
  ~ShardDelivery();

  void Submit(DeliveryJob job);
  // Aborts every session (jobs in progress come back with a transient outcome; jobs still
  // waiting are dropped: their messages stay queued and are tried at the next start) and calls
  // `done` on the loop thread once every connection is gone.
  void Shutdown(absl::AnyInvocable<void() &&> done);

  size_t connections() const;

 private:
  class Link;
  struct PendingJob {
    DeliveryJob job;
    absl::Time dispatched;
  };
  struct DestinationQueue {
    Destination destination;
    std::deque<PendingJob> waiting;
    std::list<std::unique_ptr<Link>> links;
  };

  void Pump(DestinationQueue& queue);
  void FailWaiting(DestinationQueue& queue, const mail::DeliveryOutcome& outcome,
                   const std::string& remote);
  void Report(PendingJob job, const Destination& destination,
              std::vector<mail::DeliveryOutcome> outcomes, const std::string& mx,
              const std::string& source_ip, bool tls);
  void LinkFinished(DestinationQueue& queue, Link* link);
  void MaybeFinishShutdown();

  io::EventLoop& loop_;
  dns::Resolver& resolver_;
  const DeliveryContext& context_;
  io::Connector connector_;
  absl::flat_hash_map<std::string, std::unique_ptr<DestinationQueue>> queues_;
  uint64_t next_source_ = 0;
  bool shutting_down_ = false;
  absl::AnyInvocable<void() &&> shutdown_done_;
  // Timers of this object hold a weak_ptr to it: they find it expired once it is destroyed.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// Spreads jobs over the shards, a destination always to the same shard, by posting to its loop.
class ShardedDispatcher final : public JobDispatcher {
 public:
  struct Shard {
    io::EventLoop* loop;
    ShardDelivery* delivery;
  };
  ShardedDispatcher(const Router& router, std::vector<Shard> shards)
      : router_(router), shards_(std::move(shards)) {}
  void Dispatch(DeliveryJob job) override;

 private:
  const Router& router_;
  std::vector<Shard> shards_;
};

}  // namespace facteur::delivery
