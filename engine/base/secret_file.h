// File: engine/base/secret_file.h
// Reading a file that holds a secret (a DKIM private key, the admin token): refused, naming the
// file and the fix, when group or others may read it — whoever reads it holds the secret.
// Thread contract: a plain blocking function; call it off the I/O threads (at start, reload or
// in a CLI command).
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace facteur {

// The bytes of `path`. `what` names it in errors ("DKIM key file"); `why`, when not empty, says
// what a reader could do with it. FailedPrecondition when its mode lets group or others in;
// NotFound / PermissionDenied (through ErrnoStatus) when it cannot be read.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, std::string_view what,
                                           std::string_view why = "");

}  // namespace facteur
