// dist/ without MPI: one rank. A job that mpirun started on several ranks is refused at the
// first world() call instead of running N independent copies.
#include "deltamoe/core/error.h"
#include "deltamoe/dist/communicator.h"

namespace deltamoe::dist {

bool mpi_built() {
  return false;
}
std::string mpi_library_version() {
  return "not built";
}

Communicator& world() {
  DELTAMOE_CHECK(launched_ranks() == 1, "dist", "started on ", launched_ranks(),
                 " ranks, but this deltamoe was built without MPI (install libopenmpi-dev with "
                 "scripts/install-deps.sh and rebuild)");
  static const std::unique_ptr<Communicator> self = make_self();
  return *self;
}

void abort_world(int) noexcept {}

}  // namespace deltamoe::dist
