// memgraph-v1: parsing, validation messages, round trips, and the simulator's exact peaks.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <zlib.h>

#include "deltamoe/core/error.h"
#include "deltamoe/sched/memgraph.h"
#include "unit/sched_test_util.h"

using namespace deltamoe;
using namespace deltamoe::sched;

namespace {

std::string doc(const std::string& nodes, const std::string& outputs = "[]",
                const std::string& persistent = "[]") {
  return R"({"format": "memgraph-v1", "name": "t", "nodes": [)" + nodes + R"(], "outputs": )" +
         outputs + R"(, "persistent": )" + persistent + "}";
}

// Expects parse to fail with a message containing every fragment.
void expect_error(const std::string& text, std::vector<std::string> fragments) {
  try {
    parse_memgraph(text, "bad.json");
    ADD_FAILURE() << "accepted: " << text;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_NE(msg.find("[memgraph]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.json"), std::string::npos) << msg;
    for (const auto& f : fragments)
      EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
}

std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("deltamoe_test_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

}  // namespace

TEST(MemgraphParse, ReadsTheFormatExample) {
  const Graph g = parse_memgraph(doc(R"(
    {"id": 0, "name": "x", "op": "input", "inputs": [], "size": 4816896},
    {"id": 1, "name": "w_conv", "op": "param", "inputs": [], "size": 37632},
    {"id": 2, "name": "conv1", "op": "aten.convolution", "inputs": [0, 1], "size": 25690112, "workspace": 0},
    {"id": 3, "name": "view_1", "op": "aten.view", "inputs": [2], "size": 0, "view_of": 2})",
                                     "[2]", "[1]"));
  ASSERT_EQ(g.size(), 4);
  EXPECT_EQ(g.name, "t");
  EXPECT_EQ(g.nodes[2].inputs, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(g.nodes[3].view_of, 2);
  EXPECT_EQ(g.base[3], 2);
  EXPECT_TRUE(g.is_free_input(0));
  EXPECT_FALSE(g.is_free_input(1));
  EXPECT_EQ(g.own(0), 0u);
  EXPECT_EQ(g.own(1), 0u);  // persistent
  EXPECT_EQ(g.own(2), 25690112u);
  EXPECT_EQ(g.own(3), 0u);  // view
  EXPECT_EQ(g.buffer_readers[2], (std::vector<int32_t>{3}));
  const SimResult r = simulate(g, program_order(g));
  // x live from the start; conv1 needs x + conv1; x is freed after conv1; conv1 is an output.
  EXPECT_EQ(r.initial_live, 4816896u);
  EXPECT_EQ(r.peak, 4816896u + 25690112u);
  EXPECT_EQ(r.peak_step, 2);
  EXPECT_EQ(r.persistent_bytes, 37632u);
  EXPECT_EQ(r.final_live, 25690112u);
}

TEST(MemgraphParse, RoundTripsThroughJsonAndGzip) {
  const Graph g = test::random_graph(40, 7);
  const Graph back = parse_memgraph(to_memgraph_json(g), "rt");
  const std::string gz = tmp_path("rt.json.gz"), plain = tmp_path("rt.json");
  write_memgraph(g, gz);
  write_memgraph(g, plain);
  {
    std::ifstream in(gz, std::ios::binary);
    unsigned char magic[2] = {0, 0};
    in.read(reinterpret_cast<char*>(magic), 2);
    EXPECT_EQ(magic[0], 0x1f);
    EXPECT_EQ(magic[1], 0x8b);
  }
  for (const Graph& h : {back, read_memgraph(gz), read_memgraph(plain)}) {
    ASSERT_EQ(h.size(), g.size());
    EXPECT_EQ(h.name, g.name);
    for (int32_t v = 0; v < g.size(); ++v) {
      EXPECT_EQ(h.nodes[v].id, g.nodes[v].id);
      EXPECT_EQ(h.nodes[v].name, g.nodes[v].name);
      EXPECT_EQ(h.nodes[v].op, g.nodes[v].op);
      EXPECT_EQ(h.nodes[v].inputs, g.nodes[v].inputs);
      EXPECT_EQ(h.nodes[v].size, g.nodes[v].size);
      EXPECT_EQ(h.nodes[v].workspace, g.nodes[v].workspace);
      EXPECT_EQ(h.nodes[v].view_of, g.nodes[v].view_of);
    }
    EXPECT_EQ(h.is_output, g.is_output);
    EXPECT_EQ(h.is_persistent, g.is_persistent);
    EXPECT_EQ(to_memgraph_json(h), to_memgraph_json(g));
  }
  std::filesystem::remove(gz);
  std::filesystem::remove(plain);
}

TEST(MemgraphParse, ErrorsNameTheFileAndTheNode) {
  expect_error("{not json", {"invalid JSON"});
  expect_error("[1,2]", {"must be an object"});
  expect_error(R"({"format": "memgraph-v2", "nodes": []})", {"unsupported format", "memgraph-v2"});
  expect_error(R"({"nodes": []})", {"missing \"format\""});
  expect_error(R"({"format": "memgraph-v1"})", {"missing \"nodes\""});
  expect_error(R"({"format": "memgraph-v1", "nodes": {}})", {"\"nodes\" must be an array"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": []})"), {"node id 0", "missing \"size\""});
  expect_error(doc(R"({"op": "input", "inputs": [], "size": 1})"), {"node #0", "missing \"id\""});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": 3, "size": 1})"),
               {"node id 0", "\"inputs\" must be an array"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": "1"})"),
               {"node id 0 size", "integer"});
  expect_error(doc(R"({"id": 0, "name": 5, "op": "input", "inputs": [], "size": 1})"),
               {"\"name\" must be a string"});
  expect_error(doc(R"({"id": "a", "op": "input", "inputs": [], "size": 1})"), {"node #0 id"});
  expect_error(doc(R"({"id": -1, "op": "input", "inputs": [], "size": 1})"), {"negative"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": -5})"),
               {"node id 0 size", "negative"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1.5})"),
               {"node id 0 size", "integer"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1e30})"),
               {"does not fit in uint64"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1, "workspace": -2})"),
               {"workspace", "negative"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 18446744073709551615},
                       {"id": 1, "op": "input", "inputs": [], "size": 1})"),
               {"node id 1", "overflows"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1},
                       {"id": 1, "op": "a", "inputs": [0, 7], "size": 1})"),
               {"node id 1", "unknown id 7"});
  expect_error(doc(R"({"id": 4, "op": "input", "inputs": [], "size": 1},
                       {"id": 4, "op": "a", "inputs": [], "size": 1})"),
               {"duplicate id 4"});
  expect_error(doc(R"({"id": 0, "op": "a", "inputs": [2], "size": 1},
                       {"id": 1, "op": "a", "inputs": [0], "size": 1},
                       {"id": 2, "op": "a", "inputs": [1], "size": 1})"),
               {"cycle through ids", "0", "1", "2"});
  expect_error(doc(R"({"id": 0, "name": "early", "op": "a", "inputs": [1], "size": 1},
                       {"id": 1, "op": "input", "inputs": [], "size": 1})"),
               {"not topological", "node id 0 ('early')", "reads id 1"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1},
                       {"id": 1, "op": "v", "inputs": [0], "size": 0, "view_of": 9})"),
               {"node id 1", "view_of", "unknown id 9"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1},
                       {"id": 1, "op": "v", "inputs": [0], "size": 0, "view_of": 1})"),
               {"node id 1", "view of itself"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1},
                       {"id": 1, "op": "v", "inputs": [0], "size": 8, "view_of": 0})"),
               {"node id 1", "must have size 0"});
  expect_error(doc(R"({"id": 0, "op": "v", "inputs": [], "size": 0, "view_of": 1},
                       {"id": 1, "op": "v", "inputs": [], "size": 0, "view_of": 0})"),
               {"view cycle through ids"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1})", "[3]"),
               {"\"outputs\" entry", "unknown id 3"});
  expect_error(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 1})", "[]", "{}"),
               {"\"persistent\" must be an array"});
}

TEST(MemgraphParse, TruncatedOrCorruptGzipIsAnError) {
  const Graph g = test::random_graph(30, 3);
  const std::string gz = tmp_path("trunc.json.gz");
  write_memgraph(g, gz);
  std::string data;
  {
    std::ifstream in(gz, std::ios::binary);
    data.assign(std::istreambuf_iterator<char>(in), {});
  }
  for (size_t cut : {size_t{2}, size_t{10}, data.size() / 2, data.size() - 4, data.size() - 1}) {
    std::ofstream(gz, std::ios::binary | std::ios::trunc)
        .write(data.data(), static_cast<std::streamsize>(cut));
    try {
      read_memgraph(gz);
      ADD_FAILURE() << "truncated gzip at " << cut << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(gz), std::string::npos) << e.what();
    }
  }
  std::string bad = data;
  bad[bad.size() / 2] ^= 0x55;
  std::ofstream(gz, std::ios::binary | std::ios::trunc)
      .write(bad.data(), static_cast<std::streamsize>(bad.size()));
  EXPECT_THROW(read_memgraph(gz), Error);
  std::filesystem::remove(gz);
  EXPECT_THROW(read_memgraph(gz), Error);  // missing file
}

// A gzip bomb (a valid graph followed by 80 MiB of spaces, ~1000x compressed) is refused by
// its inflation ratio as soon as it passes the cap, long before 4 GiB; a real graph of the
// same kind inflates ~10x and reads.
TEST(MemgraphParse, GzipInflatingFarBeyondJsonIsRefused) {
  const std::string path = tmp_path("bomb.json.gz");
  const std::string text =
      R"({"format": "memgraph-v1", "nodes": [{"id": 0, "op": "input", "inputs": [], "size": 1}])" +
      std::string(size_t{80} << 20, ' ') + "}";
  gzFile f = gzopen(path.c_str(), "wb9");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())),
            static_cast<int>(text.size()));
  gzclose(f);
  EXPECT_LT(std::filesystem::file_size(path), text.size() / 500);
  try {
    read_memgraph(path);
    ADD_FAILURE() << "a gzip bomb was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expands beyond"), std::string::npos) << e.what();
  }
  const Graph g = test::random_graph(2000, 7);
  write_memgraph(g, path);
  EXPECT_EQ(read_memgraph(path).size(), g.size());
  std::filesystem::remove(path);
}

TEST(MemgraphFinalize, NormalisesHandBuiltGraphs) {
  Graph g;
  for (int i = 0; i < 3; ++i) g.nodes.push_back(Node{});
  g.nodes[0].op = "input";
  g.nodes[0].size = 5;
  g.nodes[1].inputs = {0, 0, 0};
  g.nodes[1].size = 7;
  g.nodes[2].view_of = 1;  // not among its inputs: added
  g.finalize();
  EXPECT_EQ(g.nodes[2].id, 2);  // all-zero ids became dense
  EXPECT_EQ(g.nodes[1].inputs, (std::vector<int32_t>{0}));
  EXPECT_EQ(g.nodes[2].inputs, (std::vector<int32_t>{1}));
  EXPECT_EQ(g.is_output.size(), 3u);
  EXPECT_EQ(g.users[1], (std::vector<int32_t>{2}));
  Graph bad = g;
  bad.nodes[1].inputs = {2};
  EXPECT_THROW(bad.finalize(), Error);
}

TEST(MemgraphOrder, CheckOrderNamesTheOffendingNode) {
  const Graph g = parse_memgraph(doc(R"({"id": 10, "op": "input", "inputs": [], "size": 1},
                                         {"id": 20, "name": "b", "op": "a", "inputs": [10], "size": 1})"));
  EXPECT_NO_THROW(check_order(g, {0, 1}));
  auto msg = [&](const Order& o) {
    try {
      check_order(g, o);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg({1, 0}).find("node id 20 ('b') runs before its input id 10"), std::string::npos)
      << msg({1, 0});
  EXPECT_NE(msg({0}).find("1 entries"), std::string::npos);
  EXPECT_NE(msg({0, 0}).find("appears twice"), std::string::npos);
  EXPECT_NE(msg({0, 5}).find("is not a node"), std::string::npos);
  EXPECT_THROW(simulate(g, {1, 0}), Error);
}

// ---------------------------------------------------------------- pinned simulator peaks

TEST(Simulate, FreeableInputLiveFromStartAndFreedAfterLastReader) {
  const Graph g = parse_memgraph(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 100},
                                         {"id": 1, "op": "f", "inputs": [0], "size": 10},
                                         {"id": 2, "op": "g", "inputs": [1], "size": 20})",
                                     "[2]"));
  const SimResult r = simulate(g, program_order(g));
  EXPECT_EQ(r.initial_live, 100u);
  EXPECT_EQ(r.peak, 110u);  // x + f
  EXPECT_EQ(r.peak_step, 1);
  EXPECT_EQ(r.final_live, 20u);
  EXPECT_EQ(memory_profile(g, program_order(g)), (std::vector<uint64_t>{100, 110, 30}));
}

TEST(Simulate, ReadersOfAViewKeepTheBaseAlive) {
  // x (input 8); a = f(x) 50; v = view(a); c = g(x) 5; d = h(v) 10.
  const Graph g = parse_memgraph(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 8},
                                         {"id": 1, "op": "f", "inputs": [0], "size": 50},
                                         {"id": 2, "op": "view", "inputs": [1], "size": 0, "view_of": 1},
                                         {"id": 3, "op": "g", "inputs": [0], "size": 5},
                                         {"id": 4, "op": "h", "inputs": [2], "size": 10})",
                                     "[4]"));
  EXPECT_EQ(g.buffer_readers[1], (std::vector<int32_t>{2, 4}));
  // Program order: a stays live through d (read via the view): c's step = 8 + 50 + 5.
  const SimResult r = simulate(g, program_order(g));
  EXPECT_EQ(r.peak, 63u);
  EXPECT_EQ(r.peak_step, 3);
  EXPECT_EQ(r.final_live, 10u);
  EXPECT_EQ(memory_profile(g, program_order(g)), (std::vector<uint64_t>{8, 58, 58, 63, 60}));
  // x a v d c: d needs x + a + d = 68; a is freed after d, c needs x + c... = 18 + 5.
  EXPECT_EQ(simulate(g, {0, 1, 2, 4, 3}).peak, 68u);
}

TEST(Simulate, ViewsOfViewsAndOutputViews) {
  // x 4; a = f(x) 100; v1 = view(a); v2 = view(v1); r = g(v2) 10.
  const std::string nodes = R"({"id": 0, "op": "input", "inputs": [], "size": 4},
                               {"id": 1, "op": "f", "inputs": [0], "size": 100},
                               {"id": 2, "op": "view", "inputs": [1], "size": 0, "view_of": 1},
                               {"id": 3, "op": "view", "inputs": [2], "size": 0, "view_of": 2},
                               {"id": 4, "op": "g", "inputs": [3], "size": 10})";
  const Graph g = parse_memgraph(doc(nodes));
  EXPECT_EQ(g.base[3], 1);
  SimResult r = simulate(g, program_order(g));
  EXPECT_EQ(r.peak, 110u);  // a is alive at r's step through two views
  EXPECT_EQ(r.peak_step, 4);
  EXPECT_EQ(r.final_live, 0u);  // r is read by nobody and is not an output: freed
  // Listing the view v2 as an output keeps a's buffer to the end.
  const Graph h = parse_memgraph(doc(nodes, "[3]"));
  r = simulate(h, program_order(h));
  EXPECT_EQ(r.peak, 110u);
  EXPECT_EQ(r.final_live, 100u);
}

TEST(Simulate, OutputsNeverFreedPersistentExcludedUnreadFreedAtOnce) {
  // x: input nobody reads (live from the start, freed after its own step);
  // w: persistent param; b = f(w) 7 read by nobody; c = g(w) 3 output.
  const Graph g = parse_memgraph(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 10},
                                         {"id": 1, "op": "param", "inputs": [], "size": 1000},
                                         {"id": 2, "op": "f", "inputs": [1], "size": 7},
                                         {"id": 3, "op": "g", "inputs": [1], "size": 3})",
                                     "[3]", "[1]"));
  SimResult r = simulate(g, program_order(g));
  EXPECT_EQ(r.initial_live, 10u);
  EXPECT_EQ(r.peak, 10u);
  EXPECT_EQ(r.peak_step, -1);
  EXPECT_EQ(r.persistent_bytes, 1000u);
  EXPECT_EQ(r.final_live, 3u);
  EXPECT_EQ(memory_profile(g, program_order(g)), (std::vector<uint64_t>{10, 0, 7, 3}));
  // Running x last keeps it live through everything: 10 + 7 at b's step.
  r = simulate(g, {1, 2, 3, 0});
  EXPECT_EQ(r.peak, 17u);
  EXPECT_EQ(r.final_live, 3u);
}

TEST(Simulate, WorkspaceOnlyDuringItsNodeAndDuplicateInputsOnce) {
  const Graph g = parse_memgraph(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 10},
                                         {"id": 1, "op": "f", "inputs": [0, 0], "size": 20, "workspace": 100},
                                         {"id": 2, "op": "g", "inputs": [1, 1, 0], "size": 5})",
                                     "[2]"));
  EXPECT_EQ(g.nodes[1].inputs.size(), 1u);
  EXPECT_EQ(memory_profile(g, program_order(g)), (std::vector<uint64_t>{10, 130, 35}));
  const SimResult r = simulate(g, program_order(g));
  EXPECT_EQ(r.peak, 130u);
  EXPECT_EQ(r.final_live, 5u);
}

TEST(Simulate, FreeableInputThatIsAnOutputAndNonFreeableInputs) {
  // x: input and output (never freed); y: "input" op but persistent (excluded);
  // z: a node with op "input" that has an input is not a graph input: own = size.
  const Graph g = parse_memgraph(doc(R"({"id": 0, "op": "input", "inputs": [], "size": 6},
                                         {"id": 1, "op": "input", "inputs": [], "size": 50},
                                         {"id": 2, "op": "input", "inputs": [0, 1], "size": 4},
                                         {"id": 3, "op": "f", "inputs": [2], "size": 1})",
                                     "[0, 3]", "[1]"));
  EXPECT_FALSE(g.is_free_input(1));
  EXPECT_FALSE(g.is_free_input(2));
  EXPECT_EQ(memory_profile(g, program_order(g)), (std::vector<uint64_t>{6, 6, 10, 11}));
  EXPECT_EQ(simulate(g, program_order(g)).final_live, 7u);
}

TEST(Simulate, MatchesTheIndependentReferenceOnRandomGraphs) {
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    const Graph g = test::random_graph(1 + static_cast<int32_t>(seed % 14), seed);
    const test::Reference ref(g);
    for (uint64_t k = 0; k < 4; ++k) {
      const Order o = test::random_order(g, seed * 31 + k);
      ASSERT_EQ(simulate(g, o).peak, ref.peak(o)) << "seed " << seed << " order " << k;
    }
  }
}

TEST(Simulate, HandlesLargeGraphsQuickly) {
  // 2e5-node chain: mostly a check that nothing is quadratic or recursive.
  Graph g;
  g.nodes.resize(200000);
  g.nodes[0].op = "input";
  g.nodes[0].size = 1;
  for (int32_t i = 1; i < g.size(); ++i) {
    g.nodes[i].inputs = {i - 1};
    g.nodes[i].size = static_cast<uint64_t>(i % 7 + 1);
  }
  g.finalize();
  EXPECT_EQ(simulate(g, program_order(g)).peak, 13u);  // 6 + 7
}
