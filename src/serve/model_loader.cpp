// Trained checkpoints as serving models. The trained MoE classifier (issue 4) is not on main
// yet; until it is, loading says so plainly and the server runs on --random-model.
#include <filesystem>

#include "deltamoe/core/error.h"
#include "deltamoe/serve/model.h"

namespace deltamoe::serve {

std::shared_ptr<const ServeModel> load_serve_model(const std::string& path) {
  DELTAMOE_CHECK(std::filesystem::exists(path), "serve", "model file '", path, "' does not exist");
  fail("serve", "cannot load '", path, "': trained MoE classifier checkpoints are not supported by this ",
       "build yet (the model from issue 4 has not landed); use --random-model");
}

}  // namespace deltamoe::serve
