// Tests of include/kiln/metrics/inception.hpp against PyTorch: tests/reference/inception_torchvision.py builds
// torchvision's inception_v3 and pytorch-fid's FID Inception with random weights and randomized BatchNorm
// statistics, saves their state dicts as safetensors and runs random images through them in eval mode; kiln
// loads the same files, runs the same images and must give the same pool features and logits within float32
// tolerance. Also the bilinear resize against F.interpolate, the loader's handling of AuxLogits.* and
// num_batches_tracked, and the errors.
#include <doctest/doctest.h>
#include <kiln/autograd/graph.hpp>
#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/metrics/inception.hpp>
#include <kiln/nn/module.hpp>
#include <kiln/ops/pool.hpp>

#include "../support/torch_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using kiln::Tensor;
using kiln::metrics::InceptionV3;
using kiln::metrics::InceptionVariant;

// The reference script's files, produced once per test run in a fresh temporary directory that is
// removed at exit.
struct Reference {
  std::string dir;
  bool ok = false;
  std::unique_ptr<kiln::io::SafeTensorsFile> outputs;

  Reference() {
    std::string pattern = (fs::temp_directory_path() / "kiln_inception_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) return;
    dir = pattern;
    const int status = kiln::test::run_python_script("torch, torchvision, numpy", "python3-torch python3-torchvision",
                                                     "reference/inception_torchvision.py",
                                                     kiln::test::shell_quote(dir));
    ok = status == 0;
    if (ok) outputs = std::make_unique<kiln::io::SafeTensorsFile>(dir + "/outputs.safetensors");
  }
  ~Reference() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
  Tensor<float> get(const std::string& name) const { return outputs->get<float>(name); }
  std::string file(const std::string& name) const { return dir + "/" + name; }
};

const Reference& reference() {
  static const Reference r;
  REQUIRE_MESSAGE(r.ok, "tests/reference/inception_torchvision.py failed (see its output above)");
  return r;
}

// Largest absolute difference, and largest difference relative to the reference's largest magnitude.
struct Agreement {
  double max_abs = 0, max_ref = 0;
  double relative() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};

Agreement compare(const Tensor<float>& got, const Tensor<float>& want) {
  REQUIRE(got.shape() == want.shape());
  const Tensor<float> g = got.contiguous(), w = want.contiguous();
  Agreement a;
  kiln::index_t not_finite = 0;
  for (kiln::index_t i = 0; i < w.numel(); ++i) {
    const double x = g.data()[i], y = w.data()[i];
    not_finite += !std::isfinite(x);
    a.max_abs = std::max(a.max_abs, std::abs(x - y));
    a.max_ref = std::max(a.max_ref, std::abs(y));
  }
  CHECK(not_finite == 0);
  return a;
}

void check_close(const char* what, const Tensor<float>& got, const Tensor<float>& want, double tolerance) {
  const Agreement a = compare(got, want);
  MESSAGE(std::string(what) << ": max |kiln - torch| = " << a.max_abs << ", relative to max |torch| = " << a.max_ref
                            << ": " << a.relative());
  CHECK(a.max_ref > 1e-3);  // the reference is not degenerate
  CHECK(a.relative() <= tolerance);
}

// float32 through ~100 convolutions summed in another order. With these weights float32 rounding alone moves
// the outputs by 2.7e-5 to 4.9e-5 of their largest magnitude (PyTorch's float32 against a float64 run of the
// same networks and images), and kiln's float32 lies 3.3e-5 to 6.0e-5 from that float64 run: both are float32
// rounding. The bound leaves room for other summation orders (thread counts, SIMD widths); the variants differ
// from each other by four orders of magnitude more (checked below).
constexpr double network_tolerance = 2.5e-4;

}  // namespace

TEST_CASE("the bilinear resize and the preprocessing match F.interpolate and pytorch-fid") {
  const Reference& ref = reference();
  const Tensor<float> small = ref.get("resize.input");  // [2, 2, 13, 17]
  const struct {
    const char* name;
    kiln::Size2d size;
  } cases[] = {{"resize.up", {29, 31}}, {"resize.down", {5, 7}}, {"resize.mixed", {40, 6}}};
  for (const auto& c : cases) {
    check_close((std::string(c.name) + " (metrics::resize_bilinear_like_pytorch)").c_str(),
                kiln::metrics::resize_bilinear_like_pytorch(small, c.size), ref.get(c.name), 1e-6);
    // kiln's upsample op agrees at these sizes too (its float source coordinate only matters for larger ones).
    check_close((std::string(c.name) + " (kiln::upsample_bilinear2d_to_size)").c_str(),
                kiln::upsample_bilinear2d_to_size(small, c.size), ref.get(c.name), 1e-6);
  }

  kiln::NoGrad no_grad;
  InceptionV3 net;
  check_close("preprocess 3x7x5 (up to 299x299)", net.preprocess(ref.get("tiny")), ref.get("tiny.preprocessed"), 1e-6);
  check_close("preprocess gray 1x331x401 (down to 299x299)", net.preprocess(ref.get("big_gray")),
              ref.get("big_gray.preprocessed"), 1e-6);
}

TEST_CASE("the resize's backward is its adjoint") {
  // <R x, g> = <x, Rᵀ g> for the linear resize R, both sides summed in double.
  kiln::Rng rng(11);
  for (const kiln::Size2d size : {kiln::Size2d{23, 9}, kiln::Size2d{4, 30}}) {
    const Tensor<float> x = kiln::rand<float>({2, 3, 11, 13}, rng).requires_grad();
    const Tensor<float> g = kiln::rand<float>({2, 3, size.h, size.w}, rng, -1.0f, 1.0f);
    const Tensor<float> y = kiln::metrics::resize_bilinear_like_pytorch(x, size);
    y.backward(g);
    const Tensor<float> gx = x.grad().contiguous(), yc = y.detach().contiguous();
    double lhs = 0, rhs = 0;
    for (kiln::index_t i = 0; i < yc.numel(); ++i) lhs += double(yc.data()[i]) * g.data()[i];
    for (kiln::index_t i = 0; i < x.numel(); ++i) rhs += double(x.data()[i]) * gx.data()[i];
    CHECK(std::abs(lhs - rhs) <= 1e-5 * std::abs(lhs));
  }
}

TEST_CASE("the torchvision variant matches torchvision's inception_v3") {
  const Reference& ref = reference();
  kiln::NoGrad no_grad;
  InceptionV3 net(InceptionVariant::torchvision);
  CHECK(net.num_classes() == 1000);
  // torchvision's 27,161,264 parameters less the auxiliary classifier's 3,326,696.
  CHECK(net.num_parameters() == 27161264 - 3326696);

  const std::string path = ref.file("torchvision.safetensors");
  const kiln::nn::LoadStateDictResult result = kiln::metrics::load_inception_v3_weights(path, net);
  const kiln::io::SafeTensorsFile file(path);
  std::size_t aux = 0;
  for (const auto& name : file.names()) aux += name.rfind("AuxLogits.", 0) == 0;
  CHECK(aux > 0);
  CHECK(result.unexpected_keys.size() == aux);  // exactly the AuxLogits.* entries were skipped
  for (const auto& name : result.unexpected_keys) CHECK(name.rfind("AuxLogits.", 0) == 0);
  CHECK(result.missing_keys.empty());
  CHECK(file.dtype("Mixed_7c.branch_pool.bn.num_batches_tracked") == kiln::io::DType::I64);
  CHECK(net.buffer("Mixed_7c.branch_pool.bn.num_batches_tracked").item() == 12345.0f);
  CHECK(net.buffer("Conv2d_1a_3x3.bn.running_var").contiguous().data()[5] ==
        file.get<float>("Conv2d_1a_3x3.bn.running_var").data()[5]);

  const Tensor<float> images = ref.get("images");  // [2, 3, 37, 53], resized to 299x299
  const Tensor<float> features = net.features(images);
  CHECK(features.shape() == kiln::Shape{2, 2048});
  check_close("torchvision features", features, ref.get("torchvision.features"), network_tolerance);
  check_close("torchvision logits", net.classify(features), ref.get("torchvision.logits"), network_tolerance);

  // transform_input, gray input at its own size (80x96).
  InceptionV3 transformed(InceptionVariant::torchvision,
                          kiln::metrics::InceptionV3Options{.resize_input = false, .transform_input = true});
  transformed.load_state_dict(net.state_dict());
  const Tensor<float> gray = ref.get("gray");
  check_close("torchvision transform_input features", transformed.features(gray),
              ref.get("torchvision_transform.features"), network_tolerance);
  check_close("torchvision transform_input logits", transformed.forward(gray), ref.get("torchvision_transform.logits"),
              network_tolerance);
}

TEST_CASE("the fid variant matches pytorch-fid's FID Inception") {
  const Reference& ref = reference();
  kiln::NoGrad no_grad;
  InceptionV3 net(InceptionVariant::fid);
  CHECK(net.num_classes() == 1008);
  const std::string path = ref.file("fid.safetensors");
  const kiln::nn::LoadStateDictResult result = kiln::metrics::load_inception_v3_weights(path, net);
  CHECK(result.unexpected_keys.empty());
  // The file has no num_batches_tracked: one per BatchNorm is reported missing and the model keeps its own.
  std::size_t batch_norms = 0;
  for (const auto& [name, t] : net.named_buffers()) batch_norms += name.size() > 12 && name.ends_with("running_mean");
  CHECK(batch_norms == 94);
  CHECK(result.missing_keys.size() == batch_norms);
  for (const auto& name : result.missing_keys) CHECK(name.ends_with(".num_batches_tracked"));

  const Tensor<float> images = ref.get("images");
  const Tensor<float> features = net.features(images);
  check_close("fid features", features, ref.get("fid.features"), network_tolerance);
  check_close("fid logits", net.classify(features), ref.get("fid.logits"), network_tolerance);

  // Gray images at their own size, values fed as they are (no resize, no 2x - 1).
  InceptionV3 raw(InceptionVariant::fid,
                  kiln::metrics::InceptionV3Options{.resize_input = false, .normalize_input = false});
  raw.load_state_dict(net.state_dict());
  check_close("fid features, no preprocessing", raw.features(ref.get("gray")), ref.get("fid_raw.features"),
              network_tolerance);

  // The same weights in the torchvision variant (all but fc, whose shape differs) give other features:
  // the FID blocks' pooling is what the comparison above rests on.
  InceptionV3 other(InceptionVariant::torchvision,
                    kiln::metrics::InceptionV3Options{.resize_input = false, .normalize_input = false});
  kiln::nn::StateDict<float> without_fc;
  for (const auto& [name, t] : net.state_dict())
    if (name.rfind("fc.", 0) != 0) without_fc.insert(name, t);
  other.load_state_dict(without_fc, false);
  const Agreement differ = compare(other.features(ref.get("gray")), ref.get("fid_raw.features"));
  MESSAGE("torchvision blocks with the FID weights: max |difference| relative to max |torch| = " << differ.relative());
  CHECK(differ.relative() > 100 * network_tolerance);
}

TEST_CASE("inception errors name the problem") {
  const Reference& ref = reference();
  kiln::NoGrad no_grad;
  InceptionV3 net(InceptionVariant::fid);
  // torchvision's 1000-class weights do not fit the FID network's 1008-class fc, and nothing is loaded.
  const Tensor<float> before = net.parameter("Mixed_5b.branch1x1.conv.weight").clone();
  try {
    kiln::metrics::load_inception_v3_weights(ref.file("torchvision.safetensors"), net);
    FAIL("expected a StateDictError");
  } catch (const kiln::nn::StateDictError& e) {
    const std::string what = e.what();
    CHECK(what.find("fc.weight") != std::string::npos);
    CHECK(what.find("1008") != std::string::npos);
  }
  const Tensor<float> after = net.parameter("Mixed_5b.branch1x1.conv.weight").contiguous();
  CHECK(std::equal(after.data(), after.data() + after.numel(), before.data()));
  CHECK_THROWS_AS(kiln::metrics::load_inception_v3_weights(ref.file("no-such-file.safetensors"), net),
                  kiln::io::FileError);

  kiln::Rng rng(3);
  CHECK_THROWS_AS(net.features(kiln::rand<float>({2, 2, 20, 20}, rng)), kiln::ShapeError);
  CHECK_THROWS_AS(net.features(kiln::rand<float>({3, 20, 20}, rng)), kiln::ShapeError);
  CHECK_THROWS_AS(net.classify(kiln::rand<float>({2, 1000}, rng)), kiln::ShapeError);
  InceptionV3 unresized(InceptionVariant::fid, kiln::metrics::InceptionV3Options{.resize_input = false});
  try {
    unresized.features(kiln::rand<float>({1, 3, 74, 90}, rng));
    FAIL("expected a ShapeError");
  } catch (const kiln::ShapeError& e) {
    CHECK(std::string(e.what()).find("75x75") != std::string::npos);
  }
}
