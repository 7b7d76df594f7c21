// A routing policy spec as JSON, as the classifier's M.json and a trained language model's
// config.json ("deltamoe_routing") store it. Internal to models/.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "deltamoe/io/hf_model.h"
#include "deltamoe/moe/policies.h"

namespace deltamoe::models {

/// Every field of `s` (kind, k, p, target_k, nulls, null_bias, renormalize, thresholds).
nlohmann::json policy_to_json(const moe::PolicySpec& s);
/// The spec `j` describes; absent fields keep PolicySpec's defaults.
moe::PolicySpec policy_from_json(const nlohmann::json& j);

/// config.json's "deltamoe_routing" for a model trained with `spec` (as the CLI wrote it,
/// `spec_text`) whose layers route with `layers` (one per layer, null for dense layers): the
/// first MoE layer's adapted parameters as "trained" (what a reader that knows one policy
/// uses) and every layer's as "trained_layers" (null for dense layers). The written specs
/// have no target (inference routes with the adapted parameters, no controller).
nlohmann::json trained_routing_json(const std::string& spec_text, const moe::PolicySpec& spec,
                                    const std::vector<const moe::RoutingPolicy*>& layers);

/// The per-layer policies `cfg`'s deltamoe_routing describes: "trained_layers" when present,
/// else "trained" for every MoE layer, each built for its layer's expert count; null entries
/// for dense layers. Empty when the config has no deltamoe_routing. Throws Error("hf") naming
/// config.json and the field when it is malformed or does not fit the model.
std::vector<std::shared_ptr<moe::RoutingPolicy>> trained_layer_policies(const io::HfConfig& cfg);

}  // namespace deltamoe::models
