// Export of one recorded training step of a graph::Graph tape to memgraph-v1 (sched::Graph).
//
// The tape records forward ops only; backward() runs one VJP per op. The exporter replays
// backward()'s control flow without computing anything and synthesises the backward nodes:
// one node per gradient a VJP produces (one per input that requires grad), reading the
// incoming gradient plus exactly the forward buffers that VJP's code reads (see vjp.cpp).
// Gradients accumulate in place in the engine, so the first contribution to a tape node's
// gradient owns the buffer and later contributions are zero-size view_of nodes of it.
// What is modelled and approximated is documented in docs/sched.md ("The engine's own
// training graph").
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "deltamoe/graph/graph.h"
#include "deltamoe/sched/memgraph.h"

namespace deltamoe::graph {

struct ExportOptions {
  std::string name = "deltamoe-train";
  /// Names of parameter leaves, matched by the storage address of the parameter's value
  /// (Tensor::raw()), e.g. built from an nn::ParameterSet. Unnamed params get "param<id>".
  std::vector<std::pair<const void*, std::string>> param_names;
};

/// Converts the forward tape of `g` (built with gradients enabled) plus the backward pass
/// that g.backward(loss) would run into a finalized memgraph. Node sizes are bytes: a forward
/// node's value plus its per-op saved intermediates; a gradient's base node the byte size of
/// the tensor it is the gradient of. Params are "param" nodes listed in `persistent`, input
/// leaves "input" nodes, and each parameter's final gradient node is listed in `outputs`.
/// Does not modify or run `g`; backward() need not have been called. Throws Error("graph")
/// if `loss` is not a scalar node of a gradient-enabled tape.
sched::Graph export_training_graph(const Graph& g, Var loss, const ExportOptions& opt = {});

/// Bytes the engine's tape itself holds for the step: every forward value and saved
/// intermediate plus one gradient buffer per node that receives one (the tape frees nothing
/// until it is destroyed). Parameters (value and gradient) are not counted.
uint64_t tape_resident_bytes(const Graph& g, Var loss);

}  // namespace deltamoe::graph
