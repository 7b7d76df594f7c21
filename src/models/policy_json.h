// A routing policy spec as JSON, as the classifier's M.json and a trained language model's
// config.json ("deltamoe_routing") store it. Internal to models/.
#pragma once

#include <nlohmann/json.hpp>

#include "deltamoe/moe/policies.h"

namespace deltamoe::models {

/// Every field of `s` (kind, k, p, target_k, nulls, null_bias, renormalize, thresholds).
nlohmann::json policy_to_json(const moe::PolicySpec& s);
/// The spec `j` describes; absent fields keep PolicySpec's defaults.
moe::PolicySpec policy_from_json(const nlohmann::json& j);

}  // namespace deltamoe::models
