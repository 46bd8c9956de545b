// Replays a fuzz target's seed corpus, then deterministic mutations of every seed (bit flips,
// truncations, duplicated and inserted bytes), through LLVMFuzzerTestOneInput. Built with g++
// (which has no libFuzzer) so that every fuzz target runs under ctest and under ASan+UBSan.
// Usage: <driver> CORPUS_DIR [MUTATIONS_PER_SEED]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

void Run(const std::string& input) {
  // A copy in its own allocation, so that ASan catches reads past the end.
  std::vector<uint8_t> bytes(input.begin(), input.end());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
}

std::string Mutate(const std::string& seed, std::mt19937_64& random) {
  std::string s = seed;
  int edits = 1 + static_cast<int>(random() % 4);
  for (int i = 0; i < edits; ++i) {
    switch (random() % 6) {
      case 0:  // flip a bit
        if (!s.empty()) s[random() % s.size()] ^= static_cast<char>(1u << (random() % 8));
        break;
      case 1:  // truncate
        if (!s.empty()) s.resize(random() % s.size());
        break;
      case 2:  // insert an interesting byte
        {
          static const char kInteresting[] = {'\0', '\r', '\n', '.', ':', '<', '>', '@', '"',
                                              '\\', ' ', '=', '[', ']', '\xff', '\xc3'};
          s.insert(s.begin() + (s.empty() ? 0 : random() % (s.size() + 1)),
                   kInteresting[random() % sizeof(kInteresting)]);
        }
        break;
      case 3:  // duplicate a slice
        if (!s.empty()) {
          size_t from = random() % s.size();
          size_t length = 1 + random() % std::min<size_t>(64, s.size() - from);
          s.insert(random() % (s.size() + 1), s.substr(from, length));
        }
        break;
      case 4:  // replace a byte with a random one
        if (!s.empty()) s[random() % s.size()] = static_cast<char>(random());
        break;
      default:  // grow: repeat the whole input (long lines, deep nesting)
        if (s.size() < 8192) s += s;
        break;
    }
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR [MUTATIONS_PER_SEED]\n", argv[0]);
    return 2;
  }
  int mutations = argc > 2 ? std::atoi(argv[2]) : 2000;
  std::vector<std::string> seeds;
  for (const auto& entry : std::filesystem::directory_iterator(argv[1])) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (seeds.empty()) {
    std::fprintf(stderr, "no seeds in %s\n", argv[1]);
    return 2;
  }
  std::mt19937_64 random(20261123);  // fixed: a failure replays
  size_t runs = 0;
  for (const std::string& seed : seeds) {
    Run(seed);
    ++runs;
    for (int i = 0; i < mutations; ++i, ++runs) Run(Mutate(seed, random));
  }
  std::printf("%zu inputs from %zu seeds ran without a crash\n", runs, seeds.size());
  return 0;
}
