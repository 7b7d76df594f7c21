// Series-parallel (SP) scheduling for memgraph-v1 graphs: recognition, decomposition tree,
// SP-ization and the peak-memory optimal order of SP graphs. The model mapping and the
// proofs are in docs/sched.md, section "Series-parallel"; in short:
//
//  1. Event model. Nodes that need no memory to run (own + workspace == 0: parameters,
//     freeable inputs, views, zero-size nodes) and have at most one predecessor left are
//     *glued* to it (or to the start): in some optimal order they run right after it. Every
//     remaining node u becomes an event with a transient cost p(u) = own + workspace and a
//     net cost d(u) = own − (bytes released at u). A buffer (views contracted into their
//     base) is released at the unique maximal element of its readers; when its readers have
//     several maximal elements (an "OR buffer", freed after whichever runs last) a zero-cost
//     release item with those readers as predecessors is added.
//  2. The peak of any order equals the initial live bytes and the largest prefix sum of the
//     events (+p(u), then d(u) − p(u)), so the problem is "minimum maximum cumulative cost
//     under precedence constraints" on the poset of the remaining nodes.
//  3. When that poset (with the release items) is vertex series-parallel, the block
//     algorithm of sp_sequence() (Johnson's order on hill/valley blocks, merged bottom-up
//     over the decomposition tree; see docs/sched.md) gives a proven optimal order.
//     Otherwise the poset is SP-ized (constraints added until it is SP); the order is then
//     optimal for the constrained poset only, valid for the graph, and not claimed optimal.
//
// Everything here is pure over its arguments; thread-safe on distinct inputs. Work is
// O((n + m) log² n) plus the transitive reduction (O(n·m/64) word operations, chunked to
// bounded memory).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "deltamoe/sched/memgraph.h"
#include "deltamoe/sched/schedule.h"

namespace deltamoe::sched::sp {

/// Thrown by the analysis's long loops (transitive reduction, recognition, sequencing) once
/// this thread's Deadline has passed; schedule() catches it and goes on without the SP
/// methods. Not an Error: it reports no fault in the input.
struct TimeUp {};
/// A deadline (steady clock) for the SP analysis on the constructing thread, for the scope's
/// lifetime; nests (the previous one comes back on destruction).
class Deadline {
 public:
  explicit Deadline(std::chrono::steady_clock::time_point at);
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

 private:
  std::optional<std::chrono::steady_clock::time_point> previous_;
};
/// Throws TimeUp when this thread has a Deadline and it has passed (reads the clock on every
/// 64th call, so it is cheap inside loops).
void poll_deadline();

/// A binary decomposition tree over items 0..n_items-1 (the leaves).
/// Series(a, b): everything of a before everything of b. Parallel(a, b): no constraint.
struct SpTree {
  enum class Kind : uint8_t { kLeaf, kSeries, kParallel };
  struct TreeNode {
    Kind kind = Kind::kLeaf;
    int32_t item = -1;   // leaf: the item
    int32_t left = -1;   // series: the first part; parallel: one branch
    int32_t right = -1;  // series: the second part; parallel: the other branch
  };
  std::vector<TreeNode> nodes;
  int32_t root = -1;  // -1 for an empty tree
  int32_t n_items = 0;

  int32_t leaf(int32_t item);
  int32_t join(Kind kind, int32_t a, int32_t b);  // -1 operands are identities
};

/// A DAG over vertices 0..n-1 numbered topologically (every edge u -> v has u < v).
struct Dag {
  int32_t n = 0;
  std::vector<std::vector<int32_t>> succ;  // duplicates and transitive edges allowed
};

/// The transitive reduction of `dag` (successor lists sorted ascending). Bitset reachability
/// over chunks of target vertices; memory about `memory_bytes`.
std::vector<std::vector<int32_t>> transitive_reduction(const Dag& dag,
                                                       size_t memory_bytes = size_t{32} << 20);

struct Recognition {
  bool is_sp = false;  // the poset of the DAG is vertex series-parallel (N-free)
  SpTree tree;         // decomposition: of the DAG when is_sp, else of the SP-ized DAG
  /// Per vertex, the size (vertex count) of the maximal SP piece it lies in after the SP
  /// reductions stop (== n for every vertex when is_sp).
  std::vector<int32_t> piece_size;
  int32_t sync_vertices_added = 0;  // synchronisation points the SP-ization introduced
  /// When not SP: the root (in `tree`) of a second SP-ization (ASAP bundling; `tree.root`
  /// is the ALAP one). -1 when SP.
  int32_t alt_root = -1;
};

/// Recognises vertex series-parallel structure (Valdes–Tarjan–Lawler): transitive reduction
/// (skipped when `reduced`), the line-digraph junction form, series/parallel reductions.
/// When stuck the residual pieces are put on longest-path levels (a synchronisation point
/// per level) so a decomposition tree is always returned; its poset contains the DAG's.
/// Pieces go to the level just before their head (ALAP, `tree.root`) or at their tail
/// (ASAP, `alt_root`).
Recognition recognize(const Dag& dag, bool reduced = false);

/// Two linear extensions of the tree's poset (parallel branches left-right, then
/// right-left): for items u != v, u precedes v iff pos1[u] < pos1[v] && pos2[u] < pos2[v].
void linear_extensions(const SpTree& tree, std::vector<int32_t>* pos1, std::vector<int32_t>* pos2);

/// One item of the cumulative-cost problem: a list of increments applied in order.
struct ItemCost {
  int64_t first = 0;   // e.g. +p(u)
  int64_t second = 0;  // e.g. d(u) − p(u); 0 for items with a single increment
};

/// Order of the items minimising the largest prefix sum of all increments (the empty prefix
/// counts as 0) subject to the tree's constraints. Returns the order and, through
/// `max_prefix`, its largest prefix sum. Optimal for every SP tree (see docs/sched.md).
std::vector<int32_t> sp_sequence(const SpTree& tree, const std::vector<ItemCost>& cost,
                                 int64_t* max_prefix = nullptr);

/// Everything the SP pipeline found about one graph.
struct SpDetail {
  SpAnalysis summary;
  int32_t structure_nodes = 0;  // nodes kept as events (the rest are glued)
  int32_t glued_nodes = 0;
  int32_t or_buffers = 0;     // buffers whose readers have several maximal elements
  bool structure_sp = false;  // the poset of the kept nodes is SP
  bool exact = false;         // `order` is proven optimal (peak == lower_bound)
  Order order;                // the best order found (always valid for the graph)
  uint64_t peak = 0;          // peak of `order` in the memory model (== simulate())
  /// Proven lower bound on the optimum peak (0 when the structure is not SP): the exact
  /// optimum when the release items keep the poset SP, else the best optimum of the
  /// relaxations that free each multi-reader buffer at one chosen last reader.
  uint64_t lower_bound = 0;
};

/// Runs the whole pipeline (mapping, recognition, SP-ization when needed, sequencing).
/// `g` must be finalized. Throws Error("sched") when sizes exceed 2^62 bytes in total.
SpDetail analyze(const Graph& g);

}  // namespace deltamoe::sched::sp
