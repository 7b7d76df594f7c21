// `deltamoe serve`: the HTTP classification server on per-expert queues.
#include <pthread.h>
#include <signal.h>

#include <fstream>
#include <iostream>
#include <set>
#include <vector>

#include "command.h"
#include "deltamoe/io/output.h"
#include "deltamoe/serve/http_server.h"
#include "serve_cli.h"
#include "serve_llm.h"

namespace {

deltamoe::cli::CommandRegistrar reg(
    "serve", "Serve an MoE classifier over HTTP with per-expert queues",
    [](CLI::App& app) -> deltamoe::cli::Action {
      auto opts = std::make_shared<deltamoe::cli::RuntimeOptions>();
      auto sc = std::make_shared<deltamoe::serve::ServerConfig>();
      auto port_file = std::make_shared<std::string>();
      auto llm = std::make_shared<deltamoe::cli::LlmServeOptions>();
      // Which flags belong to which kind of model comes from where they are added, so a new
      // flag of either kind is checked without a list to keep in step.
      const auto added_by = [&app](auto&& add) {
        std::set<const CLI::Option*> before;
        for (const CLI::Option* o : app.get_options()) before.insert(o);
        add();
        std::vector<std::string> names;
        for (const CLI::Option* o : app.get_options())
          // (get_name() is empty for a hidden alias; its long name is not)
          if (!before.count(o))
            names.push_back(o->get_lnames().empty() ? o->get_name() : "--" + o->get_lnames()[0]);
        return names;
      };
      auto classifier_flags = std::make_shared<std::vector<std::string>>();
      // Shared: the model, its routing, and the per-expert queue rule (B, T).
      const std::set<std::string> shared = {"--model",      "--routing",          "--mode",
                                            "--queue-size", "--queue-timeout-us", "--threads",
                                            "--workers"};
      for (const std::string& f : added_by([&] { opts->add(app); }))
        if (!shared.count(f)) classifier_flags->push_back(f);
      const auto lm_flags =
          std::make_shared<std::vector<std::string>>(added_by([&] { llm->add(app); }));
      app.add_option("--host", sc->host, "Address to listen on (default loopback)");
      app.add_option("--port", sc->port, "Port (0 = any free port, see --port-file)")
          ->check(CLI::Range(0, 65535));
      app.add_option("--port-file", *port_file, "Write the bound port to this file once listening");
      app.add_option("--http-threads", sc->threads,
                     "Polling threads of the HTTP layer (epoll; each holds any number of "
                     "connections and parses classify bodies)")
          ->check(CLI::Range(1, 256))
          ->capture_default_str();
      app.add_option("--max-inflight-requests", sc->max_inflight_requests,
                     "Classify requests admitted at once over HTTP, beyond it 503 (0 = only "
                     "--max-inflight bounds them)")
          ->check(CLI::NonNegativeNumber)
          ->capture_default_str();
      app.add_option("--max-body-bytes", sc->max_body_bytes,
                     "Larger bodies get 413, whatever the transfer encoding (chunked included)")
          ->capture_default_str();
      app.add_option("--max-connections", sc->max_connections,
                     "Open connections; more are closed at accept")
          ->check(CLI::Range(1, 1 << 20))
          ->capture_default_str();
      app.add_option("--idle-timeout-s", sc->idle_timeout_s,
                     "Close a connection silent this long (0 = never)")
          ->check(CLI::Range(0, 1 << 24))
          ->capture_default_str();
      app.add_option("--retry-after-s", sc->retry_after_s, "Retry-After seconds sent with 503");
      classifier_flags->push_back("--max-inflight-requests");
      CLI::App* self = &app;
      return [opts, sc, port_file, llm, self, classifier_flags, lm_flags]() {
        // SIGTERM/SIGINT are taken synchronously by this thread (sigwait); every thread started
        // below inherits the blocked mask, so no handler runs at an awkward moment.
        sigset_t signals;
        sigemptyset(&signals);
        sigaddset(&signals, SIGTERM);
        sigaddset(&signals, SIGINT);
        pthread_sigmask(SIG_BLOCK, &signals, nullptr);
        // One command for both kinds of model, chosen by what --model is: a Hugging Face
        // directory (config.json) is a language model, a .safetensors file a classifier. A flag
        // of the other kind is an error, not silently ignored.
        const bool lm = deltamoe::cli::is_lm_dir(opts->model_path);
        const auto given = [&](const std::string& f) { return self->get_option(f)->count() > 0; };
        if (lm) {
          for (const std::string& f : *classifier_flags)
            DELTAMOE_CHECK(!given(f), "serve", f, " applies to classifier models; ",
                           opts->model_path, " is a language model directory");
          deltamoe::cli::ServeHttpOptions http;
          http.host = sc->host;
          http.port = sc->port;
          http.port_file = *port_file;
          http.limits.max_body_bytes = sc->max_body_bytes;
          http.limits.max_connections = sc->max_connections;
          http.limits.idle_timeout_s = sc->idle_timeout_s;
          http.limits.threads = sc->threads;
          http.retry_after_s = sc->retry_after_s;
          llm->threads = opts->workers;
          llm->set_queues(opts->mode, opts->queue_size, opts->queue_timeout_us, given("--mode"),
                          given("--queue-size"), given("--queue-timeout-us"));
          return deltamoe::cli::run_llm_server(opts->model_path, opts->routing, *llm, http,
                                               signals);
        }
        for (const std::string& f : *lm_flags)
          DELTAMOE_CHECK(!given(f), "serve", f,
                         " applies to language models (--model DIR with config.json)");
        sc->max_images = opts->max_request_samples;
        if (!port_file->empty()) deltamoe::io::check_writable(*port_file, "serve");
        auto runtime = opts->build();
        deltamoe::serve::HttpServer server(runtime, *sc);
        server.start();
        std::cerr << "serve: " << runtime->model().name() << ", " << runtime->policy().name()
                  << ", " << deltamoe::serve::batching_mode_name(runtime->config().mode)
                  << " B=" << opts->queue_size << " T=" << opts->queue_timeout_us << "us"
                  << (opts->adaptive ? " adaptive" : "") << ", listening on http://" << sc->host
                  << ":" << server.port() << std::endl;
        if (!port_file->empty())
          deltamoe::cli::write_file_atomic(*port_file, std::to_string(server.port()) + "\n");
        int sig = 0;
        sigwait(&signals, &sig);
        std::cerr << "serve: signal " << sig << ", draining" << std::endl;
        server.stop();
        const auto st = runtime->stats();
        const auto http = server.counters();
        const auto n503 =
            http.responses_by_status.count(503) ? http.responses_by_status.at(503) : 0;
        std::cerr << "serve: drained; requests admitted " << st.requests_admitted << ", answered "
                  << st.requests_done << ", rejected by the runtime " << st.requests_rejected
                  << ", 503 responses in all " << n503 << std::endl;
        return st.requests_admitted == st.requests_done ? 0 : 3;
      };
    });

}  // namespace
