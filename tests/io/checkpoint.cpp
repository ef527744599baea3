// Tests of kiln/io/checkpoint.hpp: resuming from a checkpoint continues bit for bit, a failed
// save leaves the previous checkpoint intact, and damaged or mismatched files give clear errors.
#include <doctest/doctest.h>

#include <kiln/io/checkpoint.hpp>
#include <kiln/kiln.hpp>
#include <kiln/nn/nn.hpp>
#include <kiln/ops/loss.hpp>
#include <kiln/optim/optim.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

using kiln::Tensor;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<kiln::nn::Sequential> make_model(std::uint64_t seed) {
  kiln::Rng rng(seed);
  auto m = std::make_shared<kiln::nn::Sequential>();
  m->push_back(std::make_shared<kiln::nn::Linear>(6, 8, rng));
  m->push_back(std::make_shared<kiln::nn::ReLU>());
  m->push_back(std::make_shared<kiln::nn::Linear>(8, 3, rng));
  return m;
}

// One step on batch `step` of a fixed synthetic data set.
void train_step(kiln::nn::Sequential& model, kiln::optim::Optimizer& opt, long step) {
  kiln::Rng data_rng(99, static_cast<std::uint64_t>(step) * 16);
  auto x = kiln::randn<float>({5, 6}, data_rng);
  auto y = Tensor<kiln::index_t>::uninitialized(kiln::Shape{5});
  for (int i = 0; i < 5; ++i) y.data()[i] = (step + i) % 3;
  opt.zero_grad();
  Tensor<float> loss = kiln::cross_entropy(model.forward(x), y);
  loss.backward();
  opt.step();
}

std::vector<float> flat_parameters(kiln::nn::Sequential& model) {
  std::vector<float> out;
  for (auto& p : model.parameters()) {
    auto v = p.to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

fs::path scratch(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kiln_checkpoint_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir / name;
}

}  // namespace

TEST_CASE("resuming from a checkpoint gives bit-identical parameters") {
  auto a = make_model(1);
  kiln::optim::AdamOptions o;
  o.lr = 0.01;
  kiln::optim::Adam opt_a(a->parameters(), o);
  for (long s = 0; s < 6; ++s) train_step(*a, opt_a, s);

  auto b = make_model(1);
  kiln::optim::Adam opt_b(b->parameters(), o);
  for (long s = 0; s < 3; ++s) train_step(*b, opt_b, s);
  const auto path = scratch("resume.safetensors").string();
  kiln::io::TrainingState st;
  st.step = 3;
  st.rng = kiln::Rng(7, 42, 3);
  st.values["best"] = "0.25";
  kiln::io::save_checkpoint(path, *b, opt_b, st);

  auto c = make_model(2);  // different initial weights: all must come from the file
  kiln::optim::Adam opt_c(c->parameters(), o);
  auto back = kiln::io::load_checkpoint(path, *c, opt_c);
  CHECK(back.step == 3);
  CHECK(back.rng == kiln::Rng(7, 42, 3));
  CHECK(back.values.at("best") == "0.25");
  for (long s = 3; s < 6; ++s) train_step(*c, opt_c, s);
  CHECK(flat_parameters(*c) == flat_parameters(*a));
}

TEST_CASE("a failed save leaves the previous checkpoint intact") {
  auto m = make_model(3);
  kiln::optim::SGD opt(m->parameters(), kiln::optim::SGDOptions{});
  const auto path = scratch("intact.safetensors").string();
  kiln::io::TrainingState st;
  st.step = 11;
  kiln::io::save_checkpoint(path, *m, opt, st);
  const auto size_before = fs::file_size(path);
  // The temporary file cannot be created: a directory sits where it would go.
  fs::create_directories(path + ".tmp");
  st.step = 12;
  CHECK_THROWS_AS(kiln::io::save_checkpoint(path, *m, opt, st), kiln::Error);
  fs::remove_all(path + ".tmp");
  CHECK(fs::file_size(path) == size_before);
  auto again = make_model(3);
  kiln::optim::SGD opt2(again->parameters(), kiln::optim::SGDOptions{});
  CHECK(kiln::io::load_checkpoint(path, *again, opt2).step == 11);
}

TEST_CASE("mismatched or damaged checkpoints are clear errors and change nothing") {
  auto m = make_model(4);
  kiln::optim::Adam opt(m->parameters(), kiln::optim::AdamOptions{});
  train_step(*m, opt, 0);
  const auto path = scratch("mismatch.safetensors").string();
  kiln::io::save_checkpoint(path, *m, opt, kiln::io::TrainingState{});

  // Another architecture.
  kiln::Rng rng(5);
  kiln::nn::Sequential other;
  other.push_back(std::make_shared<kiln::nn::Linear>(6, 4, rng));
  kiln::optim::Adam opt_other(other.parameters(), kiln::optim::AdamOptions{});
  const auto before = other.parameters()[0].to_vector();
  CHECK_THROWS_AS(kiln::io::load_checkpoint(path, other, opt_other), kiln::Error);
  CHECK(other.parameters()[0].to_vector() == before);

  // Another optimizer kind: the model must stay as it was.
  auto same = make_model(6);
  kiln::optim::SGD sgd(same->parameters(), kiln::optim::SGDOptions{});
  const auto same_before = flat_parameters(*same);
  CHECK_THROWS_WITH_AS(kiln::io::load_checkpoint(path, *same, sgd), doctest::Contains("Adam"), kiln::Error);
  CHECK(flat_parameters(*same) == same_before);

  // A weights-only file is not a checkpoint.
  const auto weights = scratch("weights.safetensors").string();
  kiln::io::save_module(weights, *m);
  CHECK_THROWS_WITH_AS(kiln::io::load_checkpoint(weights, *same, sgd), doctest::Contains("format"), kiln::Error);

  // A truncated file.
  const auto cut = scratch("cut.safetensors").string();
  fs::copy_file(path, cut, fs::copy_options::overwrite_existing);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  CHECK_THROWS_AS(kiln::io::load_checkpoint(cut, *same, sgd), kiln::Error);
}

TEST_CASE("save_module / load_module round trip with PyTorch's names") {
  auto m = make_model(8);
  const auto path = scratch("module.safetensors").string();
  kiln::io::save_module(path, *m);
  kiln::io::SafeTensorsFile file(path);
  auto names = file.names();
  CHECK(std::find(names.begin(), names.end(), "0.weight") != names.end());
  CHECK(std::find(names.begin(), names.end(), "2.bias") != names.end());
  auto n = make_model(9);
  kiln::io::load_module(path, *n);
  CHECK(flat_parameters(*n) == flat_parameters(*m));
}
