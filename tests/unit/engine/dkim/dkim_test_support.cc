// File: tests/unit/engine/dkim/dkim_test_support.cc
#include "tests/unit/engine/dkim/dkim_test_support.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

#define _Bool bool
#include <dkim.h>
#undef _Bool

// libopendkim 2.11's dkim_free() releases the key of an RSA signature only: every Ed25519
// signature the opendkim engine makes leaks the EVP_PKEY that dkim_privkey_load() parsed (one of
// the reasons native is the default engine). Not ours to fix: LeakSanitizer is told so, with
// full stacks so that the suppression sees libopendkim's frames under OpenSSL's allocations.
extern "C" const char* __lsan_default_suppressions() { return "leak:dkim_privkey_load\n"; }
extern "C" const char* __lsan_default_options() { return "fast_unwind_on_malloc=0"; }

namespace facteur::dkim::testing {
namespace {

constexpr char kVerifier[] = R"PY(
import json, sys
import dkim
manifest = json.load(open(sys.argv[1]))
records = manifest["records"]
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip("."), "").encode()
results = []
for path in manifest["messages"]:
    data = open(path, "rb").read()
    d = dkim.DKIM(data)
    headers, _ = dkim.rfc822_parse(data)
    signatures = [dkim.util.parse_tag_value(v) for k, v in headers if k.lower() == b"dkim-signature"]
    count = len(signatures)
    failed = []
    checked = 0
    for i in range(count):
        name = "%s._domainkey.%s" % (signatures[i][b"s"].decode(), signatures[i][b"d"].decode())
        if name not in records:
            continue  # a signature by someone else (already on the message)
        checked += 1
        try:
            if not d.verify(idx=i, dnsfunc=dnsfunc):
                failed.append("signature %d failed" % i)
        except Exception as e:
            failed.append("signature %d: %s" % (i, e))
    if checked == 0:
        failed.append("no signature of ours")
    results.append("; ".join(failed))
print(json.dumps(results))
)PY";

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The DNS stand-in of the libopendkim verifier: one map per test process is enough.
const DnsRecords* g_records = nullptr;

DKIM_CBSTAT KeyLookup(DKIM* /*dkim*/, DKIM_SIGINFO* sig, u_char* buf, size_t buflen) {
  std::string name = absl::StrCat(reinterpret_cast<const char*>(dkim_sig_getselector(sig)),
                                  "._domainkey.",
                                  reinterpret_cast<const char*>(dkim_sig_getdomain(sig)));
  auto it = g_records->find(name);
  if (it == g_records->end()) return DKIM_CBSTAT_NOTFOUND;
  if (it->second.size() + 1 > buflen) return DKIM_CBSTAT_ERROR;
  std::memcpy(buf, it->second.c_str(), it->second.size() + 1);
  return DKIM_CBSTAT_CONTINUE;
}

}  // namespace

void AddRecord(const SigningKey& key, DnsRecords* records) {
  (*records)[absl::StrCat(key.selector, "._domainkey.", key.domain)] = key.key->DnsRecord();
}

std::vector<std::string> DkimpyVerify(const std::vector<std::string>& messages,
                                      const DnsRecords& records) {
  char dir_template[] = "/tmp/facteur-dkimpy-XXXXXX";
  const char* dir = mkdtemp(dir_template);
  if (dir == nullptr) {
    ADD_FAILURE() << "mkdtemp failed";
    return {};
  }
  nlohmann::json manifest;
  manifest["records"] = nlohmann::json::object();
  for (const auto& [name, value] : records) manifest["records"][name] = value;
  manifest["messages"] = nlohmann::json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    std::string path = absl::StrCat(dir, "/", i, ".eml");
    std::ofstream(path, std::ios::binary) << messages[i];
    manifest["messages"].push_back(path);
  }
  const std::string manifest_path = absl::StrCat(dir, "/manifest.json");
  const std::string script_path = absl::StrCat(dir, "/verify.py");
  const std::string output_path = absl::StrCat(dir, "/out.json");
  std::ofstream(manifest_path) << manifest.dump();
  std::ofstream(script_path) << kVerifier;
  // Debian's python: the first python3 on PATH may not see python3-dkim (deps.md).
  const std::string command = absl::StrCat("/usr/bin/python3 ", script_path, " ", manifest_path,
                                           " > ", output_path);
  int rc = std::system(command.c_str());
  std::vector<std::string> results;
  if (rc != 0) {
    ADD_FAILURE() << "dkimpy verifier exited with " << rc;
  } else {
    nlohmann::json out = nlohmann::json::parse(ReadAll(output_path), nullptr, false);
    if (!out.is_array() || out.size() != messages.size()) {
      ADD_FAILURE() << "dkimpy verifier output: " << ReadAll(output_path);
    } else {
      for (const auto& r : out) results.push_back(r.get<std::string>());
    }
  }
  std::filesystem::remove_all(dir);
  return results;
}

std::string OpenDkimVerify(const std::string& message, const DnsRecords& records) {
  g_records = &records;
  DKIM_LIB* lib = dkim_init(nullptr, nullptr);
  if (lib == nullptr) return "dkim_init failed";
  dkim_set_key_lookup(lib, KeyLookup);
  // As when signing: a body without a final CRLF gets one (RFC 6376 §3.4.4) instead of an error.
  unsigned int flags = DKIM_LIBFLAGS_FIXCRLF;
  dkim_options(lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags, sizeof(flags));
  DKIM_STAT status = DKIM_STAT_OK;
  DKIM* dkim = dkim_verify(lib, reinterpret_cast<const unsigned char*>("test"), nullptr, &status);
  std::string error;
  auto fail = [&](const char* what) {
    if (error.empty()) {
      error = absl::StrCat(what, ": ", dkim_getresultstr(status), " ",
                           dkim != nullptr && dkim_geterror(dkim) != nullptr ? dkim_geterror(dkim)
                                                                            : "");
    }
  };
  if (dkim == nullptr) {
    fail("dkim_verify");
  } else {
    // Header fields up to the empty line, each without its final CRLF.
    size_t position = 0;
    size_t body = message.size();
    std::string field;
    while (position < message.size()) {
      size_t end = message.find("\r\n", position);
      if (end == std::string::npos) end = message.size();
      std::string line = message.substr(position, end - position);
      position = std::min(message.size(), end + 2);
      if (line.empty()) {
        body = position;
        break;
      }
      if ((line[0] == ' ' || line[0] == '\t') && !field.empty()) {
        field += "\r\n" + line;
        continue;
      }
      if (!field.empty()) {
        status = dkim_header(dkim, reinterpret_cast<u_char*>(field.data()), field.size());
        if (status != DKIM_STAT_OK) fail("dkim_header");
      }
      field = line;
    }
    if (!field.empty()) {
      status = dkim_header(dkim, reinterpret_cast<u_char*>(field.data()), field.size());
      if (status != DKIM_STAT_OK) fail("dkim_header");
    }
    if (body == message.size() && position >= message.size()) body = message.size();
    status = dkim_eoh(dkim);
    if (status != DKIM_STAT_OK) fail("dkim_eoh");
    if (body < message.size()) {
      std::string rest = message.substr(body);
      status = dkim_body(dkim, reinterpret_cast<u_char*>(rest.data()), rest.size());
      if (status != DKIM_STAT_OK) fail("dkim_body");
    }
    status = dkim_eom(dkim, nullptr);
    if (status != DKIM_STAT_OK) fail("dkim_eom");
    DKIM_SIGINFO** sigs = nullptr;
    int count = 0;
    if (error.empty() && dkim_getsiglist(dkim, &sigs, &count) == DKIM_STAT_OK) {
      int checked = 0;
      for (int i = 0; i < count; ++i) {
        std::string name = absl::StrCat(
            reinterpret_cast<const char*>(dkim_sig_getselector(sigs[i])), "._domainkey.",
            reinterpret_cast<const char*>(dkim_sig_getdomain(sigs[i])));
        if (records.find(name) == records.end()) continue;  // someone else's signature
        ++checked;
        if (!DKIM_SIG_CHECK(sigs[i])) {
          error = absl::StrCat("signature ", i, " (d=",
                               reinterpret_cast<const char*>(dkim_sig_getdomain(sigs[i])),
                               ") failed: ", dkim_sig_geterrorstr(dkim_sig_geterror(sigs[i])));
          break;
        }
      }
      if (checked == 0) error = "no signature of ours";
    }
    dkim_free(dkim);
  }
  dkim_close(lib);
  g_records = nullptr;
  return error;
}

std::map<std::string, std::string> LoadCorpus() {
  const char* source = std::getenv("FACTEUR_SOURCE_DIR");
  std::string dir = absl::StrCat(source != nullptr ? source : ".", "/tests/unit/engine/dkim/corpus");
  std::map<std::string, std::string> corpus;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".eml") continue;
    corpus[entry.path().filename().string()] = ReadAll(entry.path().string());
  }
  return corpus;
}

}  // namespace facteur::dkim::testing
