// Peak-memory scheduling algorithms over memgraph Graphs (all in dense node indices).
//
// Files (one concept each): baselines (program/BFS/DFS/LPMF/XLA list), bounds (lower
// bounds), sp (series-parallel recognition, decomposition, SP-optimal order), ilp (exact
// ILP on CBC; stub when not built), exact (best-first search over down-sets), local search,
// placement (offsets), fusion (fusion scoring), and schedule() which picks per graph.
// Thread-safety: every function is pure over its arguments; call concurrently on different
// graphs freely.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "deltamoe/sched/memgraph.h"

namespace deltamoe::sched {

// ---------------------------------------------------------------- baselines (baselines.cpp)
/// Kahn's algorithm with a heap keyed by the sorted program positions of each node's
/// predecessors (PyTorch Inductor's BFS variant).
Order bfs_order(const Graph& g);
/// Post-order DFS from nodes sorted by (own output bytes + input bytes), visiting unmet
/// dependencies in the same key order (PyTorch Inductor's DFS variant).
Order dfs_order(const Graph& g);
/// Inductor's LPMF "least peak memory first" (see RESEARCH.md §3), O(n log n) with heaps.
Order lpmf_order(const Graph& g);
/// XLA's list scheduler: priority (bytes freed − bytes defined, then user count).
Order xla_list_order(const Graph& g);

// ---------------------------------------------------------------- lower bounds (bounds.cpp)
struct LowerBound {
  uint64_t bytes = 0;
  std::string kind;  // "initial-live", "node-working-set", "outputs", "cut", "ilp", "exact"...
};
/// The strongest cheap bound: max of the initial live set, each node's working set
/// (inputs' buffers + own + workspace) and the total of outputs; says which one won.
LowerBound simple_lower_bound(const Graph& g);
/// The "must-live" bound: at v's step every buffer made by an ancestor of v (or a freeable
/// input) that is an output or has a reader among v and v's descendants is live, whatever
/// the order; the bound is the largest such set's bytes + own(v) + workspace(v), at least
/// simple_lower_bound(). Uses ancestor and descendant bitsets (n²/4 bytes), so graphs above
/// `max_nodes` get simple_lower_bound() instead. Kind "must-live" when it is stronger.
LowerBound must_live_lower_bound(const Graph& g, int32_t max_nodes = 12000);
/// The least memory live at node v's step over every order: the minimum, over the sets of
/// nodes that can have run before v (ancestors in, v and descendants out, closed under
/// dependencies), of the buffers live then, plus own(v) and workspace(v); one minimum s-t cut
/// (Boost's Boykov-Kolmogorov max flow; step_cut.cpp). At least the must-live bound at v.
/// With `before`, fills it (per node) with a set of nodes that reaches the minimum.
uint64_t step_cut_bound(const Graph& g, int32_t v, std::vector<char>* before = nullptr);
/// Lowers `start`'s peak (never raises it) by cut repair: at a step at the peak whose
/// step-cut bound is below it, the order is rearranged as the cut's set first, then the node,
/// then the rest; kept when the peak or its number of steps falls. Repeats until no peak step
/// improves or `time_limit_s` seconds have passed.
Order step_cut_improve(const Graph& g, const Order& start, double time_limit_s);
/// The least memory at the last step of any order: the minimum, over the nodes without users
/// (one of them runs last, after every other node), of every output's bytes, the buffers that
/// node still reads, its own and its workspace.
uint64_t last_step_bound(const Graph& g);
/// The least memory at the step of whichever output's producer runs last among them: the
/// minimum, over the producers with no other producer below them, of the step-cut bound at
/// that producer with every other producer (and its ancestors) run before it. 0 when there
/// are no outputs or `time_limit_s` passes first.
uint64_t last_output_bound(const Graph& g, double time_limit_s);
/// max(start, last_step_bound(), last_output_bound(), step_cut_bound(v)) over the steps of `order`
/// whose need there (memory_profile) is above the bound so far, neediest first (no other step can
/// raise it: a step's cut is at most its need in any order); stops once the bound reaches `stop_at`
/// or after `time_limit_s` seconds. Kind "step-cut" when it raised the bound.
LowerBound step_cut_lower_bound(const Graph& g, const Order& order, LowerBound start,
                                uint64_t stop_at, double time_limit_s);

// ------------------------------------------------------------- series-parallel (sp.cpp)
struct SpAnalysis {
  bool is_series_parallel = false;  // of the reduced graph (see docs/design.md, sched section)
  double sp_fraction = 0.0;         // share of nodes inside maximal SP pieces, 0..1
  int32_t sync_vertices_added = 0;  // SP-ization cost when not SP
  std::string notes;
  /// Proven lower bound on the optimum peak, bytes (0 when none; see docs/sched.md,
  /// "Series-parallel": exact SP optimum or relaxation bound). Kind name: "sp".
  uint64_t lower_bound = 0;
  bool proven_optimal = false;  // sp_optimal_order(g) returns an order (peak == lower_bound)
};
/// Recognises SP structure (Valdes–Tarjan–Lawler reductions on the transitive reduction).
SpAnalysis analyze_sp(const Graph& g);
/// Optimal order for an SP graph in the memgraph memory model (Kayaaslan et al. 2018 on the
/// decomposition tree, Liu's hill–valley merge); nullopt when the graph is not SP.
std::optional<Order> sp_optimal_order(const Graph& g);
/// Order from the SP-ized graph (always valid for g; optimal for the SP-ized graph).
Order sp_ized_order(const Graph& g);

// ----------------------------------------------------------------- exact methods
struct ExactResult {
  std::optional<Order> order;   // best order found (nullopt if none within the limit)
  uint64_t lower_bound = 0;     // proven lower bound on the optimum peak
  bool proven_optimal = false;  // order's peak == lower_bound
  std::string status;           // solver status in words
};
/// Exact ILP on COIN-OR CBC (ilp_cbc.cpp; ilp_nocbc.cpp throws Error("sched") saying the
/// solver was not built). `warm_start` seeds the incumbent; time limit in seconds.
ExactResult ilp_schedule(const Graph& g, double time_limit_s, const Order* warm_start);
/// True when the ILP solver was built in.
bool ilp_available();
/// Best-first search over down-sets (exact.cpp) with an incumbent upper bound; stops at the
/// time or state limit and reports the best bound proven.
ExactResult exact_search(const Graph& g, double time_limit_s, const Order* incumbent);
/// Local search improving `start` (never returns anything worse than start).
Order local_search(const Graph& g, const Order& start, double time_limit_s);

// ----------------------------------------------------------------- placement (placement.cpp)
/// Offset of something that takes no arena space (persistent buffers, absent workspaces).
inline constexpr uint64_t kNotPlaced = ~uint64_t{0};
struct Placement {
  std::vector<uint64_t> offsets;  // per node (dense index); buffers of views = their base's;
                                  // kNotPlaced for persistent buffers, 0 for empty ones
  std::vector<uint64_t> workspace_offsets;  // per node; kNotPlaced when workspace is 0
  uint64_t arena_bytes = 0;
  uint64_t peak_bytes = 0;     // the simulator's peak of the same order (workspace included)
  double fragmentation = 0.0;  // arena / peak − 1 (0 when the peak is 0)
  std::string method;          // "greedy-by-size" or "online-best-fit"
};
enum class PlacementMethod {
  kAuto,          // greedy-by-size unless lifetimes overlap too much (> 5e6 overlapping pairs)
  kGreedyBySize,  // offline: largest first, best fit among overlapping placed buffers
  kOnlineBestFit  // walk the order like an allocator: best-fit free block, coalescing; O(n log n)
};
/// Best-fit offset assignment over buffer lifetimes of `order`, largest first (TF Lite's
/// greedy-by-size); persistent buffers are not placed. A buffer lives from its producer's
/// step (freeable inputs: from the start) to its last reader's step (outputs: to the end);
/// a workspace lives during its node's step. Buffers live at the same step never overlap, so
/// arena_bytes >= peak_bytes. Throws Error("memgraph") if `order` is not valid.
/// greedy-by-size costs O(overlapping pairs · log n), so kAuto switches to the online
/// best-fit allocator on graphs with very long-lived buffers (e.g. 10^5-node training graphs).
Placement place_buffers(const Graph& g, const Order& order,
                        PlacementMethod method = PlacementMethod::kAuto);

// ----------------------------------------------------------------- the driver (schedule.cpp)
struct ScheduleOptions {
  std::string algo = "auto";   // auto|sp|ilp|exact|lpmf|bfs|dfs|xla|program
  double time_limit_s = 10.0;  // seconds for the whole call, search included
  bool use_ilp = true;         // auto may use the ILP
  /// Seconds the caller spent reading the graph, counted in time_limit_s: the call gets what
  /// is left, and the result's phase_seconds starts with ("read", read_s) when it is > 0.
  double read_s = 0.0;
  /// auto with time_limit_s > 0: the baselines after the program order and the SP analysis
  /// stop at max(what is left of the limit, this) seconds (then no SP methods); the floor
  /// keeps every baseline and the SP-ized order, the best cheap order on SP-like graphs, for
  /// small graphs under a tiny limit. A limit of 0 means no search: those phases then run in
  /// full.
  double sp_min_seconds = 0.25;
};
struct ScheduleResult {
  Order order;
  uint64_t peak = 0;
  LowerBound lower_bound;
  double gap = 0.0;  // peak / lower_bound − 1
  bool proven_optimal = false;
  std::string algorithm;  // what produced the order
  std::string notes;      // what auto did, in words
  SpAnalysis sp;
  Placement placement;
  double seconds = 0.0;
  /// Wall seconds of each phase that ran, in order ("baselines", "bounds", "sp", "ilp",
  /// "exact", "local", "placement"...).
  std::vector<std::pair<std::string, double>> phase_seconds;
  /// Peak of each baseline order, in the order program, bfs, dfs, lpmf, xla (under auto
  /// those after program only while the time limit allows; `notes` names any skipped).
  std::vector<std::pair<std::string, uint64_t>> baseline_peaks;
  /// The limit the phases are held to (ScheduleOptions::time_limit_s, reading included).
  double time_limit_s = 0.0;
  /// The phase during which the limit passed (walking phase_seconds), empty when the call
  /// ended within it: the fixed phases before any search (baselines, bounds, SP analysis)
  /// are not cut short, so on very large graphs they alone can pass a small limit.
  std::string time_limit_passed_in() const;
};
/// Runs every baseline, then the chosen algorithm (see docs/sched.md for what auto does);
/// the result is never worse than the best baseline, except that a baseline asked for by
/// name is returned as is. `time_limit_s` bounds the whole call: search stops at 90% of it
/// minus 1.5x the measured placement time, so the call ends within the limit unless the fixed
/// phases before any search (baselines, bounds, SP analysis) alone exceed it. Throws
/// Error("sched") for an unknown algorithm or a negative limit, and for `ilp` when CBC is not
/// built; in auto mode a failing method is noted and skipped.
ScheduleResult schedule(const Graph& g, const ScheduleOptions& opt);

/// The report of one schedule() as `deltamoe schedule --json` prints it per graph ("file"
/// first when `file` is not empty; name, nodes, algorithm, peak_bytes, lower bound, gap,
/// proven_optimal, SP analysis, arena, seconds, phase_seconds, each baseline's peak, notes);
/// with `with_order` also "order", the node ids (as in the file) in the order found. Pure;
/// thread-safe.
nlohmann::ordered_json schedule_report_json(const Graph& g, const ScheduleResult& r,
                                            bool with_order = false, const std::string& file = "");

}  // namespace deltamoe::sched
