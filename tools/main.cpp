// deltamoe: one CLI for training, evaluation, serving, scheduling and benchmarks.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>

#include <fcntl.h>
#include <unistd.h>

#include "command.h"
#include "deltamoe/core/error.h"
#include "deltamoe/dist/communicator.h"

namespace deltamoe::cli {

std::vector<Command>& commands() {
  static std::vector<Command> registry;
  return registry;
}

namespace {
FILE* g_error_file = nullptr;  // the original stderr of a silenced rank
int g_silenced_rank = 0;
}  // namespace

void print_error(const std::string& what) {
  std::cerr.flush();
  FILE* f = g_error_file ? g_error_file : stderr;
  if (g_silenced_rank > 0)
    std::fprintf(f, "deltamoe: %s (rank %d)\n", what.c_str(), g_silenced_rank);
  else
    std::fprintf(f, "deltamoe: %s\n", what.c_str());
  std::fflush(f);
}

void silence_rank(int rank) {
  if (rank == 0 || g_error_file) return;
  std::cout.flush();
  std::cerr.flush();
  std::fflush(stdout);
  std::fflush(stderr);
  const int keep = ::dup(2);
  const int null = ::open("/dev/null", O_WRONLY);
  if (keep < 0 || null < 0) return;  // keep printing rather than lose errors
  g_error_file = ::fdopen(keep, "w");
  ::dup2(null, 1);
  ::dup2(null, 2);
  ::close(null);
  g_silenced_rank = rank;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  if (path == "-") {
    std::cout << text;
    return;
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("io", "cannot open '", tmp, "' for writing");
    out << text;
    out.flush();
    if (!out) {
      std::filesystem::remove(tmp);
      fail("io", "write to '", tmp, "' failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    fail("io", "cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

}  // namespace deltamoe::cli

int main(int argc, char** argv) {
  using namespace deltamoe::cli;
  CLI::App app{"deltamoe: a Mixture-of-Experts engine (train, eval, serve, schedule, bench)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "deltamoe 0.1.0");
  // Every option's --help shows its default (subcommands inherit this).
  app.option_defaults()->always_capture_default();
  auto& cmds = commands();
  std::sort(cmds.begin(), cmds.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  std::map<CLI::App*, Action> actions;
  std::vector<std::pair<CLI::App*, Setup*>> subs;
  for (auto& c : cmds) subs.emplace_back(app.add_subcommand(c.name, c.description), &c.setup);
  for (auto& [sub, setup] : subs) actions[sub] = (*setup)(*sub);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version print and succeed; every other parse error is one line naming the
    // flag and what it accepts, exit 2 (as the other errors: "deltamoe: error: [component]").
    if (e.get_exit_code() == 0) return app.exit(e);
    // A hidden alias's error has no option name before the colon; its message names it.
    std::string what = e.what();
    if (what.rfind(": ", 0) == 0) what.erase(0, 2);
    std::cerr << "deltamoe: error: [cli] " << what << " (see --help)\n";
    return 2;
  } catch (const deltamoe::Error& e) {  // thrown by option validators
    std::cerr << "deltamoe: error: " << e.what() << "\n";
    return 2;
  }
  // mpirun starts N copies of the command: only subcommands with --parallel can share the
  // work; any other would run N times over, printing N results.
  if (const int ranks = deltamoe::dist::launched_ranks(); ranks > 1) {
    for (auto& [sub, action] : actions) {
      if (!sub->parsed()) continue;
      CLI::App* leaf = sub;
      for (CLI::App* s2 : sub->get_subcommands()) leaf = s2;
      if (!leaf->get_option_no_throw("--parallel")) {
        print_error("error: [dist] started on " + std::to_string(ranks) +
                    " ranks by mpirun, but `" + leaf->get_name() +
                    "` has no --parallel: run it without mpirun");
        return 2;
      }
    }
  }
  int code = 0;
  try {
    for (auto& [sub, action] : actions) {
      if (sub->parsed()) return action();
    }
  } catch (const deltamoe::Error& e) {
    print_error(std::string("error: ") + e.what());
    code = 1;
  } catch (const deltamoe::InternalError& e) {
    print_error(std::string("internal error (please report): ") + e.what());
    code = 3;
  } catch (const std::exception& e) {
    print_error(std::string("error: ") + e.what());
    code = 1;
  }
  // A rank that fails must not leave the others waiting in a collective.
  if (code != 0) deltamoe::dist::abort_world(code);
  return code;
}
