#include "sweep_jobs.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "deltamoe/core/error.h"

extern char** environ;

namespace deltamoe::cli::sweep {

void run_child_jobs(const std::vector<ChildJob>& jobs, int parallel,
                    const std::function<void(size_t, double)>& done, const char* component) {
  using Clock = std::chrono::steady_clock;
  std::vector<char> exe(4096, 0);
  const ssize_t len = readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  DELTAMOE_CHECK(len > 0, component, "cannot find this binary (/proc/self/exe) to start jobs");
  struct Live {
    size_t index;
    Clock::time_point start;
  };
  std::map<pid_t, Live> live;
  auto start_one = [&](size_t i) {
    const ChildJob& j = jobs[i];
    std::vector<std::string> args = j.args;
    args.insert(args.begin(), std::string(exe.data()));
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, j.stdout_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, j.stderr_path.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, exe.data(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    DELTAMOE_CHECK(rc == 0, component, "cannot start a process for ", j.label, " (error ", rc, ")");
    live[pid] = Live{i, Clock::now()};
  };
  size_t next = 0;
  while (next < jobs.size() || !live.empty()) {
    while (next < jobs.size() && static_cast<int>(live.size()) < std::max(1, parallel))
      start_one(next++);
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) fail(component, "waitpid failed while jobs were running");
    auto it = live.find(pid);
    if (it == live.end()) continue;
    const Live c = it->second;
    live.erase(it);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      for (const auto& [other, ch] : live) {
        kill(other, SIGTERM);
        waitpid(other, nullptr, 0);
      }
      fail(component, jobs[c.index].label, " failed; its log is ", jobs[c.index].stderr_path);
    }
    done(c.index, std::chrono::duration<double>(Clock::now() - c.start).count());
  }
}

bool run_plot_script(const std::string& script, const std::string& dir, const char* component) {
  std::string python;
  for (const char* cand : {"python3", "/usr/bin/python3"})
    if (std::system((std::string(cand) + " -c 'import matplotlib' >/dev/null 2>&1").c_str()) == 0) {
      python = cand;
      break;
    }
  if (python.empty()) {
    std::fprintf(stderr,
                 "[%s] plots skipped: no python3 with matplotlib (scripts/install-deps.sh "
                 "installs Debian's python3-matplotlib)\n",
                 component);
    return false;
  }
  const std::string cmd = python + " " + std::string(DELTAMOE_SOURCE_DIR) + "/python/" + script +
                          " --dir '" + dir + "'";
  if (std::system(cmd.c_str()) == 0) return true;
  std::fprintf(stderr, "[%s] plotting failed: %s\n", component, cmd.c_str());
  return false;
}

}  // namespace deltamoe::cli::sweep
