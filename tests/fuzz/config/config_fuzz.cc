// Fuzz target "config": any bytes given to ParseConfig yield a Config or an error Status; no
// crash, no exception (toml++ throws; config.cc must catch everything), no sanitizer report.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<facteur::config::Config> config =
      facteur::config::ParseConfig(text, "fuzz.toml");
  if (config.ok()) {
    // A parsed config is usable: every listener address splits again, every path resolves.
    for (const facteur::config::ListenerOptions& listener : config->listeners) {
      if (!facteur::config::ParseListenAddress(listener.address).ok()) __builtin_trap();
      (void)config->ResolvePath(listener.unix_path());
    }
  }
  return 0;
}
