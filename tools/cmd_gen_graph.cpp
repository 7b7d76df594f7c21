// `deltamoe gen-graph`: synthetic memgraph-v1 graphs for tests and the scheduler benchmark.
#include <algorithm>
#include <iostream>
#include <random>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/io/output.h"
#include "deltamoe/sched/memgraph.h"

namespace {

using namespace deltamoe::sched;

struct Builder {
  Graph g;
  std::mt19937_64 rng;
  explicit Builder(uint64_t seed) : rng(seed) {}
  int32_t add(std::string name, std::string op, std::vector<int32_t> inputs, uint64_t size,
              int32_t view_of = -1, uint64_t workspace = 0) {
    Node nd;
    nd.id = g.size();
    nd.name = std::move(name);
    nd.op = std::move(op);
    nd.inputs = std::move(inputs);
    nd.size = view_of == -1 ? size : 0;
    nd.view_of = view_of;
    nd.workspace = workspace;
    g.nodes.push_back(std::move(nd));
    g.is_output.push_back(0);
    g.is_persistent.push_back(0);
    return g.size() - 1;
  }
  uint64_t rand_size() {  // 1 KiB .. 4 MiB, log-uniform, multiples of 256
    std::uniform_real_distribution<double> d(10.0, 22.0);
    return (static_cast<uint64_t>(std::exp2(d(rng))) / 256 + 1) * 256;
  }
  int64_t uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  }
  bool coin(double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; }
};

void gen_chain(Builder& b, int32_t n) {
  int32_t prev = b.add("x", "input", {}, b.rand_size());
  for (int32_t i = 1; i < n; ++i)
    prev = b.add("op" + std::to_string(i), "op", {prev}, b.rand_size());
  b.g.is_output[prev] = 1;
}

// Random layered DAG: width about sqrt(n)/2, each node reads 1-3 nodes of the previous two
// layers; some nodes are views; the last layer is the output.
void gen_layered(Builder& b, int32_t n) {
  const int32_t width =
      std::max<int32_t>(2, static_cast<int32_t>(std::sqrt(static_cast<double>(n)) / 2));
  std::vector<std::vector<int32_t>> layers(1);
  for (int32_t i = 0; i < std::min(width, n); ++i)
    layers[0].push_back(b.add("in" + std::to_string(i), "input", {}, b.rand_size()));
  int32_t count = static_cast<int32_t>(layers[0].size());
  while (count < n) {
    const int32_t w =
        static_cast<int32_t>(std::min<int64_t>(b.uniform(1, 2 * width - 1), n - count));
    layers.emplace_back();
    const auto& prev = layers[layers.size() - 2];
    const auto* prev2 = layers.size() >= 3 ? &layers[layers.size() - 3] : nullptr;
    for (int32_t i = 0; i < w; ++i) {
      std::vector<int32_t> ins;
      const int64_t k = b.uniform(1, 3);
      for (int64_t j = 0; j < k; ++j) {
        const auto& src = (prev2 && b.coin(0.25)) ? *prev2 : prev;
        ins.push_back(src[b.uniform(0, static_cast<int64_t>(src.size()) - 1)]);
      }
      std::string name = "n";
      name += std::to_string(count);  // (not "n" + ...: GCC 12 -Wrestrict false positive)
      int32_t v;
      if (b.coin(0.1))
        v = b.add(name, "view", {ins[0]}, 0, ins[0]);
      else
        v = b.add(name, "op", ins, b.rand_size(), -1, b.coin(0.1) ? b.rand_size() / 4 : 0);
      layers.back().push_back(v);
      ++count;
    }
  }
  for (int32_t v : layers.back()) b.g.is_output[v] = 1;
}

// Two-terminal series-parallel DAG built by random series and fork/join compositions.
std::pair<int32_t, int32_t> gen_sp_rec(Builder& b, int32_t n, int32_t entry) {
  auto node = [&](std::vector<int32_t> ins) {
    const bool src = ins.empty();
    return b.add("n" + std::to_string(b.g.size()), src ? "input" : "op", std::move(ins),
                 b.rand_size());
  };
  if (n <= 2 || (n < 4) || b.coin(0.45)) {
    if (n <= 2) {
      const int32_t first = node(entry < 0 ? std::vector<int32_t>{} : std::vector<int32_t>{entry});
      int32_t last = first;
      if (n == 2) last = node({first});
      return {first, last};
    }
    const int32_t a = static_cast<int32_t>(b.uniform(1, n - 1));
    auto [f1, l1] = gen_sp_rec(b, a, entry);
    auto [f2, l2] = gen_sp_rec(b, n - a, l1);
    (void)f2;
    return {f1, l2};
  }
  const int32_t fork = node(entry < 0 ? std::vector<int32_t>{} : std::vector<int32_t>{entry});
  int32_t rest = n - 2;
  const int32_t k = static_cast<int32_t>(std::min<int64_t>(b.uniform(2, 4), rest));
  std::vector<int32_t> lasts;
  for (int32_t i = 0; i < k; ++i) {
    const int32_t share =
        i + 1 == k ? rest : static_cast<int32_t>(b.uniform(1, rest - (k - 1 - i)));
    rest -= share;
    lasts.push_back(gen_sp_rec(b, share, fork).second);
  }
  const int32_t join = node(lasts);
  return {fork, join};
}

void gen_sp(Builder& b, int32_t n) {
  b.g.is_output[gen_sp_rec(b, n, -1).second] = 1;
}

// A transformer-like training step: forward, loss, backward with saved activations;
// parameters persistent, their gradients outputs. About 38 nodes per layer.
void gen_transformer(Builder& b, int32_t n) {
  const int32_t layers = std::max<int32_t>(1, n / 38);
  const uint64_t tokens = static_cast<uint64_t>(b.uniform(2, 16)) * 128;
  const uint64_t hidden = static_cast<uint64_t>(b.uniform(2, 8)) * 128;
  const uint64_t heads = 8;
  const uint64_t A = tokens * hidden * 4, S = heads * tokens * tokens * 4 / 4;
  const uint64_t W = hidden * hidden * 4;
  auto param = [&](const std::string& name, uint64_t size) {
    const int32_t p = b.add(name, "param", {}, size);
    b.g.is_persistent[p] = 1;
    return p;
  };
  auto grad_out = [&](const std::string& name, std::vector<int32_t> ins, uint64_t size) {
    const int32_t v = b.add(name, "grad", std::move(ins), size);
    b.g.is_output[v] = 1;
    return v;
  };
  const int32_t tok = b.add("tokens", "input", {}, tokens * 8);
  const int32_t tgt = b.add("targets", "input", {}, tokens * 8);
  const int32_t emb = param("embed", W * 8);
  int32_t x = b.add("embed_out", "embedding", {tok, emb}, A);
  struct Saved {
    int32_t x_in, ln, qkv, q, k, v, soft, attn, add1, ln2, ff1, gelu, w_qkv, w_o, w1, w2;
  };
  std::vector<Saved> saved;
  for (int32_t l = 0; l < layers; ++l) {
    const std::string p = "l" + std::to_string(l) + ".";
    Saved s{};
    s.x_in = x;
    s.w_qkv = param(p + "w_qkv", 3 * W);
    s.w_o = param(p + "w_o", W);
    s.w1 = param(p + "w1", 4 * W);
    s.w2 = param(p + "w2", 4 * W);
    s.ln = b.add(p + "ln1", "layer_norm", {x}, A);
    s.qkv = b.add(p + "qkv", "mm", {s.ln, s.w_qkv}, 3 * A);
    s.q = b.add(p + "q", "getitem", {s.qkv}, 0, s.qkv);
    s.k = b.add(p + "k", "getitem", {s.qkv}, 0, s.qkv);
    s.v = b.add(p + "v", "getitem", {s.qkv}, 0, s.qkv);
    const int32_t scores = b.add(p + "scores", "bmm", {s.q, s.k}, S);
    s.soft = b.add(p + "softmax", "softmax", {scores}, S);
    s.attn = b.add(p + "attn", "bmm", {s.soft, s.v}, A);
    const int32_t proj = b.add(p + "proj", "mm", {s.attn, s.w_o}, A);
    s.add1 = b.add(p + "add1", "add", {x, proj}, A);
    s.ln2 = b.add(p + "ln2", "layer_norm", {s.add1}, A);
    s.ff1 = b.add(p + "ff1", "mm", {s.ln2, s.w1}, 4 * A);
    s.gelu = b.add(p + "gelu", "gelu", {s.ff1}, 4 * A);
    const int32_t ff2 = b.add(p + "ff2", "mm", {s.gelu, s.w2}, A);
    x = b.add(p + "add2", "add", {s.add1, ff2}, A);
    saved.push_back(s);
  }
  const int32_t logits = b.add("logits", "mm", {x, emb}, tokens * 8 * hidden);
  int32_t g = b.add("loss_grad", "cross_entropy_backward", {logits, tgt}, A);
  grad_out("embed.grad_out", {logits, x}, W * 8);
  for (int32_t l = layers - 1; l >= 0; --l) {
    const Saved& s = saved[l];
    const std::string p = "l" + std::to_string(l) + ".d_";
    grad_out(p + "w2", {s.gelu, g}, 4 * W);
    const int32_t dgelu = b.add(p + "gelu", "mm", {g, s.w2}, 4 * A);
    const int32_t dff1 = b.add(p + "ff1", "gelu_backward", {dgelu, s.ff1}, 4 * A);
    grad_out(p + "w1", {s.ln2, dff1}, 4 * W);
    const int32_t dln2 = b.add(p + "ln2", "mm", {dff1, s.w1}, A);
    const int32_t dln2in = b.add(p + "ln2in", "layer_norm_backward", {dln2, s.add1}, A, -1, A / 8);
    const int32_t gmid = b.add(p + "mid", "add", {g, dln2in}, A);
    grad_out(p + "w_o", {s.attn, gmid}, W);
    const int32_t dattn = b.add(p + "attn", "mm", {gmid, s.w_o}, A);
    const int32_t dsoft = b.add(p + "softmax", "bmm", {dattn, s.v}, S);
    const int32_t dv = b.add(p + "v", "bmm", {s.soft, dattn}, A);
    const int32_t dscores = b.add(p + "scores", "softmax_backward", {dsoft, s.soft}, S);
    const int32_t dq = b.add(p + "q", "bmm", {dscores, s.k}, A);
    const int32_t dk = b.add(p + "k", "bmm", {dscores, s.q}, A);
    const int32_t dqkv = b.add(p + "qkv", "cat", {dq, dk, dv}, 3 * A);
    grad_out(p + "w_qkv", {s.ln, dqkv}, 3 * W);
    const int32_t dln = b.add(p + "ln1", "mm", {dqkv, s.w_qkv}, A);
    const int32_t dlnin = b.add(p + "ln1in", "layer_norm_backward", {dln, s.x_in}, A, -1, A / 8);
    g = b.add(p + "x", "add", {gmid, dlnin}, A);
  }
  grad_out("embed.grad", {tok, g}, W * 8);
}

deltamoe::cli::CommandRegistrar reg(
    "gen-graph", "Write a synthetic memgraph-v1 graph (layered, sp, chain, transformer)",
    [](CLI::App& app) -> deltamoe::cli::Action {
      struct Opts {
        std::string kind = "layered", out;
        int32_t nodes = 1000;
        uint64_t seed = 1;
      };
      auto o = std::make_shared<Opts>();
      app.add_option("--kind", o->kind,
                     "layered: random layered DAG; sp: random series-parallel (fork/join) DAG;\n"
                     "chain: a path; transformer: a training step (about --nodes nodes)")
          ->check(CLI::IsMember({"layered", "sp", "chain", "transformer"}));
      app.add_option("--nodes", o->nodes, "Number of nodes (default 1000)")
          ->check(CLI::Range(1, 50000000));
      app.add_option("--seed", o->seed, "Random seed (default 1)");
      app.add_option("--out", o->out, "Output file (.json or .json.gz)")->required();
      return [o]() -> int {
        deltamoe::io::check_writable(o->out, "gen-graph");
        Builder b(o->seed);
        b.g.name = o->kind + "-n" + std::to_string(o->nodes) + "-s" + std::to_string(o->seed);
        if (o->kind == "chain")
          gen_chain(b, o->nodes);
        else if (o->kind == "layered")
          gen_layered(b, o->nodes);
        else if (o->kind == "sp")
          gen_sp(b, o->nodes);
        else
          gen_transformer(b, o->nodes);
        b.g.finalize(o->out);
        write_memgraph(b.g, o->out);
        std::cerr << "gen-graph: wrote " << o->out << " (" << b.g.size() << " nodes)\n";
        return 0;
      };
    });

}  // namespace
