// This process's memory as the kernel counts it (/proc/self/status), for the benchmarks.
#pragma once

#include <cstddef>
#include <fstream>
#include <string>

namespace deltamoe::cli {

/// The "key: N kB" line of a /proc file, in bytes (0 when absent or unreadable).
inline size_t proc_kb_line(const char* path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0)
      return static_cast<size_t>(std::stoull(line.substr(key.size() + 1))) * 1024;
  return 0;
}

/// VmRSS, VmHWM or another "kB" line of /proc/self/status, in bytes (0 when absent).
inline size_t proc_status_bytes(const std::string& key) {
  return proc_kb_line("/proc/self/status", key);
}

/// Bytes of this process's file mappings mapped on 2 MiB pages (FilePmdMapped of
/// /proc/self/smaps_rollup; 0 where the kernel does not say). A checkpoint is most of them.
inline size_t file_huge_mapped_bytes() {
  return proc_kb_line("/proc/self/smaps_rollup", "FilePmdMapped");
}

/// Resets VmHWM to the current VmRSS ("5" into /proc/self/clear_refs); false where refused.
inline bool reset_high_water() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return f.good();
}

}  // namespace deltamoe::cli
