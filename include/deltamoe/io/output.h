// Output paths, checked before any long work: a run must not be lost at its end to a path it
// cannot write (issue 18, "no run lost late").
#pragma once

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

}  // namespace deltamoe::io
