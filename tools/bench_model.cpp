// `deltamoe bench model` (see bench_model.h). As llama-bench: pp = one forward over a prompt
// of random tokens from an empty cache (logits of the last token only), tg = that many
// single-token steps from an empty cache; each repeated, mean and standard deviation of the
// tokens/s of the repetitions, after one untimed warm-up of each.
#include "bench_model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "deltamoe/kernels/cpu_features.h"
#include "lm_common.h"
#include "proc_memory.h"
#include "roofline.h"

namespace deltamoe::cli {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// Bytes this process has caused to be read from storage (/proc/self/io read_bytes): page
// faults on a mapping and O_DIRECT reads alike; 0 where the kernel does not count them.
uint64_t storage_read_bytes() {
  std::ifstream f("/proc/self/io");
  std::string key;
  uint64_t v = 0;
  while (f >> key >> v)
    if (key == "read_bytes:") return v;
  return 0;
}

struct Series {
  std::vector<double> tps;
  double mean() const {
    double s = 0;
    for (double v : tps) s += v;
    return tps.empty() ? 0.0 : s / static_cast<double>(tps.size());
  }
  double stddev() const {
    if (tps.size() < 2) return 0.0;
    const double m = mean();
    double s = 0;
    for (double v : tps) s += (v - m) * (v - m);
    return std::sqrt(s / static_cast<double>(tps.size() - 1));
  }
};

}  // namespace

namespace {

// One model under test: a weight layout and KV dtype, loaded once, measured over the
// repetitions.
struct Contender {
  std::string layout;
  std::string label;  // the layout, or kv_<dtype> when two KV dtypes are compared
  std::unique_ptr<models::MoeLm> m;
  double load_s = 0;
  Series pp, tg;
  models::LmStats tg_stats;
  // Batched decode: distinct experts per MoE layer and step (what a step reads), summed.
  double unique_experts = 0, unique_layer_steps = 0;
  // Decode routing's locality (one sequence): of the experts a layer picks for a token, how
  // many it also picked for the previous token; and the busiest expert's share over the
  // mean (load imbalance). What an expert cache lives on: uniform, independent routing
  // repeats k/E of its picks and is balanced (1.0).
  double repeated_picks = 0, picks = 0;
  std::vector<std::vector<double>> expert_load;  // [MoE layer][expert] picks
  // Parallel runs: this rank's collectives during the timed pp / tg tests.
  struct Comm {
    double bytes = 0, secs = 0, tokens = 0, pairs_local = 0, pairs_remote = 0, wall_s = 0;
  } pp_comm, tg_comm;
  size_t kv_bytes = 0;
  // KV caches kept across repetitions, cleared before each (their pools keep the block
  // memory), as llama-bench reuses its context: a timed run measures the forward passes,
  // not the kernel zeroing fresh pages for a new cache.
  models::KvCache pp_cache;
  std::vector<models::KvCache> tg_caches;
  uint64_t storage_bytes = 0;   // read from storage during the timed repetitions
  double disk_gbps_before = 0;  // expert cache: the files' read bandwidth before timing
  double timed_tokens = 0;      // token rows of the timed repetitions
  // The timed tg tests in chunks, each with the read bandwidth measured right beside it
  // (the faster of the probe passes before and after it): the same-run roofline follows a
  // machine whose bandwidth drifts within seconds.
  struct Chunk {
    double tokens = 0, secs = 0, gbps = 0;
  };
  std::vector<Chunk> tg_chunks;
};

// Probe passes that bracket the chunks of a timed tg test: 128 MiB each (4-5 ms at 30 GB/s,
// outside the timed steps), rotating over a 256 MiB buffer so that none is still cached.
constexpr size_t kBracketPassBytes = size_t{128} << 20, kBracketBufferBytes = size_t{256} << 20;
// Chunks per tg test (at least 8 tokens each).
constexpr int64_t kBracketChunks = 8;

// Adds one sequence's decode routing (`steps` tokens, each step's MoE layers in order) to
// c's locality counters.
void add_locality(Contender& c, const std::vector<moe::RoutingResult>& routing, int64_t steps) {
  const size_t layers = routing.size() / static_cast<size_t>(std::max<int64_t>(1, steps));
  if (layers == 0) return;
  c.expert_load.resize(layers);
  for (size_t j = 0; j < routing.size(); ++j) {
    const auto& ids = routing[j].expert_ids;
    auto& load = c.expert_load[j % layers];
    for (int32_t e : ids) {
      if (load.size() <= static_cast<size_t>(e)) load.resize(static_cast<size_t>(e) + 1, 0.0);
      load[static_cast<size_t>(e)] += 1;
    }
    if (j < layers) continue;  // the first token has no previous one
    const auto& prev = routing[j - layers].expert_ids;
    for (int32_t e : ids) c.repeated_picks += std::find(prev.begin(), prev.end(), e) != prev.end();
    c.picks += static_cast<double>(ids.size());
  }
}

// Adds the collectives since the last reset_parallel_stats() to `t` (timed runs only).
void tally_comm(const models::MoeLm& m, Contender::Comm& t, double tokens, double secs) {
  const dist::Communicator* comm = m.comm();
  if (!comm) return;
  t.bytes += static_cast<double>(comm->stats().bytes_sent);
  t.secs += comm->stats().time_s;
  t.tokens += tokens;
  t.wall_s += secs;
  t.pairs_local += static_cast<double>(m.expert_parallel_stats().pairs_local);
  t.pairs_remote += static_cast<double>(m.expert_parallel_stats().pairs_remote);
}

// " @ d<depth>" as llama-bench writes a test at a depth; empty at depth 0.
std::string depth_tag(const ModelBenchOptions& o) {
  return o.depth > 0 ? " @ d" + std::to_string(o.depth) : "";
}

// "pp512", "tg128 @ d2048": a test's name as llama-bench prints it.
std::string test_label(const char* kind, int64_t tokens, const ModelBenchOptions& o) {
  return kind + std::to_string(tokens) + depth_tag(o);
}

// -d: `o.depth` random tokens into an empty cache, untimed, so that the test after it runs
// at that context (llama-bench's -d).
void prefill_depth(Contender& c, const ModelBenchOptions& o, std::mt19937_64& rng,
                   models::KvCache& cache, std::vector<float>& logits) {
  if (o.depth == 0) return;
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.m->vocab_size() - 1));
  std::vector<int32_t> toks(static_cast<size_t>(o.depth));
  for (auto& t : toks) t = pick(rng);
  c.m->forward(toks.data(), o.depth, cache, logits.data(), false);
}

void measure_once(Contender& c, const ModelBenchOptions& o, std::mt19937_64& rng, bool timed,
                  std::vector<float>& logits, StreamProbe* probe) {
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(c.m->vocab_size() - 1));
  const char* tag = timed ? "" : " warm-up";
  if (o.prompt > 0) {
    std::vector<int32_t> toks(static_cast<size_t>(o.prompt));
    for (auto& t : toks) t = pick(rng);
    models::KvCache& cache = c.pp_cache;
    cache.clear();
    prefill_depth(c, o, rng, cache, logits);
    c.m->reset_parallel_stats();
    const auto t0 = Clock::now();
    c.m->forward(toks.data(), o.prompt, cache, logits.data(), false);
    const double s = seconds_since(t0);
    if (timed) {
      c.pp.tps.push_back(static_cast<double>(o.prompt) / s);
      tally_comm(*c.m, c.pp_comm, static_cast<double>(o.prompt), s);
    }
    std::cerr << "  " << c.label << " pp" << o.prompt << depth_tag(o) << tag << ": "
              << static_cast<double>(o.prompt) / s << " tokens/s\n";
  }
  if (o.gen > 0) {
    const size_t b = static_cast<size_t>(o.decode_batch);
    std::vector<models::KvCache>& caches = c.tg_caches;
    caches.resize(b);
    std::vector<models::KvCache*> ptrs;
    for (auto& kc : caches) {
      kc.clear();
      prefill_depth(c, o, rng, kc, logits);
      ptrs.push_back(&kc);
    }
    std::vector<std::vector<int32_t>> step(b, std::vector<int32_t>(1));
    std::vector<float> batch_logits(b == 1 ? 0 : b * static_cast<size_t>(c.m->vocab_size()));
    models::LmStats st;
    st.record_routing = true;
    for (auto& s : step) s[0] = pick(rng);
    c.m->reset_parallel_stats();
    if (!timed) probe = nullptr;
    const int threads = num_threads();
    const auto pass_gbps = [&] {
      return static_cast<double>(kBracketPassBytes) /
             probe->time_pass_s(kBracketPassBytes, threads) / 1e9;
    };
    const int64_t chunk = probe ? std::max<int64_t>(8, o.gen / kBracketChunks) : o.gen;
    double s = 0, before = probe ? pass_gbps() : 0.0;
    for (int64_t i0 = 0; i0 < o.gen; i0 += chunk) {
      const int64_t i1 = std::min(o.gen, i0 + chunk);
      const auto t0 = Clock::now();
      for (int64_t i = i0; i < i1; ++i) {
        if (b == 1)
          c.m->forward(step[0].data(), 1, caches[0], logits.data(), false, &st);
        else
          c.m->forward_batch(step, ptrs, batch_logits.data(), &st);
        for (auto& sv : step) sv[0] = pick(rng);
      }
      const double dt = seconds_since(t0);
      s += dt;
      if (probe) {
        const double after = pass_gbps();
        c.tg_chunks.push_back(
            {static_cast<double>((i1 - i0) * o.decode_batch), dt, std::max(before, after)});
        before = after;
      }
    }
    const double tps = static_cast<double>(o.gen) * static_cast<double>(b) / s;
    if (timed) {
      c.tg.tps.push_back(tps);
      tally_comm(*c.m, c.tg_comm, static_cast<double>(o.gen) * static_cast<double>(b), s);
      c.tg_stats.moe_rows += st.moe_rows;
      c.tg_stats.routed_experts += st.routed_experts;
      if (b == 1) add_locality(c, st.routing, o.gen);
      for (const moe::RoutingResult& r : st.routing) {
        if (b == 1) break;  // one sequence: a step's experts are its token's
        std::vector<int32_t> ids = r.expert_ids;
        std::sort(ids.begin(), ids.end());
        c.unique_experts += static_cast<double>(std::unique(ids.begin(), ids.end()) - ids.begin());
        c.unique_layer_steps += 1;
      }
    }
    const models::KvCache& cache = caches[0];
    c.kv_bytes = cache.bytes();
    std::cerr << "  " << c.label << " tg" << o.gen << depth_tag(o)
              << (b > 1 ? " x" + std::to_string(b) : "") << tag << ": " << tps << " tokens/s\n";
  }
}

// The expert files' read bandwidth in GB/s: about 2 GB of the experts the cache read last,
// read again as the cache reads them (ExpertCache::probe_read_gbps).
double disk_probe(const models::ExpertCache& cache, uint64_t seed) {
  const int64_t n =
      std::clamp<int64_t>(static_cast<int64_t>(2e9 / static_cast<double>(cache.expert_bytes())), 8,
                          cache.total_experts());
  return cache.probe_read_gbps(n, seed);
}

// Traffic of one timed test summed over the ranks, per token and MoE layer, beside what a
// model of expert parallelism (models/moe_lm.h, ParallelMode::ep) predicts for it. Per token:
// each routed pair whose expert is on another rank sends its row and expert id and gets its
// output row back (8H + 4 bytes); every layer all-gathers the token's new key and value rows
// (2·kv floats) to the P − 1 other ranks; the last layer's rows are all-gathered once (4H to
// P − 1 ranks). Per pass and MoE layer, each rank sends P − 1 row counts (8 bytes). Remote
// pairs are predicted for uniform routing (a token's rank owns its share of the experts);
// `bytes_over_routing_model` uses the measured remote pairs instead, leaving only accounting.
// Collective: every rank calls it.
nlohmann::json comm_report(const models::MoeLm& m, const Contender::Comm& t, double rows_per_pass) {
  dist::Communicator& comm = *m.comm();
  double sums[4] = {t.bytes, t.pairs_local, t.pairs_remote, t.secs};
  comm.all_reduce_sum(sums, 4);
  // Each rank's share of the time inside collectives (waiting for the slowest included).
  std::vector<double> share(static_cast<size_t>(comm.size()));
  const double mine = t.wall_s > 0 ? t.secs / t.wall_s : 0.0;
  const std::vector<int64_t> eight(static_cast<size_t>(comm.size()), 8);
  comm.all_gather_v(&mine, share.data(), eight.data());
  const auto& cfg = m.config();
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) moe_layers += cfg.is_moe_layer(l);
  const double p = comm.size(), h = static_cast<double>(cfg.hidden_size);
  const double e = static_cast<double>(cfg.num_experts), ml = static_cast<double>(moe_layers);
  const double kv = static_cast<double>(cfg.num_key_value_heads * cfg.head_dim);
  const double rows = ml * t.tokens;  // token rows through MoE layers
  const double pairs = sums[1] + sums[2];
  // A rank holds its count of the experts; uniform routing sends it that share of its rows'
  // pairs, whatever the placement.
  double remote_share = 0;
  const moe::ExpertPlacement place = moe::ExpertPlacement::contiguous(cfg.num_experts, comm.size());
  const auto n = static_cast<int64_t>(rows_per_pass);
  for (int r = 0; r < comm.size(); ++r) {
    const double share_rows = static_cast<double>(dist::split_begin(n, r + 1, comm.size()) -
                                                  dist::split_begin(n, r, comm.size())) /
                              rows_per_pass;
    remote_share += share_rows * (1.0 - static_cast<double>(place.experts_of(r).size()) / e);
  }
  const double k = rows > 0 ? pairs / rows : 0.0;
  // A dynamic placement all-reduces E expert counts (doubles) per MoE layer and pass.
  const double dynamic = m.placement_report().kind == "dynamic" ? 16 * e * (p - 1) : 0.0;
  const double fixed = (8 * p * (p - 1) + dynamic) / rows_per_pass +
                       static_cast<double>(cfg.num_hidden_layers) / ml * 8 * kv * (p - 1) +
                       4 * h * (p - 1) / ml;
  double predicted = k * remote_share * (8 * h + 4) + fixed;
  const double measured = rows > 0 ? sums[0] / rows : 0.0;
  double from_routing = rows > 0 ? sums[2] * (8 * h + 4) / rows + fixed : 0.0;
  if (m.parallel() == models::ParallelMode::es || m.parallel() == models::ParallelMode::tp) {
    // Expert slicing: every layer's FFN all-reduces the token's H floats (a ring: each rank
    // sends 2·(P − 1)/P of them), whatever the routing. Tensor slicing adds the attention
    // output's all-reduce in every layer and, with q/k norms over all heads (OLMoE), the
    // token's two sums of squares (doubles).
    const double per_layer =
        m.parallel() == models::ParallelMode::tp
            ? 2 * 8 * h * (p - 1) + (cfg.qk_norm == io::HfConfig::QkNorm::full ? 32 * (p - 1) : 0)
            : 8 * h * (p - 1);
    predicted = from_routing = static_cast<double>(cfg.num_hidden_layers) / ml * per_layer;
    remote_share = 0;
  }
  nlohmann::json r = {{"tokens", t.tokens},
                      {"bytes_per_token_per_moe_layer", measured},
                      {"remote_pair_share", pairs > 0 ? sums[2] / pairs : 0.0},
                      {"comm_time_share", t.wall_s > 0 ? sums[3] / p / t.wall_s : 0.0},
                      {"comm_time_share_per_rank", share}};
  // --parallel auto's per-layer choices may change between passes: no single traffic model;
  // the choices and their modelled costs are reported instead (ffn_choices).
  if (m.parallel() != models::ParallelMode::automatic) {
    r["predicted_bytes_per_token_per_moe_layer"] = predicted;
    r["bytes_over_predicted"] = predicted > 0 ? measured / predicted : 0.0;
    r["bytes_over_routing_model"] = from_routing > 0 ? measured / from_routing : 0.0;
    r["predicted_remote_pair_share"] = remote_share;
  }
  return r;
}

nlohmann::json parallel_report(const Contender& c, const ModelBenchOptions& o) {
  nlohmann::json j = parallel_json(*c.m);
  // The communicator's all-to-all cost curve, measured now: the network part of a cost model.
  const dist::AllToAllCost a2a =
      dist::measure_all_to_all(*c.m->comm(), {4096, 65536, 1 << 20, 4 << 20}, 10);
  nlohmann::json pts = nlohmann::json::array();
  for (const auto& pt : a2a.points)
    pts.push_back({{"bytes_per_peer", pt.bytes_per_peer}, {"time_ms", 1e3 * pt.seconds}});
  j["all_to_all_probe"] = {
      {"points", pts}, {"latency_us", 1e6 * a2a.latency_s}, {"bandwidth_gbps", a2a.bandwidth_gbps}};
  if (o.prompt > 0) j["pp"] = comm_report(*c.m, c.pp_comm, static_cast<double>(o.prompt));
  if (o.gen > 0) j["tg"] = comm_report(*c.m, c.tg_comm, static_cast<double>(o.decode_batch));
  if (c.m->parallel() == models::ParallelMode::automatic) {
    if (o.prompt > 0) j["pp"]["ffn_choices"] = ffn_choices_json(*c.m, o.prompt);
    if (o.gen > 0) j["tg"]["ffn_choices"] = ffn_choices_json(*c.m, o.decode_batch);
  }
  return j;
}

// The figures of one contender (the whole report when there is one).
json report(const Contender& c, const ModelBenchOptions& o, double gbps) {
  json out = {{"weight_layout", c.layout},
              {"label", c.label},
              {"kv_dtype", std::string(dtype_name(c.m->kv_dtype()))},
              {"weight_bytes", c.m->weight_bytes()},
              {"mapped_weight_bytes", c.m->mapped_weight_bytes()},
              {"load_time_ms", 1e3 * c.load_s}};
  if (o.prompt > 0) {
    out["pp_tokens"] = o.prompt;
    out["pp_tokens_per_s"] = c.pp.mean();
    out["pp_tokens_per_s_stddev"] = c.pp.stddev();
  }
  if (o.gen > 0) {
    const double experts = c.tg_stats.mean_experts();
    const auto& cfg = c.m->config();
    const double kv_read =
        static_cast<double>(cfg.num_hidden_layers) * 2.0 *
        static_cast<double>(cfg.num_key_value_heads * cfg.head_dim) *
        static_cast<double>(dtype_size(c.m->kv_dtype())) *
        (static_cast<double>(o.depth) + (static_cast<double>(o.gen) + 1.0) / 2.0);
    // One step reads the weights once for all its sequences: the distinct experts of each
    // MoE layer, everything else once; KV per sequence.
    const double batch = static_cast<double>(o.decode_batch);
    const double step_experts = o.decode_batch > 1 && c.unique_layer_steps > 0
                                    ? c.unique_experts / c.unique_layer_steps
                                    : experts;
    const double bytes = (c.m->active_weight_bytes(step_experts) + kv_read * batch) / batch;
    const double roofline = gbps * 1e9 / bytes;
    out["tg_tokens"] = o.gen;
    out["decode_batch"] = o.decode_batch;
    out["tg_tokens_per_s"] = c.tg.mean();
    out["tg_tokens_per_s_stddev"] = c.tg.stddev();
    out["mean_experts_per_token"] = experts;
    if (o.decode_batch > 1) out["distinct_experts_per_layer_step"] = step_experts;
    if (c.picks > 0) {
      out["decode_repeated_pick_share"] = c.repeated_picks / c.picks;
      out["uniform_repeated_pick_share"] = experts / static_cast<double>(cfg.num_experts);
      // Busiest expert over the mean, per layer, averaged over layers.
      double imb = 0;
      for (const auto& load : c.expert_load) {
        double mx = 0, sum = 0;
        for (double v : load) {
          mx = std::max(mx, v);
          sum += v;
        }
        if (sum > 0) imb += mx / (sum / static_cast<double>(cfg.num_experts));
      }
      const size_t layers = c.expert_load.size();
      out["decode_expert_load_max_over_mean"] = layers ? imb / static_cast<double>(layers) : 0.0;
    }
    out["decode_bytes_per_token"] = bytes;
    if (gbps > 0) {
      out["read_bandwidth_gbps"] = gbps;
      out["decode_roofline_tokens_per_s"] = roofline;
      out["decode_frac_of_roofline"] = c.tg.mean() / roofline;
    }
    if (!c.tg_chunks.empty()) {
      // Each chunk against the bandwidth read beside it: the time its bytes take at that
      // rate over the time it took (time-weighted, so the slow chunks count as they did).
      double roof_s = 0, secs = 0, gb_s = 0;
      for (const auto& k : c.tg_chunks) {
        roof_s += k.tokens * bytes / (k.gbps * 1e9);
        secs += k.secs;
        gb_s += k.gbps * k.secs;
      }
      out["read_bandwidth_gbps_beside_tg"] = gb_s / secs;
      out["decode_frac_of_roofline_beside"] = roof_s / secs;
    }
    out["kv_cache_bytes"] = c.kv_bytes;
  }
  if (c.m->comm()) out["parallel"] = parallel_report(c, o);
  out["storage_read_bytes"] = c.storage_bytes;
  out["storage_read_bytes_per_token"] =
      c.timed_tokens > 0 ? static_cast<double>(c.storage_bytes) / c.timed_tokens : 0.0;
  if (const models::ExpertCache* cache = c.m->expert_cache()) {
    json ec = expert_cache_json(*cache, c.timed_tokens);
    // The disk roofline: the cache's reads per token at the files' bandwidth, measured with
    // the same reads just before and just after the timed repetitions (a shared disk's
    // bandwidth drifts; the mean of both is the roofline).
    const double after = disk_probe(*cache, o.seed + 1);
    const double disk = 0.5 * (c.disk_gbps_before + after);
    ec["disk_read_gbps"] = disk;
    ec["disk_read_gbps_before"] = c.disk_gbps_before;
    ec["disk_read_gbps_after"] = after;
    const double per_token = ec["bytes_read_per_token"].get<double>();
    if (o.prompt == 0 && o.gen > 0 && per_token > 0) {
      const double roof = disk * 1e9 / per_token;
      ec["disk_roofline_tokens_per_s"] = roof;
      ec["frac_of_disk_roofline"] = c.tg.mean() / roof;
    }
    const size_t all_experts =
        static_cast<size_t>(cache->total_experts() * static_cast<int64_t>(cache->expert_bytes()));
    ec["resident_weight_bytes"] = c.m->weight_bytes() - std::min(c.m->weight_bytes(), all_experts);
    out["expert_cache"] = ec;
  }
  return out;
}

void print_contender(const json& r, const ModelBenchOptions& o) {
  const std::string layout = r["label"].get<std::string>();
  std::printf(
      "  [%s] %.2f GB of weights, %.2f GB used in place from the mapping, loaded in %.2f s\n",
      layout.c_str(), r["weight_bytes"].get<double>() / 1e9,
      r["mapped_weight_bytes"].get<double>() / 1e9, r["load_time_ms"].get<double>() / 1e3);
  if (o.prompt > 0)
    std::printf("  [%s] %-14s %9.2f ± %.2f tokens/s\n", layout.c_str(),
                test_label("pp", o.prompt, o).c_str(), r["pp_tokens_per_s"].get<double>(),
                r["pp_tokens_per_s_stddev"].get<double>());
  if (o.gen > 0 && r.contains("decode_frac_of_roofline_beside"))
    std::printf("  [%s] decode at %.0f%% of the roofline of the %.1f GB/s read beside it\n",
                r["label"].get<std::string>().c_str(),
                100 * r["decode_frac_of_roofline_beside"].get<double>(),
                r["read_bandwidth_gbps_beside_tg"].get<double>());
  if (o.gen > 0 && r.contains("decode_frac_of_roofline"))
    std::printf(
        "  [%s] %-14s %9.2f ± %.2f tokens/s   (%.0f%% of the %.1f tokens/s bandwidth "
        "roofline at %.1f GB/s; %.2f experts per token)\n",
        layout.c_str(), test_label("tg", o.gen, o).c_str(), r["tg_tokens_per_s"].get<double>(),
        r["tg_tokens_per_s_stddev"].get<double>(), 100 * r["decode_frac_of_roofline"].get<double>(),
        r["decode_roofline_tokens_per_s"].get<double>(), r["read_bandwidth_gbps"].get<double>(),
        r["mean_experts_per_token"].get<double>());
  else if (o.gen > 0)
    std::printf("  [%s] %-14s %9.2f ± %.2f tokens/s   (%.2f experts per token)\n", layout.c_str(),
                test_label("tg", o.gen, o).c_str(), r["tg_tokens_per_s"].get<double>(),
                r["tg_tokens_per_s_stddev"].get<double>(),
                r["mean_experts_per_token"].get<double>());
  if (r.contains("expert_cache")) {
    const json& e = r["expert_cache"];
    std::printf("  [%s] %s; disk %.2f GB/s", layout.c_str(), expert_cache_line(e).c_str(),
                e["disk_read_gbps"].get<double>());
    if (e.contains("frac_of_disk_roofline"))
      std::printf(", %.0f%% of the %.2f tokens/s disk roofline",
                  100 * e["frac_of_disk_roofline"].get<double>(),
                  e["disk_roofline_tokens_per_s"].get<double>());
    std::printf("\n");
  }
}

// What substitution costs: the same random tokens decoded (teacher-forced) with substitution
// off (exact: the logits of all experts resident) and on, in the cache's current state;
// the logits' largest difference, relative to the largest reference logit, and how often
// the top token agrees.
json substitution_check(const models::MoeLm& m, models::ExpertCache& cache, int64_t n,
                        uint64_t seed) {
  std::mt19937_64 rng(seed + 7);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(m.vocab_size() - 1));
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (auto& t : toks) t = pick(rng);
  const size_t v = static_cast<size_t>(m.vocab_size());
  const auto decode = [&](bool sub, std::vector<float>& all) {
    cache.set_substitute(sub);
    models::KvCache kc;
    std::vector<float> logits(v);
    for (int32_t t : toks) {
      m.forward(&t, 1, kc, logits.data(), false);
      all.insert(all.end(), logits.begin(), logits.end());
    }
  };
  std::vector<float> ref, got;
  decode(false, ref);
  const int64_t subs0 = cache.stats().substitutions;
  decode(true, got);
  const int64_t subs = cache.stats().substitutions - subs0;
  double max_abs = 0, ref_max = 0, agree = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_abs = std::max<double>(max_abs, std::fabs(got[i] - ref[i]));
    ref_max = std::max<double>(ref_max, std::fabs(ref[i]));
  }
  for (int64_t s = 0; s < n; ++s) {
    const auto b = static_cast<std::ptrdiff_t>(static_cast<size_t>(s) * v);
    const auto e = b + static_cast<std::ptrdiff_t>(v);
    agree += std::max_element(ref.begin() + b, ref.begin() + e) - (ref.begin() + b) ==
             std::max_element(got.begin() + b, got.begin() + e) - (got.begin() + b);
  }
  return {{"tokens", n},
          {"substitutions_per_token", static_cast<double>(subs) / static_cast<double>(n)},
          {"logit_max_abs_error", max_abs},
          {"logit_max_rel_error", ref_max > 0 ? max_abs / ref_max : 0.0},
          {"top1_agreement", agree / static_cast<double>(n)}};
}

}  // namespace

int run_model_bench(const ModelBenchOptions& o, const std::string& dtype_flag, int threads,
                    bool json_out) {
  DELTAMOE_CHECK(!o.model.empty(), "bench", "bench model needs --model DIR");
  const std::string dtype = resolved_dtype(dtype_flag, o.model);
  DELTAMOE_CHECK(o.prompt > 0 || o.gen > 0, "bench", "nothing to measure: -p and -n are both 0");
  // The untimed prefill of -d would count in the cache's hit rate and bytes read per token.
  DELTAMOE_CHECK(o.depth == 0 || o.offload.expert_cache.empty(), "bench",
                 "-d with --expert-cache is not supported: the prefill to that depth would count "
                 "in the cache's statistics");
  DELTAMOE_CHECK(!o.weight_layouts.empty() && o.weight_layouts.size() <= 2, "bench",
                 "--weight-layout takes one layout or two to compare, got ",
                 o.weight_layouts.size());
  DELTAMOE_CHECK(!o.kv_dtypes.empty() && o.kv_dtypes.size() <= 2, "bench",
                 "--kv-dtype takes one dtype or two to compare, got ", o.kv_dtypes.size());
  DELTAMOE_CHECK(o.weight_layouts.size() == 1 || o.kv_dtypes.size() == 1, "bench",
                 "compare two weight layouts or two KV dtypes in one run, not both");
  std::vector<std::string> kv_dtypes;  // auto resolved, so that labels name what runs
  for (const std::string& kv : o.kv_dtypes) kv_dtypes.push_back(resolved_kv_dtype(kv, dtype));
  DELTAMOE_CHECK(kv_dtypes.size() == 1 || kv_dtypes[0] != kv_dtypes[1], "bench", "--kv-dtype ",
                 o.kv_dtypes[0], ",", o.kv_dtypes[1], " compares ", kv_dtypes[0], " with itself");
  std::vector<std::pair<std::string, std::string>> setups;  // (layout, KV dtype)
  for (const std::string& layout : o.weight_layouts)
    for (const std::string& kv : kv_dtypes) setups.emplace_back(layout, kv);
  std::vector<Contender> runs;
  for (const auto& [layout, kv] : setups) {
    LmCliOptions lo;
    lo.model = o.model;
    lo.dtype = dtype;
    lo.routing = o.routing;
    lo.threads = threads;
    lo.weight_layout = layout;
    lo.kv_dtype = kv;
    lo.offload = o.offload;
    lo.parallel = o.parallel;
    lo.ep_placement = o.ep_placement;
    lo.threads_explicit = o.threads_explicit;
    Contender c;
    // int8 has one layout, quantised row-major copies (load_lm refuses packed): say so.
    c.layout = dtype == "int8" ? "int8_copies" : layout;
    c.label = o.kv_dtypes.size() > 1 ? "kv_" + kv : c.layout;
    const auto t_load = Clock::now();
    c.m = load_lm(lo);
    c.load_s = seconds_since(t_load);
    runs.push_back(std::move(c));
  }
  threads = num_threads();  // a rank's share of the cores under mpirun
  const models::MoeLm& m0 = *runs[0].m;
  const int64_t ctx = std::min<int64_t>(m0.config().max_position_embeddings, 65536);
  DELTAMOE_CHECK(o.depth + o.prompt <= ctx && o.depth + o.gen <= ctx, "bench", "-d ", o.depth,
                 " + -p ", o.prompt, " / -n ", o.gen, " exceed the model's context of ", ctx,
                 " tokens");
  std::cerr << "bench model: " << o.model << " (" << io::hf_arch_name(m0.config().arch) << ", "
            << dtype << ", " << threads << " threads)";
  for (const auto& c : runs)
    std::cerr << "; " << c.label << ": " << static_cast<double>(c.m->weight_bytes()) / 1e9
              << " GB, " << static_cast<double>(c.m->mapped_weight_bytes()) / 1e9
              << " GB in place, loaded in " << c.load_s << " s";
  std::cerr << "\n";
  std::vector<float> logits(static_cast<size_t>(m0.vocab_size()));
  // Every contender sees the same prompts and tokens: one generator per contender, same seed.
  std::vector<std::mt19937_64> rngs(runs.size(), std::mt19937_64(o.seed));
  // The probe beside the tg chunks (none with an expert cache, whose decode the disk
  // bounds). Its pages are resident from here on: the memory figures below subtract them.
  const size_t hwm_before_probe = proc_status_bytes("VmHWM");
  std::unique_ptr<StreamProbe> bracket;
  if (o.gen > 0 && !m0.expert_cache()) bracket = std::make_unique<StreamProbe>(kBracketBufferBytes);
  // Repetitions alternate between the contenders (A B A B), so that a machine whose speed
  // drifts during the run treats both alike.
  for (int rep = -1; rep < o.repetitions; ++rep) {  // rep -1: warm-up
    for (size_t i = 0; i < runs.size(); ++i) {
      Contender& c = runs[i];
      // Counters cover the timed repetitions only (the warm-up fills an expert cache).
      if (rep == 0 && c.m->expert_cache()) {
        c.disk_gbps_before = disk_probe(*c.m->expert_cache(), o.seed);
        c.m->expert_cache()->reset_stats();
      }
      const uint64_t io0 = storage_read_bytes();
      measure_once(c, o, rngs[i], rep >= 0, logits, bracket.get());
      if (rep >= 0) {
        c.storage_bytes += storage_read_bytes() - io0;
        c.timed_tokens += static_cast<double>(o.prompt + o.gen * o.decode_batch);
      }
    }
  }
  const size_t hwm_with_probe = proc_status_bytes("VmHWM");
  const size_t probe_bytes = bracket ? kBracketBufferBytes : 0;
  bracket.reset();
  const size_t rss = proc_status_bytes("VmRSS");
  const size_t hwm =
      std::max(hwm_before_probe, hwm_with_probe - std::min(hwm_with_probe, probe_bytes));
  // Mapped weights on 4 KiB pages stream ~25% slower at decode than on 2 MiB pages (a
  // page-table walk and a prefetcher restart per 4 KiB); which one a run gets depends on how
  // the page cache holds the file, so the report says it.
  const size_t huge_mapped = file_huge_mapped_bytes();
  size_t mapped = 0;
  for (const auto& c : runs) mapped += c.m->mapped_weight_bytes();
  if (mapped >= (size_t{256} << 20) &&
      static_cast<double>(huge_mapped) < 0.5 * static_cast<double>(mapped))
    std::fprintf(stderr,
                 "bench model: note: %.2f of %.2f GB of mapped weights sit on 2 MiB pages; the "
                 "page cache holds the rest of the checkpoint in small pages (read before "
                 "deltamoe mapped it), which decode streams more slowly. --drop-page-cache "
                 "reads it again into 2 MiB pages\n",
                 static_cast<double>(huge_mapped) / 1e9, static_cast<double>(mapped) / 1e9);
  // Decode roofline: bytes of the weights a token reads (routed experts at the measured mean)
  // plus the KV cache read at the mean context of the tg test, over the read bandwidth
  // measured now, in this run.
  // The DRAM roofline; not with an expert cache, whose decode the disk bounds (its 512 MB
  // probe would also push a run under a memory limit out of it).
  const double gbps = o.gen > 0 && !m0.expert_cache() ? StreamProbe().best_pass_gbps(threads) : 0.0;
  json out = {{"model", o.model},
              {"arch", io::hf_arch_name(m0.config().arch)},
              {"dtype", dtype},
              {"routing", m0.routing_name()},
              {"threads", threads},
              {"cpu", cpu_features().model_name},
              {"repetitions", o.repetitions},
              {"depth", o.depth}};
  std::vector<json> reports;
  for (const auto& c : runs) reports.push_back(report(c, o, gbps));
  for (size_t i = 0; i < runs.size(); ++i)
    if (models::ExpertCache* cache = runs[i].m->expert_cache(); cache && cache->substitute())
      reports[i]["expert_cache"]["substitution_check"] =
          substitution_check(*runs[i].m, *cache, std::max<int64_t>(o.gen, 16), o.seed);
  out["rss_bytes"] = rss;
  out["peak_rss_bytes"] = hwm;
  out["mapped_huge_page_bytes"] = huge_mapped;
  if (runs.size() == 1) {
    out.update(reports[0]);
    if (out.contains("expert_cache")) {
      // What resident memory may be: the slots, the resident weights, the KV cache.
      const double bound = out["expert_cache"]["capacity_bytes"].get<double>() +
                           out["expert_cache"]["resident_weight_bytes"].get<double>() +
                           static_cast<double>(runs[0].kv_bytes);
      out["expert_cache"]["rss_bound_bytes"] = bound;
      out["expert_cache"]["peak_rss_over_bound"] = static_cast<double>(hwm) / bound;
    }
    out["rss_over_weights_and_kv"] =
        static_cast<double>(rss) / static_cast<double>(m0.weight_bytes() + runs[0].kv_bytes);
  } else {
    // Two models in one process: resident memory is that of both, so no per-model ratio.
    out["layouts"] = reports;
    const std::string key = runs[0].label + "_over_" + runs[1].label;
    if (o.prompt > 0) out["pp_ratio_" + key] = runs[0].pp.mean() / runs[1].pp.mean();
    if (o.gen > 0) out["tg_ratio_" + key] = runs[0].tg.mean() / runs[1].tg.mean();
  }
  if (json_out) {
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::printf("model %s (%s, %s, %d threads), CPU %s\n", o.model.c_str(),
              out["arch"].get<std::string>().c_str(), dtype.c_str(), threads,
              cpu_features().model_name.c_str());
  for (const auto& r : reports) print_contender(r, o);
  if (runs.size() == 1) {
    std::printf("  resident %.2f GB = %.2fx (weights %.2f GB + KV cache %.3f GB)\n",
                static_cast<double>(rss) / 1e9, out["rss_over_weights_and_kv"].get<double>(),
                static_cast<double>(m0.weight_bytes()) / 1e9,
                static_cast<double>(runs[0].kv_bytes) / 1e9);
    if (mapped > 0)
      std::printf("  mapped weights on 2 MiB pages: %.2f of %.2f GB\n",
                  static_cast<double>(huge_mapped) / 1e9, static_cast<double>(mapped) / 1e9);
  } else {
    if (o.prompt > 0)
      std::printf("  pp %s / %s = %.3f\n", runs[0].label.c_str(), runs[1].label.c_str(),
                  runs[0].pp.mean() / runs[1].pp.mean());
    if (o.gen > 0)
      std::printf("  tg %s / %s = %.3f\n", runs[0].label.c_str(), runs[1].label.c_str(),
                  runs[0].tg.mean() / runs[1].tg.mean());
  }
  return 0;
}

}  // namespace deltamoe::cli
