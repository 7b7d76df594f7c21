// Output paths, checked before any long work: a run must not be lost at its end to a path it
// cannot write (issue 18, "no run lost late").
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace deltamoe::io {

/// Checks that the file `path` can be written the way deltamoe's writers write it (a
/// temporary file beside it, renamed onto it): creates the missing parent directories, then
/// creates and removes a temporary file in the target directory. Rejects a path that is an
/// existing directory. Throws Error(component) naming the path and the reason. Creates no file
/// (only the directories). Thread-safe for distinct paths.
void check_writable(const std::string& path, const std::string& component);

/// The same for a directory that files will be written into: created if missing, then a
/// temporary file is created in it and removed.
void check_writable_dir(const std::string& dir, const std::string& component);

/// A model directory written as a whole: files go into a hidden temporary directory beside
/// `out` (".NAME.tmp.PID") and commit() renames it into place, so a failed or interrupted run
/// never leaves a half-written directory at `out` (after a kill, only the hidden temporary).
/// The constructor refuses an `out` that is a file, or a non-empty directory unless `force`
/// (then commit() replaces it), and checks that the parent is writable. Errors are
/// Error(component) naming the path. Not thread-safe.
class OutputDir {
 public:
  OutputDir(const std::string& out, bool force, std::string component);
  ~OutputDir();  // removes the temporary directory unless committed
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;

  /// Path of `name` inside the temporary directory.
  std::string file(const std::string& name) const { return (tmp_ / name).string(); }
  /// The final directory.
  const std::filesystem::path& out() const { return out_; }
  /// Fails when the file system holds fewer than `bytes` + 16 MiB free.
  void check_space(uint64_t bytes) const;
  /// Renames the temporary directory onto `out` (replacing an old one under --force).
  void commit();

 private:
  std::filesystem::path out_, tmp_;
  std::string component_;
  bool committed_ = false;
};

}  // namespace deltamoe::io
