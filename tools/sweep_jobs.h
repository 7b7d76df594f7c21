// Child processes of this binary for the sweeps (`deltamoe sweep`, `deltamoe sweep-lm`):
// trainings run as separate processes, so OpenBLAS, malloc arenas and page faults of one never
// touch another's, and a 2-core machine runs two 1-thread trainings side by side.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace deltamoe::cli::sweep {

/// One child: `args` are this binary's arguments (the subcommand first); stdout and stderr go
/// to the files named (created or truncated); `label` names it in progress and errors.
struct ChildJob {
  std::vector<std::string> args;
  std::string stdout_path, stderr_path, label;
};

/// Runs `jobs` in order, at most `parallel` at a time (≥ 1). After each one exits with status
/// 0, calls `done(index, seconds it ran)` on this thread. When one fails, stops the others
/// (SIGTERM, by pid) and throws Error(`component`) naming its label and stderr file.
/// Not thread-safe (waits for any child of this process).
void run_child_jobs(const std::vector<ChildJob>& jobs, int parallel,
                    const std::function<void(size_t index, double seconds)>& done,
                    const char* component);

/// Runs python/`script` --dir `dir` (in the source tree) with the first python3 that has
/// matplotlib: the one on PATH, else Debian's /usr/bin/python3, where scripts/install-deps.sh
/// puts python3-matplotlib (a PATH python3 may be a pyenv or a venv without it). Returns
/// whether the plots were drawn; says why not on stderr, prefixed with [`component`].
bool run_plot_script(const std::string& script, const std::string& dir, const char* component);

}  // namespace deltamoe::cli::sweep
