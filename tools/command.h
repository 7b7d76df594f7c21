// Subcommand registry for the deltamoe CLI.
//
// Each tools/cmd_*.cpp file defines its subcommand and registers it with a static
// CommandRegistrar, so adding a subcommand touches no shared file:
//
//   static deltamoe::cli::CommandRegistrar reg("schedule", "Order a graph for least peak memory",
//       [](CLI::App& app) { ...add options...; return [=]() -> int { ...run...; return 0; }; });
//
// The setup function adds options to its CLI::App and returns the action to run when the
// subcommand is chosen. Actions throw deltamoe::Error for bad input; main() prints the one-line
// message to stderr and exits with status 1 (2 for usage errors, 3 for internal errors).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

namespace deltamoe::cli {

using Action = std::function<int()>;
using Setup = std::function<Action(CLI::App&)>;

struct Command {
  std::string name;
  std::string description;
  Setup setup;
};

/// Shows `text` as the --help default of each of `flags` (already added to `app`): for options
/// whose stored default is a sentinel ("preset", "none", "all") rather than a value.
inline void show_default(CLI::App& app, std::initializer_list<const char*> flags,
                         const std::string& text) {
  for (const char* f : flags) app.get_option(f)->default_str(text);
}

/// All registered subcommands (in registration order; main sorts them by name).
std::vector<Command>& commands();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string description, Setup setup) {
    commands().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

/// Prints "deltamoe: <what>" as one line where errors go: stderr, or on a parallel run's
/// rank other than 0 (see silence_rank) the original stderr, with " (rank N)" appended.
void print_error(const std::string& what);
/// On ranks other than 0 of a parallel run: stdout and stderr go to /dev/null from now on, so
/// that only rank 0 prints results and progress; print_error() still reaches the terminal.
void silence_rank(int rank);

/// Writes `text` to `path` atomically: a temp file beside it, then rename. "-" means stdout.
/// Throws Error("io") when the file cannot be written.
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace deltamoe::cli
