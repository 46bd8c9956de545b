// File: engine/delivery/queue_manager.cc
#include "engine/delivery/queue_manager.h"

#include <pthread.h>
#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/base/log.h"
#include "engine/base/status.h"
#include "engine/mail/command.h"
#include "engine/mail/address.h"
#include "engine/mail/dsn.h"
#include "engine/mail/text.h"
#include "engine/delivery/shaping.h"
#include "queue/suspension_store.h"

namespace facteur::delivery {
namespace {

// Longest a manager waits without looking at the queue; a safety net, not the schedule (the
// spool's schedule observer and the results wake it).
constexpr absl::Duration kMaxIdleWait = absl::Seconds(1);
// Envelopes read per batch by the operations that walk the whole queue.
constexpr size_t kScanBatch = 1000;
// Added to a greylisting delay (a tenth of it, at most this): retrying the moment the delay ends
// risks being early by a clock tick, which greylists again.
constexpr absl::Duration kGreylistMargin = absl::Seconds(15);

// RFC 3461 §4.1: NOTIFY=NEVER asks for no DSN at all; without NOTIFY, failures are reported.
bool WantsFailureReport(const queue::RecipientRecord& recipient) {
  return recipient.notify.empty() ||
         mail::UpperAscii(recipient.notify).find("FAILURE") != std::string::npos;
}

// NOTIFY=SUCCESS (RFC 3461 §4.1): never by default.
bool WantsSuccessReport(const queue::RecipientRecord& recipient) {
  return mail::UpperAscii(recipient.notify).find("SUCCESS") != std::string::npos;
}

// "mx1.example.net[192.0.2.1]:25" → "mx1.example.net", for Remote-MTA (type dns).
std::string RemoteHostName(std::string_view remote) {
  size_t bracket = remote.find('[');
  return std::string(bracket == std::string_view::npos ? remote : remote.substr(0, bracket));
}

// "450 4.2.0 text", the lines of a multiline text joined: the Diagnostic-Code of a DSN line.
std::string ReplyLine(const mail::Reply& reply) {
  std::string line = absl::StrCat(reply.code, " ", reply.enhanced.empty() ? "" : reply.enhanced + " ",
                                  reply.text);
  std::replace(line.begin(), line.end(), '\n', ' ');
  return line;
}

// A recipient's last_reply: who said what, within bounds whatever a server sent.
std::string LastReplyOf(const mail::DeliveryOutcome& outcome) {
  constexpr size_t kMaxLastReply = 256;  // 1,000 recipients: 256 KB at most per rewrite
  std::string line = ReplyLine(outcome.reply);
  if (!outcome.local && !outcome.remote.empty()) {
    line = absl::StrCat(outcome.remote, " said: ", line);
  }
  if (line.size() > kMaxLastReply) {
    // Marked as cut, within the bound, and never inside a UTF-8 sequence (a server's text may
    // be UTF-8): back to the lead byte of the first character that does not fit.
    constexpr std::string_view kCut = " [cut]";
    line.resize(mail::Utf8CutAtOrBefore(line, kMaxLastReply - kCut.size()));
    line += kCut;
  }
  return line;
}

// `outcome` (made here: expired, cancelled) for `recipient`, with what kept it in the queue.
mail::DeliveryOutcome WithLastReply(mail::DeliveryOutcome outcome,
                                    const queue::RecipientRecord& recipient) {
  if (!recipient.last_reply.empty()) {
    absl::StrAppend(&outcome.reply.text, "; last attempt: ", recipient.last_reply);
  }
  return outcome;
}

// One recipient's block of a DSN (RFC 3464 §2.3).
mail::DsnRecipient ReportLine(const queue::RecipientRecord& recipient,
                              const mail::DeliveryOutcome& outcome, mail::DsnAction action,
                              absl::Time now) {
  mail::DsnRecipient line;
  line.final_recipient = recipient.address;
  line.original_recipient = mail::DecodeOrcpt(recipient.orcpt);
  line.action = action;
  line.status = outcome.reply.enhanced.empty() ? absl::StrCat(outcome.reply.code / 100, ".0.0")
                                               : outcome.reply.enhanced;
  line.remote_mta = outcome.local ? std::string() : RemoteHostName(outcome.remote);
  line.diagnostic = ReplyLine(outcome.reply);
  line.last_attempt = now;
  return line;
}

mail::DeliveryOutcome LocalOutcome(int code, std::string enhanced, std::string text) {
  mail::DeliveryOutcome outcome;
  outcome.scope = mail::OutcomeScope::kMessage;
  outcome.reply = mail::Reply{code, std::move(enhanced), std::move(text)};
  outcome.local = true;
  return outcome;
}

// Queue operations hold and match a domain by its A-label, as routing has it (Router::Route):
// "bücher.example", "BÜCHER.example" and "xn--bcher-kva.example" are one domain.
using mail::DomainKey;

events::Event RecipientEvent(events::EventType type, const queue::Envelope& envelope,
                             uint32_t index, absl::Time now) {
  events::Event event;
  event.type = type;
  event.time = now;
  event.queue_id = envelope.id.ToString();
  event.sender = envelope.sender;
  event.recipient = envelope.recipients[index].address;
  event.domain = mail::LowerDomainOf(event.recipient);
  event.attempt = envelope.attempts;
  event.queue_time = now - envelope.received_at;
  return event;
}

events::Event OutcomeEvent(events::EventType type, const queue::Envelope& envelope,
                           uint32_t index, const mail::DeliveryOutcome& outcome, absl::Time now) {
  events::Event event = RecipientEvent(type, envelope, index, now);
  event.code = outcome.reply.code;
  event.enhanced = outcome.reply.enhanced;
  event.response = outcome.reply.text;
  event.mx = outcome.remote;
  return event;
}

// Replies the (source, site) throttle acts on: the pacing, not the retry schedule, decides when
// the recipient goes again.
bool PacedBySite(throttle::ResponseClass c) {
  return c == throttle::ResponseClass::kRateLimit ||
         c == throttle::ResponseClass::kTooManyConnections ||
         c == throttle::ResponseClass::kBlocklist;
}

// Makes `envelope` due now for the recipients `chosen(index)` picks, those waiting for a time of
// their own (greylisted) included; false when nothing changes (already due, none waiting).
template <typename Chosen>
bool DueNow(queue::Envelope& envelope, absl::Time now, Chosen chosen) {
  bool waiting = false;
  for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
    queue::RecipientRecord& recipient = envelope.recipients[i];
    if (recipient.retry_at <= now || !chosen(i)) continue;
    recipient.retry_at = absl::InfinitePast();
    waiting = true;
  }
  if (envelope.next_attempt <= now && !waiting) return false;
  envelope.next_attempt = now;
  return true;
}

}  // namespace


struct QueueManager::InFlight {
  queue::Envelope envelope;
  absl::Time leased_due;
  std::shared_ptr<const std::string> body;  // shared with the jobs of every domain
  // What the message owed when it was leased (its scheduled_sites_ entry): the source of the
  // last attempt at a site whose jobs come back held by its throttle, unattempted.
  std::vector<OwedSite> owed;
  size_t jobs_outstanding = 0;
  std::vector<JobResult> results;
  // An operation that arrived while the message was out: applied when it settles.
  enum class After { kNothing, kDelete, kBounce } after = After::kNothing;
  std::string after_domain;  // kBounce: only this domain's recipients ("" = all)
};

struct QueueManager::Operation {
  using Kind = OperationKind;
  Kind kind = Kind::kFlush;
  std::optional<std::string> domain;
  MessageId id;
  absl::StatusOr<OperationResult> result = OperationResult{};
  absl::Notification done;
};

QueueManager::QueueManager(queue::Store& store, queue::Spool& spool,
                           const throttle::RetryPolicy& retry, Clock& clock,
                           events::EventLog* events, QueueManagerOptions options)
    : store_(store),
      spool_(spool),
      retry_(retry),
      clock_(clock),
      events_(events),
      options_(std::move(options)) {}

QueueManager::~QueueManager() { Stop(); }

void QueueManager::Start() {
  spool_.SetScheduleObserver([this] { Wake(); });
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "queue-manager");  // for top -H, perf and gdb
    queue::StopPerfCountingOnThisThread();
    ThreadMain();
  });
}

void QueueManager::Stop() {
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  spool_.SetScheduleObserver(nullptr);
  // What was settled is on disk before Stop() returns.
  if (!WaitForWrites(absl::Seconds(30))) {
    Log(LogLevel::kWarning, "delivery: the spool did not commit the last outcomes within 30s");
  }
  // What is still out is tried again at the next start: its queued state is unchanged.
  for (auto& [id, flight] : in_flight_) spool_.ReleaseLease(id);
  in_flight_.clear();
  bytes_in_flight_ = 0;
  absl::MutexLock lock(&mutex_);
  in_flight_count_ = 0;
}

void QueueManager::Wake() {
  absl::MutexLock lock(&mutex_);
  wake_ = true;
}

bool QueueManager::HasWork() const {
  return wake_ || stopping_ || !results_.empty() || !operations_.empty();
}

void QueueManager::ThreadMain() {
  for (;;) {
    RunOnce();
    // Read outside mutex_: the spool calls Wake() (which takes mutex_) from its own thread.
    // When full, only a result can make room: it wakes the thread (HasWork).
    const absl::Time next_due = InFlightFull() ? absl::InfiniteFuture() : spool_.NextDue();
    const absl::Duration wait = std::clamp(clock_.ToRealDuration(next_due - clock_.Now()),
                                           absl::ZeroDuration(), kMaxIdleWait);
    absl::MutexLock lock(&mutex_);
    mutex_.AwaitWithTimeout(absl::Condition(this, &QueueManager::HasWork), wait);
    if (stopping_) break;
  }
  // Results and operations that arrived meanwhile are still handled; nothing new is leased.
  RunOnce();
}

void QueueManager::OnJobsDone(std::vector<JobResult> results) {
  absl::MutexLock lock(&mutex_);
  if (results_.empty()) {
    results_ = std::move(results);
    return;
  }
  for (JobResult& result : results) results_.push_back(std::move(result));
}

void QueueManager::OnJobDone(JobResult result) {
  absl::MutexLock lock(&mutex_);
  results_.push_back(std::move(result));
}

size_t QueueManager::in_flight() const {
  absl::MutexLock lock(&mutex_);
  return in_flight_count_;
}

void QueueManager::RunOnce() {
  std::vector<JobResult> results;
  std::deque<Operation*> operations;
  bool stopping;
  {
    absl::MutexLock lock(&mutex_);
    results.swap(results_);
    operations.swap(operations_);
    wake_ = false;
    stopping = stopping_;
  }
  for (JobResult& result : results) {
    auto it = in_flight_.find(result.id);
    if (it == in_flight_.end()) {
      Log(LogLevel::kWarning, "delivery: result for %s, which is not in flight", result.id.ToString());
      continue;
    }
    InFlight& flight = *it->second;
    flight.results.push_back(std::move(result));
    if (--flight.jobs_outstanding == 0) {
      std::unique_ptr<InFlight> done = std::move(it->second);
      in_flight_.erase(it);
      bytes_in_flight_ -= done->body->size();
      Settle(*done, std::move(done->results));
    }
  }
  for (Operation* operation : operations) {
    ExecuteOperation(*operation);
    operation->done.Notify();
  }
  if (!stopping) LeaseAndDispatch();
  if (options_.metrics != nullptr) {
    options_.metrics->in_flight.Set(static_cast<double>(in_flight_.size()));
  }
  absl::MutexLock lock(&mutex_);
  in_flight_count_ = in_flight_.size();
}

bool QueueManager::InFlightFull() const {
  return in_flight_.size() >= options_.max_messages_in_flight ||
         (!in_flight_.empty() && bytes_in_flight_ >= options_.max_bytes_in_flight);
}

void QueueManager::StopDispatching() {
  absl::MutexLock lock(&dispatch_mutex_);
  dispatching_stopped_ = true;
}

void QueueManager::LeaseAndDispatch() {
  absl::MutexLock lock(&dispatch_mutex_);
  if (dispatching_stopped_) return;
  if (dispatcher_ == nullptr) return;
  // In chunks, so that the byte budget (only known once a body is read) stops the leasing
  // after at most one chunk too many.
  constexpr size_t kLeaseChunk = 64;
  while (!InFlightFull()) {
    const size_t room = options_.max_messages_in_flight - in_flight_.size();
    const std::vector<queue::ScheduleEntry> due =
        spool_.LeaseDue(clock_.Now(), std::min(room, kLeaseChunk));
    for (const queue::ScheduleEntry& entry : due) {
      // Leased but not started (the byte budget ran out meanwhile): due again as if never
      // leased; a later round takes it when results have made room.
      if (InFlightFull()) {
        spool_.ReleaseLease(entry.id);
        continue;
      }
      StartMessage(entry);
    }
    if (due.size() < std::min(room, kLeaseChunk)) break;  // nothing more is due
  }
}

void QueueManager::StartMessage(const queue::ScheduleEntry& entry) {
  std::vector<OwedSite> owed = TakeOwedSites(entry.id);
  absl::StatusOr<std::optional<queue::Envelope>> read = queue::ReadEnvelope(store_, entry.id);
  if (!read.ok() || !read->has_value()) {
    Log(LogLevel::kError, "delivery: cannot read envelope %s: %s", entry.id.ToString(),
        read.ok() ? "it is gone" : read.status().ToString());
    if (read.ok()) {
      RemoveMessage(entry.id, entry.due, queue::Durability::kRidesNextSync);
    } else {
      RestoreOwedSites(entry.id, std::move(owed));
      spool_.ReleaseLease(entry.id);
    }
    return;
  }
  queue::Envelope envelope = **std::move(read);
  const absl::Time now = clock_.Now();

  std::vector<uint32_t> pending;
  for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
    if (envelope.recipients[i].state == queue::RecipientState::kPending) pending.push_back(i);
  }
  if (pending.empty()) {
    RemoveMessage(envelope.id, entry.due, queue::Durability::kRidesNextSync);
    return;
  }

  // Expiry holds whatever happened before: a message due after its lifetime bounces untried.
  if (retry_.Expired(envelope.received_at, now)) {
    std::vector<std::pair<uint32_t, mail::DeliveryOutcome>> expired;
    const mail::DeliveryOutcome outcome = LocalOutcome(
        550, "5.4.7",
        absl::StrCat("delivery time expired: undelivered after ",
                     absl::FormatDuration(retry_.options().queue_lifetime), " in the queue"));
    for (uint32_t index : pending) {
      expired.emplace_back(index, WithLastReply(outcome, envelope.recipients[index]));
    }
    CountExpired(pending, owed);
    std::vector<queue::NewMessage> reports;
    BounceRecipients(envelope, nullptr, expired, events::EventType::kExpiration, reports);
    Persist(std::move(envelope), entry.due, queue::Durability::kRidesNextSync,
            std::move(reports));
    return;
  }

  // Group the open recipients by domain and greylisting pin (a pinned recipient leaves from
  // its source only), in their order, leaving out suspended domains and the recipients whose
  // own retry time has not come (greylisted for longer than another recipient waits).
  struct Group {
    std::string domain;
    std::string pinned_source;
    std::vector<uint32_t> indexes;
  };
  std::vector<Group> groups;
  absl::Time not_yet = absl::InfiniteFuture();  // the earliest own retry time left out
  bool suspended = false;
  for (uint32_t index : pending) {
    if (envelope.recipients[index].retry_at > now) {
      not_yet = std::min(not_yet, envelope.recipients[index].retry_at);
      continue;
    }
    std::string domain = mail::LowerDomainOf(envelope.recipients[index].address);
    if (IsSuspended(DomainKey(domain))) {
      suspended = true;
      continue;
    }
    const std::string& pin = envelope.recipients[index].pinned_source;
    auto group = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.domain == domain && g.pinned_source == pin;
    });
    if (group == groups.end()) {
      groups.push_back(Group{std::move(domain), pin, {index}});
    } else {
      group->indexes.push_back(index);
    }
  }
  if (groups.empty() || dispatcher_ == nullptr) {
    // Every open recipient is in a suspended domain (look again later; Resume() flushes) or
    // waits for its own time.
    const absl::Time later =
        suspended || dispatcher_ == nullptr ? now + retry_.options().first_retry
                                            : absl::InfiniteFuture();
    envelope.next_attempt =
        std::min({later, not_yet, retry_.ExpiresAt(envelope.received_at)});
    RestoreOwedSites(entry.id, std::move(owed));  // still owed, untried
    Persist(std::move(envelope), entry.due, queue::Durability::kRidesNextSync);
    return;
  }

  absl::StatusOr<std::optional<std::string>> body = queue::ReadBody(store_, entry.id);
  if (!body.ok() || !body->has_value()) {
    Log(LogLevel::kError, "delivery: cannot read the body of %s: %s", entry.id.ToString(),
        body.ok() ? "it is gone" : body.status().ToString());
    RestoreOwedSites(entry.id, std::move(owed));
    spool_.ReleaseLease(entry.id);
    return;
  }

  auto flight = std::make_unique<InFlight>();
  flight->leased_due = entry.due;
  flight->owed = std::move(owed);
  flight->body = std::make_shared<const std::string>(**std::move(body));
  std::vector<DeliveryJob> jobs;
  const size_t per_transaction = std::max<size_t>(1, options_.max_recipients_per_transaction);
  for (const Group& group : groups) {
    const std::vector<uint32_t>& indexes = group.indexes;
    for (size_t start = 0; start < indexes.size(); start += per_transaction) {
      DeliveryJob& job = jobs.emplace_back();
      job.id = envelope.id;
      job.domain = group.domain;
      job.pinned_source = group.pinned_source;
      job.attempt = envelope.attempts + 1;
      job.message.sender = envelope.sender;
      job.message.body = flight->body;
      job.message.eight_bit = envelope.eight_bit;
      job.message.smtputf8 = envelope.smtputf8;
      job.message.dsn_ret = envelope.dsn_ret;
      job.message.dsn_envid = envelope.dsn_envid;
      const size_t end = std::min(indexes.size(), start + per_transaction);
      for (size_t k = start; k < end; ++k) {
        const queue::RecipientRecord& recipient = envelope.recipients[indexes[k]];
        job.message.recipients.push_back({recipient.address, recipient.notify, recipient.orcpt});
        job.recipient_indexes.push_back(indexes[k]);
      }
    }
  }
  flight->envelope = std::move(envelope);
  flight->jobs_outstanding = jobs.size();
  bytes_in_flight_ += flight->body->size();
  in_flight_.emplace(entry.id, std::move(flight));
  for (DeliveryJob& job : jobs) dispatcher_->Dispatch(std::move(job));
}

void QueueManager::RecordDeletions(const queue::Envelope& envelope, absl::Time now) {
  if (events_ == nullptr) return;
  for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
    if (envelope.recipients[i].state != queue::RecipientState::kPending) continue;
    events::Event event = RecipientEvent(events::EventType::kDeletion, envelope, i, now);
    event.detail = "deleted by the administrator";
    events_->Record(event);
  }
}

void QueueManager::Settle(InFlight& flight, std::vector<JobResult> results) {
  const absl::Time now = clock_.Now();
  queue::Envelope& envelope = flight.envelope;
  // A job held back by its site's throttle (never attempted) costs no attempt.
  const bool attempted = std::any_of(results.begin(), results.end(), [](const JobResult& r) {
    return r.throttled_until == absl::InfinitePast();
  });
  if (attempted || results.empty()) envelope.attempts += 1;

  std::vector<std::pair<uint32_t, mail::DeliveryOutcome>> bounced;
  // Delivered with NOTIFY=SUCCESS to a server that was not told (no DSN there): ours to report.
  std::vector<std::pair<uint32_t, mail::DeliveryOutcome>> relayed;
  // With the index of its recipient, whose retry time it reports once known.
  std::vector<std::pair<uint32_t, events::Event>> deferred;
  // The events of the recipients this attempt bounced, for BounceRecipients to write.
  absl::flat_hash_map<uint32_t, events::Event> bounce_events;
  // When each recipient is tried again, as this attempt decided (InfiniteFuture: undecided;
  // the retry policy's schedule, or the time the recipient already waited for).
  std::vector<absl::Time> retry_at(envelope.recipients.size(), absl::InfiniteFuture());
  for (const JobResult& result : results) {
    if (result.throttled_until != absl::InfinitePast()) {
      for (uint32_t index : result.recipient_indexes) {
        if (index < retry_at.size()) retry_at[index] = result.throttled_until;
      }
      continue;
    }
    if (options_.metrics != nullptr) {
      options_.metrics->attempt_seconds.Observe(absl::ToDoubleSeconds(result.elapsed));
    }
    // The event of one recipient's outcome, with where the attempt went.
    auto AttemptEvent = [&](events::EventType type, uint32_t index,
                            const mail::DeliveryOutcome& outcome) {
      events::Event event = OutcomeEvent(type, envelope, index, outcome, now);
      event.site = result.site.empty() ? result.destination : result.site;
      event.source_ip = result.source_ip;
      event.tls = result.tls;
      event.delivery_time = result.elapsed;
      if (event.mx.empty()) event.mx = result.mx;
      return event;
    };
    for (size_t k = 0; k < result.recipient_indexes.size() && k < result.outcomes.size(); ++k) {
      const uint32_t index = result.recipient_indexes[k];
      if (index >= envelope.recipients.size()) continue;
      queue::RecipientRecord& recipient = envelope.recipients[index];
      const mail::DeliveryOutcome& outcome = result.outcomes[k];
      // No verdict (a failure of ours, before any server spoke): the code decides.
      const RecipientVerdict verdict =
          k < result.verdicts.size()
              ? result.verdicts[k]
              : RecipientVerdict{outcome.permanent() ? throttle::ResponseClass::kOtherPermanent
                                                     : throttle::ResponseClass::kOtherTransient,
                                 std::nullopt};
      // Throttling and blocklisting concern the sender's IP, not the recipient: even in a 5xx
      // ("550 5.2.1 ... receiving mail too quickly", "550 5.7.1 ... blocked using ...") the
      // recipient is kept and tried again, later or from another source (DESIGN.md §5).
      const bool held = outcome.permanent() && throttle::KeepsRecipient(verdict.response_class);
      events::EventType type = outcome.delivered()               ? events::EventType::kDelivery
                               : (outcome.permanent() && !held) ? events::EventType::kBounce
                                                                 : events::EventType::kTransientFailure;
      // A message deleted meanwhile bounces nothing (no DSN goes): its refusals are not counted
      // as bounces, as the events log has them as deletions.
      const bool deleted = flight.after == InFlight::After::kDelete;
      if (!(deleted && type == events::EventType::kBounce)) {
        CountOutcome(type, result, verdict, envelope.received_at, now);
      }
      if (type == events::EventType::kBounce) {
        // Only a RCPT refusal speaks of this recipient: "user unknown" after MAIL FROM (the
        // sender's address failed a check) or at the end of data is not the recipient's.
        if (verdict.response_class == throttle::ResponseClass::kUserUnknown && user_unknown_ &&
            outcome.scope == mail::OutcomeScope::kRecipient) {
          user_unknown_(recipient.address, outcome);
        }
        bounced.emplace_back(index, outcome);
        bounce_events.emplace(index, AttemptEvent(type, index, outcome));
        continue;  // BounceRecipients writes its event
      }
      if (type == events::EventType::kDelivery) {
        recipient.state = queue::RecipientState::kDelivered;
        recipient.pinned_source.clear();
        recipient.last_reply.clear();
        if (WantsSuccessReport(recipient) && !outcome.remote_offers_dsn) {
          relayed.emplace_back(index, outcome);
        }
      } else if (verdict.response_class == throttle::ResponseClass::kGreylist) {
        // Retried from the same source, after the announced delay or the greylist ladder, and
        // a little more: a retry a hair early is greylisted again.
        recipient.greylisted += 1;
        const std::string& source =
            k < result.recipient_sources.size() && !result.recipient_sources[k].empty()
                ? result.recipient_sources[k]
                : result.source;
        if (!source.empty()) recipient.pinned_source = source;
        const absl::Duration delay = throttle::GreylistRetryDelay(
            options_.greylist, recipient.greylisted, verdict.retry_after);
        retry_at[index] = now + delay + std::min(kGreylistMargin, delay / 10);
      } else if (PacedBySite(verdict.response_class)) {
        // The site's throttle now holds its pairs back (or another source is free): the
        // recipient may go again at once; the shard sends it when a pair admits it, or hands
        // it back unattempted with the time one will.
        retry_at[index] = now;
      }  // else the retry policy's schedule
      if (type != events::EventType::kDelivery) recipient.last_reply = LastReplyOf(outcome);
      events::Event event = AttemptEvent(type, index, outcome);
      if (type == events::EventType::kDelivery) {
        if (events_ != nullptr) events_->Record(event);
      } else {
        deferred.emplace_back(index, std::move(event));
      }
    }
  }

  if (flight.after == InFlight::After::kDelete) {
    // Deleted while out for delivery: what the attempt delivered is logged and counted above
    // (it went); nothing else is reported, retried or bounced.
    RecordDeletions(envelope, now);
    RemoveMessage(envelope.id, flight.leased_due, queue::Durability::kRidesNextSync);
    return;
  }
  if (flight.after == InFlight::After::kBounce) {
    const mail::DeliveryOutcome cancelled =
        LocalOutcome(550, "5.0.0", "delivery cancelled by the administrator");
    for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
      if (envelope.recipients[i].state != queue::RecipientState::kPending) continue;
      if (std::any_of(bounced.begin(), bounced.end(), [&](const auto& b) { return b.first == i; })) continue;
      if (!flight.after_domain.empty() &&
          DomainKey(mail::LowerDomainOf(envelope.recipients[i].address)) != flight.after_domain) {
        continue;
      }
      bounced.emplace_back(i, WithLastReply(cancelled, envelope.recipients[i]));
    }
    deferred.erase(std::remove_if(deferred.begin(), deferred.end(),
                                  [&](const auto& d) {
                                    return std::any_of(bounced.begin(), bounced.end(), [&](const auto& b) {
                                      return b.first == d.first;
                                    });
                                  }),
                   deferred.end());
  }
  std::vector<queue::NewMessage> reports;  // written with the outcome they report, or not at all
  BounceRecipients(envelope, flight.body.get(), bounced, events::EventType::kBounce, reports,
                   &bounce_events);
  ReportRelayed(envelope, flight.body.get(), relayed, reports);

  const bool open = std::any_of(envelope.recipients.begin(), envelope.recipients.end(), [](const auto& r) {
    return r.state == queue::RecipientState::kPending;
  });
  if (open && retry_.Expired(envelope.received_at, now)) {
    // Leased again at once: StartMessage bounces what is left as expired.
    envelope.next_attempt = now;
    for (absl::Time& at : retry_at) at = now;
  } else if (open) {
    // Each open recipient's time: this attempt's, else the one it already waited for (not due,
    // it stayed out of the attempt), else the retry policy's schedule (drawn once, jittered).
    std::optional<absl::Time> scheduled;
    absl::Time next_attempt = absl::InfiniteFuture();
    for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
      const queue::RecipientRecord& recipient = envelope.recipients[i];
      if (recipient.state != queue::RecipientState::kPending) continue;
      if (retry_at[i] == absl::InfiniteFuture() && recipient.retry_at > now) {
        retry_at[i] = recipient.retry_at;
      } else if (retry_at[i] == absl::InfiniteFuture()) {
        if (!scheduled.has_value()) {
          scheduled = retry_.NextAttempt(std::max<uint32_t>(1, envelope.attempts),
                                         envelope.received_at, now, random_);
        }
        retry_at[i] = *scheduled;
      }
      retry_at[i] = std::min(retry_at[i], retry_.ExpiresAt(envelope.received_at));
      next_attempt = std::min(next_attempt, retry_at[i]);
    }
    envelope.next_attempt = next_attempt;
  }
  // The message comes back at its earliest recipient's time; a recipient due later than that
  // keeps its own (most messages, one recipient or all alike, keep none).
  for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
    queue::RecipientRecord& recipient = envelope.recipients[i];
    recipient.retry_at = recipient.state == queue::RecipientState::kPending &&
                                 retry_at[i] > envelope.next_attempt
                             ? retry_at[i]
                             : absl::InfinitePast();
  }
  if (events_ != nullptr) {
    for (auto& [index, event] : deferred) {
      // A recipient paced by its site (a rate limit, a blocklist pause) goes when one of the
      // site's sources may take it, which only the site's shard knows: no time is better than
      // this one, which would read "now" while every source is paused (operator test drive).
      if (retry_at[index] > now) event.next_attempt = retry_at[index];
      events_->Record(event);
    }
  }
  if (open) {
    // The sites still owed recipients, for ScheduledBySite, FlushSite and the labels of an
    // expiry, each with the source of its last attempt.
    std::vector<OwedSite> sites;
    for (const JobResult& result : results) {
      std::vector<uint32_t> owed;
      for (uint32_t index : result.recipient_indexes) {
        if (index < envelope.recipients.size() &&
            envelope.recipients[index].state == queue::RecipientState::kPending) {
          owed.push_back(index);
        }
      }
      if (owed.empty()) continue;
      std::string source = result.source;
      if (result.throttled_until != absl::InfinitePast()) {
        // Held back unattempted: the last attempt at that site (if any) is still the one that
        // counts.
        auto previous = std::find_if(flight.owed.begin(), flight.owed.end(),
                                     [&](const OwedSite& o) { return o.site == result.site; });
        source = previous == flight.owed.end() ? std::string() : previous->source;
      }
      auto site = std::find_if(sites.begin(), sites.end(),
                               [&](const OwedSite& o) { return o.site == result.site; });
      if (site == sites.end()) {
        const bool held_back = result.throttled_until != absl::InfinitePast();
        sites.push_back(OwedSite{result.site, std::move(source), std::move(owed), held_back});
      } else {
        if (!source.empty()) site->source = std::move(source);
        site->recipients.insert(site->recipients.end(), owed.begin(), owed.end());
        site->held_back = site->held_back || result.throttled_until != absl::InfinitePast();
      }
    }
    // Recipients that stayed out of this attempt (their own time not come, or their domain
    // suspended) are still owed where they were.
    std::vector<bool> in_results(envelope.recipients.size(), false);
    for (const JobResult& result : results) {
      for (uint32_t index : result.recipient_indexes) {
        if (index < in_results.size()) in_results[index] = true;
      }
    }
    for (const OwedSite& previous : flight.owed) {
      std::vector<uint32_t> untried;
      for (uint32_t index : previous.recipients) {
        if (index < in_results.size() && !in_results[index] &&
            envelope.recipients[index].state == queue::RecipientState::kPending) {
          untried.push_back(index);
        }
      }
      if (untried.empty()) continue;
      auto site = std::find_if(sites.begin(), sites.end(),
                               [&](const OwedSite& o) { return o.site == previous.site; });
      if (site == sites.end()) {
        sites.push_back(OwedSite{previous.site, previous.source, std::move(untried),
                                 previous.held_back});
      } else {
        site->recipients.insert(site->recipients.end(), untried.begin(), untried.end());
      }
    }
    RestoreOwedSites(envelope.id, std::move(sites));
  }
  Persist(std::move(envelope), flight.leased_due, queue::Durability::kRidesNextSync,
          std::move(reports));
}

void QueueManager::CountOutcome(events::EventType type, const JobResult& result,
                                const RecipientVerdict& verdict, absl::Time received_at,
                                absl::Time now) {
  metrics::DeliveryMetrics* m = options_.metrics;
  if (m == nullptr) return;
  const std::string site = LabelOf(options_.site_labels, result.site);
  const std::string source = result.source.empty() ? "none" : result.source;
  const std::string reply_class(throttle::ResponseClassName(verdict.response_class));
  switch (type) {
    case events::EventType::kDelivery:
      m->delivered_total.Add({{"site", site}, {"source", source}}).Increment();
      m->queue_seconds.Observe(absl::ToDoubleSeconds(now - received_at));
      break;
    case events::EventType::kBounce:
      m->bounced_total.Add({{"site", site}, {"source", source}, {"class", reply_class}})
          .Increment();
      break;
    default:
      m->deferred_total.Add({{"site", site}, {"source", source}, {"class", reply_class}})
          .Increment();
      break;
  }
}

void QueueManager::BounceRecipients(
    queue::Envelope& envelope, const std::string* body,
    const std::vector<std::pair<uint32_t, mail::DeliveryOutcome>>& bounced, events::EventType type,
    std::vector<queue::NewMessage>& reports,
    const absl::flat_hash_map<uint32_t, events::Event>* attempted) {
  if (bounced.empty()) return;
  const absl::Time now = clock_.Now();
  mail::DsnReport report;
  for (const auto& [index, outcome] : bounced) {
    queue::RecipientRecord& recipient = envelope.recipients[index];
    recipient.state = queue::RecipientState::kBounced;
    recipient.last_reply.clear();  // it waits no more; its outcome is in the events log
    recipient.retry_at = absl::InfinitePast();
    if (events_ != nullptr) {
      const events::Event* known = nullptr;
      if (attempted != nullptr) {
        if (auto found = attempted->find(index); found != attempted->end()) known = &found->second;
      }
      events_->Record(known != nullptr ? *known
                                       : OutcomeEvent(type, envelope, index, outcome, now));
    }
    if (!WantsFailureReport(recipient)) continue;
    report.recipients.push_back(ReportLine(recipient, outcome, mail::DsnAction::kFailed, now));
  }
  QueueReport(envelope, body, std::move(report), now, reports);
}

void QueueManager::ReportRelayed(
    const queue::Envelope& envelope, const std::string* body,
    const std::vector<std::pair<uint32_t, mail::DeliveryOutcome>>& relayed,
    std::vector<queue::NewMessage>& reports) {
  if (relayed.empty()) return;
  const absl::Time now = clock_.Now();
  mail::DsnReport report;
  for (const auto& [index, outcome] : relayed) {
    report.recipients.push_back(
        ReportLine(envelope.recipients[index], outcome, mail::DsnAction::kRelayed, now));
  }
  QueueReport(envelope, body, std::move(report), now, reports);
}

void QueueManager::QueueReport(const queue::Envelope& envelope, const std::string* body,
                               mail::DsnReport report, absl::Time now,
                               std::vector<queue::NewMessage>& reports) {
  // RFC 3464 §2 / RFC 5321 §4.5.5: no report for a message with the null reverse-path (it is
  // itself a report), which is also what stops bounce loops.
  if (envelope.sender.empty() || report.recipients.empty()) return;

  std::string fetched;
  if (body == nullptr) {
    absl::StatusOr<std::optional<std::string>> read = queue::ReadBody(store_, envelope.id);
    if (read.ok() && read->has_value()) fetched = **std::move(read);
    body = &fetched;
  }
  const MessageId dsn_id = MessageId::Generate(now);
  report.reporting_mta = options_.hostname;
  report.from = absl::StrCat("MAILER-DAEMON@", options_.hostname);
  report.to = envelope.sender;
  report.message_id = absl::StrCat("<", dsn_id.ToString(), "@", options_.hostname, ">");
  report.date = now;
  report.original_queue_id = envelope.id.ToString();
  report.original_envelope_id = mail::DecodeXtext(envelope.dsn_envid);
  report.arrival_date = envelope.received_at;
  // RFC 3461 §4.3: RET is about failure reports; a notice of success never returns the whole
  // message.
  report.return_full =
      mail::EqualsIgnoreCase(envelope.dsn_ret, "FULL") &&
      std::any_of(report.recipients.begin(), report.recipients.end(),
                  [](const mail::DsnRecipient& r) { return r.action == mail::DsnAction::kFailed; });

  queue::Envelope dsn;
  dsn.id = dsn_id;
  dsn.sender = "";  // the null reverse-path: a DSN never causes another
  dsn.recipients.push_back({envelope.sender, queue::RecipientState::kPending, "", "", "", 0, ""});
  dsn.listener = "bounce";
  dsn.client = "local";
  dsn.received_at = now;
  dsn.next_attempt = now;
  std::string text = mail::BuildDsn(report, *body);
  // SMTPUTF8 when the original needed it: its UTF-8 header fields come back as 8-bit
  // message/global(-headers), which RFC 6533 §6 lets travel only on an SMTPUTF8 path. 8-bit
  // content of any kind goes with BODY=8BITMIME (mail/dsn.h).
  dsn.smtputf8 = envelope.smtputf8 || mail::HasNonAscii(envelope.sender);
  dsn.eight_bit = mail::HasNonAscii(text);
  reports.push_back(queue::NewMessage{std::move(dsn), std::move(text)});
}

void QueueManager::RemoveMessage(const MessageId& id, absl::Time due,
                                 queue::Durability durability) {
  queue::Envelope nothing_open;
  nothing_open.id = id;
  Persist(std::move(nothing_open), due, durability);
}

bool QueueManager::WaitForWrites(absl::Duration timeout) {
  PendingWrites& writes = *writes_;
  absl::MutexLock lock(&writes.mutex);
  return writes.mutex.AwaitWithTimeout(
      absl::Condition(+[](size_t* count) { return *count == 0; }, &writes.count), timeout);
}

void QueueManager::Persist(queue::Envelope envelope, absl::Time previous_due,
                           queue::Durability durability, std::vector<queue::NewMessage> reports) {
  const MessageId id = envelope.id;
  const bool open = std::any_of(envelope.recipients.begin(), envelope.recipients.end(), [](const auto& r) {
    return r.state == queue::RecipientState::kPending;
  });
  if (!open) {
    absl::MutexLock lock(&owed_mutex_);
    EraseOwedLocked(id);
  }
  {
    absl::MutexLock lock(&writes_->mutex);
    ++writes_->count;
  }
  std::vector<MessageId> report_ids;
  for (const queue::NewMessage& report : reports) report_ids.push_back(report.envelope.id);
  // Runs on the spool's writer, possibly after this manager is gone: it touches only the spool
  // (which outlives the manager) and the shared counter.
  auto done = [spool = &spool_, writes = writes_, id,
               report_ids = std::move(report_ids)](absl::Status status) {
    if (!status.ok() && !absl::IsNotFound(status)) {
      // The lease would otherwise hold the message until a restart. Its recipients are still
      // open on disk, so they are tried again, and their DSNs (not written either) made again.
      Log(LogLevel::kError, "delivery: could not record the outcome of %s: %s", id.ToString(),
          status.ToString());
      spool->ReleaseLease(id);
    }
    for (const MessageId& report : report_ids) {
      if (status.ok()) {
        Log(LogLevel::kInfo, "delivery: DSN %s queued for %s", report.ToString(), id.ToString());
      } else if (absl::IsNotFound(status)) {
        // Removed meanwhile (`queue delete`): its outcomes and their DSN go with it.
        Log(LogLevel::kWarning, "delivery: DSN %s for %s not queued: the message was removed",
            report.ToString(), id.ToString());
      } else {
        // Made again when the message is retried.
        Log(LogLevel::kInfo, "delivery: DSN %s for %s not queued: %s", report.ToString(),
            id.ToString(), status.ToString());
      }
    }
    absl::MutexLock lock(&writes->mutex);
    --writes->count;
  };
  if (open) {
    spool_.Update(std::move(envelope), previous_due, std::move(done), durability,
                  std::move(reports));
  } else {
    spool_.Remove(id, previous_due, std::move(done), durability, std::move(reports));
  }
}

bool QueueManager::IsSuspended(std::string_view domain) const {
  absl::MutexLock lock(&mutex_);
  return suspended_.contains(std::string(domain));
}

std::map<std::string, uint64_t> QueueManager::ScheduledBySite() const {
  absl::MutexLock lock(&owed_mutex_);
  return std::map<std::string, uint64_t>(owed_by_site_.begin(), owed_by_site_.end());
}

std::map<std::string, uint64_t> QueueManager::HeldBackBySite() const {
  absl::MutexLock lock(&owed_mutex_);
  return std::map<std::string, uint64_t>(held_back_by_site_.begin(), held_back_by_site_.end());
}

size_t QueueManager::ScheduledWithKnownSite() const {
  absl::MutexLock lock(&owed_mutex_);
  return known_site_count_;
}

namespace {

// Adds `sign` (±1) to `counts[key]`, erasing a count that falls to zero.
void AddCount(absl::flat_hash_map<std::string, uint64_t>& counts, const std::string& key,
              int sign) {
  uint64_t& count = counts[key];
  if (sign > 0) {
    ++count;
  } else if (--count == 0) {
    counts.erase(key);
  }
}

}  // namespace

void QueueManager::CountOwedLocked(const std::vector<OwedSite>& sites, int sign) {
  bool known = false;
  for (const OwedSite& owed : sites) {
    if (owed.site.empty()) continue;
    known = true;
    AddCount(owed_by_site_, owed.site, sign);
    if (owed.held_back) AddCount(held_back_by_site_, owed.site, sign);
  }
  if (known) {
    if (sign > 0) {
      ++known_site_count_;
    } else {
      --known_site_count_;
    }
  }
}

void QueueManager::EraseOwedLocked(const MessageId& id) {
  auto it = scheduled_sites_.find(id);
  if (it == scheduled_sites_.end()) return;
  CountOwedLocked(it->second, -1);
  scheduled_sites_.erase(it);
}

std::vector<QueueManager::OwedSite> QueueManager::TakeOwedSites(const MessageId& id) {
  absl::MutexLock lock(&owed_mutex_);
  auto node = scheduled_sites_.extract(id);
  if (node.empty()) return {};
  CountOwedLocked(node.mapped(), -1);
  return std::move(node.mapped());
}

void QueueManager::RestoreOwedSites(const MessageId& id, std::vector<OwedSite> sites) {
  absl::MutexLock lock(&owed_mutex_);
  EraseOwedLocked(id);
  if (sites.empty()) return;
  CountOwedLocked(sites, +1);
  scheduled_sites_[id] = std::move(sites);
}

void QueueManager::CountExpired(const std::vector<uint32_t>& indexes,
                                const std::vector<OwedSite>& owed) {
  metrics::DeliveryMetrics* m = options_.metrics;
  if (m == nullptr) return;
  for (uint32_t index : indexes) {
    auto site = std::find_if(owed.begin(), owed.end(), [index](const OwedSite& o) {
      return std::find(o.recipients.begin(), o.recipients.end(), index) != o.recipients.end();
    });
    // Not attempted since the start (or a restart): nothing is known of its site.
    const std::string label =
        site == owed.end() ? std::string("unattempted") : LabelOf(options_.site_labels, site->site);
    const std::string source =
        site == owed.end() || site->source.empty() ? std::string("none") : site->source;
    m->expired_total.Add({{"site", label}, {"source", source}}).Increment();
  }
}

std::vector<std::string> QueueManager::SuspendedDomains() const {
  absl::MutexLock lock(&mutex_);
  std::vector<std::string> domains(suspended_.begin(), suspended_.end());
  std::sort(domains.begin(), domains.end());
  return domains;
}

absl::StatusOr<std::vector<std::string>> QueueManager::RestoreSuspendedDomains() {
  FACTEUR_ASSIGN_OR_RETURN(std::vector<queue::DomainHold> holds,
                           queue::SuspensionStore(store_).DomainHolds());
  std::vector<std::string> domains;
  absl::MutexLock lock(&mutex_);
  for (queue::DomainHold& hold : holds) {
    domains.push_back(hold.domain);
    suspended_.insert(std::move(hold.domain));
  }
  std::sort(domains.begin(), domains.end());
  return domains;
}

// ---- Operations ----

absl::StatusOr<OperationResult> QueueManager::Operate(OperationKind kind,
                                                      std::optional<std::string> domain,
                                                      const MessageId& id) {
  Operation operation;
  operation.kind = kind;
  if (domain.has_value()) operation.domain = DomainKey(*domain);
  operation.id = id;
  {
    absl::MutexLock lock(&mutex_);
    if (stopping_) return absl::UnavailableError("the queue manager is stopping");
    operations_.push_back(&operation);
    wake_ = true;
  }
  operation.done.WaitForNotification();
  return std::move(operation.result);
}

absl::StatusOr<OperationResult> QueueManager::Flush(std::optional<std::string> domain) {
  return Operate(OperationKind::kFlush, std::move(domain), MessageId());
}

absl::StatusOr<OperationResult> QueueManager::Retry(const MessageId& id) {
  return Operate(OperationKind::kRetry, std::nullopt, id);
}

absl::StatusOr<OperationResult> QueueManager::Bounce(const MessageId& id) {
  return Operate(OperationKind::kBounce, std::nullopt, id);
}

absl::StatusOr<OperationResult> QueueManager::BounceDomain(const std::string& domain) {
  return Operate(OperationKind::kBounceDomain, domain, MessageId());
}

absl::StatusOr<OperationResult> QueueManager::Delete(const MessageId& id) {
  return Operate(OperationKind::kDelete, std::nullopt, id);
}

absl::StatusOr<OperationResult> QueueManager::Suspend(const std::string& domain) {
  return Operate(OperationKind::kSuspend, domain, MessageId());
}

absl::StatusOr<OperationResult> QueueManager::Resume(const std::string& domain) {
  return Operate(OperationKind::kResume, domain, MessageId());
}

absl::StatusOr<OperationResult> QueueManager::FlushSite(const std::string& site) {
  return Operate(OperationKind::kFlushSite, site, MessageId());
}

void QueueManager::ExecuteOperation(Operation& operation) {
  using Kind = Operation::Kind;
  {
    // Operations read envelopes from the store: the outcomes settled before them must be there,
    // or an operation would write back a stale envelope. The writer commits within milliseconds.
    if (!WaitForWrites(absl::Seconds(30))) {
      operation.result = absl::UnavailableError("the spool has not committed recent changes; try again");
      return;
    }
  }
  const absl::Time now = clock_.Now();
  OperationResult result;
  const std::string domain = operation.domain.value_or("");

  if (operation.kind == Kind::kFlushSite) {
    // Each message held back by the site, with its recipients owed there.
    std::vector<std::pair<MessageId, std::vector<uint32_t>>> held;
    {
      absl::MutexLock lock(&owed_mutex_);
      for (const auto& [id, sites] : scheduled_sites_) {
        std::vector<uint32_t> recipients;
        for (const OwedSite& owed : sites) {
          if (owed.held_back && !owed.site.empty() &&
              (owed.site == domain || absl::StartsWith(owed.site, absl::StrCat(domain, "/")))) {
            recipients.insert(recipients.end(), owed.recipients.begin(), owed.recipients.end());
          }
        }
        if (!recipients.empty()) held.emplace_back(id, std::move(recipients));
      }
    }
    for (const auto& [id, recipients] : held) {
      if (in_flight_.contains(id)) continue;  // out already
      absl::StatusOr<std::optional<queue::Envelope>> envelope = queue::ReadEnvelope(store_, id);
      if (!envelope.ok()) {
        operation.result = envelope.status();
        return;
      }
      if (!envelope->has_value()) continue;
      const absl::Time due = (*envelope)->next_attempt;
      // The site's recipients go now; the others of the message (greylisted elsewhere) keep
      // their own time.
      const bool changed = DueNow(**envelope, now, [&recipients = recipients](uint32_t index) {
        return std::find(recipients.begin(), recipients.end(), index) != recipients.end();
      });
      if (!changed) continue;  // already due: the scheduler takes it
      Persist(**std::move(envelope), due, queue::Durability::kSynced);
      ++result.messages;
    }
    operation.result = result;
    return;
  }

  if (operation.kind == Kind::kSuspend || operation.kind == Kind::kResume) {
    const bool suspend = operation.kind == Kind::kSuspend;
    const bool changed = suspend != IsSuspended(domain);
    if (!suspend) result.was_held = changed;
    if (changed) {
      // On disk first: a hold the operator was told of must outlive a restart, and one that
      // could not be written is refused rather than held in memory only. Only this thread
      // changes suspended_, so it cannot change between the look above and the write below.
      queue::SuspensionStore holds(store_);
      absl::Status written = suspend ? holds.HoldDomain(domain, now) : holds.ReleaseDomain(domain);
      if (!written.ok()) {
        operation.result = written;
        return;
      }
      absl::MutexLock lock(&mutex_);
      if (suspend) {
        suspended_.insert(domain);
      } else {
        suspended_.erase(domain);
      }
    }
    if (events_ != nullptr && changed) {
      events::Event event;
      event.type = events::EventType::kSuspension;
      event.time = now;
      event.domain = domain;
      event.detail = operation.kind == Kind::kSuspend ? "suspended by the administrator"
                                                      : "resumed by the administrator";
      events_->Record(event);
    }
    if (operation.kind == Kind::kSuspend) {
      // What it holds is counted by the caller, off this thread (AdminServer::QueueOperation).
      operation.result = result;
      return;
    }
    // A resumed domain's mail goes at once.
    operation.kind = Kind::kFlush;
    operation.domain = domain;
  }

  // Applies the operation to one envelope that is not in flight; returns whether it changed.
  auto apply = [&](queue::Envelope envelope) {
    auto matches = [&](const queue::RecipientRecord& r) {
      return r.state == queue::RecipientState::kPending &&
             (domain.empty() || DomainKey(mail::LowerDomainOf(r.address)) == domain);
    };
    if (std::none_of(envelope.recipients.begin(), envelope.recipients.end(), matches) &&
        operation.kind != Kind::kDelete) {
      return;
    }
    const absl::Time due = envelope.next_attempt;
    switch (operation.kind) {
      case Kind::kFlush:
      case Kind::kRetry: {
        const bool changed = DueNow(envelope, now, [&](uint32_t index) {
          return matches(envelope.recipients[index]);
        });
        if (!changed) return;  // already due: the scheduler takes it
        result.recipients += static_cast<uint64_t>(
            std::count_if(envelope.recipients.begin(), envelope.recipients.end(), matches));
        Persist(std::move(envelope), due, queue::Durability::kSynced);
        break;
      }
      case Kind::kBounce:
      case Kind::kBounceDomain: {
        std::vector<std::pair<uint32_t, mail::DeliveryOutcome>> bounced;
        const mail::DeliveryOutcome cancelled =
            LocalOutcome(550, "5.0.0", "delivery cancelled by the administrator");
        for (uint32_t i = 0; i < envelope.recipients.size(); ++i) {
          if (matches(envelope.recipients[i])) {
            bounced.emplace_back(i, WithLastReply(cancelled, envelope.recipients[i]));
          }
        }
        result.recipients += bounced.size();
        std::vector<queue::NewMessage> reports;
        BounceRecipients(envelope, nullptr, bounced, events::EventType::kBounce, reports);
        Persist(std::move(envelope), due, queue::Durability::kSynced, std::move(reports));
        break;
      }
      case Kind::kDelete:
        RecordDeletions(envelope, now);
        RemoveMessage(envelope.id, due, queue::Durability::kSynced);
        break;
      default:
        return;
    }
    ++result.messages;
  };

  if (operation.kind == Kind::kRetry || operation.kind == Kind::kBounce ||
      operation.kind == Kind::kDelete) {
    auto flight = in_flight_.find(operation.id);
    if (flight != in_flight_.end()) {
      // Out for delivery now: the operation applies when the attempt settles.
      if (operation.kind == Kind::kDelete) flight->second->after = InFlight::After::kDelete;
      if (operation.kind == Kind::kBounce) flight->second->after = InFlight::After::kBounce;
      result.messages = operation.kind == Kind::kRetry ? 0 : 1;
      result.in_delivery = result.messages;
      operation.result = result;
      return;
    }
    absl::StatusOr<std::optional<queue::Envelope>> envelope = queue::ReadEnvelope(store_, operation.id);
    if (!envelope.ok()) {
      operation.result = envelope.status();
      return;
    }
    if (!envelope->has_value()) {
      operation.result = absl::NotFoundError(
          absl::StrCat("message ", operation.id.ToString(), " is not in the queue"));
      return;
    }
    apply(**std::move(envelope));
    operation.result = result;
    return;
  }

  // Flush and BounceDomain walk the whole queue.
  MessageId after;
  for (;;) {
    absl::StatusOr<std::vector<queue::Envelope>> batch = queue::ListEnvelopes(store_, kScanBatch, after);
    if (!batch.ok()) {
      operation.result = batch.status();
      return;
    }
    for (queue::Envelope& envelope : *batch) {
      after = envelope.id;
      auto flight = in_flight_.find(envelope.id);
      if (flight != in_flight_.end()) {
        if (operation.kind == Kind::kBounceDomain) {
          flight->second->after = InFlight::After::kBounce;
          flight->second->after_domain = domain;
          ++result.messages;
          ++result.in_delivery;
        }
        continue;
      }
      apply(std::move(envelope));
    }
    if (batch->size() < kScanBatch) break;
  }
  operation.result = result;
}

}  // namespace facteur::delivery
