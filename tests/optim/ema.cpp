// Tests of kiln/optim/ema.hpp: the shadow weights against a naive reference loop in double (with
// and without the num_updates warmup), copy_to, store/restore, and state dicts.
#include <kiln/optim/ema.hpp>

#include <kiln/core/factories.hpp>
#include <kiln/core/philox.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

using kiln::Tensor;
using kiln::optim::ExponentialMovingAverage;
using kiln::optim::Parameters;

namespace {

// Moves the parameters somewhere new (what an optimizer step would do).
void perturb(const Parameters& params, kiln::Rng& rng) {
  kiln::NoGrad guard;
  for (const auto& p : params) p.detach().assign(p.detach() + kiln::randn<float>(p.shape(), rng));
}

}  // namespace

TEST_CASE("the shadow follows d·shadow + (1 - d)·p") {
  for (bool warmup : {false, true}) {
    INFO("use_num_updates " << warmup);
    kiln::Rng rng(4);
    Parameters params = {kiln::randn<float>({30, 40}, rng).requires_grad(), kiln::randn<float>({7}, rng).requires_grad()};
    ExponentialMovingAverage ema(params, 0.9, warmup);
    std::vector<std::vector<double>> reference;
    for (const auto& p : params) {
      const auto v = p.to_vector();
      reference.emplace_back(v.begin(), v.end());
    }
    for (int n = 1; n <= 12; ++n) {
      perturb(params, rng);
      ema.update();
      const double d = warmup ? std::min(0.9, (1.0 + n) / (10.0 + n)) : 0.9;
      CHECK(ema.current_decay() == d);
      for (std::size_t i = 0; i < params.size(); ++i) {
        const auto p = params[i].to_vector();
        for (std::size_t k = 0; k < p.size(); ++k) reference[i][k] = d * reference[i][k] + (1.0 - d) * p[k];
      }
    }
    CHECK(ema.num_updates() == 12);
    for (std::size_t i = 0; i < params.size(); ++i) {
      const auto s = ema.shadow_params()[i].to_vector();
      for (std::size_t k = 0; k < s.size(); ++k) CHECK(s[k] == doctest::Approx(reference[i][k]).epsilon(1e-5));
    }
  }
}

TEST_CASE("copy_to, store and restore swap the averaged weights in and out") {
  kiln::Rng rng(8);
  Parameters params = {kiln::randn<float>({3, 4}, rng).requires_grad()};
  ExponentialMovingAverage ema(params, 0.5);
  const auto start = params[0].to_vector();
  perturb(params, rng);
  ema.update();
  const auto trained = params[0].to_vector();
  const auto shadow = ema.shadow_params()[0].to_vector();
  for (std::size_t k = 0; k < shadow.size(); ++k) CHECK(shadow[k] == doctest::Approx(0.5 * start[k] + 0.5 * trained[k]));

  ema.store();
  ema.copy_to();
  CHECK(params[0].to_vector() == shadow);
  CHECK(params[0].is_leaf());
  ema.restore();
  CHECK(params[0].to_vector() == trained);
  CHECK_THROWS_WITH_AS(ema.restore(), doctest::Contains("store()"), kiln::ValueError);

  // Into other tensors of the same shapes.
  Parameters other = {kiln::zeros<float>({3, 4})};
  ema.copy_to(other);
  CHECK(other[0].to_vector() == shadow);
  CHECK_THROWS_AS(ema.copy_to({kiln::zeros<float>({4, 3})}), kiln::ShapeError);
  CHECK_THROWS_AS(ema.update({}), kiln::ValueError);
}

TEST_CASE("an average restored from its state dict continues identically") {
  kiln::Rng rng(12);
  Parameters params = {kiln::randn<float>({5, 6}, rng).requires_grad(), kiln::randn<float>({2}, rng).requires_grad()};
  ExponentialMovingAverage ema(params, 0.95, true);
  for (int n = 0; n < 3; ++n) {
    perturb(params, rng);
    ema.update();
  }
  auto saved = ema.state_dict();
  for (auto& [name, t] : saved.tensors) t = kiln::from_vector<float>(t.to_vector(), t.shape());
  CHECK(saved.counters.at("num_updates") == 3);
  CHECK(saved.values.at("decay") == 0.95);

  ExponentialMovingAverage resumed(params, 0.5);
  resumed.load_state_dict(saved);
  CHECK(resumed.num_updates() == 3);
  CHECK(resumed.decay() == 0.95);
  for (int n = 0; n < 3; ++n) {
    perturb(params, rng);
    ema.update();
    resumed.update();
  }
  for (std::size_t i = 0; i < params.size(); ++i)
    CHECK(resumed.shadow_params()[i].to_vector() == ema.shadow_params()[i].to_vector());

  auto bad = saved;
  bad.tensors["shadow.1"] = kiln::zeros<float>({3});
  CHECK_THROWS_AS(resumed.load_state_dict(bad), kiln::ShapeError);
  bad = saved;
  bad.kind = "Adam";
  CHECK_THROWS_AS(resumed.load_state_dict(bad), kiln::ValueError);
  CHECK_THROWS_AS(ExponentialMovingAverage(params, 1.5), kiln::ValueError);
}
