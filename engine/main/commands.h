// File: engine/main/commands.h
// The subcommands of the facteur binary. Each takes the words after its name and returns the
// process exit status.
// Thread contract: main thread.
#pragma once

#include <string>
#include <vector>

namespace facteur::cli {

int ServeMain(const std::vector<std::string>& args);
int QueueMain(const std::vector<std::string>& args);
int AccountMain(const std::vector<std::string>& args);
int SuppressionMain(const std::vector<std::string>& args);
int DkimMain(const std::vector<std::string>& args);
int ReputationMain(const std::vector<std::string>& args);
int SiteMain(const std::vector<std::string>& args);
int TopMain(const std::vector<std::string>& args);
int ConfigMain(const std::vector<std::string>& args);
int ReloadMain(const std::vector<std::string>& args);
int VersionMain(const std::vector<std::string>& args);
int SendmailCommand(const std::vector<std::string>& args);

}  // namespace facteur::cli
