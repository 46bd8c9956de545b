// Tests of the resolver against real DNS servers on loopback: dnsmasq (tests/support/dns_server.h)
// serving the test's zones, a UDP socket that never answers, and a port where nothing listens.
// The EventLoop runs on its own thread; every resolver call is posted to it, and the test waits
// (bounded) for `done`. Cache expiry uses a SimulatedClock; the timeout tests measure real time.
#include "engine/dns/resolver.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "engine/base/clock.h"
#include "engine/io/event_loop.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/dns_server.h"

namespace facteur::dns {
namespace {

using ::facteur::testing::DnsServer;
using ::facteur::testing::SilentDnsServer;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr absl::Duration kWait = absl::Seconds(20);  // bound on any wait for `done`

MATCHER_P2(IsHost, name, preference, "") {
  return arg.name == name && arg.preference == preference;
}

std::vector<std::string> Names(const std::vector<MxHost>& hosts) {
  std::vector<std::string> names;
  for (const MxHost& h : hosts) names.push_back(h.name);
  return names;
}

std::vector<std::string> Texts(const std::vector<IpAddress>& addresses) {
  std::vector<std::string> texts;
  for (const IpAddress& a : addresses) texts.push_back(a.ToString());
  return texts;
}

// The zone most tests resolve in, served by one dnsmasq for the whole suite. Each test uses
// names of its own, so that query counts do not mix.
void AddSharedRecords(DnsServer& server) {
  server.AddMx("mx.test", "first.mx.test", 5)
      .AddMx("mx.test", "tie-a.mx.test", 10)
      .AddMx("mx.test", "tie-b.mx.test", 10)
      .AddMx("mx.test", "tie-c.mx.test", 10)
      .AddMx("mx.test", "last.mx.test", 20)
      .AddCname("alias.test", "mx.test")
      .AddNullMx("nullmx.test")
      .AddAddress("implicit.test", "127.0.0.62")
      .AddAddress("implicit6.test", "::1")
      .AddTxt("nomail.test", {"exists, but no mail host"})
      .AddAddress("host.test", "127.0.0.61")
      .AddAddress("host.test", "::1")
      .AddAddress("host.test", "127.0.0.62")
      .AddAddress("v6only.test", "2001:db8::5")
      .AddAddress("peek.test", "::1")
      .AddAddress("peek.test", "127.0.0.63")
      .AddTxt("txt.test", {"v=spf1", " -all"})
      .AddTxt("txt.test", {"second record"})
      // 3 strings, 700 bytes: over 512 bytes, so UDP answers are truncated and c-ares asks
      // again over TCP (RFC 7766).
      .AddTxt("long.test", {std::string(255, 'a'), std::string(255, 'b'), std::string(190, 'c')})
      .AddMx("dedup.test", "mx.dedup.test", 10)
      .AddMx("ttl.test", "mx.ttl.test", 10)
      .AddMx("cap.test", "mx.cap.test", 10)
      .AddTxt("c1.test", {"1"})
      .AddTxt("c2.test", {"2"})
      .AddTxt("c3.test", {"3"});
  for (int i = 0; i < 40; ++i) server.AddAddress(absl::StrCat("many", i, ".test"), "127.0.0.9");
}

class ResolverTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shared_ = new DnsServer();
    AddSharedRecords(*shared_);
    shared_status_ = new absl::Status(shared_->Start());
  }
  static void TearDownTestSuite() {
    delete shared_;
    delete shared_status_;
    shared_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(shared_status_->ok()) << *shared_status_;
    auto loop = io::EventLoop::Create();
    ASSERT_TRUE(loop.ok()) << loop.status();
    loop_ = std::move(*loop);
    thread_ = std::thread([this] { EXPECT_TRUE(loop_->Run().ok()); });
  }

  void TearDown() override {
    if (loop_ == nullptr) return;
    OnLoop([this] { resolver_.reset(); });
    loop_->Stop();
    thread_.join();
  }

  // Runs `fn` on the loop thread and waits for it.
  void OnLoop(absl::AnyInvocable<void() &&> fn) {
    absl::Notification ran;
    loop_->Post([&] {
      std::move(fn)();
      ran.Notify();
    });
    ran.WaitForNotification();
  }

  absl::Status CreateResolver(ResolverOptions options) {
    absl::Status status;
    OnLoop([&] {
      auto resolver = Resolver::Create(*loop_, options, clock_);
      if (resolver.ok()) {
        resolver_ = std::move(*resolver);
      } else {
        status = resolver.status();
      }
    });
    return status;
  }

  // The answers to a batch of lookups, counted by their callbacks.
  struct Answers {
    absl::Mutex mutex;
    int answered = 0;
    int ok = 0;
    absl::Notification all;
  };

  static ResolverOptions Using(const std::string& nameserver) {
    ResolverOptions options;
    options.nameservers = {nameserver};
    return options;
  }

  // Calls `method` on the loop thread and waits for its `done`.
  template <typename T>
  absl::StatusOr<T> Await(void (Resolver::*method)(std::string_view,
                                                   absl::AnyInvocable<void(absl::StatusOr<T>) &&>),
                          std::string name) {
    // Shared by this wait and the callback, which may outlive a wait that gave up.
    struct State {
      absl::Notification done;
      std::optional<absl::StatusOr<T>> result;
    };
    auto state = std::make_shared<State>();
    OnLoop([&] {
      (resolver_.get()->*method)(name, [state](absl::StatusOr<T> result) {
        state->result = std::move(result);
        state->done.Notify();
      });
    });
    if (!state->done.WaitForNotificationWithTimeout(kWait)) {
      return absl::InternalError(
          absl::StrCat("no answer for ", name, " within ", absl::FormatDuration(kWait)));
    }
    return *state->result;
  }
  absl::StatusOr<MxAnswer> Mx(std::string name) { return Await(&Resolver::ResolveMx, name); }
  absl::StatusOr<std::vector<IpAddress>> Addresses(std::string name) {
    return Await(&Resolver::ResolveAddresses, name);
  }
  absl::StatusOr<std::vector<std::string>> Txt(std::string name) {
    return Await(&Resolver::ResolveTxt, name);
  }
  size_t CacheSize() {
    size_t size = 0;
    OnLoop([&] { size = resolver_->cache_size(); });
    return size;
  }

  static DnsServer* shared_;
  static absl::Status* shared_status_;
  SimulatedClock clock_;
  std::unique_ptr<io::EventLoop> loop_;
  std::thread thread_;
  std::unique_ptr<Resolver> resolver_;  // created, used and destroyed on the loop thread
};

DnsServer* ResolverTest::shared_ = nullptr;
absl::Status* ResolverTest::shared_status_ = nullptr;

// ---- MX ----

TEST_F(ResolverTest, MxHostsComeInPreferenceOrderWithTiesShuffledOnEveryLookup) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  std::set<std::vector<std::string>> tie_orders;
  for (int i = 0; i < 60; ++i) {  // the first from dnsmasq, the others from the cache
    auto answer = Mx("mx.test");
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->kind, MxKind::kHosts);
    EXPECT_FALSE(answer->implicit);
    ASSERT_EQ(answer->hosts.size(), 5u);
    EXPECT_THAT(answer->hosts.front(), IsHost("first.mx.test", 5));
    EXPECT_THAT(answer->hosts.back(), IsHost("last.mx.test", 20));
    std::vector<std::string> ties = Names({answer->hosts.begin() + 1, answer->hosts.end() - 1});
    std::vector<std::string> sorted = ties;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_THAT(sorted, ElementsAre("tie-a.mx.test", "tie-b.mx.test", "tie-c.mx.test"));
    for (size_t k = 1; k + 1 < answer->hosts.size(); ++k)
      EXPECT_EQ(answer->hosts[k].preference, 10);
    tie_orders.insert(ties);
  }
  // 6 possible orders; all 60 lookups giving the same one would have probability 6^-59.
  EXPECT_GE(tie_orders.size(), 2u);
  EXPECT_EQ(shared_->QueryCount("MX", "mx.test"), 1);
}

TEST_F(ResolverTest, NameIsCaseInsensitiveAndMayEndInADot) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto answer = Mx("MX.Test.");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->hosts.size(), 5u);
}

TEST_F(ResolverTest, CnameInTheAnswerIsFollowed) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto answer = Mx("alias.test");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->kind, MxKind::kHosts);
  EXPECT_EQ(answer->hosts.size(), 5u);
  EXPECT_THAT(answer->hosts.front(), IsHost("first.mx.test", 5));
}

TEST_F(ResolverTest, NullMxMeansNoMail) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto answer = Mx("nullmx.test");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->kind, MxKind::kNullMx);
  EXPECT_TRUE(answer->hosts.empty());
}

TEST_F(ResolverTest, NxDomain) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto answer = Mx("nope.test");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->kind, MxKind::kNxDomain);
}

TEST_F(ResolverTest, NoMxButAnAddressIsAnImplicitMx) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  for (const char* domain : {"implicit.test", "implicit6.test"}) {
    auto answer = Mx(domain);
    ASSERT_TRUE(answer.ok()) << answer.status();
    EXPECT_EQ(answer->kind, MxKind::kHosts) << domain;
    EXPECT_TRUE(answer->implicit) << domain;
    EXPECT_THAT(answer->hosts, ElementsAre(IsHost(domain, 0)));
  }
}

TEST_F(ResolverTest, NeitherMxNorAddressIsNoMailHost) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto answer = Mx("nomail.test");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->kind, MxKind::kNoMailHost);
  EXPECT_TRUE(answer->hosts.empty());
}

TEST_F(ResolverTest, RefusedIsUnavailable) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto answer = Mx("example.org");  // outside dnsmasq's zones: REFUSED
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kUnavailable) << answer.status();
}

// ---- A/AAAA and TXT ----

TEST_F(ResolverTest, AddressesIpv4First) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto addresses = Addresses("host.test");
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  ASSERT_EQ(addresses->size(), 3u);
  std::vector<std::string> v4 = {(*addresses)[0].ToString(), (*addresses)[1].ToString()};
  std::sort(v4.begin(), v4.end());
  EXPECT_THAT(v4, ElementsAre("127.0.0.61", "127.0.0.62"));
  EXPECT_FALSE((*addresses)[0].v6);
  EXPECT_TRUE((*addresses)[2].v6);
  EXPECT_EQ((*addresses)[2].ToString(), "::1");

  auto v6 = Addresses("v6only.test");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_THAT(Texts(*v6), ElementsAre("2001:db8::5"));
  IpAddress expected;
  expected.v6 = true;
  expected.bytes[0] = 0x20;
  expected.bytes[1] = 0x01;
  expected.bytes[2] = 0x0d;
  expected.bytes[3] = 0xb8;
  expected.bytes[15] = 5;
  EXPECT_EQ((*v6)[0], expected);
}

TEST_F(ResolverTest, NoAddressIsNotFound) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto missing = Addresses("nope.test");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_THAT(missing.status().message(), HasSubstr("does not exist"));
  auto no_address = Addresses("mx.test");  // exists, MX records only
  EXPECT_EQ(no_address.status().code(), absl::StatusCode::kNotFound) << no_address.status();
  EXPECT_THAT(no_address.status().message(), HasSubstr("no address"));
}

TEST_F(ResolverTest, TxtRecordsWithTheirStringsJoined) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto txt = Txt("txt.test");
  ASSERT_TRUE(txt.ok()) << txt.status();
  std::vector<std::string> records = *txt;
  std::sort(records.begin(), records.end());
  EXPECT_THAT(records, ElementsAre("second record", "v=spf1 -all"));

  auto none = Txt("host.test");  // exists, no TXT
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(Txt("nope.test").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ResolverTest, LongTxtComesOverTcpAfterTruncation) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto txt = Txt("long.test");
  ASSERT_TRUE(txt.ok()) << txt.status();
  ASSERT_EQ(txt->size(), 1u);
  EXPECT_EQ((*txt)[0], std::string(255, 'a') + std::string(255, 'b') + std::string(190, 'c'));
  // dnsmasq logs both: the truncated UDP answer and the TCP one.
  EXPECT_EQ(shared_->QueryCount("TXT", "long.test"), 2);
}

// With room for 2 queries on the wire too: each answer lets the next waiting query go.
TEST_F(ResolverTest, ManyLookupsAtOnce) {
  for (const size_t room : {ResolverOptions().max_queries_in_flight, size_t{2}}) {
    SCOPED_TRACE(room);
    ResolverOptions options = Using(shared_->address());
    options.max_queries_in_flight = room;
    ASSERT_TRUE(CreateResolver(options).ok());
    static constexpr int kLookups = 40;
    auto state = std::make_shared<Answers>();  // shared with the callbacks
    OnLoop([&] {
      for (int i = 0; i < kLookups; ++i) {
        resolver_->ResolveAddresses(absl::StrCat("many", i, ".test"),
                                    [state](absl::StatusOr<std::vector<IpAddress>> r) {
                                      absl::MutexLock lock(&state->mutex);
                                      if (r.ok() && r->size() == 1) ++state->ok;
                                      if (++state->answered == kLookups) state->all.Notify();
                                    });
      }
    });
    ASSERT_TRUE(state->all.WaitForNotificationWithTimeout(kWait));
    EXPECT_EQ(state->ok, kLookups);
  }
}

// 10 lookups of distinct names at once with room for 3 queries: 3 on the wire, the rest wait
// (a burst of new domains must not flood the nameserver); with room for 100, all 10 go.
TEST_F(ResolverTest, QueriesOnTheWireAreBoundedByMaxQueriesInFlight) {
  for (const size_t room : {size_t{3}, size_t{100}}) {
    SCOPED_TRACE(room);
    auto silent = SilentDnsServer::Start();
    ASSERT_TRUE(silent.ok()) << silent.status();
    ResolverOptions options = Using((*silent)->address());
    options.timeout = absl::Seconds(30);  // no retry within the test: 10 s per try
    options.max_queries_in_flight = room;
    ASSERT_TRUE(CreateResolver(options).ok());
    OnLoop([&] {
      for (int i = 0; i < 10; ++i) {
        resolver_->ResolveMx(absl::StrCat("burst", i, ".test"),
                             [](absl::StatusOr<MxAnswer>) {});  // dropped with the resolver
      }
    });
    int queries = 0;
    for (int i = 0; i < 50 && queries < 10; ++i) {  // bounded; extra time would show excess
      absl::SleepFor(absl::Milliseconds(10));
      queries += (*silent)->TakeQueries();
    }
    absl::SleepFor(absl::Milliseconds(100));
    queries += (*silent)->TakeQueries();
    EXPECT_EQ(queries, std::min<int>(10, static_cast<int>(room)));
    OnLoop([this] { resolver_.reset(); });
  }
}

// ---- Names and options ----

TEST_F(ResolverTest, InvalidNamesAreInvalidArgumentDeliveredOnALaterTurn) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  for (std::string name :
       {std::string(""), std::string("."), std::string("a..test"), std::string("bad name.test"),
        std::string("a/b.test"), std::string(64, 'x') + ".test", std::string("caf\xc3\xa9.test")}) {
    auto answer = Mx(name);
    EXPECT_EQ(answer.status().code(), absl::StatusCode::kInvalidArgument) << "[" << name << "]";
  }
  EXPECT_EQ(Txt("a..b").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Addresses("a b.test").status().code(), absl::StatusCode::kInvalidArgument);

  // `done` never runs inside the call that asked, not even for an error found at once.
  bool in_call = false;
  bool called_inside = false;
  absl::Notification done;
  OnLoop([&] {
    in_call = true;
    resolver_->ResolveMx("", [&](absl::StatusOr<MxAnswer>) {
      called_inside = in_call;
      done.Notify();
    });
    in_call = false;
  });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(kWait));
  EXPECT_FALSE(called_inside);
}

TEST_F(ResolverTest, MalformedNameserverIsInvalidArgumentNamingIt) {
  for (const char* bad : {"127.0.0.1:99999", "dns.example", "[::1", "[::1]53",
                          "127.0.0.1:", "300.1.1.1", "[127.0.0.1]:53"}) {
    absl::Status status = CreateResolver(Using(bad));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("\"", bad, "\""))) << status;
  }
  for (const char* good : {"127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1", "[::1]"}) {
    EXPECT_TRUE(CreateResolver(Using(good)).ok()) << good;
  }
  ResolverOptions no_attempts = Using("127.0.0.1");
  no_attempts.attempts = 0;
  EXPECT_EQ(CreateResolver(no_attempts).code(), absl::StatusCode::kInvalidArgument);
  ResolverOptions no_time = Using("127.0.0.1");
  no_time.timeout = absl::ZeroDuration();
  EXPECT_EQ(CreateResolver(no_time).code(), absl::StatusCode::kInvalidArgument);
  ResolverOptions forever = Using("127.0.0.1");
  forever.timeout = absl::InfiniteDuration();
  EXPECT_EQ(CreateResolver(forever).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ResolverTest, DefaultNameserversComeFromResolvConf) {
  // Whatever /etc/resolv.conf says, creating the resolver works (no query is sent).
  EXPECT_TRUE(CreateResolver(ResolverOptions()).ok());
}

// ---- Cache ----

TEST_F(ResolverTest, CacheHitSendsNoQueryAndSurvivesTheServer) {
  DnsServer server;
  server.AddMx("cached.test", "mx.cached.test", 10).AddAddress("cached.test", "127.0.0.7");
  ASSERT_TRUE(server.Start().ok());
  ASSERT_TRUE(CreateResolver(Using(server.address())).ok());
  ASSERT_TRUE(Mx("cached.test").ok());
  ASSERT_TRUE(Addresses("cached.test").ok());
  EXPECT_EQ(CacheSize(), 3u);  // MX, A, AAAA (NODATA, cached for the SOA minimum)

  // `done` of a cache hit runs on a later loop turn, not inside the call.
  bool in_call = false;
  bool called_inside = false;
  absl::Notification hit;
  OnLoop([&] {
    in_call = true;
    resolver_->ResolveMx("cached.test", [&](absl::StatusOr<MxAnswer> answer) {
      called_inside = in_call;
      EXPECT_TRUE(answer.ok());
      hit.Notify();
    });
    in_call = false;
  });
  ASSERT_TRUE(hit.WaitForNotificationWithTimeout(kWait));
  EXPECT_FALSE(called_inside);

  EXPECT_EQ(server.QueryCount("MX", "cached.test"), 1);
  EXPECT_EQ(server.QueryCount("A", "cached.test"), 1);
  server.Stop();
  auto answer = Mx("cached.test");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_THAT(answer->hosts, ElementsAre(IsHost("mx.cached.test", 10)));
  auto addresses = Addresses("cached.test");
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  EXPECT_THAT(Texts(*addresses), ElementsAre("127.0.0.7"));
}

TEST_F(ResolverTest, CachedAddressesAnswerFromTheCacheAloneAndNeverAsk) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  auto cached = [this](std::string_view host) {
    std::optional<std::vector<IpAddress>> answer;
    OnLoop([&] { answer = resolver_->CachedAddresses(host); });
    return answer;
  };
  // Not looked up yet: nothing, and no query either.
  EXPECT_FALSE(cached("peek.test").has_value());
  EXPECT_EQ(shared_->QueryCount("A", "peek.test"), 0);

  auto addresses = Addresses("peek.test");
  ASSERT_TRUE(addresses.ok()) << addresses.status();
  std::optional<std::vector<IpAddress>> hit = cached("PEEK.test.");
  ASSERT_TRUE(hit.has_value());
  EXPECT_EQ(Texts(*hit), Texts(*addresses));  // IPv4 first, as ResolveAddresses
  EXPECT_THAT(Texts(*hit), ElementsAre("127.0.0.63", "::1"));
  EXPECT_EQ(shared_->QueryCount("A", "peek.test"), 1);

  // A name without addresses (MX only) is no answer here: ResolveAddresses says why.
  ASSERT_FALSE(Addresses("mx.test").ok());
  EXPECT_FALSE(cached("mx.test").has_value());

  // Expired with its TTL (600 s here).
  clock_.Advance(absl::Seconds(601));
  EXPECT_FALSE(cached("peek.test").has_value());
  EXPECT_EQ(shared_->QueryCount("A", "peek.test"), 1);
}

TEST_F(ResolverTest, ConcurrentIdenticalLookupsShareOneQuery) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  static constexpr int kLookups = 5;
  auto state = std::make_shared<Answers>();  // shared with the callbacks
  OnLoop([&] {
    for (int i = 0; i < kLookups; ++i) {
      resolver_->ResolveMx("dedup.test", [state](absl::StatusOr<MxAnswer> answer) {
        absl::MutexLock lock(&state->mutex);
        if (answer.ok() && answer->hosts.size() == 1) ++state->ok;
        if (++state->answered == kLookups) state->all.Notify();
      });
    }
  });
  ASSERT_TRUE(state->all.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(state->ok, kLookups);
  EXPECT_EQ(shared_->QueryCount("MX", "dedup.test"), 1);
}

TEST_F(ResolverTest, EntryExpiresWithItsTtl) {
  // dnsmasq serves every record with TTL 600.
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  ASSERT_TRUE(Mx("ttl.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "ttl.test"), 1);
  clock_.Advance(absl::Seconds(599));
  ASSERT_TRUE(Mx("ttl.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "ttl.test"), 1);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(Mx("ttl.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "ttl.test"), 2);
}

TEST_F(ResolverTest, TtlIsCappedByMaxTtl) {
  ResolverOptions options = Using(shared_->address());
  options.max_ttl = absl::Seconds(30);
  ASSERT_TRUE(CreateResolver(options).ok());
  ASSERT_TRUE(Mx("cap.test").ok());
  clock_.Advance(absl::Seconds(29));
  ASSERT_TRUE(Mx("cap.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "cap.test"), 1);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(Mx("cap.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "cap.test"), 2);
}

TEST_F(ResolverTest, NegativeAnswersAreCachedForTheSoaMinimumCapped) {
  ResolverOptions options = Using(shared_->address());
  options.max_negative_ttl = absl::Seconds(60);  // below the SOA's 600
  ASSERT_TRUE(CreateResolver(options).ok());
  // NXDOMAIN.
  auto first = Mx("gone.test");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->kind, MxKind::kNxDomain);
  auto second = Mx("gone.test");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->kind, MxKind::kNxDomain);
  EXPECT_EQ(shared_->QueryCount("MX", "gone.test"), 1);
  // NODATA: implicit.test has no MX, and its A record is positive (TTL 600).
  ASSERT_TRUE(Mx("implicit.test").ok());
  const int mx_queries = shared_->QueryCount("MX", "implicit.test");
  const int a_queries = shared_->QueryCount("A", "implicit.test");
  ASSERT_TRUE(Mx("implicit.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "implicit.test"), mx_queries);
  EXPECT_EQ(shared_->QueryCount("A", "implicit.test"), a_queries);

  clock_.Advance(absl::Seconds(61));
  auto third = Mx("gone.test");
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->kind, MxKind::kNxDomain);
  EXPECT_EQ(shared_->QueryCount("MX", "gone.test"), 2);
  ASSERT_TRUE(Mx("implicit.test").ok());
  EXPECT_EQ(shared_->QueryCount("MX", "implicit.test"), mx_queries + 1);  // NODATA expired
  EXPECT_EQ(shared_->QueryCount("A", "implicit.test"), a_queries);        // A still cached
}

TEST_F(ResolverTest, CacheIsBoundedAndDropsTheOldestFirst) {
  ResolverOptions options = Using(shared_->address());
  options.max_cache_entries = 2;
  ASSERT_TRUE(CreateResolver(options).ok());
  ASSERT_TRUE(Txt("c1.test").ok());
  ASSERT_TRUE(Txt("c2.test").ok());
  ASSERT_TRUE(Txt("c3.test").ok());
  EXPECT_EQ(CacheSize(), 2u);
  ASSERT_TRUE(Txt("c3.test").ok());
  EXPECT_EQ(shared_->QueryCount("TXT", "c3.test"), 1);  // kept
  ASSERT_TRUE(Txt("c1.test").ok());
  EXPECT_EQ(shared_->QueryCount("TXT", "c1.test"), 2);  // dropped, asked again
}

// ---- Failures ----

TEST_F(ResolverTest, SilentServerTimesOutWithinTheConfiguredBound) {
  auto silent = SilentDnsServer::Start();
  ASSERT_TRUE(silent.ok()) << silent.status();
  ResolverOptions options = Using((*silent)->address());
  options.timeout = absl::Milliseconds(300);
  ASSERT_TRUE(CreateResolver(options).ok());
  const absl::Time start = absl::Now();
  auto answer = Mx("slow.test");
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kDeadlineExceeded) << answer.status();
  EXPECT_GE(elapsed, absl::Milliseconds(250));
  EXPECT_LT(elapsed, absl::Milliseconds(1500));
  // The implicit-MX path and address lookups are bounded the same way.
  const absl::Time again = absl::Now();
  EXPECT_EQ(Addresses("slow.test").status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - again, absl::Milliseconds(1500));
}

TEST_F(ResolverTest, UnreachableNameserverIsAnErrorNotAHang) {
  auto unused = facteur::testing::UnusedDnsAddress();
  ASSERT_TRUE(unused.ok()) << unused.status();
  ResolverOptions options = Using(*unused);
  options.timeout = absl::Seconds(10);
  ASSERT_TRUE(CreateResolver(options).ok());
  const absl::Time start = absl::Now();
  auto answer = Mx("mx.test");
  EXPECT_EQ(answer.status().code(), absl::StatusCode::kUnavailable) << answer.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));  // refused at once, not timed out
}

TEST_F(ResolverTest, FallsThroughToTheNextNameserver) {
  auto silent = SilentDnsServer::Start();
  ASSERT_TRUE(silent.ok()) << silent.status();
  auto unused = facteur::testing::UnusedDnsAddress();
  ASSERT_TRUE(unused.ok()) << unused.status();
  ResolverOptions options;
  options.nameservers = {*unused, (*silent)->address(), shared_->address()};
  options.timeout = absl::Milliseconds(900);  // 300ms per server: the silent one is passed by
  options.attempts = 1;
  ASSERT_TRUE(CreateResolver(options).ok());
  auto answer = Mx("alias.test");
  ASSERT_TRUE(answer.ok()) << answer.status();
  EXPECT_EQ(answer->hosts.size(), 5u);
}

// ---- Destruction ----

TEST_F(ResolverTest, DestroyedWithLookupsInFlightCallsNoDone) {
  auto silent = SilentDnsServer::Start();
  ASSERT_TRUE(silent.ok()) << silent.status();
  std::atomic<int> calls{0};
  for (absl::Duration delay : {absl::ZeroDuration(), absl::Milliseconds(20)}) {
    ResolverOptions options;
    options.nameservers = {(*silent)->address()};
    ASSERT_TRUE(CreateResolver(options).ok());
    absl::Notification destroyed;
    OnLoop([&] {
      for (int i = 0; i < 10; ++i) {
        resolver_->ResolveMx(absl::StrCat("pending", i, ".test"),
                             [&](absl::StatusOr<MxAnswer>) { calls.fetch_add(1); });
        resolver_->ResolveAddresses(
            absl::StrCat("pending", i, ".test"),
            [&](absl::StatusOr<std::vector<IpAddress>>) { calls.fetch_add(1); });
      }
      loop_->RunAfter(delay, [&] {
        resolver_.reset();
        destroyed.Notify();
      });
    });
    ASSERT_TRUE(destroyed.WaitForNotificationWithTimeout(kWait));
    // Let the cancelled polls' completions arrive while the loop runs.
    absl::Notification settled;
    OnLoop([&] { loop_->RunAfter(absl::Milliseconds(20), [&] { settled.Notify(); }); });
    ASSERT_TRUE(settled.WaitForNotificationWithTimeout(kWait));
  }
  EXPECT_EQ(calls.load(), 0);
}

TEST_F(ResolverTest, DestroyedWithTcpInFlightAndLoopStoppedAtOnce) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  std::atomic<int> calls{0};
  int calls_before_destruction = -1;
  absl::Notification destroyed;
  OnLoop([&] {
    resolver_->ResolveTxt("long.test",
                          [&](absl::StatusOr<std::vector<std::string>>) { calls.fetch_add(1); });
    // Destroy once the UDP answer came back truncated and the TCP connection was opened: a
    // few milliseconds on loopback. On a fast machine the whole lookup may be done by then;
    // either way no callback may run after the destruction.
    loop_->RunAfter(absl::Milliseconds(3), [&] {
      calls_before_destruction = calls.load();
      resolver_.reset();
      loop_->Stop();  // no further turn: the retired watches go with the loop's timers
      destroyed.Notify();
    });
  });
  ASSERT_TRUE(destroyed.WaitForNotificationWithTimeout(kWait));
  thread_.join();
  loop_.reset();  // ASan: nothing leaks, no completion reaches freed memory
  EXPECT_EQ(calls.load(), calls_before_destruction);
}

TEST_F(ResolverTest, DoneMayDestroyTheResolverAndTheRestAreDropped) {
  ASSERT_TRUE(CreateResolver(Using(shared_->address())).ok());
  ASSERT_TRUE(Mx("mx.test").ok());  // cached: the next three are delivered in one batch
  std::atomic<int> calls{0};
  absl::Notification first;
  OnLoop([&] {
    for (int i = 0; i < 3; ++i) {
      resolver_->ResolveMx("mx.test", [&](absl::StatusOr<MxAnswer>) {
        if (calls.fetch_add(1) == 0) {
          resolver_.reset();
          first.Notify();
        }
      });
    }
  });
  ASSERT_TRUE(first.WaitForNotificationWithTimeout(kWait));
  absl::Notification settled;
  OnLoop([&] { loop_->RunAfter(absl::Milliseconds(10), [&] { settled.Notify(); }); });
  ASSERT_TRUE(settled.WaitForNotificationWithTimeout(kWait));
  EXPECT_EQ(calls.load(), 1);
}

}  // namespace
}  // namespace facteur::dns
