// File: engine/main/sendmail.cc
// `facteur sendmail`: the sendmail(1) calling convention that PHP's mail(), cron and most
// scripts use. The message comes on standard input with local line ends; it is submitted over
// the server's Unix socket in one SMTP transaction, and the exit status is 0 only once the
// server answered 250, i.e. once the message is durably queued. Exit codes follow sysexits.h,
// as sendmail's do: EX_TEMPFAIL (75) when the server is down or answers 4xx.
// Thread contract: runs on the main thread of a short-lived process; blocking I/O is fine here.
#include "engine/main/sendmail.h"

#include <pwd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/base/status.h"
#include "engine/mail/address.h"
#include "engine/mail/header.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur sendmail [-t] [-i] [-f SENDER] [-F FULLNAME] [--socket PATH]\n"
    "                        [--data-dir DIR] [--config FILE] [RECIPIENT...]\n"
    "Reads a message on standard input and queues it through the server's Unix socket.\n"
    "  -t            also send to the To:, Cc: and Bcc: addresses of the message (Bcc: removed)\n"
    "  -i, -oi       a line holding a single dot does not end the message\n"
    "  -f SENDER     envelope sender (also -fSENDER, -r SENDER); default: login@hostname\n"
    "  -F FULLNAME   full name for the From: header added when the message has none\n"
    "  --socket PATH the server's Unix socket; default: the first unix: listener of the\n"
    "                configuration, under its data directory\n"
    "  -bm           read a message and send it (the default); -bi (newaliases) does nothing,\n"
    "                there are no aliases here; other -b modes (-bs, -bp, ...) are refused\n"
    "Other sendmail options (-odi, -oem, -v, -B, -N, ...) are accepted and ignored.\n"
    "Exit status: 0 once queued; 75 (EX_TEMPFAIL) when the server is unreachable or answers\n"
    "4xx; 69 (EX_UNAVAILABLE) when it refuses the message; 64 (EX_USAGE); 66 (EX_NOINPUT).\n";

class SmtpConnection {
 public:
  ~SmtpConnection() {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Connect(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return ErrnoStatus("socket", errno);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof(address.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
    }
    std::memcpy(address.sun_path, path.data(), path.size());
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to ", path, ": ", std::strerror(errno)));
    }
    timeval timeout{300, 0};  // RFC 5321 §4.5.3.2: the longest server wait (end of data: 10 min)
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    return absl::OkStatus();
  }

  absl::Status Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
      }
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  // Reads one whole (possibly multiline) reply; returns its code and last line.
  absl::StatusOr<std::pair<int, std::string>> ReadReply() {
    for (;;) {
      size_t lf = buffer_.find('\n');
      while (lf != std::string::npos) {
        std::string line = buffer_.substr(0, lf);
        buffer_.erase(0, lf + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.size() < 3) return absl::UnavailableError("malformed reply from server");
        if (line.size() == 3 || line[3] == ' ') {
          int code = 0;
          for (int i = 0; i < 3; ++i) code = code * 10 + (line[i] - '0');
          return std::make_pair(code, line);
        }
        lf = buffer_.find('\n');
      }
      char chunk[4096];
      ssize_t n = ::recv(fd_, chunk, sizeof(chunk), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return absl::UnavailableError("the server closed the connection");
      buffer_.append(chunk, static_cast<size_t>(n));
    }
  }

 private:
  int fd_ = -1;
  std::string buffer_;
};

struct Options {
  bool extract_recipients = false;  // -t
  bool dot_ends_message = true;     // cleared by -i / -oi
  std::string sender;
  std::string full_name;
  std::string socket_path;
  std::vector<std::string> recipients;
};

// sendmail options that take a value as the next word when it is not attached.
bool TakesValue(std::string_view option) {
  return option == "-f" || option == "-r" || option == "-F" || option == "-B" ||
         option == "-N" || option == "-R" || option == "-V" || option == "-X" || option == "-C" ||
         option == "-L" || option == "-q" || option == "-h";
}

std::string DefaultSender(const std::string& hostname) {
  std::string login = "nobody";
  if (const passwd* pw = ::getpwuid(::getuid()); pw != nullptr && pw->pw_name != nullptr) {
    login = pw->pw_name;
  }
  return absl::StrCat(login, "@", hostname);
}

// Standard input → CRLF lines. Without -i, a line holding only "." ends the message.
std::string ReadMessage(std::istream& in, bool dot_ends_message) {
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string message;
  message.reserve(raw.size() + raw.size() / 40);
  size_t start = 0;
  while (start < raw.size()) {
    size_t lf = raw.find('\n', start);
    size_t end = lf == std::string::npos ? raw.size() : lf;
    std::string_view line(raw.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (dot_ends_message && line == ".") break;
    message.append(line);
    message.append("\r\n");
    if (lf == std::string::npos) break;
    start = lf + 1;
  }
  return message;
}

// RFC 5321 §4.5.2: a line starting with a dot gets one more.
std::string DotStuff(std::string_view message) {
  std::string out;
  out.reserve(message.size() + 64);
  bool line_start = true;
  for (char c : message) {
    if (line_start && c == '.') out.push_back('.');
    out.push_back(c);
    line_start = c == '\n';
  }
  return out;
}

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

}  // namespace

int SendmailMain(const std::vector<std::string>& args, const SendmailContext& context) {
  Options options;
  options.socket_path = context.default_socket_path;
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (options_done || arg.empty() || arg[0] != '-') {
      options.recipients.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (arg == "-t") {
      options.extract_recipients = true;
    } else if (arg == "-i" || arg == "-oi") {
      options.dot_ends_message = false;
    } else if (arg == "-bi") {
      // newaliases: this relay keeps no alias database (it delivers no local mail).
      return 0;
    } else if (absl::StartsWith(arg, "-b") && arg != "-bm") {
      // -bs (SMTP on standard input), -bp (the queue), -bv, -bt, -bd …: another mode than
      // "read a message and send it"; sending standard input as a message would be wrong.
      std::cerr << "facteur sendmail: " << arg << " is not supported (only -bm, the default, "
                << "and -bi, which does nothing here; the queue: facteur queue ls)\n";
      return EX_USAGE;
    } else if (arg == "--socket" || arg == "--data-dir" || arg == "--config") {
      if (i + 1 >= args.size()) {
        std::cerr << "facteur sendmail: " << arg << " needs a value\n" << kUsage;
        return EX_USAGE;
      }
      if (arg == "--socket") options.socket_path = args[i + 1];
      ++i;  // --data-dir and --config were applied by the caller
    } else if (arg.size() >= 2 && (arg[1] == 'f' || arg[1] == 'r' || arg[1] == 'F')) {
      std::string value;
      if (arg.size() > 2) {
        value = arg.substr(2);
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        std::cerr << "facteur sendmail: " << arg << " needs a value\n" << kUsage;
        return EX_USAGE;
      }
      (arg[1] == 'F' ? options.full_name : options.sender) = value;
    } else if (TakesValue(arg) && i + 1 < args.size()) {
      ++i;  // a sendmail option we accept and ignore, with its value
    }
    // Any other dash option (-odi, -oem, -v, -Ox=y …) is accepted and ignored.
  }
  if (options.sender.empty()) options.sender = DefaultSender(context.hostname);
  // "<>" or "" means the null sender, as with sendmail -f '<>'.
  if (options.sender == "<>") options.sender.clear();
  if (absl::StartsWith(options.sender, "<") && absl::EndsWith(options.sender, ">")) {
    options.sender = options.sender.substr(1, options.sender.size() - 2);
  }

  std::string message = ReadMessage(std::cin, options.dot_ends_message);
  mail::HeaderSection section = mail::ParseHeaderSection(message);
  if (options.extract_recipients) {
    std::optional<size_t> bcc_begin, bcc_end;
    for (const mail::HeaderField& field : section.fields) {
      for (const char* name : {"To", "Cc", "Bcc"}) {
        if (!absl::EqualsIgnoreCase(ToAbsl(field.name), name)) continue;
        absl::StatusOr<std::vector<mail::Mailbox>> list =
            mail::ParseAddressList(mail::UnfoldedValue(field));
        if (list.ok()) {
          for (const mail::Mailbox& m : *list) options.recipients.push_back(m.ToString());
        }
        if (std::string_view(name) == "Bcc" && !bcc_begin.has_value()) {
          bcc_begin = static_cast<size_t>(field.raw.data() - message.data());
          bcc_end = *bcc_begin + field.raw.size();
        }
      }
    }
    if (bcc_begin.has_value()) {  // Bcc: recipients must not see each other
      message.erase(*bcc_begin, *bcc_end - *bcc_begin);
      section = mail::ParseHeaderSection(message);
    }
  }
  if (options.recipients.empty()) {
    std::cerr << "facteur sendmail: no recipients (give them as arguments, or use -t)\n";
    return EX_NOINPUT;
  }
  if (!mail::FindField(section, "From").has_value() && !options.sender.empty()) {
    std::string from = options.full_name.empty()
                           ? absl::StrCat("From: ", options.sender, "\r\n")
                           : absl::StrCat("From: \"", options.full_name, "\" <", options.sender,
                                          ">\r\n");
    message.insert(0, from);
  }

  SmtpConnection smtp;
  auto fail = [](std::string_view what, const absl::Status& status) {
    std::cerr << "facteur sendmail: " << what << ": " << status.message() << "\n";
    return EX_TEMPFAIL;
  };
  // Returns the exit code for a refusal: 4xx → EX_TEMPFAIL, 5xx → EX_UNAVAILABLE.
  auto refused = [](std::string_view what, const std::pair<int, std::string>& reply) {
    std::cerr << "facteur sendmail: " << what << ": " << reply.second << "\n";
    return reply.first >= 500 ? EX_UNAVAILABLE : EX_TEMPFAIL;
  };
  if (absl::Status s = smtp.Connect(options.socket_path); !s.ok()) {
    return fail("server unreachable", s);
  }
  absl::StatusOr<std::pair<int, std::string>> reply = smtp.ReadReply();
  if (!reply.ok()) return fail("greeting", reply.status());
  if (reply->first != 220) return refused("greeting", *reply);

  bool utf8 = !IsAscii(options.sender);
  for (const std::string& r : options.recipients) utf8 = utf8 || !IsAscii(r);
  const bool eight_bit = !IsAscii(message);
  std::string commands = absl::StrCat("EHLO localhost\r\nMAIL FROM:<", options.sender, ">",
                                      eight_bit ? " BODY=8BITMIME" : "", utf8 ? " SMTPUTF8" : "",
                                      "\r\n");
  for (const std::string& r : options.recipients) absl::StrAppend(&commands, "RCPT TO:<", r, ">\r\n");
  absl::StrAppend(&commands, "DATA\r\n");
  // RFC 2920: the server supports PIPELINING (it is ours); send the envelope in one write.
  if (absl::Status s = smtp.Send(commands); !s.ok()) return fail("send", s);
  if (!(reply = smtp.ReadReply()).ok()) return fail("EHLO", reply.status());
  if (reply->first != 250) return refused("EHLO", *reply);
  if (!(reply = smtp.ReadReply()).ok()) return fail("MAIL", reply.status());
  if (reply->first != 250) return refused("MAIL FROM", *reply);
  size_t accepted = 0;
  int worst = 0;
  for (const std::string& r : options.recipients) {
    if (!(reply = smtp.ReadReply()).ok()) return fail("RCPT", reply.status());
    if (reply->first == 250 || reply->first == 251) {
      ++accepted;
    } else {
      worst = std::max(worst, refused(absl::StrCat("<", r, ">"), *reply));
    }
  }
  if (!(reply = smtp.ReadReply()).ok()) return fail("DATA", reply.status());
  if (reply->first != 354) {
    // All recipients refused, or DATA refused: nothing was queued.
    return worst != 0 ? worst : refused("DATA", *reply);
  }
  if (absl::Status s = smtp.Send(absl::StrCat(DotStuff(message), ".\r\n")); !s.ok()) {
    return fail("send", s);
  }
  if (!(reply = smtp.ReadReply()).ok()) return fail("end of data", reply.status());
  if (reply->first != 250) return refused("message", *reply);
  (void)smtp.Send("QUIT\r\n");
  (void)smtp.ReadReply();
  if (accepted != options.recipients.size()) {
    // Queued for the others: a retry of the whole message would send it to them twice.
    std::cerr << "facteur sendmail: queued for " << accepted << " of " << options.recipients.size()
              << " recipients\n";
    return worst;
  }
  return 0;
}

}  // namespace facteur::cli
