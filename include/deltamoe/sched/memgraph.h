// memgraph-v1: the computation-graph memory model of ../shared/design/GRAPH_FORMAT.md.
//
// sched/ depends on nothing above core/ (error types only), so it can be used by itself.
// A Graph stores nodes densely in program order: node index i is the i-th node of the file;
// the file's ids are kept in Node::id for output. Every other structure in sched/ speaks in
// dense indices (int32_t).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deltamoe::sched {

struct Node {
  int64_t id = 0;  // id as in the file
  std::string name;
  std::string op;
  std::vector<int32_t> inputs;  // dense indices, duplicates removed, in first-seen order
  uint64_t size = 0;            // bytes of the buffer this node produces
  uint64_t workspace = 0;       // scratch bytes needed only while it runs
  int32_t view_of = -1;         // dense index of the aliased node, or -1
};

/// A validated memgraph. Construct through parse/read (which validate) or build by hand and
/// call finalize() (which validates and fills the derived fields).
struct Graph {
  std::string name;
  std::vector<Node> nodes;          // program order (topological)
  std::vector<char> is_output;      // per node
  std::vector<char> is_persistent;  // per node

  // ---- derived by finalize() ----
  std::vector<std::vector<int32_t>> users;  // dense indices of the nodes that read each node
  std::vector<int32_t> base;                // buffer owner: follows view_of transitively
  /// Per node: the distinct buffers (bases) it reads, in first-seen order of its inputs.
  std::vector<std::vector<int32_t>> input_buffers;
  /// Per node: for a base, the distinct nodes that read its buffer directly or through any
  /// view of it (views themselves are readers); empty for views. "Last reader has run"
  /// in the memory model means every node of this list has run.
  std::vector<std::vector<int32_t>> buffer_readers;
  /// Per node (meaningful for bases): the buffer is never freed because the base or one of
  /// its views is listed in "outputs".
  std::vector<char> buffer_output;
  /// Per node (meaningful for bases): the buffer is persistent (excluded from the peak)
  /// because the base or one of its views is listed in "persistent".
  std::vector<char> buffer_persistent;
  /// Checks every rule of GRAPH_FORMAT.md (ids, inputs, program order, views, sizes) and
  /// fills the derived fields. Throws Error("memgraph") with a one-line reason.
  /// Normalises hand-built graphs: is_output/is_persistent are resized to the node count,
  /// inputs are de-duplicated, a view's view_of is added to its inputs when missing, and when
  /// every id is 0 the ids become the dense indices. `source` names the graph in errors.
  void finalize(const std::string& source = "<graph>");
  int32_t size() const { return static_cast<int32_t>(nodes.size()); }
  /// own(v) of the memory model: size unless persistent, a freeable input or a view.
  uint64_t own(int32_t v) const;
  /// True for a freeable graph input (op == "input", no inputs, not persistent).
  bool is_free_input(int32_t v) const;
  /// Bytes the buffer owned by base `b` occupies while live: 0 for persistent buffers and
  /// views, size(b) otherwise (freeable inputs included; they are live from the start).
  uint64_t buffer_bytes(int32_t b) const;
  /// Index of the node with file id `id`, or -1 (linear scan; for tools and tests).
  int32_t index_of(int64_t id) const;
};

/// Parses memgraph-v1 JSON text; `source` names the file in error messages.
Graph parse_memgraph(const std::string& json_text, const std::string& source = "<memory>");
/// Reads a .json or .json.gz file (gzip detected by magic bytes).
Graph read_memgraph(const std::string& path);
/// Serialises to memgraph-v1 JSON (one node per line, stable field order).
std::string to_memgraph_json(const Graph& g);
/// Writes .json, or .json.gz when the path ends in ".gz"; atomically (temp file + rename).
void write_memgraph(const Graph& g, const std::string& path);

/// An execution order: a permutation of dense node indices.
using Order = std::vector<int32_t>;

/// The program order 0, 1, ..., n-1.
Order program_order(const Graph& g);

struct SimResult {
  uint64_t peak = 0;              // bytes, the memory model's peak (persistent excluded)
  int32_t peak_step = -1;         // position in the order where the peak happens (-1: initial)
  uint64_t initial_live = 0;      // freeable inputs live before the first step
  uint64_t persistent_bytes = 0;  // reported separately, never in peak
  uint64_t final_live = 0;        // live after the last step (outputs + unread inputs...)
};

/// Runs the memory model of GRAPH_FORMAT.md over `order` exactly. Throws Error("memgraph")
/// if `order` is not a topological permutation of all nodes.
SimResult simulate(const Graph& g, const Order& order);

/// The need of every step of `order` (live + own + workspace, bytes; same rules as
/// simulate()): profile[t] is the memory while order[t] runs. Validates the order. `sim`,
/// when given, receives simulate()'s result of the same walk.
std::vector<uint64_t> memory_profile(const Graph& g, const Order& order, SimResult* sim = nullptr);

/// Checks that `order` is a permutation of all nodes with every node after its inputs;
/// throws Error("memgraph") naming the first offending node otherwise.
void check_order(const Graph& g, const Order& order);

}  // namespace deltamoe::sched
