// kiln/metrics/fid.hpp — the Fréchet distance between the Gaussians fitted to two sets of feature
// vectors (FID when the features are Inception-v3 pool activations, as in pytorch-fid): streaming
// FeatureStatistics (mean and unbiased covariance, mergeable, cached as safetensors files),
// frechet_distance and fid_from_features. The features come from any network the caller chooses.
// Builds on metrics/linalg.hpp (symmetric eigen-decomposition, GEMM), io/safetensors.hpp and
// backend/cpu/backend.hpp (CPU tensors).
#pragma once

#include <kiln/backend/cpu/backend.hpp>
#include <kiln/core/error.hpp>
#include <kiln/core/tensor.hpp>
#include <kiln/io/safetensors.hpp>
#include <kiln/metrics/linalg.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <limits>
#include <map>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace kiln::metrics {

namespace detail {
template <class T>
inline constexpr bool is_feature_element = std::is_same_v<T, float> || std::is_same_v<T, double>;

inline std::string number_text(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::to_string(v);
}

inline std::string rows_by_dim(index_t rows, index_t dim) {
  return "[" + std::to_string(rows) + ", " + std::to_string(dim) + "]";
}
}  // namespace detail

// Mean and covariance of a stream of D-dimensional feature vectors, accumulated in float64.
//
// Each add() splits its rows into chunks of at most `chunk_rows`; a chunk's mean m_b and centered
// scatter matrix S_b = Σ (x − m_b)(x − m_b)ᵀ (one GEMM) are merged into the running (n, mean, M2)
// with Chan, Golub & LeVeque's pairwise update ("Updating formulae and a pairwise algorithm for
// computing sample variances", 1979): with δ = m_b − mean and n' = n + n_b,
//   mean ← mean + δ n_b / n',   M2 ← M2 + S_b + δ δᵀ n n_b / n'.
// Only centered quantities are summed, so no cancellation of the form Σxxᵀ − n·mean·meanᵀ occurs
// when the features have a large mean. merge() combines two statistics with the same update, so
// statistics computed on shards (threads, processes, files) merge into those of the union.
// covariance() is M2 / (n − 1), numpy.cov's default (unbiased) as pytorch-fid uses.
class FeatureStatistics {
 public:
  static constexpr index_t chunk_rows = 1024;

  // Statistics of no samples; the dimension is taken from the first batch added.
  FeatureStatistics() = default;
  // Statistics of no samples with dimension `dim` (> 0) checked against every batch.
  explicit FeatureStatistics(index_t dim) {
    if (dim <= 0)
      throw ValueError("kiln::metrics::FeatureStatistics: dimension must be positive, got " +
                       std::to_string(dim));
    reset_dim(dim);
  }

  index_t count() const { return count_; }
  // The feature dimension D (0 until known).
  index_t dim() const { return dim_; }

  // Adds the rows of `features`, a CPU tensor of shape [N, D] (any strides) of float or double.
  template <class T>
  void add(const Tensor<T>& features) {
    static_assert(detail::is_feature_element<T>,
                  "FeatureStatistics::add takes float or double features");
    if (!features.defined())
      throw ValueError("kiln::metrics::FeatureStatistics::add: the feature tensor is undefined");
    if (features.dim() != 2)
      throw_shape_error("metrics::FeatureStatistics::add",
                        "features must be a matrix [N, D] (one row per sample; flatten(1) first)",
                        features.shape());
    add_strided(features.data(), features.size(0), features.size(1), features.stride(0),
                features.stride(1));
  }
  // Adds `rows` feature vectors of dimension `dim` stored row-major and contiguous at `data`.
  void add(const float* data, index_t rows, index_t dim) { add_strided(data, rows, dim, dim, 1); }
  void add(const double* data, index_t rows, index_t dim) { add_strided(data, rows, dim, dim, 1); }

  // Merges the statistics of another set of samples into these (the statistics of the union).
  void merge(const FeatureStatistics& other) {
    if (other.count_ == 0) return;
    if (dim_ != 0 && other.dim_ != dim_)
      throw ShapeError("kiln::metrics::FeatureStatistics::merge: statistics of dimension " +
                       std::to_string(other.dim_) + " cannot merge into statistics of dimension " +
                       std::to_string(dim_));
    if (dim_ == 0) reset_dim(other.dim_);
    combine(other.count_, other.mean_, other.m2_);
  }

  // The sample mean (D values); throws ValueError before any sample was added.
  std::vector<double> mean() const {
    if (count_ == 0)
      throw ValueError("kiln::metrics::FeatureStatistics::mean: no samples were added");
    return mean_;
  }

  // The unbiased sample covariance M2 / (N − 1) (numpy.cov(features, rowvar=False)), exactly
  // symmetric; throws ValueError with fewer than 2 samples.
  linalg::Matrix covariance() const {
    if (count_ < 2)
      throw ValueError(
          "kiln::metrics::FeatureStatistics::covariance: needs at least 2 samples to estimate a "
          "covariance, got " +
          std::to_string(count_));
    linalg::Matrix c(dim_, dim_);
    const double scale = 1.0 / static_cast<double>(count_ - 1);
    for (index_t i = 0; i < dim_; ++i)
      for (index_t j = 0; j <= i; ++j) c(i, j) = c(j, i) = 0.5 * (m2_(i, j) + m2_(j, i)) * scale;
    return c;
  }

  // Writes the statistics to a safetensors file: "mu" [D] and "sigma" [D, D] as F64 (the names
  // pytorch-fid uses in its .npz files) and the sample count as metadata "count". Needs >= 2
  // samples. The file is replaced atomically.
  void save(const std::string& path) const {
    const linalg::Matrix sigma = covariance();
    auto mu = Tensor<double>::uninitialized(Shape{dim_});
    std::copy(mean_.begin(), mean_.end(), mu.data());
    auto s = Tensor<double>::uninitialized(Shape{dim_, dim_});
    std::copy(sigma.values.begin(), sigma.values.end(), s.data());
    io::save_safetensors(path, {{"mu", mu}, {"sigma", s}}, {{"count", std::to_string(count_)}},
                         io::DType::F64);
  }

  // Reads statistics written by save() (any float dtype is accepted for mu and sigma). They can
  // keep streaming: M2 is restored as sigma · (count − 1). Throws FormatError (from the reader),
  // ShapeError for inconsistent shapes and ValueError for a missing or invalid count.
  static FeatureStatistics load(const std::string& path) {
    const io::SafeTensorsFile file(path);
    const std::string where = "kiln::metrics::FeatureStatistics::load: " + path + ": ";
    for (const char* name : {"mu", "sigma"})
      if (!file.contains(name)) throw ValueError(where + "has no tensor '" + name + "'");
    const Shape mu_shape = file.shape("mu"), sigma_shape = file.shape("sigma");
    if (mu_shape.ndim != 1 || mu_shape[0] <= 0 || sigma_shape.ndim != 2 ||
        sigma_shape[0] != mu_shape[0] || sigma_shape[1] != mu_shape[0])
      throw ShapeError(where + "'mu' must be [D] and 'sigma' [D, D], got " + to_string(mu_shape) +
                       " and " + to_string(sigma_shape));
    const auto found = file.metadata().find("count");
    if (found == file.metadata().end())
      throw ValueError(where +
                       "has no metadata \"count\" (the number of samples behind mu and sigma)");
    long long count = 0;
    const std::string& text = found->second;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), count);
    if (error != std::errc() || end != text.data() + text.size() || count < 2)
      throw ValueError(where + "metadata \"count\" must be an integer >= 2, got \"" + text + "\"");
    const Tensor<double> mu = file.get<double>("mu"), sigma = file.get<double>("sigma");
    FeatureStatistics out(mu_shape[0]);
    out.count_ = static_cast<index_t>(count);
    out.mean_.assign(mu.data(), mu.data() + mu.numel());
    const double scale = static_cast<double>(count - 1);
    for (std::size_t i = 0; i < out.m2_.values.size(); ++i)
      out.m2_.values[i] = sigma.data()[i] * scale;
    for (double v : out.mean_)
      if (!std::isfinite(v)) throw ValueError(where + "'mu' holds a non-finite value");
    for (double v : out.m2_.values)
      if (!std::isfinite(v)) throw ValueError(where + "'sigma' holds a non-finite value");
    return out;
  }

 private:
  index_t dim_ = 0, count_ = 0;
  std::vector<double> mean_;
  linalg::Matrix m2_;

  void reset_dim(index_t dim) {
    dim_ = dim;
    mean_.assign(static_cast<std::size_t>(dim), 0.0);
    m2_ = linalg::Matrix(dim, dim);
  }

  template <class T>
  void add_strided(const T* data, index_t rows, index_t dim, index_t row_stride,
                   index_t col_stride) {
    const char* op = "kiln::metrics::FeatureStatistics::add: ";
    if (rows < 0 || dim < 0)
      throw ValueError(std::string(op) + "negative extents " + detail::rows_by_dim(rows, dim));
    if (dim == 0)
      throw ShapeError(std::string(op) + "features of shape " + detail::rows_by_dim(rows, dim) +
                       " have no columns");
    if (dim_ != 0 && dim != dim_)
      throw ShapeError(std::string(op) + "features of shape " + detail::rows_by_dim(rows, dim) +
                       " do not match statistics of dimension " + std::to_string(dim_) +
                       " (features [N, " + std::to_string(dim_) + "] expected)");
    if (rows == 0) return;
    if (!data) throw ValueError(std::string(op) + "null data pointer");
    // Check every value first, so that a bad batch leaves the statistics as they were.
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < dim; ++j) {
        const double v = static_cast<double>(data[i * row_stride + j * col_stride]);
        if (!std::isfinite(v))
          throw ValueError(std::string(op) + "feature (row " + std::to_string(i) + ", column " +
                           std::to_string(j) + ") of the batch " + detail::rows_by_dim(rows, dim) +
                           " is " + detail::number_text(v) + "; nothing of this batch was added");
      }
    if (dim_ == 0) reset_dim(dim);
    const index_t chunk = std::min(rows, chunk_rows);
    linalg::Matrix x(chunk, dim), scatter(dim, dim);
    std::vector<double> chunk_mean(static_cast<std::size_t>(dim));
    for (index_t first = 0; first < rows; first += chunk) {
      const index_t n = std::min(chunk, rows - first);
      std::fill(chunk_mean.begin(), chunk_mean.end(), 0.0);
      for (index_t i = 0; i < n; ++i) {
        const T* src = data + (first + i) * row_stride;
        double* dst = x.row(i);
        for (index_t j = 0; j < dim; ++j) {
          dst[j] = static_cast<double>(src[j * col_stride]);
          chunk_mean[static_cast<std::size_t>(j)] += dst[j];
        }
      }
      for (double& m : chunk_mean) m /= static_cast<double>(n);
      for (index_t i = 0; i < n; ++i) {
        double* row = x.row(i);
        for (index_t j = 0; j < dim; ++j) row[j] -= chunk_mean[static_cast<std::size_t>(j)];
      }
      // S_b = Xcᵀ Xc over the n rows of this chunk.
      backend::cpu::gemm(true, false, dim, dim, n, 1.0, x.data(), dim, x.data(), dim, 0.0,
                         scatter.data(), dim);
      combine(n, chunk_mean, scatter);
    }
  }

  // Chan et al.'s pairwise update with a set of `n_b` samples of mean `mean_b` and scatter `m2_b`.
  void combine(index_t n_b, const std::vector<double>& mean_b, const linalg::Matrix& m2_b) {
    if (count_ == 0) {
      count_ = n_b;
      mean_ = mean_b;
      m2_ = m2_b;
      return;
    }
    const double na = static_cast<double>(count_), nb = static_cast<double>(n_b), n = na + nb;
    std::vector<double> delta(mean_.size());
    for (std::size_t j = 0; j < delta.size(); ++j) delta[j] = mean_b[j] - mean_[j];
    const double weight = na * nb / n;
    for (index_t i = 0; i < dim_; ++i) {
      double* row = m2_.row(i);
      const double* other = m2_b.row(i);
      const double di = delta[static_cast<std::size_t>(i)] * weight;
      for (index_t j = 0; j < dim_; ++j)
        row[j] += other[j] + di * delta[static_cast<std::size_t>(j)];
    }
    for (std::size_t j = 0; j < delta.size(); ++j) mean_[j] += delta[j] * (nb / n);
    count_ += n_b;
  }
};

namespace detail {

inline void check_gaussian(const char* op, const char* which, const std::vector<double>& mu,
                           const linalg::Matrix& sigma) {
  const std::string where = std::string("kiln::metrics::") + op + ": ";
  if (mu.empty()) throw ShapeError(where + "mu" + which + " is empty");
  const auto d = static_cast<index_t>(mu.size());
  if (sigma.rows != d || sigma.cols != d)
    throw ShapeError(where + "mu" + which + " has " + std::to_string(d) + " entries but sigma" +
                     which + " is " + linalg::shape_text(sigma) + " (expected " +
                     std::to_string(d) + " x " + std::to_string(d) + ")");
  for (index_t i = 0; i < d; ++i)
    if (!std::isfinite(mu[static_cast<std::size_t>(i)]))
      throw ValueError(where + "mu" + which + "[" + std::to_string(i) + "] is " +
                       number_text(mu[static_cast<std::size_t>(i)]));
  double largest = 0;
  for (double v : sigma.values) {
    if (!std::isfinite(v))
      throw ValueError(where + "sigma" + which + " holds a non-finite value (" + number_text(v) +
                       ")");
    largest = std::max(largest, std::fabs(v));
  }
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j < i; ++j)
      if (std::fabs(sigma(i, j) - sigma(j, i)) > 1e-6 * largest)
        throw ValueError(where + "sigma" + which + " is not symmetric: (" + std::to_string(i) +
                         ", " + std::to_string(j) + ") = " + std::to_string(sigma(i, j)) +
                         " but (" + std::to_string(j) + ", " + std::to_string(i) +
                         ") = " + std::to_string(sigma(j, i)) + "; pass a covariance matrix");
}

template <class T>
std::vector<double> vector_from_tensor(const char* op, const char* name, const Tensor<T>& t) {
  static_assert(is_feature_element<T>, "kiln::metrics takes float or double tensors");
  if (!t.defined() || t.dim() != 1)
    throw ShapeError(std::string("kiln::metrics::") + op + ": " + name +
                     " must be a vector [D], got " +
                     (t.defined() ? to_string(t.shape()) : std::string("an undefined tensor")));
  std::vector<double> out(static_cast<std::size_t>(t.size(0)));
  for (index_t i = 0; i < t.size(0); ++i)
    out[static_cast<std::size_t>(i)] = static_cast<double>(t.data()[i * t.stride(0)]);
  return out;
}

template <class T>
linalg::Matrix matrix_from_tensor(const char* op, const char* name, const Tensor<T>& t) {
  static_assert(is_feature_element<T>, "kiln::metrics takes float or double tensors");
  if (!t.defined() || t.dim() != 2)
    throw ShapeError(std::string("kiln::metrics::") + op + ": " + name +
                     " must be a matrix [D, D], got " +
                     (t.defined() ? to_string(t.shape()) : std::string("an undefined tensor")));
  linalg::Matrix out(t.size(0), t.size(1));
  for (index_t i = 0; i < t.size(0); ++i)
    for (index_t j = 0; j < t.size(1); ++j)
      out(i, j) = static_cast<double>(t.data()[i * t.stride(0) + j * t.stride(1)]);
  return out;
}

}  // namespace detail

// Tr √(Σ₁ Σ₂) for symmetric positive semi-definite Σ₁, Σ₂ (D × D): the term of the Fréchet
// distance that scipy.linalg.sqrtm(sigma1.dot(sigma2)) computes in pytorch-fid.
//
// Σ₁Σ₂ is not symmetric, but with A = √Σ₁ (the PSD root) it is similar to a PSD matrix:
// Σ₁Σ₂ = A(AΣ₂) and (AΣ₂)A = AΣ₂A share their eigenvalues (XY and YX always do, with
// multiplicity, even when A is singular), and AΣ₂A is symmetric PSD. The principal square root
// of Σ₁Σ₂, which sqrtm computes, has the square roots of those eigenvalues as its eigenvalues,
// so Tr √(Σ₁Σ₂) = Σᵢ √μᵢ with μ = eig(AΣ₂A). We use A = V Λ^½ Vᵀ from Σ₁ = V Λ Vᵀ and take the
// eigenvalues of Λ^½ (VᵀΣ₂V) Λ^½ = Vᵀ(AΣ₂A)V (orthogonally similar), keeping only the columns of
// V whose λ is above rounding level (below; the rest contribute zero), so a rank-r Σ₁ leaves an
// r × r problem. Σ₁'s lower triangle is read and Σ₂ is symmetrized ((Σ₂ + Σ₂ᵀ)/2);
// frechet_distance checks that both are symmetric first.
//
// Why this is stable: every step is a symmetric eigenproblem or a product, all backward stable,
// and eigenvalues of symmetric matrices are perfectly conditioned (|Δμ| ≤ ‖ΔM‖, Weyl). sqrtm
// instead works on the non-normal Σ₁Σ₂ through a complex Schur form, where rounding leaves
// imaginary parts (which pytorch-fid discards) and a singular product (fewer samples than
// dimensions) can give non-finite results, after which pytorch-fid retries with εI (ε = 1e-6)
// added to both covariances. Eigenvalues that are zero in exact arithmetic come out as rounding
// noise of size ε·max λ, of either sign, and since √ is not Lipschitz at 0, each would add about
// √(ε λ_max μ_max) ≈ 1e-8 relative to the sum. So eigenvalues of Σ₁ and of the r × r matrix at
// or below n·ε·(largest eigenvalue) (numpy.linalg.matrix_rank's default tolerance) count as 0;
// negative ones thus count as 0 too, like the real part of their complex root in pytorch-fid.
// This matters when Σ₁ or Σ₂ is singular (fewer samples than dimensions, constant features).
// Cost: one D × D symmetric eigen-decomposition, two products and one r × r symmetric
// eigenvalue problem.
inline double trace_sqrt_product(const linalg::Matrix& sigma1, const linalg::Matrix& sigma2) {
  if (!sigma1.is_square() || sigma1.rows != sigma2.rows || sigma1.cols != sigma2.cols)
    throw ShapeError(
        "kiln::metrics::trace_sqrt_product: needs two covariance matrices of the same size, got " +
        linalg::shape_text(sigma1) + " and " + linalg::shape_text(sigma2));
  const index_t d = sigma1.rows;
  const linalg::SymmetricEigen eig = linalg::symmetric_eigen(sigma1);
  const double eps = std::numeric_limits<double>::epsilon();
  const double floor1 = static_cast<double>(d) * eps * std::max(eig.values.back(), 0.0);
  std::vector<index_t> kept;
  for (index_t j = 0; j < d; ++j)
    if (eig.values[static_cast<std::size_t>(j)] > floor1) kept.push_back(j);
  const auto r = static_cast<index_t>(kept.size());
  if (r == 0) return 0.0;
  linalg::Matrix b(d, r);  // B = V₊ Λ₊^½
  for (index_t c = 0; c < r; ++c) {
    const index_t j = kept[static_cast<std::size_t>(c)];
    const double root = std::sqrt(eig.values[static_cast<std::size_t>(j)]);
    for (index_t i = 0; i < d; ++i) b(i, c) = eig.vectors(i, j) * root;
  }
  linalg::Matrix s2(d, d);  // Σ₂ symmetrized, so that Bᵀ Σ₂ B is symmetric up to rounding
  for (index_t i = 0; i < d; ++i)
    for (index_t j = 0; j <= i; ++j) s2(i, j) = s2(j, i) = 0.5 * (sigma2(i, j) + sigma2(j, i));
  const linalg::Matrix m =
      linalg::matmul_transposed_left(b, linalg::matmul(s2, b));     // Bᵀ Σ₂ B, r × r
  const std::vector<double> mu = linalg::symmetric_eigenvalues(m);  // reads the lower triangle
  const double floor2 = static_cast<double>(r) * eps * std::max(mu.back(), 0.0);
  double total = 0;
  for (double v : mu)
    if (v > floor2) total += std::sqrt(v);
  return total;
}

// The Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
//   d² = ‖μ₁ − μ₂‖² + Tr Σ₁ + Tr Σ₂ − 2 Tr √(Σ₁Σ₂)
// (Dowson & Landau 1982; FID of Heusel et al. 2017, computed as pytorch-fid's
// calculate_frechet_distance, with Tr √(Σ₁Σ₂) from trace_sqrt_product above). The result is not
// clamped, so identical inputs can give a tiny negative number from rounding, as in pytorch-fid.
// Throws ShapeError for mismatched sizes (naming them) and ValueError for non-finite values or a
// sigma that is not symmetric (|Σᵢⱼ − Σⱼᵢ| > 1e-6 max|Σ|).
inline double frechet_distance(const std::vector<double>& mu1, const linalg::Matrix& sigma1,
                               const std::vector<double>& mu2, const linalg::Matrix& sigma2) {
  detail::check_gaussian("frechet_distance", "1", mu1, sigma1);
  detail::check_gaussian("frechet_distance", "2", mu2, sigma2);
  if (mu1.size() != mu2.size())
    throw ShapeError(
        "kiln::metrics::frechet_distance: the Gaussians have different dimensions: mu1 [" +
        std::to_string(mu1.size()) + "], sigma1 " + linalg::shape_text(sigma1) + " and mu2 [" +
        std::to_string(mu2.size()) + "], sigma2 " + linalg::shape_text(sigma2));
  double mean_term = 0;
  for (std::size_t i = 0; i < mu1.size(); ++i) mean_term += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]);
  return mean_term + linalg::trace(sigma1) + linalg::trace(sigma2) -
         2.0 * trace_sqrt_product(sigma1, sigma2);
}

// The same from tensors: mu [D] and sigma [D, D], float or double, any strides (CPU).
template <class T>
double frechet_distance(const Tensor<T>& mu1, const Tensor<T>& sigma1, const Tensor<T>& mu2,
                        const Tensor<T>& sigma2) {
  return frechet_distance(detail::vector_from_tensor("frechet_distance", "mu1", mu1),
                          detail::matrix_from_tensor("frechet_distance", "sigma1", sigma1),
                          detail::vector_from_tensor("frechet_distance", "mu2", mu2),
                          detail::matrix_from_tensor("frechet_distance", "sigma2", sigma2));
}

// The Fréchet distance between the Gaussians of two sets of statistics (each needs >= 2 samples).
inline double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b) {
  if (a.dim() != b.dim())
    throw ShapeError("kiln::metrics::frechet_distance: statistics of dimension " +
                     std::to_string(a.dim()) + " and " + std::to_string(b.dim()) +
                     " cannot be compared");
  return frechet_distance(a.mean(), a.covariance(), b.mean(), b.covariance());
}

// FID from two feature matrices [N_a, D] and [N_b, D] (float or double, CPU; N >= 2 each), with
// mean and numpy.cov-style covariance as pytorch-fid's calculate_activation_statistics.
template <class T>
double fid_from_features(const Tensor<T>& features_a, const Tensor<T>& features_b) {
  static_assert(detail::is_feature_element<T>, "fid_from_features takes float or double features");
  for (const Tensor<T>* f : {&features_a, &features_b})
    if (!f->defined() || f->dim() != 2)
      throw ShapeError(
          "kiln::metrics::fid_from_features: features must be matrices [N, D], got " +
          (features_a.defined() ? to_string(features_a.shape()) : std::string("undefined")) +
          " and " +
          (features_b.defined() ? to_string(features_b.shape()) : std::string("undefined")));
  if (features_a.size(1) != features_b.size(1))
    throw_shape_error("metrics::fid_from_features", "the feature dimensions differ",
                      features_a.shape(), features_b.shape());
  for (const Tensor<T>* f : {&features_a, &features_b})
    if (f->size(0) < 2)
      throw_shape_error("metrics::fid_from_features",
                        "each set needs at least 2 samples for a covariance", features_a.shape(),
                        features_b.shape());
  FeatureStatistics a, b;
  a.add(features_a);
  b.add(features_b);
  return frechet_distance(a, b);
}

}  // namespace kiln::metrics
