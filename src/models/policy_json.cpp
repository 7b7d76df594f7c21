#include "models/policy_json.h"

#include "deltamoe/core/error.h"

namespace deltamoe::models {

nlohmann::json policy_to_json(const moe::PolicySpec& s) {
  nlohmann::json j = {{"kind", s.kind},
                      {"k", s.k},
                      {"p", s.p},
                      {"target_k", s.target_k},
                      {"nulls", s.nulls},
                      {"null_bias", s.null_bias},
                      {"renormalize", s.renormalize}};
  j["thresholds"] = s.thresholds;
  return j;
}

moe::PolicySpec policy_from_json(const nlohmann::json& j) {
  moe::PolicySpec s;
  s.kind = j.value("kind", s.kind);
  s.k = j.value("k", s.k);
  s.p = j.value("p", s.p);
  s.target_k = j.value("target_k", s.target_k);
  s.nulls = j.value("nulls", s.nulls);
  s.null_bias = j.value("null_bias", s.null_bias);
  s.renormalize = j.value("renormalize", s.renormalize);
  if (j.contains("thresholds")) s.thresholds = j["thresholds"].get<std::vector<float>>();
  return s;
}

nlohmann::json trained_routing_json(const std::string& spec_text, const moe::PolicySpec& spec,
                                    const std::vector<const moe::RoutingPolicy*>& layers) {
  nlohmann::json per_layer = nlohmann::json::array(), first;
  for (const moe::RoutingPolicy* p : layers) {
    if (!p) {
      per_layer.push_back(nullptr);
      continue;
    }
    moe::PolicySpec trained = moe::current_spec(spec, *p);
    trained.target_k = 0;
    per_layer.push_back(policy_to_json(trained));
    if (first.is_null()) first = per_layer.back();
  }
  return {{"spec", spec_text},
          {"target_k", spec.target_k},
          {"trained", first},
          {"trained_layers", per_layer}};
}

std::vector<std::shared_ptr<moe::RoutingPolicy>> trained_layer_policies(const io::HfConfig& cfg) {
  std::vector<std::shared_ptr<moe::RoutingPolicy>> out;
  if (cfg.deltamoe_routing_json.empty()) return out;
  const auto r = nlohmann::json::parse(cfg.deltamoe_routing_json);
  const bool layered = r.contains("trained_layers") && !r["trained_layers"].is_null();
  DELTAMOE_CHECK(layered || (r.contains("trained") && r["trained"].is_object()), "hf",
                 "config.json: deltamoe_routing has no \"trained\" policy");
  if (layered)
    DELTAMOE_CHECK(r["trained_layers"].is_array() &&
                       static_cast<int64_t>(r["trained_layers"].size()) == cfg.num_hidden_layers,
                   "hf", "config.json: deltamoe_routing.trained_layers must list ",
                   cfg.num_hidden_layers, " layers");
  out.resize(static_cast<size_t>(cfg.num_hidden_layers));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (!cfg.is_moe_layer(l)) continue;
    const nlohmann::json& j = layered ? r["trained_layers"][static_cast<size_t>(l)] : r["trained"];
    DELTAMOE_CHECK(j.is_object(), "hf", "config.json: deltamoe_routing.trained_layers[", l,
                   "] is not a policy, but layer ", l, " routes to experts");
    moe::PolicySpec spec;
    try {
      spec = policy_from_json(j);
    } catch (const nlohmann::json::exception& e) {
      fail("hf", "config.json: deltamoe_routing policy of layer ", l, ": ", e.what());
    }
    out[static_cast<size_t>(l)] = moe::make_policy(spec, cfg.experts_in_layer(l));
  }
  return out;
}

}  // namespace deltamoe::models
