// `deltamoe loadgen`: open-loop Poisson or closed-loop load, over loopback HTTP or in-process.
#include <iostream>
#include <nlohmann/json.hpp>

#include "command.h"
#include "deltamoe/serve/loadgen.h"
#include "serve_cli.h"

namespace {

deltamoe::cli::CommandRegistrar reg("loadgen", "Load generator for deltamoe serve (loopback HTTP or in-process)",
  [](CLI::App& app) -> deltamoe::cli::Action {
    auto opts = std::make_shared<deltamoe::cli::RuntimeOptions>();
    auto lc = std::make_shared<deltamoe::serve::LoadConfig>();
    auto url = std::make_shared<std::string>();
    auto in_process = std::make_shared<bool>(false);
    auto json = std::make_shared<bool>(false);
    app.add_option("--url", *url, "Server URL, loopback only (http://127.0.0.1:PORT)");
    app.add_flag("--in-process", *in_process, "Drive a runtime in this process (no HTTP); takes the serve options");
    app.add_option("--rate", lc->rate_rps, "Open loop: mean Poisson arrival rate, requests/s");
    app.add_option("--duration", lc->duration_s, "Seconds of arrivals (max 600)");
    app.add_flag("--closed-loop", lc->closed_loop, "Closed loop: keep --concurrency requests outstanding");
    app.add_option("--concurrency", lc->concurrency, "Closed loop: outstanding requests; HTTP open loop: sender threads");
    app.add_option("--images", lc->images_per_request, "Images per request");
    app.add_flag("!--arrays", lc->base64, "Send images as JSON arrays instead of base64");
    app.add_option("--slo-ms", lc->slo_ms, "Latency objective for slo_attainment");
    app.add_option("--grace", lc->grace_s, "Seconds to wait for answers after --duration");
    app.add_option("--load-seed", lc->seed, "Seed of arrivals and images");
    app.add_flag("--json", *json, "Print one JSON object on stdout");
    opts->add(app);
    return [opts, lc, url, in_process, json]() {
      deltamoe::serve::LoadResult r;
      std::string extra = "{}";
      if (*in_process) {
        DELTAMOE_CHECK(url->empty(), "loadgen", "give --url or --in-process, not both");
        auto runtime = opts->build();
        r = deltamoe::serve::run_inprocess_load(*runtime, *lc);
        auto ej = nlohmann::json::parse(deltamoe::serve::runtime_stats_json(runtime->stats()));
        ej["routing"] = runtime->policy().name();
        ej["batching"] = deltamoe::moe::batching_mode_name(runtime->config().mode);
        ej["queue_size"] = opts->queue_size;
        ej["queue_timeout_us"] = opts->queue_timeout_us;
        ej["adaptive"] = opts->adaptive;
        extra = ej.dump();
      } else {
        DELTAMOE_CHECK(!url->empty(), "loadgen", "give --url http://127.0.0.1:PORT or --in-process");
        r = deltamoe::serve::run_http_load(*url, *lc);
      }
      const std::string out = deltamoe::serve::load_result_json(r, *lc, extra);
      if (*json) {
        std::cout << out << std::endl;
      } else {
        const auto j = nlohmann::json::parse(out);
        std::cout << j.dump(2) << std::endl;
      }
      return 0;
    };
  });

}  // namespace
