#include "models/policy_json.h"

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

}  // namespace deltamoe::models
