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

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/base/message_id.h"
#include "engine/base/status.h"
#include "engine/mail/address.h"
#include "engine/mail/header.h"
#include "engine/mail/mime.h"
#include "engine/mail/text.h"

namespace facteur::cli {
namespace {

constexpr char kUsage[] =
    "usage: facteur sendmail [-t] [-i] [-f SENDER] [-F FULLNAME] [--socket PATH]\n"
    "                        [--data-dir DIR] [--config FILE] [RECIPIENT...]\n"
    "Reads a message on standard input and queues it through the server's Unix socket.\n"
    "  -t            also send to the To:, Cc: and Bcc: addresses of the message (Bcc: removed)\n"
    "  -i, -oi       a line holding a single dot does not end the message\n"
    "  -f SENDER     envelope sender (also -fSENDER, -r SENDER); default: login@hostname;\n"
    "                -f '' or -f '<>': the null sender\n"
    "  -F FULLNAME   full name for the From: header added when the message has none\n"
    "  --socket PATH the server's Unix socket; default: the first unix: listener of the\n"
    "                configuration, under its data directory\n"
    "  -bm           read a message and send it (the default); -bi (newaliases) does nothing,\n"
    "                there are no aliases here; other -b modes (-bs, -bp, ...) are refused\n"
    "Other sendmail options (-odi, -oem, -v, -B, -N, -O opt=val, ...) are accepted and ignored.\n"
    "Each RECIPIENT may be an address list (\"a@x, Bob <b@x>\"). An address without a domain\n"
    "(\"root\") gets @HOSTNAME of the configuration, in the envelope and in the From:, To:, Cc:\n"
    "... fields. Date: and Message-ID: are added when missing; a leading mbox \"From \" line is\n"
    "dropped. Recipients past the server's limit per message go in further transactions.\n"
    "Lines over 998 octets, which SMTP does not carry, are fitted, the content unchanged:\n"
    "header fields are folded at their white space; a body (HTML on one line) is re-encoded,\n"
    "text in quoted-printable, binary and other types in base64 (base64 is cut again at 76\n"
    "columns), each part of a multipart on its own.\n"
    "Exit status: 0 once queued, for every recipient, or for some when the others were refused\n"
    "for good (5xx: named on standard error; a caller that retried would send the message twice\n"
    "to the rest); 75 (EX_TEMPFAIL) when the server is unreachable or answers 4xx (standard\n"
    "error says when some recipients have the message already); 69 (EX_UNAVAILABLE) when it\n"
    "refuses the message; 64 (EX_USAGE); 65 (EX_DATAERR)\n"
    "when -t finds a To:, Cc: or Bcc: field it cannot read, or a line too long remains (a\n"
    "field with no white space, an attached message, a signed part); 66 (EX_NOINPUT).\n";

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
  bool sender_given = false;        // -f / -r, even empty (the null sender)
  bool dot_ends_message = true;     // cleared by -i / -oi
  std::string sender;
  std::string full_name;
  std::string socket_path;
  std::vector<std::string> recipients;
};

// sendmail options that take a value as the next word when it is not attached.
bool TakesValue(std::string_view option) {
  return option == "-f" || option == "-r" || option == "-F" || option == "-B" || option == "-O" ||
         option == "-p" ||
         option == "-N" || option == "-R" || option == "-V" || option == "-X" || option == "-C" ||
         option == "-L" || option == "-q" || option == "-h";
}

// The longest -F name taken, in octets: the rest is dropped. Longer is no name but abuse, and a
// single word of it could not be folded under the 998-octet line limit (RFC 5322 §2.1.1).
constexpr size_t kMaxFullName = 256;

// The -F full name as the display name of an added From: (RFC 5322 §3.4), as words to fold
// between: a quoted-string, with quotes and backslashes escaped (§3.2.4) and line ends and other
// controls made spaces, so that a name from a web form can never end the field and start
// another; RFC 2047 encoded-words when it is not ASCII (UTF-8, at most 75 characters a word,
// §2), whatever the octets are.
std::vector<std::string> DisplayNameWords(std::string_view full_name) {
  std::string clean;
  for (char c : full_name.substr(0, kMaxFullName)) {
    const auto byte = static_cast<unsigned char>(c);
    clean.push_back(byte < 0x20 || byte == 0x7f ? ' ' : c);
  }
  if (std::all_of(clean.begin(), clean.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    std::string quoted = "\"";
    for (char c : clean) {
      if (c == '"' || c == '\\') quoted.push_back('\\');
      quoted.push_back(c);
    }
    quoted.push_back('"');
    // Folding white space may stand for any space of a quoted-string (§3.2.4).
    return absl::StrSplit(quoted, ' ');
  }
  // 45 octets make 60 characters of base64: with "=?UTF-8?B?" and "?=", 72. Cut between
  // characters where the octets are UTF-8 (RFC 2047 §5 (3)); anywhere in a run of octets that
  // begins no character.
  std::vector<std::string> words;
  size_t start = 0;
  while (start < clean.size()) {
    size_t end = mail::Utf8CutAtOrBefore(clean, std::min(clean.size(), start + 45), start);
    if (end == start) end = std::min(clean.size(), start + 45);
    words.push_back(absl::StrCat("=?UTF-8?B?", absl::Base64Escape(clean.substr(start, end - start)),
                                 "?="));
    start = end;
  }
  return words;
}

// "From: NAME <author>\r\n", folded before a word that would take its line past 78 characters
// (RFC 5322 §2.1.1), never before an empty one: a folded line is never only white space.
std::string FromField(std::string_view full_name, std::string_view author) {
  std::vector<std::string> words = DisplayNameWords(full_name);
  words.push_back(absl::StrCat("<", ToAbsl(author), ">"));
  std::string field = "From:";
  size_t line = field.size();
  for (const std::string& word : words) {
    if (line + 1 + word.size() > 78 && !word.empty() && line > 1) {
      field.append("\r\n");
      line = 0;
    }
    field.push_back(' ');
    field.append(word);
    line += 1 + word.size();
  }
  field.append("\r\n");
  return field;
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

// The address-list header fields whose addresses are qualified (RFC 5322 §3.6.2, §3.6.3,
// §3.6.6), and those of them that name recipients for -t.
constexpr std::string_view kAddressFields[] = {"From", "Sender", "Reply-To", "To", "Cc", "Bcc"};
constexpr std::string_view kRecipientFields[] = {"To", "Cc", "Bcc"};

// Whether `field` has one of `names` (case-insensitive, RFC 5322 §1.2.2).
bool IsOneOf(const mail::HeaderField& field, std::span<const std::string_view> names) {
  return std::any_of(names.begin(), names.end(), [&](std::string_view name) {
    return absl::EqualsIgnoreCase(ToAbsl(field.name), ToAbsl(name));
  });
}

// The items of an address list split at its top-level commas: not inside a quoted string, a
// comment or angle brackets (RFC 5322 §3.2.4, §3.2.2, §3.4).
std::vector<std::string_view> SplitAddressList(std::string_view value) {
  std::vector<std::string_view> items;
  int comment_depth = 0;
  bool quoted = false;
  bool in_angle = false;
  size_t start = 0;
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    if (c == '\\' && (quoted || comment_depth > 0)) {
      ++i;  // quoted-pair
    } else if (quoted) {
      quoted = c != '"';
    } else if (comment_depth > 0) {
      comment_depth += c == '(' ? 1 : c == ')' ? -1 : 0;
    } else if (c == '"') {
      quoted = true;
    } else if (c == '(') {
      comment_depth = 1;
    } else if (c == '<' || c == '>') {
      in_angle = c == '<';
    } else if (c == ',' && !in_angle) {
      items.push_back(value.substr(start, i - start));
      start = i + 1;
    }
  }
  items.push_back(value.substr(start));
  return items;
}

// One address of a list with "@hostname" after a local part that has no domain, as Postfix's
// append_at_myorigin does for local submissions: "root" → "root@host", "root (Cron Daemon)" →
// "root@host (Cron Daemon)", "Root <root>" → "Root <root@host>".
std::string QualifiedItem(std::string_view item, std::string_view hostname) {
  if (item.find('@') != std::string_view::npos) return std::string(item);
  const size_t close = item.rfind('>');
  if (close != std::string_view::npos && item.rfind('<', close) != std::string_view::npos) {
    return absl::StrCat(ToAbsl(item.substr(0, close)), "@", ToAbsl(hostname),
                        ToAbsl(item.substr(close)));
  }
  const size_t begin = item.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return std::string(item);
  size_t end = item.find_first_of(" \t\r\n(", begin);
  if (end == std::string_view::npos) end = item.size();
  return absl::StrCat(ToAbsl(item.substr(0, end)), "@", ToAbsl(hostname),
                      ToAbsl(item.substr(end)));
}

// An address list as it goes out: `value` itself when it reads as one; else every address
// without a domain qualified (RFC 5321 §4.1.2 and RFC 5322 §3.4 have no address without one),
// the addresses on lines of their own (RFC 5322 §2.2.3 folding) so that no line grows past the
// limit. nullopt when even that does not read.
std::optional<std::string> QualifiedAddressList(std::string_view value,
                                                std::string_view hostname) {
  if (mail::ParseAddressList(value).ok()) return std::string(value);
  std::vector<std::string> items;
  for (std::string_view item : SplitAddressList(value)) {
    items.push_back(std::string(
        ToStd(absl::StripAsciiWhitespace(QualifiedItem(item, hostname)))));
  }
  std::string qualified = absl::StrJoin(items, ",\r\n ");
  if (!mail::ParseAddressList(qualified).ok()) return std::nullopt;
  return qualified;
}

// The addresses of one recipient argument or header value, qualified; an error naming `what`
// when they cannot be read.
absl::StatusOr<std::vector<std::string>> Addresses(std::string_view value,
                                                   std::string_view hostname,
                                                   std::string_view what) {
  std::optional<std::string> qualified = QualifiedAddressList(value, hostname);
  absl::StatusOr<std::vector<mail::Mailbox>> list =
      qualified.has_value() ? mail::ParseAddressList(*qualified)
                            : absl::InvalidArgumentError("not an address list");
  if (!list.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), " \"", ToAbsl(value),
                                                   "\" cannot be read as addresses: ",
                                                   list.status().message()));
  }
  std::vector<std::string> out;
  for (const mail::Mailbox& m : *list) out.push_back(m.ToString());
  return out;
}

// Rewrites the address fields of `message` whose addresses lack a domain (QualifiedItem).
// Fields that cannot be read are left as they are: the server judges them.
void QualifyAddressFields(std::string& message, std::string_view hostname) {
  struct Edit {
    size_t offset;
    size_t length;
    std::string field;
  };
  std::vector<Edit> edits;  // all found before any is made: a longer field may move the text
  const mail::HeaderSection section = mail::ParseHeaderSection(message);
  for (const mail::HeaderField& field : section.fields) {
    if (!IsOneOf(field, kAddressFields)) continue;
    const std::string value = mail::UnfoldedValue(field);
    if (mail::NamesNoMailbox(value)) continue;
    std::optional<std::string> qualified = QualifiedAddressList(value, hostname);
    if (!qualified.has_value() || *qualified == value) continue;
    edits.push_back({static_cast<size_t>(field.raw.data() - message.data()), field.raw.size(),
                     absl::StrCat(ToAbsl(field.name), ": ", *qualified, "\r\n")});
  }
  for (auto edit = edits.rbegin(); edit != edits.rend(); ++edit) {
    message.replace(edit->offset, edit->length, edit->field);
  }
}

// An mbox "From " envelope line (git format-patch, mbox tools) rather than a field: "From"
// then a space, and no colon after the white space (obsolete "From : x" is a field, RFC 5322
// §4.5.8).
bool StartsWithMboxFromLine(std::string_view message) {
  if (!absl::StartsWith(ToAbsl(message), "From ")) return false;
  const size_t next = message.find_first_not_of(" \t", 4);
  return next == std::string_view::npos || message[next] != ':';
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
      options.sender_given |= arg[1] != 'F';
    } else if (TakesValue(arg) && i + 1 < args.size()) {
      ++i;  // a sendmail option we accept and ignore, with its value
    }
    // Any other dash option (-odi, -oem, -v, -Ox=y …) is accepted and ignored.
  }
  // "-f ''" and "-f '<>'" mean the null sender (autoresponders use it against loops).
  if (options.sender == "<>") options.sender.clear();
  if (absl::StartsWith(options.sender, "<") && absl::EndsWith(options.sender, ">")) {
    options.sender = options.sender.substr(1, options.sender.size() - 2);
  }
  if (!options.sender_given) options.sender = DefaultSender(context.hostname);
  if (!options.sender.empty() && options.sender.find('@') == std::string::npos) {
    options.sender = QualifiedItem(options.sender, context.hostname);
  }
  // It goes into MAIL FROM:<...> and the From: this adds: anything but an address (a line end
  // from a web form's "-f $email") would add commands or fields of its own.
  if (!options.sender.empty()) {
    if (absl::Status valid = mail::ParseMailbox(options.sender, /*allow_utf8=*/true).status();
        !valid.ok()) {
      std::cerr << "facteur sendmail: -f: not a mail address (" << valid.message() << ")\n";
      return EX_USAGE;
    }
  }
  // Each argument is an address list ("a@x, b@x", "Bob <bob@x>"), cron's "root" included.
  std::vector<std::string> recipients;
  for (const std::string& argument : options.recipients) {
    absl::StatusOr<std::vector<std::string>> addresses =
        Addresses(argument, context.hostname, "recipient");
    if (!addresses.ok()) {
      std::cerr << "facteur sendmail: " << addresses.status().message() << "\n";
      return EX_USAGE;
    }
    recipients.insert(recipients.end(), addresses->begin(), addresses->end());
  }

  std::string message = ReadMessage(std::cin, options.dot_ends_message);
  // An mbox "From " line (git format-patch, mbox tools) is an envelope line, not a field: as
  // sendmail and Postfix do, it is dropped instead of ending the header section.
  if (StartsWithMboxFromLine(message)) message.erase(0, message.find("\r\n") + 2);
  QualifyAddressFields(message, context.hostname);
  // Applications write lines of any length (an HTML body on one line, a To: field naming a
  // hundred addresses); SMTP takes 1,000 octets (RFC 5321 §4.5.3.1.6) and the server refuses
  // longer. Folded or re-encoded here, as the message's reader will see it unchanged, before
  // the server signs it.
  mail::FitLongLines(message);
  // What could not be fitted, the server would refuse once all of it has been sent: said here.
  if (const size_t line = mail::FirstLongLine(message); line != 0) {
    std::cerr << "facteur sendmail: line " << line << " of the message is longer than SMTP allows ("
              << mail::kMaxLineOctets
              << " octets, RFC 5321 §4.5.3.1.6) and cannot be folded or re-encoded without "
                 "changing it (a header field with no white space to fold at, an attached "
                 "message, a signed part)\n";
    return EX_DATAERR;
  }
  mail::HeaderSection section = mail::ParseHeaderSection(message);
  if (options.extract_recipients) {
    for (const mail::HeaderField& field : section.fields) {
      if (!IsOneOf(field, kRecipientFields)) continue;
      const std::string value = mail::UnfoldedValue(field);
      if (mail::NamesNoMailbox(value)) continue;
      absl::StatusOr<std::vector<std::string>> addresses =
          Addresses(value, context.hostname, absl::StrCat(ToAbsl(field.name), ":"));
      if (!addresses.ok()) {  // sent to the others only, it would look sent to all
        std::cerr << "facteur sendmail: " << addresses.status().message() << "\n";
        return EX_DATAERR;
      }
      recipients.insert(recipients.end(), addresses->begin(), addresses->end());
    }
    // Bcc: fields go at the server, which drops them from every message (RFC 5322 §3.6.3).
  }
  // Once each (To: and Cc: may both name one), domains compared without case (RFC 5321 §2.4).
  {
    absl::flat_hash_set<std::string> seen;
    std::vector<std::string> unique;
    for (std::string& r : recipients) {
      const size_t at = r.rfind('@');
      if (seen.insert(absl::StrCat(r.substr(0, at), absl::AsciiStrToLower(r.substr(at))))
              .second) {
        unique.push_back(std::move(r));
      }
    }
    recipients = std::move(unique);
  }
  if (recipients.empty()) {
    std::cerr << "facteur sendmail: no recipients (give them as arguments, or use -t)\n";
    return EX_NOINPUT;
  }
  // What the server would add, added here once: when the recipients take more than one
  // transaction (AddedFields), they all get the same message.
  std::string added;
  if (!mail::FindField(section, "From").has_value()) {
    const std::string author =
        options.sender.empty() ? DefaultSender(context.hostname) : options.sender;
    absl::StrAppend(&added, options.full_name.empty()
                                ? absl::StrCat("From: ", author, "\r\n")
                                : FromField(options.full_name, author));
  }
  const absl::Time now = absl::Now();
  if (!mail::FindField(section, "Date").has_value()) {
    absl::StrAppend(&added, "Date: ", mail::FormatRfc5322Date(now), "\r\n");
  }
  if (!mail::FindField(section, "Message-ID").has_value()) {
    absl::StrAppend(&added, "Message-ID: <", MessageId::Generate(now).ToString(), "@",
                    context.hostname, ">\r\n");
  }
  if (!added.empty()) {
    bool needs_separator = false;
    const size_t at = mail::HeaderInsertPosition(message, section, &needs_separator);
    if (needs_separator) added.append("\r\n");  // a message of body only keeps it a body
    message.insert(at, added);
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
  for (const std::string& r : recipients) utf8 = utf8 || !IsAscii(r);
  const bool eight_bit = !IsAscii(message);
  const std::string mail_from = absl::StrCat("MAIL FROM:<", options.sender, ">",
                                             eight_bit ? " BODY=8BITMIME" : "",
                                             utf8 ? " SMTPUTF8" : "", "\r\n");
  const std::string data = absl::StrCat(DotStuff(message), ".\r\n");
  size_t accepted = 0;
  int worst = 0;
  // Queued for some already. When the others were refused for good, the status is 0: the
  // message is in the queue, a retry could not reach them, and a caller that reads a non-zero
  // status as "not sent" would submit it again, to those queued a second time (PHP's mail()
  // returns false and scripts retry). A transient failure keeps its 75, since those recipients
  // might be reached later; the count tells what a retry of the whole message would repeat.
  auto partial = [&](int code) {
    if (accepted == 0) return code;
    std::cerr << "facteur sendmail: queued for " << accepted << " of " << recipients.size()
              << " recipients; not for the others (see above)\n";
    return code == EX_UNAVAILABLE ? 0 : code;
  };
  std::vector<std::string> remaining = recipients;
  bool greeted = false;
  while (!remaining.empty()) {
    // RFC 2920: the server supports PIPELINING (it is ours); the envelope goes in one write.
    std::string commands = greeted ? mail_from : absl::StrCat("EHLO localhost\r\n", mail_from);
    for (const std::string& r : remaining) absl::StrAppend(&commands, "RCPT TO:<", r, ">\r\n");
    absl::StrAppend(&commands, "DATA\r\n");
    if (absl::Status s = smtp.Send(commands); !s.ok()) return partial(fail("send", s));
    if (!greeted) {
      if (!(reply = smtp.ReadReply()).ok()) return fail("EHLO", reply.status());
      if (reply->first != 250) return refused("EHLO", *reply);
      greeted = true;
    }
    if (!(reply = smtp.ReadReply()).ok()) return partial(fail("MAIL", reply.status()));
    if (reply->first != 250) return partial(refused("MAIL FROM", *reply));
    // RFC 5321 §4.5.3.1.10: recipients refused 452 (too many in this transaction) go in the
    // next one.
    std::vector<std::string> next;
    std::pair<int, std::string> too_many;  // the last 452
    size_t taken = 0;
    for (const std::string& r : remaining) {
      if (!(reply = smtp.ReadReply()).ok()) return partial(fail("RCPT", reply.status()));
      if (reply->first == 250 || reply->first == 251) {
        ++taken;
      } else if (reply->first == 452) {
        next.push_back(r);
        too_many = *reply;
      } else {
        worst = std::max(worst, refused(absl::StrCat("<", r, ">"), *reply));
      }
    }
    if (!(reply = smtp.ReadReply()).ok()) return partial(fail("DATA", reply.status()));
    if (reply->first != 354) {
      // No recipient taken (or DATA refused): this transaction queued nothing, and one with
      // the same recipients would not do better.
      if (!next.empty()) worst = std::max(worst, refused("RCPT", too_many));
      return partial(worst != 0 ? worst : refused("DATA", *reply));
    }
    if (absl::Status s = smtp.Send(data); !s.ok()) return partial(fail("send", s));
    if (!(reply = smtp.ReadReply()).ok()) return partial(fail("end of data", reply.status()));
    if (reply->first != 250) return partial(refused("message", *reply));
    accepted += taken;
    remaining = std::move(next);
  }
  (void)smtp.Send("QUIT\r\n");
  (void)smtp.ReadReply();
  if (accepted != recipients.size()) return partial(worst);
  return 0;
}

}  // namespace facteur::cli
