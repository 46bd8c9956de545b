// File: engine/main/sendmail.h
// The sendmail-compatible submission command (see sendmail.cc).
// Thread contract: main thread of a short-lived process.
#pragma once

#include <string>
#include <vector>

namespace facteur::cli {

struct SendmailContext {
  std::string default_socket_path;  // from the configuration and data directory
  std::string hostname;             // for the default sender, login@hostname
};

// `args` are the words after "sendmail". Returns the process exit status (sysexits.h).
int SendmailMain(const std::vector<std::string>& args, const SendmailContext& context);

}  // namespace facteur::cli
