// Body parsing, response JSON and Prometheus text for the HTTP API.
#include "deltamoe/serve/http_api.h"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "deltamoe/core/error.h"

namespace deltamoe::serve {

namespace {

int b64_value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = (static_cast<unsigned char>(bytes[i]) << 16) |
                       (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                       static_cast<unsigned char>(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += alphabet[(v >> s) & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<unsigned char>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += rest == 2 ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  DELTAMOE_CHECK(text.size() % 4 == 0, "request", "base64 length ", text.size(),
                 " is not a multiple of 4");
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int j = 0; j < 4; ++j) {
      const unsigned char c = static_cast<unsigned char>(text[i + j]);
      if (c == '=' && i + 4 == text.size() && j >= 2) {
        v[j] = 0;
        ++pad;
        continue;
      }
      DELTAMOE_CHECK(pad == 0, "request", "base64 padding in the middle at offset ", i + j);
      v[j] = b64_value(c);
      DELTAMOE_CHECK(v[j] >= 0, "request", "bad base64 character at offset ", i + j);
    }
    const uint32_t w = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
    out += static_cast<char>((w >> 16) & 255);
    if (pad < 2) out += static_cast<char>((w >> 8) & 255);
    if (pad < 1) out += static_cast<char>(w & 255);
  }
  return out;
}

ParsedImages parse_classify_body(std::string_view body, int64_t dim, int64_t max_images) {
  using nlohmann::json;
  const json doc = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  DELTAMOE_CHECK(!doc.is_discarded(), "request", "body is not valid JSON");
  DELTAMOE_CHECK(doc.is_object(), "request", "body must be a JSON object");
  const bool has_arrays = doc.contains("images"), has_b64 = doc.contains("images_b64");
  DELTAMOE_CHECK(has_arrays != has_b64, "request",
                 "body needs exactly one of \"images\" and \"images_b64\"");
  const json& list = has_arrays ? doc["images"] : doc["images_b64"];
  const char* key = has_arrays ? "images" : "images_b64";
  DELTAMOE_CHECK(list.is_array(), "request", "\"", key, "\" must be an array");
  DELTAMOE_CHECK(!list.empty(), "request", "\"", key, "\" is empty");
  DELTAMOE_CHECK(static_cast<int64_t>(list.size()) <= max_images, "request",
                 "too many images: ", list.size(), " > ", max_images);
  ParsedImages out;
  out.count = static_cast<int64_t>(list.size());
  out.pixels.reserve(static_cast<size_t>(out.count * dim));
  for (size_t i = 0; i < list.size(); ++i) {
    const json& img = list[i];
    if (has_arrays) {
      DELTAMOE_CHECK(img.is_array(), "request", "images[", i, "] must be an array of ", dim,
                     " numbers");
      DELTAMOE_CHECK(static_cast<int64_t>(img.size()) == dim, "request", "images[", i, "] has ",
                     img.size(), " values, expected ", dim);
      for (size_t j = 0; j < img.size(); ++j) {
        const json& v = img[j];
        DELTAMOE_CHECK(v.is_number(), "request", "images[", i, "][", j, "] is not a number");
        const double x = v.get<double>();
        DELTAMOE_CHECK(std::isfinite(x) && x >= 0.0 && x <= 255.0, "request", "images[", i, "][", j,
                       "] = ", x, " is outside 0..255");
        out.pixels.push_back(static_cast<float>(x));
      }
    } else {
      DELTAMOE_CHECK(img.is_string(), "request", "images_b64[", i, "] must be a string");
      const std::string raw = base64_decode(img.get_ref<const std::string&>());
      DELTAMOE_CHECK(static_cast<int64_t>(raw.size()) == dim, "request", "images_b64[", i,
                     "] decodes to ", raw.size(), " bytes, expected ", dim);
      for (char c : raw) out.pixels.push_back(static_cast<float>(static_cast<unsigned char>(c)));
    }
  }
  return out;
}

std::string classify_response_json(const serve::RequestResult& result) {
  nlohmann::json classes = nlohmann::json::array(), probs = nlohmann::json::array(),
                 experts = nlohmann::json::array(), mean_experts = nlohmann::json::array(),
                 latency = nlohmann::json::array();
  for (const auto& r : result.results) {
    classes.push_back(r.predicted);
    probs.push_back(r.probs);
    experts.push_back(r.experts);
    mean_experts.push_back(r.mean_experts());
    latency.push_back(r.latency_us);
  }
  nlohmann::json out = {{"classes", classes},
                        {"probabilities", probs},
                        {"experts_used", experts},
                        {"mean_experts", mean_experts},
                        {"latency_us", latency}};
  return out.dump();
}

std::string error_json(std::string_view reason) {
  return nlohmann::json({{"error", std::string(reason)}})
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void histogram_text(std::ostringstream& os, const std::string& name, const std::string& labels,
                    const serve::Histogram& h, double scale) {
  uint64_t cum = 0;
  const std::string sep = labels.empty() ? "" : ",";
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cum += h.counts[i];
    os << name << "_bucket{" << labels << sep << "le=\"" << h.bounds[i] * scale << "\"} " << cum
       << "\n";
  }
  cum += h.counts.back();
  os << name << "_bucket{" << labels << sep << "le=\"+Inf\"} " << cum << "\n";
  os << name << "_sum" << (labels.empty() ? "" : "{" + labels + "}") << " " << h.sum * scale
     << "\n";
  os << name << "_count" << (labels.empty() ? "" : "{" + labels + "}") << " " << h.count << "\n";
}

std::string render_prometheus(const serve::RuntimeStats& rt, const HttpCounters& http) {
  std::ostringstream os;
  os << "# HELP deltamoe_http_requests_total HTTP responses by status code.\n"
     << "# TYPE deltamoe_http_requests_total counter\n";
  for (const auto& [code, n] : http.responses_by_status)
    os << "deltamoe_http_requests_total{code=\"" << code << "\"} " << n << "\n";
  os << "# HELP deltamoe_http_request_duration_seconds Time from request read to response, "
        "classify only.\n"
     << "# TYPE deltamoe_http_request_duration_seconds histogram\n";
  histogram_text(os, "deltamoe_http_request_duration_seconds", "", http.request_seconds, 1.0);
  os << "# HELP deltamoe_http_connections_open Open HTTP connections.\n"
     << "# TYPE deltamoe_http_connections_open gauge\ndeltamoe_http_connections_open "
     << http.connections_open << "\n"
     << "# TYPE deltamoe_http_connections_total counter\ndeltamoe_http_connections_total "
     << http.connections_total << "\n"
     << "# HELP deltamoe_http_connections_refused_total Connections closed at accept (limit).\n"
     << "# TYPE deltamoe_http_connections_refused_total counter\n"
     << "deltamoe_http_connections_refused_total " << http.connections_refused << "\n";
  os << "# HELP deltamoe_sample_latency_seconds Admission to answer, per sample, in the runtime.\n"
     << "# TYPE deltamoe_sample_latency_seconds histogram\n";
  histogram_text(os, "deltamoe_sample_latency_seconds", "", rt.latency_us, 1e-6);
  os << "# TYPE deltamoe_requests_admitted_total counter\ndeltamoe_requests_admitted_total "
     << rt.requests_admitted << "\n"
     << "# TYPE deltamoe_requests_rejected_total counter\ndeltamoe_requests_rejected_total "
     << rt.requests_rejected << "\n"
     << "# TYPE deltamoe_samples_done_total counter\ndeltamoe_samples_done_total "
     << rt.samples_done << "\n"
     << "# TYPE deltamoe_inflight_samples gauge\ndeltamoe_inflight_samples " << rt.inflight_samples
     << "\n"
     << "# TYPE deltamoe_ready gauge\ndeltamoe_ready " << (http.ready ? 1 : 0) << "\n";
  os << "# HELP deltamoe_queue_depth Samples waiting in a queue (stem/model or expertN).\n"
     << "# TYPE deltamoe_queue_depth gauge\n";
  for (const auto& q : rt.queues)
    os << "deltamoe_queue_depth{queue=\"" << q.name << "\"} " << q.depth << "\n";
  os << "# TYPE deltamoe_queue_batch_limit gauge\n";
  for (const auto& q : rt.queues)
    os << "deltamoe_queue_batch_limit{queue=\"" << q.name << "\"} " << q.current_batch_limit
       << "\n";
  os << "# HELP deltamoe_queue_flushes_total Batches run, by why the queue flushed.\n"
     << "# TYPE deltamoe_queue_flushes_total counter\n";
  static const char* reasons[3] = {"size", "timeout", "drain"};
  for (const auto& q : rt.queues)
    for (int r = 0; r < 3; ++r)
      os << "deltamoe_queue_flushes_total{queue=\"" << q.name << "\",reason=\"" << reasons[r]
         << "\"} " << q.flushes[r] << "\n";
  os << "# HELP deltamoe_queue_batch_size Realised batch sizes.\n# TYPE deltamoe_queue_batch_size "
        "histogram\n";
  for (const auto& q : rt.queues)
    histogram_text(os, "deltamoe_queue_batch_size", "queue=\"" + q.name + "\"", q.batch_sizes, 1.0);
  os << "# HELP deltamoe_queue_split_flushes_total Flushes shared between idle workers.\n"
     << "# TYPE deltamoe_queue_split_flushes_total counter\n";
  for (const auto& q : rt.queues)
    os << "deltamoe_queue_split_flushes_total{queue=\"" << q.name << "\"} " << q.splits << "\n";
  os << "# TYPE deltamoe_queue_busy_seconds_total counter\n";
  for (const auto& q : rt.queues)
    os << "deltamoe_queue_busy_seconds_total{queue=\"" << q.name << "\"} " << q.busy_us * 1e-6
       << "\n";
  return os.str();
}

std::string render_llm_prometheus(const LlmEngineStats& st, const HttpFrontendStats& http,
                                  bool ready) {
  std::ostringstream os;
  os << "# HELP deltamoe_http_requests_total HTTP responses by status code.\n"
     << "# TYPE deltamoe_http_requests_total counter\n";
  for (const auto& [code, n] : http.responses_by_status)
    os << "deltamoe_http_requests_total{code=\"" << code << "\"} " << n << "\n";
  os << "# TYPE deltamoe_http_connections_open gauge\ndeltamoe_http_connections_open "
     << http.connections_open << "\n"
     << "# TYPE deltamoe_ready gauge\ndeltamoe_ready " << (ready ? 1 : 0) << "\n";
  os << "# HELP deltamoe_llm_time_to_first_token_seconds Submit to first generated token.\n"
     << "# TYPE deltamoe_llm_time_to_first_token_seconds histogram\n";
  histogram_text(os, "deltamoe_llm_time_to_first_token_seconds", "", st.ttft_s, 1.0);
  os << "# HELP deltamoe_llm_time_per_output_token_seconds Gap between a request's tokens.\n"
     << "# TYPE deltamoe_llm_time_per_output_token_seconds histogram\n";
  histogram_text(os, "deltamoe_llm_time_per_output_token_seconds", "", st.tpot_s, 1.0);
  os << "# HELP deltamoe_llm_batch_sequences Sequences per engine step.\n"
     << "# TYPE deltamoe_llm_batch_sequences histogram\n";
  histogram_text(os, "deltamoe_llm_batch_sequences", "", st.batch_sequences, 1.0);
  os << "# HELP deltamoe_llm_batch_tokens Token rows per engine step.\n"
     << "# TYPE deltamoe_llm_batch_tokens histogram\n";
  histogram_text(os, "deltamoe_llm_batch_tokens", "", st.batch_tokens, 1.0);
  const auto counter = [&](const char* name, const char* help, double v) {
    os << "# HELP " << name << " " << help << "\n# TYPE " << name << " counter\n"
       << name << " " << v << "\n";
  };
  const auto gauge = [&](const char* name, const char* help, double v) {
    os << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n"
       << name << " " << v << "\n";
  };
  counter("deltamoe_llm_requests_submitted_total", "Requests accepted by the engine.",
          static_cast<double>(st.requests_submitted));
  counter("deltamoe_llm_requests_rejected_total", "Requests refused (queue full, draining).",
          static_cast<double>(st.requests_rejected));
  counter("deltamoe_llm_requests_finished_total", "Requests finished.",
          static_cast<double>(st.requests_finished));
  counter("deltamoe_llm_prompt_tokens_total", "Prompt tokens accepted.",
          static_cast<double>(st.prompt_tokens));
  counter("deltamoe_llm_generation_tokens_total", "Tokens generated.",
          static_cast<double>(st.generated_tokens));
  counter("deltamoe_llm_preemptions_total", "Sequences preempted for KV blocks (recomputed).",
          static_cast<double>(st.preemptions));
  counter("deltamoe_llm_steps_total", "Engine steps (forward passes).",
          static_cast<double>(st.steps));
  counter("deltamoe_llm_busy_seconds_total", "Time in forward passes.", st.busy_s);
  gauge("deltamoe_llm_generation_tokens_per_second",
        "Generated tokens per second of forward-pass time, since start.",
        st.busy_s > 0 ? static_cast<double>(st.generated_tokens) / st.busy_s : 0.0);
  gauge("deltamoe_llm_requests_running", "Sequences in the running batch.",
        static_cast<double>(st.running));
  gauge("deltamoe_llm_requests_waiting", "Requests queued for admission.",
        static_cast<double>(st.waiting));
  gauge("deltamoe_llm_kv_blocks_used", "KV-cache blocks held by sequences.",
        static_cast<double>(st.kv_blocks_used));
  gauge("deltamoe_llm_kv_blocks_total", "KV-cache blocks in the pool.",
        static_cast<double>(st.kv_blocks_total));
  gauge("deltamoe_llm_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use.",
        st.kv_blocks_total
            ? static_cast<double>(st.kv_blocks_used) / static_cast<double>(st.kv_blocks_total)
            : 0.0);
  counter("deltamoe_llm_expert_runs_total",
          "Expert batches run (MoE layer, expert, step): each reads the expert's weights once.",
          static_cast<double>(st.expert_runs));
  gauge("deltamoe_llm_held_tokens", "Sequences whose token waits at an MoE layer for its experts.",
        static_cast<double>(st.held_tokens));
  counter("deltamoe_llm_held_token_steps_total",
          "Steps that ended with a sequence's token held, summed over sequences.",
          static_cast<double>(st.held_token_steps));
  gauge("deltamoe_llm_mean_experts_per_token", "Real experts per token and MoE layer.",
        st.mean_experts);
  os << "# HELP deltamoe_llm_expert_tokens_total Token rows routed to each expert (all MoE "
        "layers).\n# TYPE deltamoe_llm_expert_tokens_total counter\n";
  for (size_t e = 0; e < st.expert_tokens.size(); ++e)
    os << "deltamoe_llm_expert_tokens_total{expert=\"" << e << "\"} " << st.expert_tokens[e]
       << "\n";
  os << "# HELP deltamoe_llm_expert_step_rows Rows each expert ran in the latest engine step "
        "(all MoE layers).\n# TYPE deltamoe_llm_expert_step_rows gauge\n";
  for (size_t e = 0; e < st.expert_step_rows.size(); ++e)
    os << "deltamoe_llm_expert_step_rows{expert=\"" << e << "\"} " << st.expert_step_rows[e]
       << "\n";
  os << "# HELP deltamoe_llm_expert_queue_rows Rows waiting in each expert's queues (all MoE "
        "layers) after the latest step: tokens held for per-expert queues across steps.\n"
        "# TYPE deltamoe_llm_expert_queue_rows gauge\n";
  for (size_t e = 0; e < st.expert_queue_rows.size(); ++e)
    os << "deltamoe_llm_expert_queue_rows{expert=\"" << e << "\"} " << st.expert_queue_rows[e]
       << "\n";
  if (st.has_expert_cache) {
    const models::ExpertCacheStats& c = st.expert_cache;
    gauge("deltamoe_expert_cache_slots", "Experts the expert cache holds at once.",
          static_cast<double>(st.expert_cache_slots));
    gauge("deltamoe_expert_cache_experts", "Routed experts of the model (all MoE layers).",
          static_cast<double>(st.expert_cache_experts));
    counter("deltamoe_expert_cache_requests_total", "Experts pinned by MoE layers.",
            static_cast<double>(c.requests));
    counter("deltamoe_expert_cache_hits_total", "Expert pins that found the expert loaded.",
            static_cast<double>(c.hits));
    counter("deltamoe_expert_cache_misses_total",
            "Expert pins that found the expert absent (read on demand).",
            static_cast<double>(c.misses));
    gauge("deltamoe_expert_cache_hit_ratio", "Hits over requests, since load.", c.hit_rate());
    counter("deltamoe_expert_cache_read_bytes_total", "Bytes read from the checkpoint.",
            static_cast<double>(c.bytes_read));
    counter("deltamoe_expert_cache_prefetch_reads_total", "Expert reads started by prefetch.",
            static_cast<double>(c.prefetch_reads));
    gauge("deltamoe_expert_cache_prefetch_precision_ratio",
          "Predicted experts the routing then used, over experts predicted.", c.precision());
    gauge("deltamoe_expert_cache_prefetch_recall_ratio",
          "Predicted experts the routing used, over experts it used.", c.recall());
    counter("deltamoe_expert_cache_stall_seconds_total", "Time MoE layers waited for reads.",
            c.stall_s);
    counter("deltamoe_expert_cache_substitutions_total",
            "Token-expert pairs run without their expert (--substitute).",
            static_cast<double>(c.substitutions));
    counter("deltamoe_expert_cache_evictions_total", "Experts evicted.",
            static_cast<double>(c.evictions));
  }
  return os.str();
}

}  // namespace deltamoe::serve
