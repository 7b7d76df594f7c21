// Graph IR with reverse-mode autodiff, for training.
//
// A Graph is a tape of nodes built eagerly: each op computes its value when it is added
// (the executor is the order of construction, which is a valid topological order), and
// backward() walks the tape in reverse calling one VJP per op. MoE routing depends on the
// data, so the graph is rebuilt for every batch; building it is cheap next to the GEMMs.
//
// Values are f32 tensors, contiguous, row-major. Matrices are [rows, cols]; vectors [n];
// scalars [1]. Parameters are leaves whose value and gradient alias caller-owned tensors
// (nn::Parameter): backward() accumulates into the gradient, the optimizer reads it.
// Index lists given to ops (rows, cols, offsets) are copied into the node.
//
// Determinism: every op's forward and VJP gives bit-identical results for the same inputs
// at a fixed thread count (parallel loops split work statically and never reduce across
// threads in a data-dependent order; OpenBLAS is deterministic at a fixed thread count).
// Thread-safety: a Graph is used by one thread at a time; ops parallelise internally.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"

namespace deltamoe::graph {

/// Handle to a node of a Graph (its index on the tape). id < 0 means "none".
struct Var {
  int32_t id = -1;
  bool valid() const { return id >= 0; }
};

enum class Op : int32_t {
  input,
  param,
  linear,
  relu,
  gelu,
  silu,
  softplus,
  add,
  mul,
  scale,
  add_rows_tiled,
  sum,
  mean,
  mean_cols,
  mean_groups,
  softmax,
  log_softmax,
  cross_entropy,
  layer_norm,
  gather_rows,
  gate_weights,
  scatter_add_rows,
  dot_const,
  cv_squared,
  scatter_cols,
  noisy_load,
  rms_norm,
  rope,
  causal_attention,
  sigmoid,  // appended: op ids stay stable
};

/// Name of an op ("linear", ...).
const char* op_name(Op op);

struct Node {
  Op op = Op::input;
  std::vector<int32_t> inputs;
  Tensor value;
  Tensor grad;  // allocated lazily during backward (params: aliases the param's)
  bool requires_grad = false;
  // Op attributes (meaning per op; see the op's builder below).
  std::vector<int32_t> ia, ib, ic, id;
  float fa = 0.0f;
  int64_t na = 0;
  Tensor saved;  // per-op saved intermediates (layer norm: mean and rstd)
};

class Graph;

/// Buffers backward() may drop as it goes, so that a step on the heap holds what a plan would
/// (graph/memory_plan.h computes them from the step's memgraph): the values (and saved
/// intermediates) of `values_at_start` before the first VJP; after the VJP of tape node t has
/// run, the values of values_after[t] and the gradients of grads_after[t]. A dropped
/// tensor reads as undefined afterwards.
struct BackwardRelease {
  std::vector<int32_t> values_at_start;
  std::vector<std::vector<int32_t>> values_after, grads_after;  // per tape id
};

/// Which buffer of a tape node an allocation is for: its value, its per-op saved
/// intermediates, or its gradient.
enum class BufferRole : int32_t { value, saved, grad };

/// Where a tape puts the tensors it creates. Without one (the default) every value, saved
/// intermediate and gradient is its own heap allocation, held until the Graph is destroyed.
/// A planned allocator (graph/memory_plan.h) hands out views of one arena at offsets laid
/// out ahead of time, so buffers whose last reader has run are reused. Not owned by the
/// Graph; called from the thread that builds the tape.
class TapeAllocator {
 public:
  virtual ~TapeAllocator() = default;
  /// Memory for `role` of tape node `id` (a node with `op` reading `inputs`, tape ids; for a
  /// gradient, the node the gradient is of), an f32 tensor of `shape`, zero-filled when
  /// `zero`, otherwise of undefined contents. Returns an undefined Tensor to have the graph
  /// allocate it from the heap instead. Called before the op reads its inputs.
  virtual Tensor allocate(int32_t id, Op op, const std::vector<int32_t>& inputs, BufferRole role,
                          const Shape& shape, bool zero) = 0;
  /// Tape node `id` (`op` reading `inputs`) was pushed, after its buffers were allocated.
  /// Leaves (input, param) and ops that reuse an input's buffer allocate nothing.
  virtual void pushed(int32_t id, Op op, const std::vector<int32_t>& inputs) = 0;
  /// backward() is about to run the VJPs of the tape `g` from `loss`.
  virtual void begin_backward(const Graph& g, Var loss) = 0;
};

class Graph {
 public:
  /// `grad_enabled` false builds an inference tape: no node requires grad, backward() fails.
  explicit Graph(bool grad_enabled = true) : grad_enabled_(grad_enabled) {}

  // ---- leaves ----
  /// A constant (no gradient). The tensor is aliased, not copied.
  Var input(const Tensor& value);
  /// A trainable leaf: value and grad alias the given tensors (same shape, f32, contiguous);
  /// backward() adds into `grad`.
  Var param(const Tensor& value, const Tensor& grad);

  // ---- dense ops ----
  /// y[N,M] = x[N,K] · w[M,K]ᵀ (+ b[M] when b is valid). PyTorch Linear layout.
  Var linear(Var x, Var w, Var b = {});
  Var relu(Var x);
  /// Exact GELU, 0.5·x·(1 + erf(x/√2)) (PyTorch's default).
  Var gelu(Var x);
  Var silu(Var x);
  /// log(1 + eˣ), computed stably.
  Var softplus(Var x);
  /// 1 / (1 + e⁻ˣ) (Qwen2-MoE's shared-expert gate).
  Var sigmoid(Var x);
  /// Element-wise a + b (same shape).
  Var add(Var a, Var b);
  /// Element-wise a · b (same shape).
  Var mul(Var a, Var b);
  /// s · a.
  Var scale(Var a, float s);
  /// y[i,:] = a[i,:] + b[i mod G,:] for a[N·G, d] and b[G, d] (position embedding per token).
  Var add_rows_tiled(Var a, Var b);
  /// Σ of all elements → [1].
  Var sum(Var a);
  /// Mean of all elements → [1].
  Var mean(Var a);
  /// Column means of a[N,d] → [d].
  Var mean_cols(Var a);
  /// Mean over consecutive groups of `group` rows: a[N·group, d] → [N, d] (token pooling).
  Var mean_groups(Var a, int64_t group);
  /// Row-wise softmax of a[N,d].
  Var softmax(Var a);
  /// Row-wise log-softmax of a[N,d].
  Var log_softmax(Var a);
  /// Mean over rows of −log softmax(logits)[i, labels[i]] → [1]. labels in [0, d).
  /// With label smoothing ε > 0 the target is (1 − ε)·onehot + ε/d (PyTorch's
  /// label_smoothing): −(1 − ε)·log p_y − (ε/d)·Σ_c log p_c per row. With `row_losses`,
  /// also appends each row's loss (nats) to it, so per-sample losses cost nothing extra.
  Var cross_entropy(Var logits, const std::vector<int32_t>& labels, float smoothing = 0.0f,
                    std::vector<float>* row_losses = nullptr);
  /// Row-wise layer norm of x[N,d] with gamma[d], beta[d]: (x−μ)/√(σ²+eps)·γ + β.
  Var layer_norm(Var x, Var gamma, Var beta, float eps = 1e-5f);

  // ---- decoder (language model) ops; graph_decoder.cpp ----
  /// Row-wise RMSNorm of x[N,d] with weight w[d]: x / √(mean(x²) + eps) · w, computed as the
  /// inference path does (kernels::rms_norm_rows_st). Gradient flows into x and w.
  Var rms_norm(Var x, Var w, float eps);
  /// Rotary position embedding (Hugging Face half-rotation layout, kernels::rope_st) of
  /// x[B·T, H·head_dim]: B sequences of T = seq_len rows, row r at position r mod T, every
  /// head rotated by position·θ^(−2i/head_dim). head_dim even, dividing x's width.
  Var rope(Var x, int64_t head_dim, int64_t seq_len, double theta);
  /// Causal grouped-query attention within each of B sequences of T = seq_len rows:
  /// q[B·T, heads·d], k and v [B·T, kv_heads·d] → [B·T, heads·d], head h attending with kv
  /// head h / (heads / kv_heads), scale 1/√d (forward: kernels::causal_attention). The
  /// backward recomputes the attention probabilities instead of keeping B·heads·T² floats.
  Var causal_attention(Var q, Var k, Var v, int64_t heads, int64_t kv_heads, int64_t seq_len);

  // ---- MoE dispatch / combine ----
  /// y[j,:] = x[rows[j],:] → [rows.size(), d] (dispatch: the tokens routed to one expert).
  Var gather_rows(Var x, const std::vector<int32_t>& rows);
  /// Gate weights of a routing in CSR form. For token t, entries j in [offsets[t],
  /// offsets[t+1]) pick w[j] = p[t, cols[j]]; when `renormalize`, w[j] is divided by
  /// Σ_{c ∈ cols[t] ∪ extra_cols[t]} p[t, c], where extra_cols (CSR by extra_offsets; may be
  /// empty vectors meaning none) lists further columns counted in the denominator only (the
  /// null experts AdaMoE chose). p is [T, C]; result [cols.size()]. Gradient flows into p.
  Var gate_weights(Var p, const std::vector<int32_t>& offsets, const std::vector<int32_t>& cols,
                   bool renormalize, const std::vector<int32_t>& extra_offsets = {},
                   const std::vector<int32_t>& extra_cols = {});
  /// Combine: y = base (or zeros[n_rows, d] when base is invalid), then for each j,
  /// y[rows[j],:] += w[w_index[j]] · vals[j,:]. vals is [rows.size(), d]; w a vector.
  /// Gradient flows into base, vals and w. `reuse_base`: the result takes over base's storage
  /// instead of copying it (base's value then reads as the result); only for a base that no
  /// other op reads, such as the running sum of an MoE combine (saves E copies per layer).
  Var scatter_add_rows(Var base, Var vals, Var w, const std::vector<int32_t>& rows,
                       const std::vector<int32_t>& w_index, int64_t n_rows,
                       bool reuse_base = false);
  /// Σ_i a[i]·c[i] → [1], with c a constant vector of a's size (Switch loss: Σ_e f_e·P_e).
  Var dot_const(Var a, const std::vector<float>& c);
  /// Squared coefficient of variation of a vector: var(a)/(mean(a)² + 1e-10) → [1]
  /// (population variance; Shazeer's importance and load losses).
  Var cv_squared(Var a);
  /// y[c] = Σ_{j: cols[j]=c} w[j] → [n] (importance: summed gate weights per expert).
  Var scatter_cols(Var w, const std::vector<int32_t>& cols, int64_t n);
  /// Shazeer's smooth load estimate: load[c] = Σ_t Φ((clean[t,c] − thr[t,c]) / std[t,c]),
  /// thr[t,c] = the k-th largest noisy[t,:] if noisy[t,c] is outside the top k, else the
  /// (k+1)-th. Gradient flows into clean and std; noisy (the sampled logits) and the
  /// thresholds are treated as constants. All three are [T, C], C > k.
  Var noisy_load(Var clean, Var noisy, Var std_dev, int64_t k);

  // ---- execution ----
  /// Reverse pass from scalar `loss` ([1]): seeds d loss = 1 and runs every node's VJP.
  /// With `release`, drops buffers after their last reader as it says.
  void backward(Var loss, const BackwardRelease* release = nullptr);
  /// The node's value (a view; valid while the graph lives or longer: storage is shared).
  const Tensor& value(Var v) const { return node(v).value; }
  /// Gradient of the last backward() w.r.t. v (undefined tensor if none flowed).
  const Tensor& grad(Var v) const { return node(v).grad; }
  float scalar(Var v) const;
  const Node& node(Var v) const;
  int64_t size() const { return static_cast<int64_t>(nodes_.size()); }
  bool grad_enabled() const { return grad_enabled_; }
  /// Routes every later allocation of the tape (values, saved intermediates, gradients)
  /// through `a` (not owned; nullptr = the heap). Set it before the first op.
  void set_allocator(TapeAllocator* a) { allocator_ = a; }

 private:
  Var push(Node n);
  Node& mut(Var v);
  Tensor& grad_of(int32_t id);  // allocates zeros on first use
  void vjp(int32_t id);
  void vjp_decoder(int32_t id);  // the VJPs of the decoder ops (graph_decoder.cpp)
  /// A buffer of the node about to be pushed (tape id size()): through allocator_ when set,
  /// else the heap. `zero` fills it with zeros.
  Tensor alloc(Op op, const std::vector<int32_t>& inputs, BufferRole role, const Shape& shape,
               bool zero = false);
  /// A [1] value of the node about to be pushed, holding `v`.
  Tensor alloc_scalar(Op op, const std::vector<int32_t>& inputs, float v);

  bool grad_enabled_;
  TapeAllocator* allocator_ = nullptr;
  std::vector<Node> nodes_;
};

}  // namespace deltamoe::graph
