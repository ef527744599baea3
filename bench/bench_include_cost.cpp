// Include cost of kiln's headers: wall time of the compiler on one-line translation units
// (-fsyntax-only and -O2 object builds), next to a TU that includes only <vector> and <memory>.
// The compiler and include directories come from the build (KILN_BENCH_CXX, KILN_BENCH_INCLUDES).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#ifndef KILN_BENCH_CXX
#define KILN_BENCH_CXX "c++"
#endif
#ifndef KILN_BENCH_INCLUDES
#define KILN_BENCH_INCLUDES ""
#endif

namespace {

std::string write_tu(const std::string& name, const std::string& body) {
  const std::string path = "kiln_include_cost_" + name + ".cpp";
  std::ofstream(path) << body;
  return path;
}

void compile(benchmark::State& state, const std::string& name, const std::string& body, const std::string& flags) {
  const std::string src = write_tu(name, body);
  const std::string cmd = std::string(KILN_BENCH_CXX) + " -std=c++20 " + flags + " " + KILN_BENCH_INCLUDES + " " + src +
                          " -o kiln_include_cost_" + name + ".o > /dev/null 2>&1";
  for (auto _ : state) {
    if (std::system(cmd.c_str()) != 0) {
      state.SkipWithError(("compiler failed: " + cmd).c_str());
      break;
    }
  }
  std::remove(src.c_str());
  std::remove(("kiln_include_cost_" + name + ".o").c_str());
}

const char* std_only = "#include <vector>\n#include <memory>\nint main() { std::vector<int> v(3); return v[0]; }\n";
const char* core_only = "#include <kiln/core/tensor.hpp>\nint main() { return 0; }\n";
const char* whole = "#include <kiln/kiln.hpp>\nint main() { return 0; }\n";
const char* first_program =
    "#include <kiln/kiln.hpp>\n"
    "int main() {\n"
    "  kiln::Rng rng(42);\n"
    "  auto a = kiln::randn<float>({512, 256}, rng);\n"
    "  auto b = kiln::randn<float>({256, 128}, rng);\n"
    "  auto c = kiln::matmul(a, b);\n"
    "  kiln::Tensor<float> d = a * 2.0f + kiln::exp(a);\n"
    "  auto s = kiln::sum(d, 1);\n"
    "  return static_cast<int>(s.numel() + c.numel()) == 0;\n"
    "}\n";

void BM_syntax_std_headers(benchmark::State& s) { compile(s, "std", std_only, "-fsyntax-only"); }
void BM_syntax_kiln_core_tensor(benchmark::State& s) { compile(s, "core", core_only, "-fsyntax-only"); }
void BM_syntax_kiln_hpp(benchmark::State& s) { compile(s, "whole", whole, "-fsyntax-only"); }
void BM_build_first_program_O2(benchmark::State& s) { compile(s, "first", first_program, "-O2 -c"); }

}  // namespace

BENCHMARK(BM_syntax_std_headers)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_syntax_kiln_core_tensor)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_syntax_kiln_hpp)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_build_first_program_O2)->Iterations(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
