// File: tests/unit/engine/dkim/dkim_test_support.h
// Verifiers we did not write, for the DKIM tests (issue #4 point 4): dkimpy (Debian's
// python3-dkim, run with /usr/bin/python3) and libopendkim's verifier, both fed the public keys
// through a DNS stand-in (a name → TXT map), plus the corpus and key helpers.
// Thread contract: test code, main thread.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "engine/dkim/signer.h"

namespace facteur::dkim::testing {

// "selector._domainkey.domain" → TXT record.
using DnsRecords = std::map<std::string, std::string>;

void AddRecord(const SigningKey& key, DnsRecords* records);

// Verifies every DKIM-Signature of each message with dkimpy. Returns one entry per message:
// "" when every signature verified, else what failed. An empty vector (and a test failure
// recorded) when dkimpy could not run.
std::vector<std::string> DkimpyVerify(const std::vector<std::string>& messages,
                                      const DnsRecords& records);

// The same with libopendkim's verifier: "" when every signature of the message passes.
std::string OpenDkimVerify(const std::string& message, const DnsRecords& records);

// The messages of tests/unit/engine/dkim/corpus/, by file name.
std::map<std::string, std::string> LoadCorpus();

}  // namespace facteur::dkim::testing
