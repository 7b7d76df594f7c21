// Deterministic random-mutation fuzzing of the memgraph reader: every mutated or truncated
// file (JSON text and gzip) must be accepted or rejected with deltamoe::Error; never crash,
// hang or throw anything else. An accepted graph must simulate and schedule.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/schedule.h"
#include "unit/sched_test_util.h"

using namespace deltamoe;
using namespace deltamoe::sched;

namespace {

const char* kTokens[] = {"-1", "1e30", "1.5", "null", "true", "\"x\"", "[]", "{}", "18446744073709551615",
                         "9223372036854775808", "0", "\"view_of\": 0", "\"inputs\": [0]", ",", "]", "}", "\"",
                         "\"size\"", "\"id\": 0", "\\u0000", "99999999999999999999999"};

std::string mutate(std::string s, std::mt19937_64& rng) {
  auto uni = [&](size_t lo, size_t hi) { return std::uniform_int_distribution<size_t>(lo, hi)(rng); };
  const int edits = static_cast<int>(uni(1, 4));
  for (int e = 0; e < edits && !s.empty(); ++e) {
    const size_t at = uni(0, s.size() - 1);
    switch (uni(0, 5)) {
      case 0: s[at] = static_cast<char>(uni(0, 255)); break;                       // flip a byte
      case 1: s.erase(at, uni(1, 16)); break;                                       // delete
      case 2: s.insert(at, kTokens[uni(0, std::size(kTokens) - 1)]); break;        // inject a token
      case 3: s.resize(at); break;                                                  // truncate
      case 4: if (isdigit(static_cast<unsigned char>(s[at]))) s[at] = static_cast<char>('0' + uni(0, 9)); break;  // retarget ids
      default: { const size_t b = uni(0, s.size() - 1); std::swap(s[at], s[b]); }  // swap bytes
    }
  }
  return s;
}

void check_one(const std::function<Graph()>& load) {
  try {
    const Graph g = load();
    const SimResult r = simulate(g, program_order(g));
    EXPECT_GE(r.peak, r.initial_live);
    if (g.size() <= 200) {
      ScheduleOptions o;
      o.time_limit_s = 0;
      o.use_ilp = false;
      o.algo = "lpmf";
      const ScheduleResult s = schedule(g, o);
      EXPECT_EQ(s.peak, simulate(g, s.order).peak);
    }
  } catch (const Error&) {
    // rejected cleanly
  }
}

}  // namespace

TEST(FuzzMemgraph, MutatedJsonNeverCrashes) {
  std::mt19937_64 rng(2024);
  int accepted = 0;
  for (int round = 0; round < 4000; ++round) {
    const Graph base = test::random_graph(1 + round % 25, static_cast<uint64_t>(round) + 1);
    const std::string text = mutate(to_memgraph_json(base), rng);
    bool ok = false;
    check_one([&] {
      Graph g = parse_memgraph(text, "fuzz.json");
      ok = true;
      return g;
    });
    accepted += ok;
  }
  EXPECT_GT(accepted, 0);  // some mutations keep the file valid (e.g. changed sizes)
}

TEST(FuzzMemgraph, MutatedAndTruncatedGzipNeverCrashes) {
  std::mt19937_64 rng(77);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("deltamoe_fuzz_" + std::to_string(::getpid()) + ".json.gz")).string();
  for (int round = 0; round < 600; ++round) {
    const Graph base = test::random_graph(1 + round % 30, static_cast<uint64_t>(round) + 7);
    write_memgraph(base, path);
    std::string data;
    {
      std::ifstream in(path, std::ios::binary);
      data.assign(std::istreambuf_iterator<char>(in), {});
    }
    if (round % 2) {
      data.resize(std::uniform_int_distribution<size_t>(0, data.size() - 1)(rng));
    } else {
      for (int k = 0; k < 3; ++k)
        data[std::uniform_int_distribution<size_t>(0, data.size() - 1)(rng)] ^=
            static_cast<char>(1 + std::uniform_int_distribution<int>(0, 254)(rng));
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(data.data(), static_cast<std::streamsize>(data.size()));
    check_one([&] { return read_memgraph(path); });
  }
  std::filesystem::remove(path);
}
