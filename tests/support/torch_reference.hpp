// tests/support/torch_reference.hpp — for tests that compare kiln with PyTorch, SciPy or NLTK: finds a
// Python interpreter that can import the modules a reference script needs and runs the script; runs a
// script that writes its files into a directory once per process; compares tensors with its output.
// Builds on doctest, std::system and POSIX (access, WEXITSTATUS). Test-only, not installed.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#ifndef KILN_SOURCE_DIR
#error "tests/support/torch_reference.hpp needs KILN_SOURCE_DIR (set by tests/CMakeLists.txt)"
#endif

namespace kiln::test {

// `text` quoted for /bin/sh: inside single quotes, with each ' written as '\''.
inline std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

namespace detail {

// True when `python -c "import <modules>"` exits with status 0 (`modules`: "torch", "scipy, numpy").
inline bool imports(const std::string& python, const std::string& modules) {
  const std::string command = shell_quote(python) + " -c " + shell_quote("import " + modules) + " >/dev/null 2>&1";
  const int status = std::system(command.c_str());
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// The full path of the first executable called `name` in $PATH, or "" when there is none.
inline std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (!path) return "";
  std::string list = path;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t colon = list.find(':', start);
    const std::string directory = list.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
    const std::string candidate = (directory.empty() ? std::string(".") : directory) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return "";
}

inline std::string find_python_importing(const std::string& modules) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("KILN_PYTHON"); env && *env) candidates.emplace_back(env);
  candidates.emplace_back("/usr/bin/python3");
  if (std::string on_path = find_in_path("python3"); !on_path.empty()) candidates.push_back(on_path);
  for (const std::string& python : candidates)
    if (imports(python, modules)) return python;
  return "";
}

}  // namespace detail

// The path of a Python interpreter that can `import torch`: $KILN_PYTHON if set, else
// /usr/bin/python3, else python3 on $PATH; "" when none can. Found once per process.
inline const std::string& torch_python() {
  static const std::string python = detail::find_python_importing("torch");
  return python;
}

// The same search for an interpreter that can `import <modules>` (e.g. "scipy, numpy" or "nltk");
// "" when none can. Not cached: call it once per test.
inline std::string python_importing(const std::string& modules) { return detail::find_python_importing(modules); }

// Runs `<python> KILN_SOURCE_DIR/tests/<script> <args>` with an interpreter that imports `modules`
// and returns its exit status (128 + signal number when it was killed). When no interpreter
// imports them, the calling test fails at once naming the Debian packages to install: a
// comparison with a reference never passes by being skipped.
inline int run_python_script(const std::string& modules, const std::string& debian_packages,
                             const std::string& script_relative_to_tests, const std::string& args) {
  const std::string python = python_importing(modules);
  if (python.empty())
    FAIL("no Python interpreter can `import " << modules << "` (tried $KILN_PYTHON, /usr/bin/python3 and python3 "
         "on PATH); install " << debian_packages << " or point KILN_PYTHON at an interpreter that has them");
  const std::string script = std::string(KILN_SOURCE_DIR) + "/tests/" + script_relative_to_tests;
  const std::string command = shell_quote(python) + " " + shell_quote(script) + " " + args;
  const int status = std::system(command.c_str());
  int code = -1;
  if (status != -1 && WIFEXITED(status)) code = WEXITSTATUS(status);
  else if (status != -1 && WIFSIGNALED(status)) code = 128 + WTERMSIG(status);
  if (code != 0) MESSAGE("exit status " << code << " from: " << command);
  return code;
}

// What a test says when PyTorch is missing.
inline std::string torch_missing_message() {
  return "no Python interpreter can `import torch` (tried $KILN_PYTHON, /usr/bin/python3 and python3 on "
         "PATH); install PyTorch (Debian: apt-get install python3-torch) or point KILN_PYTHON at an "
         "interpreter that has it";
}

// Runs `<python> KILN_SOURCE_DIR/tests/torch/<script> <args>` (args are passed to the shell as
// written: quote paths with shell_quote) and returns its exit status (128 + signal number when
// it was killed). When no interpreter imports torch, the calling test fails at once with
// torch_missing_message(): a comparison with PyTorch never passes by being skipped.
inline int run_torch_script(const std::string& script_relative_to_tests_torch, const std::string& args) {
  const std::string& python = torch_python();
  if (python.empty()) FAIL(torch_missing_message());
  const std::string script = std::string(KILN_SOURCE_DIR) + "/tests/torch/" + script_relative_to_tests_torch;
  const std::string command = shell_quote(python) + " " + shell_quote(script) + " " + args;
  const int status = std::system(command.c_str());
  int code = -1;
  if (status != -1 && WIFEXITED(status)) code = WEXITSTATUS(status);
  else if (status != -1 && WIFSIGNALED(status)) code = 128 + WTERMSIG(status);
  if (code != 0) MESSAGE("exit status " << code << " from: " << command);
  return code;
}

// A directory under the system's temporary directory, created empty, removed with its contents
// when destroyed.
struct ScratchDir {
  std::filesystem::path path;
  explicit ScratchDir(const std::string& tag)
      : path(std::filesystem::temp_directory_path() / (tag + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// The directory into which `tests/torch/<script> OUT_DIR` wrote its files: the script runs once
// per process (the first call), into a directory removed at exit. Fails the test when it fails.
inline const std::filesystem::path& torch_script_output(const std::string& script) {
  static std::map<std::string, std::unique_ptr<ScratchDir>> outputs;
  auto& dir = outputs[script];
  if (!dir) {
    auto made = std::make_unique<ScratchDir>("kiln_" + std::filesystem::path(script).stem().string());
    REQUIRE(run_torch_script(script, shell_quote(made->path.string())) == 0);
    dir = std::move(made);
  }
  return dir->path;
}

// max |a − b| / max |b| over all elements of two tensors of one shape (b the reference).
template <class A, class B>
double relative_difference(const A& a, const B& b) {
  REQUIRE(a.shape() == b.shape());
  const auto av = a.contiguous().to_vector();
  const auto bv = b.contiguous().to_vector();
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < bv.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(av[i]) - static_cast<double>(bv[i])));
    scale = std::max(scale, std::fabs(static_cast<double>(bv[i])));
  }
  return diff / std::max(scale, 1e-300);
}

}  // namespace kiln::test
