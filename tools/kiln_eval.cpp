// kiln-eval — the standard figures of generative models from the command line:
//   kiln-eval fid   --real A --fake B [--features fashion|inception] [--weights FILE] [--json]
//   kiln-eval is    --images A [--splits N] [--features fashion|inception] [--weights FILE] [--json]
//   kiln-eval bleu  --hyp H --ref R [--ref R2 ...] [--tokenize 13a|none] [--smooth exp|floor|add-k|none]
//                   [--lowercase] [--json]
//   kiln-eval rouge --hyp H --ref R [--ref R2 ...] [--stem] [--sentence-sep TEXT] [--json]
//   kiln-eval ppl   --model M --text F [--tokenizer PATH] [--max-length N] [--stride S] [--n-head H] [--json]
// Images (A, B) are IDX files (gzip-compressed or not; uint8 [N, 28, 28]) or folders of PNG files
// (gray or colour, converted to gray with ITU-R BT.601 weights), compared through kiln's
// Fashion-MNIST feature network (kiln/metrics/fashion_features.hpp; 28x28 images) or, with
// --features inception, pytorch-fid's InceptionV3 (kiln/metrics/inception.hpp; any size, resized to
// 299x299) with weights the user converted to safetensors (--weights). Text files hold one segment
// per line. `ppl` loads a GPT-2-layout safetensors checkpoint (config.json beside it, or --n-head)
// and its tokenizer (a folder or file: tokenizer.json of kiln's CharTokenizer, or GPT-2's
// vocab.json + merges.txt; default: the model's folder) and reports the sliding-window perplexity
// of the text file (kiln/metrics/perplexity.hpp). Output is plain text, or one JSON object with --json. Bad input (a missing file,
// images of different sizes, line counts that differ, an empty hypothesis file) is an error
// naming the file, and the exit status is 1 (2 for a usage error).
#include <kiln/data/idx.hpp>
#include <kiln/data/tokenizer.hpp>
#include <kiln/io/png_read.hpp>
#include <kiln/metrics/bleu.hpp>
#include <kiln/metrics/fashion_features.hpp>
#include <kiln/metrics/fid.hpp>
#include <kiln/metrics/inception.hpp>
#include <kiln/metrics/inception_score.hpp>
#include <kiln/metrics/perplexity.hpp>
#include <kiln/metrics/rouge.hpp>
#include <kiln/models/gpt.hpp>
#include <kiln/version.hpp>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Tensor;

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// --name value pairs (repeatable) and flags after the subcommand.
struct Args {
  std::map<std::string, std::vector<std::string>> values;
  std::vector<std::string> flags;

  bool flag(const std::string& name) const { return std::find(flags.begin(), flags.end(), name) != flags.end(); }
  const std::vector<std::string>& all(const std::string& name) const {
    static const std::vector<std::string> none;
    const auto it = values.find(name);
    return it == values.end() ? none : it->second;
  }
  std::string one(const std::string& name, const std::string& fallback = "") const {
    const auto& v = all(name);
    if (v.size() > 1) throw UsageError(name + " given more than once");
    return v.empty() ? fallback : v[0];
  }
  std::string required(const std::string& name) const {
    const std::string v = one(name);
    if (v.empty()) throw UsageError("missing " + name);
    return v;
  }
};

Args parse(int argc, char** argv, int first, const std::vector<std::string>& value_options,
           const std::vector<std::string>& flag_options) {
  Args a;
  for (int i = first; i < argc; ++i) {
    const std::string name = argv[i];
    if (std::find(flag_options.begin(), flag_options.end(), name) != flag_options.end()) {
      a.flags.push_back(name);
    } else if (std::find(value_options.begin(), value_options.end(), name) != value_options.end()) {
      if (i + 1 >= argc) throw UsageError(name + " needs a value");
      a.values[name].push_back(argv[++i]);
    } else {
      throw UsageError("unknown option " + name);
    }
  }
  return a;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

// Gray images in [0, 1], [N, 1, H, W], from an IDX file or a folder of PNGs of one size.
Tensor<float> load_images(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) throw std::runtime_error(path + ": no such file or folder");
  std::vector<std::uint8_t> bytes;
  index_t count = 0, height = 0, width = 0;
  if (std::filesystem::is_directory(path, ec)) {
    std::vector<std::string> files;
    for (const auto& entry : std::filesystem::directory_iterator(path)) {
      std::string ext = entry.path().extension().string();
      std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      if (entry.is_regular_file() && ext == ".png") files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) throw std::runtime_error(path + ": the folder holds no .png files");
    for (const std::string& file : files) {
      const kiln::io::Image image = kiln::io::read_png(file);
      if (count == 0) {
        height = image.height;
        width = image.width;
      } else if (image.height != height || image.width != width) {
        throw std::runtime_error(file + ": image is " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                 " but " + files[0] + " is " + std::to_string(width) + "x" + std::to_string(height) +
                                 " (all images must have one size)");
      }
      for (std::size_t p = 0; p < std::size_t(image.width) * std::size_t(image.height); ++p) {
        const std::uint8_t* px = image.pixels.data() + p * std::size_t(image.channels);
        bytes.push_back(image.channels == 1 ? px[0]
                                            : static_cast<std::uint8_t>(std::lround(0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2])));
      }
      ++count;
    }
  } else {
    const kiln::data::IdxArray array = kiln::data::read_idx(path);
    if (array.type != kiln::data::idx_uint8 || array.dims.size() != 3)
      throw std::runtime_error(path + ": expected an IDX file of uint8 images [N, H, W]");
    count = array.dims[0];
    height = array.dims[1];
    width = array.dims[2];
    bytes = array.bytes;
  }
  if (count < 2) throw std::runtime_error(path + ": needs at least 2 images");
  Tensor<float> images = Tensor<float>::uninitialized(kiln::Shape{count, 1, height, width});
  for (std::size_t i = 0; i < bytes.size(); ++i) images.data()[i] = static_cast<float>(bytes[i]) / 255.0f;
  return images;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

std::vector<std::string> read_hypotheses(const std::string& path) {
  auto lines = read_lines(path);
  if (lines.empty()) throw std::runtime_error(path + ": the hypothesis file is empty");
  return lines;
}

std::vector<std::vector<std::string>> read_references(const std::vector<std::string>& paths, std::size_t expected,
                                                      const std::string& hyp_path) {
  if (paths.empty()) throw UsageError("missing --ref");
  std::vector<std::vector<std::string>> streams;
  for (const std::string& p : paths) {
    streams.push_back(read_lines(p));
    if (streams.back().size() != expected)
      throw std::runtime_error(p + " has " + std::to_string(streams.back().size()) + " lines but " + hyp_path + " has " +
                               std::to_string(expected) + " (one segment per line in each)");
  }
  return streams;
}

// Features and logits of images through the chosen network.
struct Network {
  std::string name;
  std::shared_ptr<kiln::metrics::FashionFeatureNet> fashion;
  std::shared_ptr<kiln::metrics::InceptionV3> inception;

  explicit Network(const Args& a) : name(a.one("--features", "fashion")) {
    const std::string weights = a.one("--weights");
    if (name == "fashion") {
      fashion = kiln::metrics::load_fashion_features(weights);
    } else if (name == "inception") {
      if (weights.empty())
        throw UsageError("--features inception needs --weights FILE: pytorch-fid's InceptionV3 weights converted to "
                         "safetensors (names as torchvision's inception_v3)");
      inception = std::make_shared<kiln::metrics::InceptionV3>(kiln::metrics::InceptionVariant::fid);
      kiln::metrics::load_inception_v3_weights(weights, *inception);
    } else {
      throw UsageError("--features must be fashion or inception, got " + name);
    }
  }

  kiln::metrics::FeaturesAndLogits<float> evaluate(const Tensor<float>& images, const std::string& path) {
    if (fashion) {
      if (images.size(2) != 28 || images.size(3) != 28)
        throw std::runtime_error(path + ": images are " + std::to_string(images.size(3)) + "x" + std::to_string(images.size(2)) +
                                 "; the Fashion-MNIST feature network takes 28x28 gray images (or use --features inception)");
      return kiln::metrics::evaluate_features(*fashion, images);
    }
    kiln::NoGrad no_grad;
    std::vector<Tensor<float>> features, logits;
    for (index_t b = 0; b < images.size(0); b += 50) {
      const Tensor<float> f = inception->features(images.slice(0, b, std::min(images.size(0), b + 50)).contiguous());
      logits.push_back(inception->classify(f));
      features.push_back(f);
    }
    return {kiln::concat(features, 0), kiln::concat(logits, 0)};
  }
};

int fid(const Args& a) {
  Network net(a);
  const std::string real_path = a.required("--real"), fake_path = a.required("--fake");
  const auto real = net.evaluate(load_images(real_path), real_path);
  const auto fake = net.evaluate(load_images(fake_path), fake_path);
  const double value = kiln::metrics::fid_from_features(real.features, fake.features);
  if (a.flag("--json"))
    std::printf("{\"metric\": \"fid\", \"features\": \"%s\", \"fid\": %s, \"real\": %ld, \"fake\": %ld}\n", net.name.c_str(),
                json_number(value).c_str(), static_cast<long>(real.features.size(0)), static_cast<long>(fake.features.size(0)));
  else
    std::printf("FID %.4f (%ld real, %ld generated images; %s features)\n", value, static_cast<long>(real.features.size(0)),
                static_cast<long>(fake.features.size(0)), net.name.c_str());
  return 0;
}

int inception(const Args& a) {
  Network net(a);
  const int splits = std::stoi(a.one("--splits", "10"));
  const std::string path = a.required("--images");
  const auto out = net.evaluate(load_images(path), path);
  const auto is = kiln::metrics::inception_score_from_logits(out.logits, splits);
  if (a.flag("--json"))
    std::printf("{\"metric\": \"inception_score\", \"features\": \"%s\", \"mean\": %s, \"std\": %s, \"splits\": %d, "
                "\"images\": %ld}\n",
                net.name.c_str(), json_number(is.mean).c_str(), json_number(is.std).c_str(), splits,
                static_cast<long>(out.logits.size(0)));
  else
    std::printf("Inception Score %.4f ± %.4f (%d splits, %ld images; %s features)\n", is.mean, is.std, splits,
                static_cast<long>(out.logits.size(0)), net.name.c_str());
  return 0;
}

int bleu(const Args& a) {
  const std::string hyp_path = a.required("--hyp");
  const auto hyps = read_hypotheses(hyp_path);
  const auto refs = read_references(a.all("--ref"), hyps.size(), hyp_path);
  kiln::metrics::BleuOptions o;
  o.tokenizer = kiln::metrics::bleu_tokenizer_from_name(a.one("--tokenize", "13a"));
  o.smoothing = kiln::metrics::bleu_smoothing_from_name(a.one("--smooth", "exp"));
  o.lowercase = a.flag("--lowercase");
  const auto s = kiln::metrics::corpus_bleu(hyps, refs, o);
  if (a.flag("--json")) {
    std::printf("{\"metric\": \"bleu\", \"score\": %s, \"precisions\": [", json_number(s.score).c_str());
    for (std::size_t i = 0; i < s.precisions.size(); ++i)
      std::printf("%s%s", i ? ", " : "", json_number(s.precisions[i]).c_str());
    std::printf("], \"bp\": %s, \"ratio\": %s, \"sys_len\": %ld, \"ref_len\": %ld}\n", json_number(s.bp).c_str(),
                json_number(s.ratio).c_str(), static_cast<long>(s.sys_len), static_cast<long>(s.ref_len));
  } else {
    std::printf("BLEU = %.2f", s.score);
    for (std::size_t i = 0; i < s.precisions.size(); ++i) std::printf("%s%.1f", i ? "/" : " ", s.precisions[i]);
    std::printf(" (BP = %.3f ratio = %.3f hyp_len = %ld ref_len = %ld)\n", s.bp, s.ratio, static_cast<long>(s.sys_len),
                static_cast<long>(s.ref_len));
  }
  return 0;
}

int rouge(const Args& a) {
  const std::string hyp_path = a.required("--hyp");
  auto hyps = read_hypotheses(hyp_path);
  auto refs = read_references(a.all("--ref"), hyps.size(), hyp_path);
  // rougeLsum splits summaries at newlines: a separator written inside a line becomes one.
  const std::string sep = a.one("--sentence-sep");
  auto split = [&](std::string& s) {
    if (sep.empty()) return;
    for (std::size_t at = s.find(sep); at != std::string::npos; at = s.find(sep, at + 1)) s.replace(at, sep.size(), "\n");
  };
  for (auto& h : hyps) split(h);
  std::vector<std::vector<std::string>> targets(hyps.size());
  for (auto& stream : refs)
    for (std::size_t i = 0; i < stream.size(); ++i) {
      split(stream[i]);
      targets[i].push_back(stream[i]);
    }
  kiln::metrics::RougeOptions o;
  o.use_stemmer = a.flag("--stem");
  const kiln::metrics::RougeScorer scorer({"rouge1", "rouge2", "rougeL", "rougeLsum"}, o);
  const auto scores = kiln::metrics::rouge_corpus_mean_multi(scorer, targets, hyps);
  if (a.flag("--json")) {
    std::printf("{\"metric\": \"rouge\", \"stemmer\": %s", o.use_stemmer ? "true" : "false");
    for (const auto& [name, s] : scores)
      std::printf(", \"%s\": {\"precision\": %s, \"recall\": %s, \"fmeasure\": %s}", name.c_str(),
                  json_number(s.precision).c_str(), json_number(s.recall).c_str(), json_number(s.fmeasure).c_str());
    std::printf("}\n");
  } else {
    for (const auto& [name, s] : scores)
      std::printf("%-10s P %.4f  R %.4f  F1 %.4f\n", name.c_str(), s.precision, s.recall, s.fmeasure);
  }
  return 0;
}

// The token ids of `text` with the tokenizer at `path` (a folder holding tokenizer.json or
// vocab.json + merges.txt, or one of those files).
std::vector<std::int64_t> tokenize(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  fs::path char_file, vocab, merges;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "tokenizer.json", ec)) char_file = p / "tokenizer.json";
    vocab = p / "vocab.json";
    merges = p / "merges.txt";
  } else if (p.filename() == "vocab.json" || p.filename() == "merges.txt") {
    vocab = p.parent_path() / "vocab.json";
    merges = p.parent_path() / "merges.txt";
  } else {
    char_file = p;
  }
  std::vector<kiln::index_t> ids;
  if (!char_file.empty()) {
    ids = kiln::data::CharTokenizer::load(char_file.string()).encode(text);
  } else {
    if (!fs::exists(vocab, ec) || !fs::exists(merges, ec))
      throw std::runtime_error(path + ": no tokenizer (expected tokenizer.json, or vocab.json and merges.txt)");
    ids = kiln::data::ByteLevelBPE::load(vocab.string(), merges.string()).encode(text);
  }
  return {ids.begin(), ids.end()};
}

int perplexity(const Args& a) {
  const std::string model_path = a.required("--model"), text_path = a.required("--text");
  kiln::models::PretrainedOptions po;
  if (const std::string h = a.one("--n-head"); !h.empty()) po.n_head = std::stol(h);
  auto model = kiln::models::load_gpt2_safetensors<float>(model_path, po);
  model->eval();
  std::ifstream in(text_path, std::ios::binary);
  if (!in) throw std::runtime_error(text_path + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string tokenizer_path = a.one("--tokenizer", std::filesystem::path(model_path).parent_path().string());
  const std::vector<std::int64_t> ids = tokenize(tokenizer_path.empty() ? "." : tokenizer_path, buffer.str());
  const long block = static_cast<long>(model->config().block_size);
  const long max_length = std::stol(a.one("--max-length", std::to_string(block)));
  if (max_length > block)
    throw UsageError("--max-length " + std::to_string(max_length) + " exceeds the model's context of " + std::to_string(block));
  const long stride = std::stol(a.one("--stride", std::to_string(std::max(1L, max_length / 2))));
  const auto r = kiln::metrics::perplexity(
      [&](const Tensor<std::int64_t>& window) {
        kiln::NoGrad no_grad;
        return model->forward(window);
      },
      ids, max_length, stride);
  if (a.flag("--json"))
    std::printf("{\"metric\": \"perplexity\", \"perplexity\": %s, \"mean_nll\": %s, \"tokens\": %ld, \"max_length\": %ld, "
                "\"stride\": %ld}\n",
                json_number(r.perplexity).c_str(), json_number(r.mean_nll).c_str(), static_cast<long>(r.token_count), max_length,
                stride);
  else
    std::printf("perplexity %.4f (mean NLL %.4f nats over %ld tokens; window %ld, stride %ld)\n", r.perplexity, r.mean_nll,
                static_cast<long>(r.token_count), max_length, stride);
  return 0;
}

void usage(std::FILE* to) {
  std::fprintf(to,
               "kiln-eval (kiln %s) — FID, Inception Score, BLEU, ROUGE and perplexity from files\n\n"
               "  kiln-eval fid   --real A --fake B [--features fashion|inception] [--weights FILE] [--json]\n"
               "  kiln-eval is    --images A [--splits N] [--features fashion|inception] [--weights FILE] [--json]\n"
               "  kiln-eval bleu  --hyp H --ref R [--ref R2 ...] [--tokenize 13a|none]\n"
               "                  [--smooth exp|floor|add-k|none] [--lowercase] [--json]\n"
               "  kiln-eval rouge --hyp H --ref R [--ref R2 ...] [--stem] [--sentence-sep TEXT] [--json]\n"
               "  kiln-eval ppl   --model M --text F [--tokenizer PATH] [--max-length N] [--stride S]\n"
               "                  [--n-head H] [--json]\n\n"
               "Images: IDX files (uint8 [N, H, W], .gz or not) or folders of PNGs of one size, through kiln's\n"
               "Fashion-MNIST feature network (28x28; --weights: another weights file) or pytorch-fid's\n"
               "InceptionV3 (--features inception --weights FILE: its weights as safetensors). Text: one segment per\n"
               "line; BLEU as sacreBLEU's defaults, ROUGE (rouge1, rouge2, rougeL, rougeLsum; mean over\n"
               "segments, best reference per segment) as Google's rouge-score. ppl: a GPT-2-layout\n"
               "safetensors model (config.json beside it) and its tokenizer (tokenizer.json, or vocab.json +\n"
               "merges.txt); sliding-window perplexity (default window: the model's context, stride half of it).\n",
               kiln::version());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (command == "--version") {
    std::printf("kiln-eval (kiln %s)\n", kiln::version());
    return 0;
  }
  try {
    if (command == "fid") return fid(parse(argc, argv, 2, {"--real", "--fake", "--features", "--weights"}, {"--json"}));
    if (command == "is")
      return inception(parse(argc, argv, 2, {"--images", "--splits", "--features", "--weights"}, {"--json"}));
    if (command == "bleu")
      return bleu(parse(argc, argv, 2, {"--hyp", "--ref", "--tokenize", "--smooth"}, {"--lowercase", "--json"}));
    if (command == "rouge") return rouge(parse(argc, argv, 2, {"--hyp", "--ref", "--sentence-sep"}, {"--stem", "--json"}));
    if (command == "ppl")
      return perplexity(
          parse(argc, argv, 2, {"--model", "--text", "--tokenizer", "--max-length", "--stride", "--n-head"}, {"--json"}));
    throw UsageError("unknown command " + command + " (fid, is, bleu, rouge or ppl)");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "kiln-eval: %s (see kiln-eval --help)\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-eval %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
