// tests/optim/optim_reference.hpp — runs optimizer trajectories in kiln and in PyTorch
// (tests/torch/optim_reference.py) on the same initial values and gradients, and the tensor-list
// files both sides read and write. Builds on kiln/optim, doctest and tests/support/torch_reference.hpp.
// Test-only.
#pragma once

#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>
#include <kiln/optim/optim.hpp>

#include "../support/torch_reference.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace kiln::test {

using TensorList = std::vector<std::pair<std::string, Tensor<float>>>;

// int32 count; per tensor: int32 name length, name, int32 ndim, int32 dims, float32 data (little-endian).
inline void write_tensor_list(const std::string& path, const TensorList& tensors) {
  std::ofstream out(path, std::ios::binary);
  REQUIRE_MESSAGE(out.good(), "cannot write " << path);
  auto put_i32 = [&](std::int32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  put_i32(static_cast<std::int32_t>(tensors.size()));
  for (const auto& [name, t] : tensors) {
    put_i32(static_cast<std::int32_t>(name.size()));
    out.write(name.data(), static_cast<std::streamsize>(name.size()));
    put_i32(t.dim());
    for (int d = 0; d < t.dim(); ++d) put_i32(static_cast<std::int32_t>(t.size(d)));
    const std::vector<float> values = t.to_vector();
    out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * 4));
  }
}

inline std::map<std::string, Tensor<float>> read_tensor_list(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path);
  auto get_i32 = [&] {
    std::int32_t v = 0;
    in.read(reinterpret_cast<char*>(&v), 4);
    REQUIRE_MESSAGE(in.good(), path << " ends early");
    return v;
  };
  std::map<std::string, Tensor<float>> tensors;
  const std::int32_t count = get_i32();
  for (std::int32_t k = 0; k < count; ++k) {
    std::string name(static_cast<std::size_t>(get_i32()), '\0');
    in.read(name.data(), static_cast<std::streamsize>(name.size()));
    Shape shape;
    const std::int32_t ndim = get_i32();
    for (std::int32_t d = 0; d < ndim; ++d) shape.push_back(get_i32());
    std::vector<float> values(static_cast<std::size_t>(shape.numel()));
    in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(values.size() * 4));
    REQUIRE_MESSAGE(in.good(), path << " ends early in " << name);
    tensors[name] = from_vector<float>(values, shape);
  }
  return tensors;
}

// A fresh scratch directory for one test program's exchange with Python.
inline std::string make_scratch_dir(const std::string& tag) {
  std::string pattern = (std::filesystem::temp_directory_path() / ("kiln_" + tag + "_XXXXXX")).string();
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  return pattern;
}

// |actual - expected| <= rtol · max(|expected|, floor) for every element; reports the worst.
inline void check_close(const Tensor<float>& actual, const Tensor<float>& expected, double rtol, double floor,
                        const std::string& what) {
  REQUIRE_MESSAGE(actual.shape() == expected.shape(), what << ": shape " << to_string(actual.shape()) << " vs "
                                                           << to_string(expected.shape()));
  const std::vector<float> a = actual.to_vector(), e = expected.to_vector();
  double worst = 0.0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double scale = std::max(std::fabs(static_cast<double>(e[i])), floor);
    const double err = std::fabs(static_cast<double>(a[i]) - static_cast<double>(e[i])) / scale;
    if (!(err <= worst)) {
      worst = err;
      at = i;
    }
  }
  if (std::getenv("KILN_TEST_VERBOSE")) MESSAGE(what << ": worst relative error " << worst << " at " << at << " kiln " << a[at] << " torch " << e[at]);
  CHECK_MESSAGE(worst <= rtol, what << ": relative error " << worst << " at element " << at << " (kiln "
                                    << a[at] << ", PyTorch " << e[at] << ")");
}

// One optimizer run compared with PyTorch: parameters of `shapes` (initial values from `seed`),
// `steps` steps with random gradients (none for the (step, param) pairs `missing` names).
struct TrajectoryCase {
  std::string name;
  std::string torch_optimizer;  // class name in torch.optim
  std::string torch_groups;     // JSON list of groups: [{"params": [0, 1], "lr": 0.1}, ...]
  std::function<std::unique_ptr<optim::Optimizer>(const optim::Parameters&)> make;
  std::vector<Shape> shapes = {{3, 4}, {5}, {2, 3, 2}};
  int steps = 8;
  std::uint64_t seed = 1;
  float grad_scale = 1.0f;
  std::function<bool(int step, std::size_t param)> missing = [](int, std::size_t) { return false; };
  bool transposed_param = false;   // parameter 0 is a non-contiguous (transposed) view
  bool transposed_grads = false;   // gradients are handed over as non-contiguous views
  // Computes the gradients itself (e.g. by backward()) instead of drawing them.
  std::function<void(const optim::Parameters&, int step)> make_grads;
  // Compare within rtol · max(|expected|, floor): relative to the parameters' scale (they start
  // as N(0, 1)), so that one that passes near zero does not turn ulp differences of O(1)
  // arithmetic into a large relative error. Those differences are real but harmless: PyTorch
  // forms m·β1 + (1-β1)·g with an FMA (one rounding), and g++ and clang++ contract kiln's
  // expressions into FMAs differently; RMSprop's steps of lr·g/sqrt(s) ~ 0.1-0.5 then differ by
  // ~1e-7 absolute after a few steps. A wrong rule (a missing decay term, a wrong bias correction)
  // is off by 1e-4 or more.
  double rtol = 1e-6;
  double floor = 1.0;
};

// Runs every case in kiln, then all of them in one PyTorch process, and compares the parameter
// after every step and the final state buffers.
inline void compare_with_torch(const std::string& tag, const std::vector<TrajectoryCase>& cases) {
  const std::string dir = make_scratch_dir(tag);
  std::ostringstream json;
  json << "[";
  std::vector<std::vector<std::vector<Tensor<float>>>> trajectories;  // [case][step][param]
  std::vector<std::unique_ptr<optim::Optimizer>> optimizers;
  std::vector<optim::Parameters> params_of_case;
  for (std::size_t c = 0; c < cases.size(); ++c) {
    const TrajectoryCase& tc = cases[c];
    Rng rng(tc.seed);
    optim::Parameters params;
    TensorList input;
    for (std::size_t i = 0; i < tc.shapes.size(); ++i) {
      Tensor<float> p;
      if (i == 0 && tc.transposed_param && tc.shapes[i].ndim == 2) {
        p = randn<float>({tc.shapes[i].dims[1], tc.shapes[i].dims[0]}, rng).t();
        REQUIRE(!p.is_contiguous());
      } else {
        p = randn<float>(tc.shapes[i], rng);
      }
      p.requires_grad();
      params.push_back(p);
      input.emplace_back("param." + std::to_string(i), p.detach().clone());
    }
    optimizers.push_back(tc.make(params));
    params_of_case.push_back(params);
    optim::Optimizer& opt = *optimizers.back();
    std::vector<std::vector<Tensor<float>>> trajectory;
    for (int s = 0; s < tc.steps; ++s) {
      opt.zero_grad();
      if (tc.make_grads) {
        tc.make_grads(params, s);
      } else {
        for (std::size_t i = 0; i < params.size(); ++i) {
          if (tc.missing(s, i)) continue;
          const Shape& shape = params[i].shape();
          Tensor<float> g;
          if (tc.transposed_grads && shape.ndim == 2)
            g = randn<float>({shape.dims[1], shape.dims[0]}, rng, 0.0f, tc.grad_scale).t();
          else
            g = randn<float>(shape, rng, 0.0f, tc.grad_scale);
          params[i].set_grad(g);
        }
      }
      for (std::size_t i = 0; i < params.size(); ++i) {
        const Tensor<float> g = params[i].grad();
        if (g.defined()) input.emplace_back("grad." + std::to_string(s) + "." + std::to_string(i), g.detach().clone());
      }
      opt.step();
      std::vector<Tensor<float>> after;
      for (const auto& p : params) after.push_back(p.detach().clone());
      trajectory.push_back(after);
    }
    trajectories.push_back(trajectory);
    write_tensor_list(dir + "/" + tc.name + ".in", input);
    json << (c ? ", " : "") << "{\"kind\": \"optimizer\", \"name\": \"" << tc.name << "\", \"optimizer\": \""
         << tc.torch_optimizer << "\", \"groups\": " << tc.torch_groups << ", \"steps\": " << tc.steps << "}";
  }
  json << "]";
  {
    std::ofstream out(dir + "/cases.json");
    out << json.str();
  }
  REQUIRE(run_torch_script("optim_reference.py", shell_quote(dir)) == 0);

  for (std::size_t c = 0; c < cases.size(); ++c) {
    const TrajectoryCase& tc = cases[c];
    INFO("case " << tc.name);
    const auto expected = read_tensor_list(dir + "/" + tc.name + ".out");
    for (int s = 0; s < tc.steps; ++s)
      for (std::size_t i = 0; i < tc.shapes.size(); ++i) {
        const std::string key = "param." + std::to_string(s) + "." + std::to_string(i);
        REQUIRE_MESSAGE(expected.count(key), "PyTorch wrote no " << key);
        check_close(trajectories[c][static_cast<std::size_t>(s)][i], expected.at(key), tc.rtol, tc.floor,
                    tc.name + " " + key);
      }
    // The final state buffers: the same names, the same values.
    // kiln numbers parameters group after group; the files use the case's own order.
    std::size_t state_count = 0;
    const optim::Parameters flat = optimizers[c]->params();
    for (std::size_t k = 0; k < flat.size(); ++k) {
      std::size_t i = 0;
      while (i < params_of_case[c].size() && params_of_case[c][i].storage() != flat[k].storage()) ++i;
      REQUIRE(i < params_of_case[c].size());
      for (const auto& [name, t] : optimizers[c]->state(k).tensors) {
        const std::string key = "state." + std::to_string(i) + "." + name;
        REQUIRE_MESSAGE(expected.count(key), "PyTorch has no state " << key);
        // Buffers are compared normwise (relative to their largest element): a running average
        // such as m = β1·m + (1-β1)·g cancels towards zero in places, where the ulp differences of
        // an FMA formed or not (PyTorch, g++ and clang++ each decide differently) become large
        // relative errors of the element itself.
        const std::vector<float> values = expected.at(key).to_vector();
        double largest = 0.0;
        for (float v : values) largest = std::max(largest, std::fabs(static_cast<double>(v)));
        check_close(t, expected.at(key), tc.rtol, largest, tc.name + " " + key);
        ++state_count;
      }
    }
    std::size_t torch_state_count = 0;
    for (const auto& [key, t] : expected) torch_state_count += key.rfind("state.", 0) == 0 ? 1 : 0;
    CHECK_MESSAGE(state_count == torch_state_count, tc.name << ": kiln keeps " << state_count
                                                           << " state buffers, PyTorch " << torch_state_count);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace kiln::test
