// Private: the data and checkpoint file functions the classifier needs. Implemented over
// deltamoe::io (IDX loader, safetensors reader/writer).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "deltamoe/core/tensor.h"

namespace deltamoe::models::detail {

struct Split {
  Tensor images;                // f32 [N, 784] in [0, 1]
  std::vector<int32_t> labels;  // [N]
};
struct Data {
  Split train, test;
};

/// Fashion-MNIST from `dir`; Error naming the path and the Debian package when missing.
Data load_data(const std::string& dir);
/// Writes f32 tensors atomically as safetensors.
void save_tensors(const std::string& path,
                  const std::vector<std::pair<std::string, Tensor>>& tensors);
/// Reads every tensor of a safetensors file (f32, owned copies).
std::map<std::string, Tensor> load_tensors(const std::string& path);

}  // namespace deltamoe::models::detail
