// Tape → memgraph-v1. The reads of each VJP below mirror vjp.cpp case by case; keep them in
// step when a VJP changes what it reads.
#include "deltamoe/graph/export_memgraph.h"

#include <map>

#include "deltamoe/core/error.h"
#include "graph/export_impl.h"

namespace deltamoe::graph {

namespace {

constexpr int32_t kSelf = -2;  // "the node's own buffer" (value + saved) in a read list

/// Tape ids (or kSelf) of the forward buffers the VJP of `n` reads to produce the gradient
/// of input k, besides the incoming gradient.
std::vector<int32_t> vjp_reads(const Node& n, size_t k) {
  const auto& in = n.inputs;
  switch (n.op) {
    case Op::linear:
      if (k == 0) return {in[1]};  // dx = dy·W
      if (k == 1) return {in[0]};  // dW = dyᵀ·x
      return {};                   // db = Σ rows dy
    case Op::relu:
    case Op::gelu:
    case Op::silu:
    case Op::softplus:
    case Op::sigmoid:
      return {in[0]};
    case Op::scale:
    case Op::add:
    case Op::add_rows_tiled:
    case Op::sum:
    case Op::mean:
    case Op::mean_cols:
    case Op::mean_groups:
    case Op::gather_rows:
    case Op::scatter_cols:
      return {};
    case Op::mul:
      return {in[1 - k]};
    case Op::softmax:
    case Op::log_softmax:
    case Op::cross_entropy:  // saved softmax probabilities
    case Op::gate_weights:   // w and the saved denominators
    case Op::dot_const:      // the saved constant vector
      return {kSelf};
    case Op::layer_norm:  // x, the saved mean/rstd, and γ for dx
      if (k == 0) return {in[0], in[1], kSelf};
      return {in[0], kSelf};
    case Op::scatter_add_rows:
      if (k == 0) return {};
      if (k == 1) return {in[2]};  // dvals = w·dy rows
      return {in[1]};              // dw = dy rows · vals
    case Op::cv_squared:
      return {in[0]};
    case Op::noisy_load:  // saved z and std
      return {kSelf, in[2]};
    case Op::rms_norm:  // x (its rstd is recomputed); dx also w
      if (k == 0) return {in[0], in[1]};
      return {in[0]};
    case Op::rope:  // a rotation: dx is dy rotated back
      return {};
    case Op::causal_attention:  // q, k and v (the probabilities are recomputed)
      return {in[0], in[1], in[2]};
    case Op::input:
    case Op::param:
      return {};
  }
  return {};
}

uint64_t fwd_bytes(const Node& n) {
  uint64_t b = n.value.nbytes();
  if (n.saved.defined()) b += n.saved.nbytes();
  return b;
}

}  // namespace

namespace detail {

Exported build(const Graph& g, Var loss, const ExportOptions& opt, const PlanSizes* plan) {
  DELTAMOE_CHECK(g.grad_enabled(), "graph", "export: the tape was built without gradients");
  DELTAMOE_CHECK(loss.valid() && loss.id < g.size(), "graph", "export: invalid loss node ",
                 loss.id);
  DELTAMOE_CHECK(g.value(loss).numel() == 1, "graph", "export: the loss must be a scalar, got ",
                 shape_str(g.value(loss).shape()));
  std::map<const void*, std::string> names(opt.param_names.begin(), opt.param_names.end());

  Exported ex;
  sched::Graph& out = ex.graph;
  out.name = opt.name;
  std::vector<char> persistent, output;
  int32_t current_vjp = -1;  // forward nodes; -2: the gradient seed; else the VJP's tape id
  auto add = [&](std::string name, std::string op, std::vector<int32_t> inputs, uint64_t size,
                 int32_t view_of) {
    sched::Node s;
    s.id = static_cast<int64_t>(out.nodes.size());
    s.name = std::move(name);
    s.op = std::move(op);
    s.inputs = std::move(inputs);
    s.size = size;
    s.view_of = view_of;
    out.nodes.push_back(std::move(s));
    persistent.push_back(0);
    output.push_back(0);
    ex.is_param_grad.push_back(0);
    ex.vjp_of.push_back(current_vjp);
    return static_cast<int32_t>(out.nodes.size() - 1);
  };

  const int32_t n_tape = static_cast<int32_t>(g.size());
  DELTAMOE_ASSERT(!plan || (plan->fwd.size() == static_cast<size_t>(n_tape) &&
                            plan->grad.size() == static_cast<size_t>(n_tape)),
                  "plan sizes for ", n_tape, " tape nodes");
  std::vector<int32_t>& fwd = ex.fwd;
  fwd.assign(static_cast<size_t>(n_tape), -1);
  std::vector<std::string> label(static_cast<size_t>(n_tape));
  for (int32_t i = 0; i < n_tape; ++i) {
    const Node& n = g.node(Var{i});
    if (n.op == Op::param) {
      auto it = names.find(n.value.raw());
      label[i] = it != names.end() ? it->second : "param" + std::to_string(i);
      fwd[i] = add(label[i], "param", {}, n.value.nbytes(), -1);
      persistent[static_cast<size_t>(fwd[i])] = 1;
      continue;
    }
    label[i] = std::string(op_name(n.op)) + "#" + std::to_string(i);
    std::vector<int32_t> ins;
    for (int32_t x : n.inputs)
      if (x >= 0) ins.push_back(fwd[static_cast<size_t>(x)]);  // scatter_add_rows: no base = -1
    if (!plan) {
      fwd[i] = add(label[i], op_name(n.op), std::move(ins), fwd_bytes(n), -1);
      continue;
    }
    // Planned execution: what the engine really allocates. Inputs alias caller tensors; a
    // scatter_add_rows that took over its base's storage is a view of it.
    const int32_t base = n.op == Op::scatter_add_rows ? n.inputs[0] : -1;
    if (base >= 0 && n.value.storage() == g.node(Var{base}).value.storage()) {
      fwd[i] = add(label[i], op_name(n.op), std::move(ins), 0, fwd[static_cast<size_t>(base)]);
      continue;
    }
    const int32_t shares = plan->view_of.empty() ? -1 : plan->view_of[static_cast<size_t>(i)];
    if (shares >= 0) {
      fwd[i] = add(label[i], op_name(n.op), std::move(ins), 0, fwd[static_cast<size_t>(shares)]);
      continue;
    }
    fwd[i] = add(label[i], op_name(n.op), std::move(ins), plan->fwd[static_cast<size_t>(i)], -1);
    if (n.op == Op::input) persistent[static_cast<size_t>(fwd[i])] = 1;
  }

  // Replay of Graph::backward(): a VJP runs for every node that requires grad and has
  // received a gradient, in reverse tape order; it feeds every input that requires grad.
  std::vector<int32_t>& grad_base = ex.grad_base;
  grad_base.assign(static_cast<size_t>(n_tape), -1);
  std::vector<int32_t> grad_last(grad_base);
  auto contribute = [&](int32_t target, std::vector<int32_t> reads, const std::string& what) {
    const Node& t = g.node(Var{target});
    const std::string name = "d(" + label[target] + ")";
    if (grad_base[target] < 0) {
      const uint64_t bytes = plan ? plan->grad[static_cast<size_t>(target)] : t.value.nbytes();
      const int32_t b = add(name, what, std::move(reads), bytes, -1);
      grad_base[target] = grad_last[target] = b;
      if (t.op == Op::param) ex.is_param_grad[static_cast<size_t>(b)] = 1;
      // The engine accumulates a parameter's gradient into the caller's tensor.
      if (t.op == Op::param && plan) persistent[static_cast<size_t>(b)] = 1;
    } else {
      reads.push_back(grad_last[target]);  // in-place accumulation after the previous one
      grad_last[target] = add(name + "+=", what, std::move(reads), 0, grad_base[target]);
    }
  };
  current_vjp = -2;
  if (g.node(loss).requires_grad) contribute(loss.id, {}, "grad_seed");
  for (int32_t id = loss.id; id >= 0; --id) {
    const Node& n = g.node(Var{id});
    if (!n.requires_grad || grad_last[id] < 0 || n.op == Op::param || n.op == Op::input) continue;
    current_vjp = id;
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      const int32_t x = n.inputs[k];
      if (x < 0 || !g.node(Var{x}).requires_grad) continue;
      std::vector<int32_t> reads;
      for (int32_t r : vjp_reads(n, k)) reads.push_back(r == kSelf ? fwd[id] : fwd[r]);
      reads.push_back(grad_last[id]);
      contribute(x, std::move(reads),
                 std::string("vjp.") + op_name(n.op) + ".in" + std::to_string(k));
    }
  }
  for (int32_t i = 0; i < n_tape; ++i)
    if (g.node(Var{i}).op == Op::param && grad_last[i] >= 0) output[grad_last[i]] = 1;
  if (plan)
    for (const Var v : plan->keep) {
      DELTAMOE_CHECK(v.valid() && v.id < n_tape, "graph", "plan: kept node ", v.id,
                     " is not on the tape");
      output[static_cast<size_t>(fwd[static_cast<size_t>(v.id)])] = 1;
    }

  out.is_output = std::move(output);
  out.is_persistent = std::move(persistent);
  out.finalize(opt.name);
  return ex;
}

}  // namespace detail

sched::Graph export_training_graph(const Graph& g, Var loss, const ExportOptions& opt) {
  return detail::build(g, loss, opt, nullptr).graph;
}

uint64_t tape_resident_bytes(const Graph& g, Var loss) {
  const detail::Exported ex = detail::build(g, loss, {}, nullptr);
  uint64_t total = 0;
  for (int32_t v = 0; v < ex.graph.size(); ++v)
    if (!ex.graph.is_persistent[static_cast<size_t>(v)] &&
        !ex.is_param_grad[static_cast<size_t>(v)])
      total += ex.graph.nodes[static_cast<size_t>(v)].size;
  return total;
}

}  // namespace deltamoe::graph
