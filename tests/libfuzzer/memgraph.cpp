// libFuzzer target: memgraph-v1 graph files, .json and .json.gz (sched/memgraph.h), read through
// read_memgraph as the CLI reads them. The first byte picks the layer: even, the rest is the
// file as is (JSON, or gzip when it starts with the gzip magic: the inflater's checks); odd,
// the rest is gzip-compressed here first (so mutations reach the JSON behind valid gzip).
// An accepted graph must serialise and read back to the same peak, and small ones must
// schedule. Seeds: corpus/memgraph/ (first byte 0x00 or 0x01).
#include <cstddef>
#include <cstdint>
#include <string>

#include "common.h"
#include "deltamoe/sched/memgraph.h"
#include "deltamoe/sched/schedule.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace deltamoe::sched;
  if (size == 0) return 0;
  static const std::string path = deltamoe::fuzz::temp_path(".json.gz");
  if (!deltamoe::fuzz::write_file(path, data + 1, size - 1, /*gzip=*/data[0] & 1)) return 0;
  Graph g;
  try {
    g = read_memgraph(path);
  } catch (const deltamoe::Error& e) {
    deltamoe::fuzz::check_error(e, "memgraph");
    return 0;
  }
  // From here on the graph is valid: nothing may throw.
  const SimResult r = simulate(g, program_order(g));
  const Graph back = parse_memgraph(to_memgraph_json(g), "round trip");
  if (back.size() != g.size() || simulate(back, program_order(back)).peak != r.peak) {
    std::fprintf(stderr, "round trip changed the graph\n");
    std::abort();
  }
  if (g.size() <= 64) {
    ScheduleOptions o;
    o.algo = "lpmf";
    o.time_limit_s = 0;
    o.use_ilp = false;
    const ScheduleResult s = schedule(g, o);
    if (simulate(g, s.order).peak != s.peak) {
      std::fprintf(stderr, "schedule's peak differs from the simulated one\n");
      std::abort();
    }
  }
  return 0;
}
