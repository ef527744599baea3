// Tests of kiln/optim/adam.hpp: parameter trajectories and final moment buffers against
// torch.optim.Adam / AdamW for every option combination, and the first step by hand.
#include <kiln/optim/adam.hpp>

#include "optim_reference.hpp"

#include <kiln/autograd/fused.hpp>
#include <kiln/ops/reduce.hpp>

#include <doctest/doctest.h>

#include <cmath>

using kiln::Tensor;
using kiln::optim::Adam;
using kiln::optim::AdamOptions;
using kiln::optim::AdamW;
using kiln::optim::AdamWOptions;
using kiln::optim::Parameters;

namespace {

kiln::test::TrajectoryCase adam_case(std::string name, std::string torch_kwargs, AdamOptions options) {
  kiln::test::TrajectoryCase c;
  c.name = std::move(name);
  c.torch_optimizer = "Adam";
  c.torch_groups = "[{\"params\": [0, 1, 2], " + torch_kwargs + "}]";
  c.make = [options](const Parameters& params) { return std::make_unique<Adam>(params, options); };
  return c;
}

kiln::test::TrajectoryCase adamw_case(std::string name, std::string torch_kwargs, AdamWOptions options) {
  kiln::test::TrajectoryCase c;
  c.name = std::move(name);
  c.torch_optimizer = "AdamW";
  c.torch_groups = "[{\"params\": [0, 1, 2], " + torch_kwargs + "}]";
  c.make = [options](const Parameters& params) { return std::make_unique<AdamW>(params, options); };
  return c;
}

}  // namespace

TEST_CASE("Adam and AdamW follow torch.optim step for step") {
  std::vector<kiln::test::TrajectoryCase> cases;
  cases.push_back(adam_case("adam", "\"lr\": 0.01", {.lr = 0.01}));
  cases.push_back(adam_case("adam_defaults", "\"lr\": 0.001", {}));
  cases.push_back(adam_case("adam_betas_eps", "\"lr\": 0.02, \"betas\": [0.8, 0.95], \"eps\": 1e-3",
                            {.lr = 0.02, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3}));
  cases.push_back(adam_case("adam_l2", "\"lr\": 0.01, \"weight_decay\": 0.1", {.lr = 0.01, .weight_decay = 0.1}));
  cases.push_back(adam_case("adam_amsgrad", "\"lr\": 0.01, \"amsgrad\": true", {.lr = 0.01, .amsgrad = true}));
  cases.push_back(adam_case("adam_amsgrad_l2_maximize",
                            "\"lr\": 0.01, \"amsgrad\": true, \"weight_decay\": 0.05, \"maximize\": true",
                            {.lr = 0.01, .weight_decay = 0.05, .amsgrad = true, .maximize = true}));
  {
    // Gradients small next to eps: the denominator's eps term matters.
    auto c = adam_case("adam_small_grads", "\"lr\": 0.01, \"eps\": 1e-6", {.lr = 0.01, .eps = 1e-6});
    c.grad_scale = 1e-5f;
    cases.push_back(c);
  }
  cases.push_back(adamw_case("adamw_defaults", "\"lr\": 0.001", {}));
  cases.push_back(adamw_case("adamw", "\"lr\": 0.01, \"weight_decay\": 0.1", {.lr = 0.01, .weight_decay = 0.1}));
  cases.push_back(adamw_case("adamw_amsgrad_maximize",
                             "\"lr\": 0.02, \"weight_decay\": 0.3, \"amsgrad\": true, \"maximize\": true, \"betas\": [0.5, 0.9]",
                             {.lr = 0.02, .beta1 = 0.5, .beta2 = 0.9, .weight_decay = 0.3, .amsgrad = true,
                              .maximize = true}));
  {
    // Parameters without a gradient on some steps keep their values, moments and step counts.
    auto c = adam_case("adam_missing_grads", "\"lr\": 0.01, \"amsgrad\": true", {.lr = 0.01, .amsgrad = true});
    c.missing = [](int step, std::size_t param) { return (param == 0 && step < 2) || (param == 2 && step % 2 == 1); };
    cases.push_back(c);
  }
  {
    auto c = adamw_case("adamw_missing_grads", "\"lr\": 0.01, \"weight_decay\": 0.2", {.lr = 0.01, .weight_decay = 0.2});
    c.missing = [](int step, std::size_t param) { return param == 1 && step > 4; };
    cases.push_back(c);
  }
  {
    // Large enough to be updated in chunks (parameter 0), and threaded.
    auto c = adam_case("adam_large", "\"lr\": 0.01, \"amsgrad\": true, \"weight_decay\": 0.01",
                       {.lr = 0.01, .weight_decay = 0.01, .amsgrad = true});
    c.shapes = {{600, 500}, {40000}, {7}};
    c.steps = 5;
    cases.push_back(c);
  }
  {
    auto c = adamw_case("adamw_large", "\"lr\": 0.01", {.lr = 0.01});
    c.shapes = {{512, 513}, {8193}, {7}};
    c.steps = 5;
    cases.push_back(c);
  }
  {
    // A transposed (non-contiguous) parameter and non-contiguous gradients.
    auto c = adam_case("adam_strided", "\"lr\": 0.01, \"weight_decay\": 0.01", {.lr = 0.01, .weight_decay = 0.01});
    c.shapes = {{200, 90}, {5}, {2, 3, 2}};
    c.transposed_param = true;
    c.transposed_grads = true;
    cases.push_back(c);
  }
  {
    kiln::test::TrajectoryCase c;
    c.name = "adam_groups";
    c.torch_optimizer = "Adam";
    c.torch_groups =
        "[{\"params\": [2], \"lr\": 0.05, \"amsgrad\": true}, {\"params\": [0, 1], \"lr\": 0.01, \"betas\": [0.7, 0.99]}]";
    c.make = [](const Parameters& p) {
      std::vector<Adam::ParamGroup> groups;
      groups.push_back({{p[2]}, {.lr = 0.05, .amsgrad = true}});
      groups.push_back({{p[0], p[1]}, {.lr = 0.01, .beta1 = 0.7, .beta2 = 0.99}});
      return std::make_unique<Adam>(std::move(groups));
    };
    cases.push_back(c);
  }
  {
    // Gradients from backward() of a quadratic: loss = Σ_i Σ (p_i - 0.5)² · (i + 1).
    auto c = adam_case("adam_quadratic_backward", "\"lr\": 0.05", {.lr = 0.05});
    c.steps = 10;
    c.make_grads = [](const Parameters& params, int) {
      Tensor<float> loss;
      for (std::size_t i = 0; i < params.size(); ++i) {
        Tensor<float> term = kiln::sum(kiln::square(params[i] - 0.5f) * static_cast<float>(i + 1));
        loss = loss.defined() ? Tensor<float>(loss + term) : term;
      }
      loss.backward();
    };
    cases.push_back(c);
  }
  kiln::test::compare_with_torch("adam", cases);
}

TEST_CASE("Adam's first step by hand") {
  // After one step m̂ = g and v̂ = g², so p moves by lr·g / (|g| + eps) (eps outside the root).
  auto p = kiln::from_vector<float>({1.0f, -2.0f, 0.5f}).requires_grad();
  Adam opt({p}, {.lr = 0.1, .eps = 1e-2});
  p.set_grad(kiln::from_vector<float>({0.5f, -0.04f, 0.0f}));
  opt.step();
  const auto v = p.to_vector();
  CHECK(v[0] == doctest::Approx(1.0 - 0.1 * 0.5 / (0.5 + 1e-2)).epsilon(1e-6));
  CHECK(v[1] == doctest::Approx(-2.0 + 0.1 * 0.04 / (0.04 + 1e-2)).epsilon(1e-6));
  CHECK(v[2] == 0.5f);
  const auto m = opt.state(0).tensors.at("exp_avg").to_vector();
  const auto s = opt.state(0).tensors.at("exp_avg_sq").to_vector();
  CHECK(m[0] == doctest::Approx(0.1 * 0.5).epsilon(1e-6));
  CHECK(s[1] == doctest::Approx(0.001 * 0.04 * 0.04).epsilon(1e-6));
  CHECK(opt.state(0).tensors.count("max_exp_avg_sq") == 0);
}

TEST_CASE("AdamW decays the weights before the Adam step") {
  // With a zero gradient the Adam term vanishes (m = 0): p = p·(1 - lr·wd) exactly.
  auto p = kiln::from_vector<float>({2.0f, -4.0f}).requires_grad();
  AdamW opt({p}, {.lr = 0.1, .weight_decay = 0.5});
  p.set_grad(kiln::zeros<float>({2}));
  opt.step();
  CHECK(p.to_vector() == std::vector<float>{2.0f * 0.95f, -4.0f * 0.95f});
  CHECK(opt.kind() == std::string("AdamW"));
  CHECK(opt.options().weight_decay == 0.5);
  CHECK(AdamWOptions{}.weight_decay == 0.01);
}

TEST_CASE("Adam rejects invalid hyper-parameters") {
  auto p = kiln::zeros<float>({2}).requires_grad();
  CHECK_THROWS_WITH_AS(Adam({p}, {.beta1 = 1.0}), doctest::Contains("beta1"), kiln::ValueError);
  CHECK_THROWS_AS(Adam({p}, {.beta2 = -0.5}), kiln::ValueError);
  CHECK_THROWS_AS(Adam({p}, {.eps = -1.0}), kiln::ValueError);
  CHECK_THROWS_AS(Adam({p}, {.lr = std::nan("")}), kiln::ValueError);
  CHECK_THROWS_AS(AdamW({p}, {.weight_decay = -0.1}), kiln::ValueError);
}
