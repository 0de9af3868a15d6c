// tests/fuzz/finding.hpp - how the fuzzer reports a broken check: what failed, on which call,
// for which input; then __builtin_trap(), so that libFuzzer saves the input as a crash.
//
// Every check has a name ("b.reference", "7.accepts_invalid", ...; the letters and numbers are
// those of the checks and contract points in fuzz_attention.cpp's header comment).
//   SDPA_FUZZ_IGNORE=name,name   leaves those checks out (and generated features named
//                                "gen.*"), so that a run can look past a known finding
//   SDPA_FUZZ_VERBOSE=1          prints each input's description and each call before it runs
//                                (to see which call a sanitizer report or a hang comes from)
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace sdpa_fuzz {

/// What the current input is and which call is running: printed with every finding.
struct Context {
  std::string input;
  std::string call;
};
inline Context& context() {
  static Context c;
  return c;
}

inline int verbosity() {
  static const int level = [] {
    const char* text = std::getenv("SDPA_FUZZ_VERBOSE");
    return text ? std::max(1, std::atoi(text)) : 0;
  }();
  return level;
}
/// SDPA_FUZZ_VERBOSE=1: the input and each call; 2: also the 2-D scenario's matrices.
inline bool verbose() { return verbosity() >= 1; }

inline bool ignored(const std::string& name) {
  static const std::string list = [] {
    const char* text = std::getenv("SDPA_FUZZ_IGNORE");
    return text ? "," + std::string(text) + "," : std::string();
  }();
  return !list.empty() && list.find("," + name + ",") != std::string::npos;
}

template <class... Parts>
std::string str(const Parts&... parts) {
  std::ostringstream out;
  out.precision(9);
  (out << ... << parts);
  return out.str();
}

/// Names the call about to run (the context of a finding, or of a crash under SDPA_FUZZ_VERBOSE).
inline void calling(const std::string& call) {
  context().call = call;
  if (verbose()) std::fprintf(stderr, "  call: %s\n", call.c_str());
}

/// How often each kind of check ran: SDPA_FUZZ_STATS=1 prints them at exit (a check that never
/// runs proves nothing).
struct Stats {
  long calls = 0, rejected = 0, tame_rows = 0, masked_rows = 0, class_checks = 0, path_comparisons = 0,
       thread_comparisons = 0, memory_checks = 0;
  ~Stats() {
    if (!std::getenv("SDPA_FUZZ_STATS")) return;
    std::fprintf(stderr,
                 "sdpa fuzz stats: %ld calls (%ld threw std::invalid_argument), %ld tame rows against the reference, "
                 "%ld rows that see no key, %ld output classes against the contract, %ld across paths, "
                 "%ld bit comparisons across threads, %ld memory checks\n",
                 calls, rejected, tame_rows, masked_rows, class_checks, path_comparisons, thread_comparisons,
                 memory_checks);
  }
};
inline Stats& stats() {
  static Stats s;
  return s;
}

inline void finding(const char* check, const std::string& detail) {
  if (ignored(check)) return;
  std::fprintf(stderr,
               "\n==== sdpa fuzz finding: check %s\n"
               "  call:   %s\n"
               "  input:  %s\n"
               "  detail: %s\n"
               "  (rerun this input with SDPA_FUZZ_VERBOSE=1; SDPA_FUZZ_IGNORE=%s looks past it)\n",
               check, context().call.c_str(), context().input.c_str(), detail.c_str(), check);
  std::fflush(stderr);
  __builtin_trap();
}

}  // namespace sdpa_fuzz

/// FUZZ_CHECK(name, condition, detail parts...): a finding when condition is false.
#define FUZZ_CHECK(check, condition, ...)                                    \
  do {                                                                       \
    if (!(condition)) ::sdpa_fuzz::finding(check, ::sdpa_fuzz::str(__VA_ARGS__)); \
  } while (0)
