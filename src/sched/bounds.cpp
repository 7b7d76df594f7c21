// Cheap lower bounds on the optimum peak (GRAPH_FORMAT.md, "Lower bounds worth reporting").
// Each holds for every order:
//  - initial-live: freeable inputs are all live before the first step;
//  - node-working-set: at v's step every buffer v reads is still live (v has not run), plus
//    own(v) and workspace(v) (a freeable input's own buffer is live at its step);
//  - outputs: after the last step every output buffer is live, and the last step's need is
//    at least what stays live after it.
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched {

LowerBound simple_lower_bound(const Graph& g) {
  const int32_t n = g.size();
  uint64_t initial = 0, outputs = 0, working = 0;
  for (int32_t b = 0; b < n; ++b) {
    if (g.nodes[b].view_of != -1) continue;
    if (g.is_free_input(b)) initial += g.buffer_bytes(b);
    if (g.buffer_output[b]) outputs += g.buffer_bytes(b);
  }
  for (int32_t v = 0; v < n; ++v) {
    uint64_t w = g.nodes[v].workspace + (g.is_free_input(v) ? g.buffer_bytes(v) : g.own(v));
    for (int32_t b : g.input_buffers[v]) w += g.buffer_bytes(b);
    if (w > working) working = w;
  }
  LowerBound lb{initial, "initial-live"};
  if (working > lb.bytes) lb = {working, "node-working-set"};
  if (outputs > lb.bytes) lb = {outputs, "outputs"};
  return lb;
}

}  // namespace deltamoe::sched
