// The golden language models of tests/golden/llm (python/make_golden_llm.py): where they are
// and how their token tensors read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "deltamoe/core/tensor.h"

namespace deltamoe::test {

/// tests/golden/llm/<name> in the source tree.
inline std::string golden_dir(const std::string& name) {
  return std::string(DELTAMOE_SOURCE_DIR) + "/tests/golden/llm/" + name;
}

/// The ids of an int32 tensor (a golden prompt).
inline std::vector<int32_t> ids_of(const Tensor& t) {
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.numel());
}

}  // namespace deltamoe::test
