// `deltamoe serve` for language models (see serve_llm.h).
#include "serve_llm.h"

#include <filesystem>
#include <iostream>

#include "command.h"
#include "deltamoe/io/chat_template.h"
#include "deltamoe/io/output.h"
#include "deltamoe/serve/llm_server.h"
#include "lm_common.h"

namespace deltamoe::cli {

void LlmServeOptions::add(CLI::App& app) {
  app.add_option("--dtype", dtype,
                 "Language models: weight dtype for compute, auto (the checkpoint's: bf16 for a "
                 "bf16 checkpoint, else f32), f32, bf16 or int8 (quantised at load)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "int8"}))
      ->capture_default_str();
  app.add_option("--weight-layout", weight_layout,
                 "Language models: mapped (weights used in place from the checkpoint) or packed")
      ->check(CLI::IsMember({"mapped", "packed"}))
      ->capture_default_str();
  add_kv_dtype_option(app, kv_dtype, "Language models: ");
  add_offload_options(app, offload, "Language models: ");
  add_parallel_option(app, parallel, ep_placement);
  app.add_option("--kv-cache-mb", kv_cache_mb,
                 "Language models: KV-cache memory in MiB, shared by all sequences in blocks")
      ->check(CLI::Range(1.0, 1048576.0))
      ->capture_default_str();
  app.add_option("--kv-block", kv_block, "Language models: positions per KV-cache block")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--max-batch-tokens", max_batch_tokens,
                 "Language models: token rows per step (decode tokens + prefill chunks)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-running", max_running,
                 "Language models: sequences decoding together (the running batch)")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  app.add_option("--max-waiting", max_waiting,
                 "Language models: requests queued for admission; beyond it 503")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--model-name", model_name,
                 "Language models: the id /v1/models reports (default: the directory's name)");
}

void LlmServeOptions::set_queues(const std::string& mode, int64_t queue_size,
                                 int64_t queue_timeout_us, bool mode_given, bool size_given,
                                 bool timeout_given) {
  const std::string m = mode_given ? mode : "continuous";
  DELTAMOE_CHECK(m == "continuous" || m == "per-expert", "serve", "--mode ", m,
                 " is not a batching mode of language models (continuous or per-expert)");
  if (m == "continuous") {
    DELTAMOE_CHECK(!size_given && !timeout_given, "serve",
                   "--queue-size and --queue-timeout-us go with --mode per-expert for language "
                   "models (continuous batching has no per-expert queues across steps)");
    queues = {};
    return;
  }
  DELTAMOE_CHECK(size_given && timeout_given, "serve",
                 "--mode per-expert for a language model needs --queue-size B (rows an expert "
                 "waits for) and --queue-timeout-us T (the longest a token waits)");
  DELTAMOE_CHECK(queue_timeout_us >= 0 && queue_timeout_us <= 3600LL * 1000000, "serve",
                 "--queue-timeout-us for a language model must be in [0, 3600 s]: a held token "
                 "needs a deadline, got ",
                 queue_timeout_us);
  queues.min_rows = queue_size;
  queues.max_wait_s = static_cast<double>(queue_timeout_us) * 1e-6;
}

bool is_lm_dir(const std::string& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec) &&
         std::filesystem::exists(std::filesystem::path(path) / "config.json", ec);
}

int run_llm_server(const std::string& model_dir, const std::string& routing,
                   const LlmServeOptions& o, const ServeHttpOptions& http,
                   const sigset_t& signals) {
  if (!http.port_file.empty()) io::check_writable(http.port_file, "serve");
  // The tokenizer and chat template first: their errors come before the (long) load.
  std::shared_ptr<const io::Tokenizer> tok = io::Tokenizer::load(model_dir);
  std::shared_ptr<const io::ChatTemplate> chat;
  // A broken template is an error here, not at the first chat request.
  if (auto t = io::ChatTemplate::load_if_present(model_dir))
    chat = std::make_shared<io::ChatTemplate>(std::move(*t));
  DELTAMOE_CHECK(!(o.queues.holds() && !o.offload.expert_cache.empty()), "serve",
                 "--mode per-expert holds tokens at MoE layers between steps, which would pin "
                 "their experts in the --expert-cache: use one or the other");
  LmCliOptions lo;
  lo.model = model_dir;
  lo.dtype = o.dtype;
  lo.weight_layout = o.weight_layout;
  lo.kv_dtype = o.kv_dtype;
  lo.offload = o.offload;
  lo.routing = routing;
  lo.threads = o.threads;
  lo.parallel = o.parallel;
  lo.ep_placement = o.ep_placement;
  DELTAMOE_CHECK(o.parallel == "none" || !o.queues.holds(), "serve",
                 "--mode per-expert holds tokens at MoE layers between steps, which --parallel "
                 "does not run: use one or the other");
  const auto t0 = std::chrono::steady_clock::now();
  std::shared_ptr<const models::MoeLm> model = load_lm(lo);
  dist::Communicator* comm = model->comm();
  if (comm && comm->size() > 1 && comm->rank() != 0) {
    // Only rank 0 listens; the others run each of its engine's steps until it stops.
    serve::follow_llm_steps(*model, *comm);
    return 0;
  }
  serve::LlmEngineConfig ec;
  ec.kv_block_tokens = o.kv_block;
  ec.kv_cache_bytes = static_cast<size_t>(o.kv_cache_mb * 1024.0 * 1024.0);
  ec.max_batch_tokens = o.max_batch_tokens;
  ec.max_running = o.max_running;
  ec.max_waiting = o.max_waiting;
  ec.expert_queues = o.queues;
  if (comm && comm->size() > 1) ec.mirror = comm;
  auto engine = std::make_shared<serve::LlmEngine>(model, tok, ec);
  serve::LlmServerConfig sc;
  sc.host = http.host;
  sc.port = http.port;
  sc.limits = http.limits;
  sc.retry_after_s = http.retry_after_s;
  sc.model_name = o.model_name.empty()
                      ? std::filesystem::path(model_dir).lexically_normal().filename().string()
                      : o.model_name;
  if (sc.model_name.empty()) sc.model_name = "deltamoe";
  if (chat)
    sc.render_chat = [chat](const std::vector<serve::ChatTurn>& turns) {
      std::vector<io::ChatMessage> msgs;
      for (const auto& t : turns) msgs.push_back({t.role, t.content});
      try {
        return chat->render(msgs, /*add_generation_prompt=*/true);
      } catch (const Error& e) {
        // The template's own complaints (raise_exception: roles must alternate, ...) are the
        // request's fault: a 400 with the template's message.
        fail("request", e.what());
      }
    };
  serve::LlmServer server(engine, sc);
  server.start();
  const auto st = engine->stats();
  std::cerr << "serve: " << sc.model_name << " (" << io::hf_arch_name(model->config().arch) << ", "
            << model->layers() << " layers, " << experts_text(model->config()) << ", "
            << dtype_name(model->dtype()) << ", routing " << model->routing_name() << ") loaded in "
            << seconds_since(t0) << " s; KV cache " << st.kv_blocks_total << " blocks of "
            << o.kv_block << " positions (" << st.kv_blocks_total * o.kv_block << " in all); "
            << (o.queues.holds() ? "per-expert queues B=" + std::to_string(o.queues.min_rows) +
                                       " T=" + std::to_string(o.queues.max_wait_s * 1e3) + "ms"
                                 : std::string("continuous batching"))
            << "; chat template " << (chat ? "yes" : "none")
            << (comm ? "; --parallel " + o.parallel + " over " + std::to_string(comm->size()) +
                           " ranks"
                     : std::string())
            << "; listening on http://" << sc.host << ":" << server.port() << std::endl;
  if (!http.port_file.empty())
    write_file_atomic(http.port_file, std::to_string(server.port()) + "\n");
  int sig = 0;
  sigwait(&signals, &sig);
  std::cerr << "serve: signal " << sig << ", draining" << std::endl;
  server.stop();
  const auto fin = engine->stats();
  std::cerr << "serve: drained; requests accepted " << fin.requests_submitted << ", finished "
            << fin.requests_finished << ", refused " << fin.requests_rejected << ", tokens "
            << fin.generated_tokens << " generated" << std::endl;
  return fin.requests_submitted == fin.requests_finished ? 0 : 3;
}

}  // namespace deltamoe::cli
