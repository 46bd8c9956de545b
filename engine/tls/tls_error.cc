#include "engine/tls/tls_error.h"

#include <openssl/err.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "engine/base/status.h"

namespace facteur::tls {

absl::Status OpenSslStatus(std::string_view operation, absl::StatusCode code) {
  std::string text(operation);
  text += ":";
  bool any = false;
  unsigned long error;
  while ((error = ERR_get_error()) != 0) {
    char buffer[256];
    ERR_error_string_n(error, buffer, sizeof(buffer));
    absl::StrAppend(&text, any ? "; " : " ", buffer);
    any = true;
  }
  if (!any) text += " unknown OpenSSL error";
  return absl::Status(code, text);
}

void ClearOpenSslErrors() { ERR_clear_error(); }

}  // namespace facteur::tls
