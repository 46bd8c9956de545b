// Fuzz target: bytes from a server, (1) through ReplyParser whole and in pieces, (2) into a
// ClientSession that sends messages whenever it is ready. Invariants: no crash; the parser
// gives the same replies however the bytes are cut; every reply has a code 200-599, text
// without CR or control characters, an enhanced code of the reply's class; the session reports
// every recipient of every message it was given, ends once, and never reports a delivery
// before it has written a message's final ".".
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/match.h"
#include "engine/smtp/client/client_session.h"
#include "tests/support/fake_stream.h"

namespace {

using facteur::mail::Reply;
using facteur::smtp::ClientSession;
using facteur::smtp::ReplyParser;

void Check(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

void CheckReply(const Reply& reply) {
  Check(reply.code >= 200 && reply.code <= 599, "code in 200-599");
  for (char c : reply.text) {
    const auto u = static_cast<unsigned char>(c);
    Check(c == '\n' || c == '\t' || (u >= 0x20 && u != 0x7f), "no control octet in text");
  }
  if (!reply.enhanced.empty()) {
    Check(reply.enhanced[0] == '0' + reply.code / 100, "enhanced code of the reply's class");
    Check(reply.enhanced.size() >= 5 && reply.enhanced.size() <= 9, "enhanced code length");
  }
}

void CheckParser(std::string_view input) {
  ReplyParser whole;
  std::vector<Reply> a;
  whole.Feed(input, a);
  ReplyParser pieces;
  std::vector<Reply> b;
  const size_t step = input.empty() ? 1 : 1 + static_cast<unsigned char>(input[0]) % 7;
  for (size_t i = 0; i < input.size(); i += step) pieces.Feed(input.substr(i, step), b);
  Check(whole.error() == pieces.error(), "same error whole and in pieces");
  Check(a.size() == b.size(), "same replies whole and in pieces");
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    CheckReply(a[i]);
    Check(a[i].code == b[i].code && a[i].enhanced == b[i].enhanced && a[i].text == b[i].text,
          "equal replies whole and in pieces");
  }
}

class Owner final : public ClientSession::Owner {
 public:
  explicit Owner(facteur::testing::FakeStream& stream) : stream_(stream) {}
  void OnReady(ClientSession& session) override { SendOne(session); }
  void OnTransactionDone(ClientSession& session,
                         facteur::smtp::TransactionResult result) override {
    Check(result.recipients.size() == 3, "one outcome per recipient");
    const bool dot_written = absl::StrContains(stream_.output, "\r\n.\r\n");
    for (const auto& outcome : result.recipients) {
      Check(!outcome.delivered() || dot_written, "no delivery before the final dot");
      CheckReply(outcome.reply);
    }
    ++done;
    if (session.ready()) {
      if (sent < 3) {
        SendOne(session);
      } else {
        session.Quit();
      }
    }
  }
  void OnSessionEnded(ClientSession&, const facteur::mail::DeliveryOutcome& why) override {
    Check(!ended, "ended once");
    CheckReply(why.reply);
    ended = true;
  }
  void SendOne(ClientSession& session) {
    facteur::smtp::OutboundMessage m;
    m.sender = "s@origin.test";
    m.recipients = {{"a@d.test", "SUCCESS", "rfc822;a@d.test"}, {"b@d.test", "", ""},
                    {"c@d.test", "", ""}};
    m.body = body;
    m.smtputf8 = sent == 1;
    m.eight_bit = true;
    m.dsn_envid = "E1";
    ++sent;
    session.Send(m);
  }

  facteur::testing::FakeStream& stream_;
  std::shared_ptr<const std::string> body =
      std::make_shared<const std::string>("Subject: x\r\n\r\n.line\r\nend");
  int sent = 0;
  int done = 0;
  bool ended = false;
};

// The input is the server's side; a 0x00 octet cuts it into separate reads, a 0x01 octet is
// an idle timeout. A leading 0x02 makes the TLS policy kRequired, 0x03 kNone (else
// kOpportunistic). TLS starts whenever the session asks for it.
void CheckSession(std::string_view input) {
  facteur::testing::FakeStream stream;
  Owner owner(stream);
  facteur::smtp::ClientOptions options;
  options.ehlo_name = "out.test";
  options.tls = facteur::smtp::TlsPolicy::kOpportunistic;
  if (!input.empty() && input[0] == '\x02') {
    options.tls = facteur::smtp::TlsPolicy::kRequired;
    input.remove_prefix(1);
  } else if (!input.empty() && input[0] == '\x03') {
    options.tls = facteur::smtp::TlsPolicy::kNone;
    input.remove_prefix(1);
  }
  auto session = std::make_unique<ClientSession>(stream, options, owner, "mx.test[192.0.2.1]");
  session->OnStart(nullptr);
  size_t start = 0;
  for (size_t i = 0; i <= input.size() && !stream.closed; ++i) {
    if (i < input.size() && input[i] != '\0' && input[i] != '\x01') continue;
    if (i > start) session->OnData(input.substr(start, i - start));
    start = i + 1;
    if (stream.closed) break;
    if (i < input.size() && input[i] == '\x01') session->OnIdleTimeout();
    if (stream.tls_requested && !stream.tls) {
      stream.tls = true;
      session->OnTlsStarted(facteur::io::TlsInfo{});
    }
  }
  session->OnClosed();
  Check(owner.ended, "OnSessionEnded after OnClosed");
  Check(owner.done == owner.sent, "every message reported");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  CheckParser(input);
  CheckSession(input);
  return 0;
}
