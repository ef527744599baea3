// Tests of include/kiln/metrics/fashion_features.hpp: the shipped weights load by name into the
// network and classify the Fashion-MNIST test set with the accuracy recorded in the file when it
// was trained (so the architecture, the input scaling and the loaded values are the ones trained);
// features are the post-ReLU 128-d layer; evaluation leaves the training mode as it was; errors name
// the problem.
#include <doctest/doctest.h>
#include <kiln/data/fashion_mnist.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/metrics/fashion_features.hpp>
#include <kiln/ops/reduce.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

TEST_CASE("the shipped feature network reaches its recorded test accuracy") {
  const std::string path = kiln::metrics::find_fashion_features();
  CHECK(path.find("weights/fashion-features.safetensors") != std::string::npos);
  kiln::io::SafeTensorsFile file(path);
  const double recorded = std::stod(file.metadata().at("test_accuracy"));
  CHECK(recorded >= 0.91);

  auto net = kiln::metrics::load_fashion_features();
  CHECK_FALSE(net->is_training());
  const auto test = kiln::data::load_fashion_mnist(kiln::data::find_fashion_mnist_dir(""), "test");
  const auto out = kiln::metrics::evaluate_features(*net, test.images, 1000);
  REQUIRE(out.features.shape() == kiln::Shape{10000, 128});
  REQUIRE(out.logits.shape() == kiln::Shape{10000, 10});
  const auto pred = kiln::argmax(out.logits, 1);
  long correct = 0;
  for (kiln::index_t i = 0; i < 10000; ++i) correct += pred.data()[i] == test.labels.data()[i];
  // The metadata holds the accuracy printed with 4 decimals.
  CHECK(std::abs(static_cast<double>(correct) / 10000.0 - recorded) <= 5e-5);
  float smallest = 0;
  for (kiln::index_t i = 0; i < out.features.numel(); ++i) smallest = std::min(smallest, out.features.data()[i]);
  CHECK(smallest == 0.0f);  // post-ReLU
}

TEST_CASE("evaluate_features: batches agree, the mode is restored, errors name the problem") {
  kiln::Rng rng(3);
  kiln::metrics::FashionFeatureNet net(rng);
  const auto images = kiln::rand<float>({7, 1, 28, 28}, rng, 0.0, 1.0);
  net.train();
  const auto a = kiln::metrics::evaluate_features(net, images, 3);
  CHECK(net.is_training());
  const auto b = kiln::metrics::evaluate_features(net, images.reshape({7, 784}), 100);
  for (kiln::index_t i = 0; i < a.features.numel(); ++i) CHECK(a.features.data()[i] == doctest::Approx(b.features.data()[i]).epsilon(1e-5));
  CHECK_THROWS_WITH_AS(net.features(kiln::zeros<float>({2, 3, 28, 28})), doctest::Contains("[N, 784] or [N, 1, 28, 28]"), kiln::ShapeError);
  CHECK_THROWS_WITH_AS(kiln::metrics::find_fashion_features("/nonexistent/f.safetensors"), doctest::Contains("/nonexistent/f.safetensors"),
                       kiln::Error);
}
