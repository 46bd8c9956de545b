// File: engine/base/secret_file.cc
#include "engine/base/secret_file.h"

#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/base/status.h"

namespace facteur {

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, std::string_view what,
                                           std::string_view why) {
  const std::string name = absl::StrCat(ToAbsl(what), " ", path);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus(name, errno);
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s is open to group or others (mode %04o)%s%s: chmod 600 %s", name, st.st_mode & 07777,
        why.empty() ? "" : "; ", ToAbsl(why), path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus(name, errno);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace facteur
