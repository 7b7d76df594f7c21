// Private to sched/: the memory model of graph_format.md reduced to what ordering needs, shared
// by the exact methods (exact.cpp, ilp_cbc.cpp) and local_search.cpp.
//
// A Model has nodes to order (with precedence edges) and buffers (bytes, the node that
// allocates it or "initially live", the nodes that must all run before it is freed, and
// whether it is never freed). Views, persistent buffers and zero-size buffers vanish here:
// a view is a node that allocates nothing and reads its base's buffer. Sub-models (an
// interval of an order with the nodes before it already run) have the same shape, with the
// buffers live throughout folded into `initial` as never-freed bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched::detail {

struct ModelBuffer {
  uint64_t bytes = 0;
  int32_t alloc = -1;            // node that allocates it; -1: live before the first step
  bool never_freed = false;      // output (or live past the end of a sub-model)
  std::vector<int32_t> readers;  // distinct nodes; freed after the last of them runs
};

struct Model {
  int32_t n = 0;
  std::vector<std::vector<int32_t>> preds, succs;  // distinct, per node
  std::vector<uint64_t> alloc;                     // bytes allocated when the node runs
  std::vector<uint64_t> ws;                        // workspace while it runs
  std::vector<std::vector<int32_t>> reads;         // per node: buffers it is a reader of
  std::vector<ModelBuffer> buffers;
  uint64_t initial = 0;  // live before the first step (initial buffers + constant part)
  std::vector<int32_t> orig;  // node -> node of the model (or graph) it came from
};

/// The model of a validated graph; node i of the model is dense node i of the graph.
Model build_model(const Graph& g);

/// Peak of `order` (model node indices, assumed topological) under the memory model.
uint64_t model_peak(const Model& m, const std::vector<int32_t>& order);
/// Per-step need (live + alloc + workspace) of `order`, and the live bytes after each step.
void model_profile(const Model& m, const std::vector<int32_t>& order, std::vector<uint64_t>& need);

/// The sub-model of running `nodes` (a topological list of distinct model nodes) when exactly
/// the nodes with done[v] != 0 have run before. Node i of the result is nodes[i]; its `orig`
/// maps back to m's indices. Every order of the sub-model extended by the fixed prefix/suffix
/// has, over the steps of `nodes`, exactly the needs the sub-model computes.
Model sub_model(const Model& m, const std::vector<int32_t>& nodes, const std::vector<char>& done);

/// Per node, the number of ancestors and of descendants among the nodes with mask[v] != 0
/// (all nodes when mask is empty), through any path. O(E·n/64) time, O(n·64) words memory.
void count_relatives(const Model& m, const std::vector<char>& mask, std::vector<int32_t>& anc,
                     std::vector<int32_t>& desc);

/// Splits the model at "cut" nodes: nodes that allocate or need workspace and are comparable
/// with every other such node. Nodes that allocate nothing and need no workspace go with the
/// segment of their latest predecessor (segment 0 if none). Returns segments in order, each a
/// topological list of nodes; concatenating optimal orders of the segments is optimal.
std::vector<std::vector<int32_t>> split_segments(const Model& m);

/// Per node v, a lower bound on the need at v's step in every order: alloc(v) + ws(v) + the
/// bytes of every buffer allocated by a strict ancestor of v (or initially live) and read by v
/// or by a descendant of v (or never freed). Reachability bitsets, O(n^2/64) time and bits;
/// above `max_n` nodes only v's own inputs are counted.
/// If `nf_part` is given, it receives per node the never-freed share of that bound.
std::vector<uint64_t> node_bounds(const Model& m, int32_t max_n = 12000,
                                  std::vector<uint64_t>* nf_part = nullptr);

/// A topological order of m (Kahn's, smallest index first).
std::vector<int32_t> topo_order(const Model& m);

}  // namespace deltamoe::sched::detail
