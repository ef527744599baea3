// gpt — a character-level GPT on the fortunes corpus with kiln::models::GPT, and text generation
// and fine-tuning from GPT-2 checkpoints in Hugging Face's layout.
//
// Training (the default) follows shared/reference/quality/Q7_chargpt.py: the corpus's 113
// characters, 4 layers, 4 heads, width 256, block 128, batch 16 random windows per step, AdamW
// (lr 3e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.1 on every parameter), constant learning
// rate, no warm-up, no gradient clipping, 2,000 steps. Every --eval-every steps (and at the end)
// it reports the mean loss of 20 fixed batches of each split, at the end the loss over the whole
// validation split (consecutive windows, nats/char) and its perplexity, and greedy and
// temperature-0.8 samples after the prompt "%\n". Writes log.csv, config.txt, summary.txt,
// samples.txt, loss.png, checkpoints (--resume; Ctrl-C saves one before exiting), the weights in
// GPT-2's Hugging Face layout (model.safetensors + config.json) and tokenizer.json.
//
// With --load FILE it reads a GPT-2 checkpoint instead (config.json beside it, or --n-head) and
// the tokenizer of --tokenizer DIR (vocab.json + merges.txt: byte-level BPE; tokenizer.json: kiln's
// character tokenizer), then generates after --prompt; --finetune TEXTFILE first continues its
// training on a text file (with LoRA adapters of rank --lora, merged before saving).
#include "common.hpp"

#include <kiln/data/text.hpp>
#include <kiln/data/tokenizer.hpp>
#include <kiln/io/checkpoint.hpp>
#include <kiln/io/progress.hpp>
#include <kiln/kiln.hpp>
#include <kiln/models/gpt.hpp>
#include <kiln/optim/optim.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

using kiln::index_t;
using kiln::Tensor;
using Model = kiln::models::GPT<float>;
namespace fs = std::filesystem;

struct Options {
  std::string data, out = "gpt-out", resume;
  long steps = 2000;
  long batch = 16;
  long block = 128;
  long layers = 4, heads = 4, embd = 256;
  double lr = 3e-4, weight_decay = 0.1;
  long eval_every = 250;
  long eval_batches = 20;
  long sample_chars = 300;
  int threads = 0;
  std::uint64_t seed = 0;
  bool deterministic = false;
  // Loading, generation, fine-tuning.
  std::string load, tokenizer, prompt, finetune;
  long n_head = 0;
  long max_new = 200;
  double temperature = 0.8;
  long top_k = 0;
  double top_p = 1.0;
  long lora = 0;
  double lora_alpha = 0;  // 0: 2 × rank
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A tokenizer of either kind behind one interface.
struct Tokenizer {
  std::string kind;
  std::vector<std::string> files;  // where it was read from
  std::function<std::vector<index_t>(const std::string&)> encode;
  std::function<std::string(const std::vector<index_t>&)> decode;
  index_t vocab_size = 0;
};

Tokenizer char_tokenizer(const kiln::data::CharTokenizer& t) {
  auto shared = std::make_shared<kiln::data::CharTokenizer>(t);
  return {"characters", {}, [shared](const std::string& s) { return shared->encode(s); },
          [shared](const std::vector<index_t>& ids) { return shared->decode(ids); }, t.vocab_size()};
}

// vocab.json + merges.txt in `where` give byte-level BPE; tokenizer.json (or `where` itself being
// that file) kiln's character tokenizer.
Tokenizer load_tokenizer(const std::string& where) {
  const fs::path p(where);
  if (fs::is_directory(p) && fs::exists(p / "vocab.json") && fs::exists(p / "merges.txt")) {
    auto bpe = std::make_shared<kiln::data::ByteLevelBPE>(
        kiln::data::ByteLevelBPE::load((p / "vocab.json").string(), (p / "merges.txt").string()));
    return {"byte-level BPE",
            {(p / "vocab.json").string(), (p / "merges.txt").string()},
            [bpe](const std::string& s) { return bpe->encode(s); },
            [bpe](const std::vector<index_t>& ids) { return bpe->decode_lossy(ids); },
            bpe->vocab_size()};
  }
  const fs::path file = fs::is_directory(p) ? p / "tokenizer.json" : p;
  if (!fs::exists(file))
    throw std::runtime_error("no tokenizer in " + where + " (expected vocab.json + merges.txt, or kiln's tokenizer.json)");
  Tokenizer t = char_tokenizer(kiln::data::CharTokenizer::load(file.string()));
  t.files = {file.string()};
  return t;
}

// Mean loss over fixed batches (eval mode, no gradients).
double mean_loss(Model& model, const std::vector<kiln::data::TokenBatch>& batches) {
  kiln::NoGrad guard;
  model.eval();
  double sum = 0;
  for (const auto& b : batches) sum += static_cast<double>(model.loss(b.x, b.y).item());
  model.train();
  return batches.empty() ? 0.0 : sum / static_cast<double>(batches.size());
}

// Mean loss per target over the whole split, cut into consecutive windows (Q7's val_full).
double full_split_loss(Model& model, const kiln::data::TokenDataset& split, index_t* targets = nullptr) {
  kiln::NoGrad guard;
  model.eval();
  const index_t windows = split.num_sequential_windows(), per_batch = 64;
  double total = 0;
  for (index_t k = 0; k < windows; k += per_batch) {
    const auto b = split.sequential_batch(k, std::min(per_batch, windows - k));
    total += static_cast<double>(model.loss(b.x, b.y).item()) * static_cast<double>(b.x.numel());
  }
  model.train();
  if (targets) *targets = windows * split.block_size();
  return windows > 0 ? total / static_cast<double>(windows * split.block_size()) : 0.0;
}

std::string generate_text(Model& model, const Tokenizer& tok, const std::string& prompt, long n, double temperature,
                          std::uint64_t seed, long top_k = 0, double top_p = 1.0) {
  const std::vector<index_t> ids = tok.encode(prompt);
  if (ids.empty()) throw std::runtime_error("the prompt encodes to no tokens");
  kiln::models::GenerateOptions g;
  g.max_new_tokens = n;
  g.temperature = temperature;
  g.top_k = top_k;
  g.top_p = top_p;
  g.seed = seed;
  const std::vector<index_t> out = model.generate(ids, g);
  return tok.decode(std::vector<index_t>(out.begin() + static_cast<std::ptrdiff_t>(ids.size()), out.end()));
}

// Tokens per second of KV-cache generation at batch 1: 127 new tokens after a one-token prompt
// (prompt + new = 128 = W7's block, as the PyTorch reference's generate_kv), temperature 1; the
// median of three runs after a warm-up.
double generation_tokens_per_second(Model& model) {
  const index_t n = std::min<index_t>(127, model.config().block_size - 1);
  if (n < 1) return 0.0;
  kiln::models::GenerateOptions g;
  g.max_new_tokens = n;
  std::vector<double> rates;
  for (int r = 0; r < 4; ++r) {
    g.seed = static_cast<std::uint64_t>(r);
    const auto t0 = std::chrono::steady_clock::now();
    model.generate(std::vector<index_t>{0}, g);
    const double s = seconds_since(t0);
    if (r > 0) rates.push_back(static_cast<double>(n) / s);
  }
  std::sort(rates.begin(), rates.end());
  return rates[1];
}

void write_model(Model& model, const std::string& dir) {
  kiln::models::save_gpt2_safetensors(model, dir + "/model.safetensors");
  kiln::models::save_gpt2_config_json(model.config(), dir + "/config.json");
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// Training the char GPT on the fortunes corpus (Q7)
// ---------------------------------------------------------------------------------------------

int train_chargpt(const Options& o, const std::string& config) {
  example::install_stop_handler();
  const std::string dir = o.data.empty() ? std::string(kiln::data::fortunes_default_dir) : o.data;
  std::printf("kiln %s, %d threads, corpus %s\n", kiln::version(), kiln::num_threads(), dir.c_str());
  const std::string text = kiln::data::load_fortunes_corpus(dir);
  const auto chars = kiln::data::CharTokenizer::from_text(text);
  const Tokenizer tok = char_tokenizer(chars);
  const std::vector<index_t> ids = chars.encode(text);
  auto [train, val] = kiln::data::split_token_dataset(ids, o.block);
  std::printf("corpus %zu chars, vocab %ld, train %ld, val %ld\n", ids.size(), static_cast<long>(chars.vocab_size()),
              static_cast<long>(train.size()), static_cast<long>(val.size()));

  kiln::models::GPTConfig c;
  c.n_layer = o.layers, c.n_head = o.heads, c.n_embd = o.embd, c.block_size = o.block;
  c.vocab_size = chars.vocab_size();
  kiln::Rng init(o.seed);
  auto model = std::make_shared<Model>(c, init);
  kiln::optim::AdamWOptions ao;
  ao.lr = o.lr;
  ao.weight_decay = o.weight_decay;  // on every parameter, as the recipe
  kiln::optim::AdamW opt(model->parameters(), ao);
  std::printf("model: %ld layers, %ld heads, width %ld, block %ld, %ld parameters\n", o.layers, o.heads, o.embd, o.block,
              static_cast<long>(model->num_parameters()));

  // Fixed evaluation batches of each split (Q7: 20 batches of 16 windows, seed + 1).
  kiln::Rng eval_rng(o.seed, 0, 1);
  std::vector<kiln::data::TokenBatch> eval_train, eval_val;
  for (long i = 0; i < o.eval_batches; ++i) eval_train.push_back(train.batch(o.batch, eval_rng));
  for (long i = 0; i < o.eval_batches; ++i) eval_val.push_back(val.batch(o.batch, eval_rng));

  fs::create_directories(o.out);
  kiln::Rng batches(o.seed, 0, 2);  // the window starts of the training batches
  long step = 0;
  if (!o.resume.empty()) {
    kiln::io::TrainingState st = kiln::io::load_checkpoint(o.resume, *model, opt);
    step = st.step;
    batches = st.rng;
    std::printf("resumed from %s at step %ld\n", o.resume.c_str(), step);
  }
  std::ofstream(o.out + "/config.txt") << config << "corpus_dir " << dir << "\nvocab " << chars.vocab_size()
                                       << "\nparameters " << model->num_parameters() << "\n";
  chars.save(o.out + "/tokenizer.json");
  const auto save = [&](long at) {
    kiln::io::TrainingState st;
    st.step = at;
    st.rng = batches;
    kiln::io::save_checkpoint(o.out + "/checkpoint.safetensors", *model, opt, st);
  };

  kiln::io::CsvLog log(o.out + "/log.csv", {"step", "train_loss", "train_est", "val_est", "val_perplexity", "seconds"},
                       !o.resume.empty());
  std::ofstream samples(o.out + "/samples.txt", o.resume.empty() ? std::ios::trunc : std::ios::app);
  example::Curve train_curve{"train (mean of 10 steps)", {}, {}}, train_est_curve{"train (20 batches)", {}, {}},
      val_curve{"validation (20 batches)", {}, {}};
  double window_sum = 0, run_sum = 0;
  long window_count = 0, run_count = 0;
  double train_est = 0, val_est = 0;
  kiln::io::ProgressBar bar("train", o.steps);
  bar.set_start(step);
  const auto t0 = std::chrono::steady_clock::now();
  double train_seconds = 0;
  auto t_segment = std::chrono::steady_clock::now();
  bool stopped = false;
  while (step < o.steps) {
    if (example::stop_requested()) {
      stopped = true;
      break;
    }
    const auto b = train.batch(o.batch, batches);
    opt.zero_grad();
    Tensor<float> loss = model->loss(b.x, b.y);
    loss.backward();
    opt.step();
    ++step;
    const double l = static_cast<double>(loss.item());
    run_sum += l;
    ++run_count;
    window_sum += l;
    if (++window_count == 10) {
      train_curve.x.push_back(double(step));
      train_curve.y.push_back(window_sum / 10);
      window_sum = 0;
      window_count = 0;
    }
    char status[64];
    std::snprintf(status, sizeof status, "loss %.3f", l);
    bar.update(step, status);
    if (step % o.eval_every == 0 || step == o.steps) {
      train_seconds += seconds_since(t_segment);
      train_est = mean_loss(*model, eval_train);
      val_est = mean_loss(*model, eval_val);
      std::printf("\nstep %ld train_loss(last %ld) %.4f train_est %.4f val_est %.4f val_ppl %.3f (train %.0f s)\n", step,
                  run_count, run_sum / static_cast<double>(run_count), train_est, val_est, std::exp(val_est), train_seconds);
      log.row({double(step), run_sum / static_cast<double>(run_count), train_est, val_est, std::exp(val_est),
               seconds_since(t0)});
      train_est_curve.x.push_back(double(step));
      train_est_curve.y.push_back(train_est);
      val_curve.x.push_back(double(step));
      val_curve.y.push_back(val_est);
      const std::string s = generate_text(*model, tok, "%\n", 200, 0.8, o.seed + 2);
      std::printf("--- sample at step %ld (temperature 0.8) ---\n%s\n---\n", step, s.c_str());
      samples << "--- step " << step << " (prompt '%\\n', temperature 0.8, 200 chars) ---\n" << s << "\n";
      samples.flush();
      run_sum = 0;
      run_count = 0;
      save(step);
      t_segment = std::chrono::steady_clock::now();
    }
  }
  if (stopped) {
    save(step);
    std::printf("\nstopped at step %ld; checkpoint saved to %s/checkpoint.safetensors (continue with --resume)\n", step,
                o.out.c_str());
    return 130;
  }

  index_t targets = 0;
  const double val_full = full_split_loss(*model, val, &targets);
  std::printf("val_full %.4f nats/char over %ld windows (%ld targets), perplexity %.3f\n", val_full,
              static_cast<long>(val.num_sequential_windows()), static_cast<long>(targets), std::exp(val_full));
  const std::string greedy = generate_text(*model, tok, "%\n", o.sample_chars, 0.0, o.seed + 2);
  const std::string warm = generate_text(*model, tok, "%\n", o.sample_chars, 0.8, o.seed + 2);
  std::ostringstream final_samples;
  final_samples << "--- greedy sample (prompt '%\\n', " << o.sample_chars << " chars) ---\n" << greedy << "\n"
                << "--- temperature 0.8 sample (prompt '%\\n', " << o.sample_chars << " chars) ---\n" << warm << "\n---\n";
  std::printf("%s", final_samples.str().c_str());
  samples << final_samples.str();
  const double tps = generation_tokens_per_second(*model);
  std::printf("generation with the KV cache: %.1f tokens/s (batch 1, %ld new tokens)\n", tps,
              static_cast<long>(std::min<index_t>(127, o.block - 1)));

  example::save_curves(o.out + "/loss.png", "char GPT cross-entropy (nats/char)", {train_curve, train_est_curve, val_curve});
  write_model(*model, o.out);
  std::ofstream summary(o.out + "/summary.txt");
  summary << "steps " << step << "\nparameters " << model->num_parameters() << "\nvocab " << chars.vocab_size()
          << "\ntrain_est " << train_est << "\nval_est " << val_est << "\nval_full " << val_full
          << "\nval_full_targets " << targets << "\nval_perplexity " << std::exp(val_full) << "\ntrain_seconds "
          << train_seconds << "\ngeneration_tokens_per_second " << tps << "\n";
  std::printf("wrote %s/ (model.safetensors, config.json, tokenizer.json, samples.txt, loss.png, log.csv, summary.txt)\n",
              o.out.c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
// A loaded checkpoint: fine-tuning and generation
// ---------------------------------------------------------------------------------------------

int finetune(Model& model, const Tokenizer& tok, const Options& o, const std::string& config) {
  example::install_stop_handler();
  const std::vector<index_t> ids = tok.encode(read_text_file(o.finetune));
  for (index_t id : ids)
    if (id < 0 || id >= model.config().vocab_size)
      throw std::runtime_error("the tokenizer gives id " + std::to_string(id) + ", beyond the model's vocabulary of " +
                               std::to_string(model.config().vocab_size));
  const index_t block = std::min<index_t>({o.block, model.config().block_size, static_cast<index_t>(ids.size()) - 1});
  if (block < 1) throw std::runtime_error(o.finetune + " is too short to train on (" + std::to_string(ids.size()) + " tokens)");
  kiln::data::TokenDataset data(ids, block);

  kiln::Rng rng(o.seed, 0, 3);
  if (o.lora > 0) {
    kiln::models::LoRAOptions lo;
    lo.rank = o.lora;
    lo.alpha = o.lora_alpha > 0 ? o.lora_alpha : 2.0 * static_cast<double>(o.lora);
    lo.targets = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    const std::size_t n = model.add_lora(lo, rng);
    std::printf("LoRA: %zu adapters of rank %ld (alpha %.1f), %ld trainable parameters of %ld\n", n, o.lora, lo.alpha,
                static_cast<long>(model.num_parameters(true)), static_cast<long>(model.num_parameters()));
  }
  std::vector<Tensor<float>> trainable;
  for (const auto& p : model.parameters())
    if (p.tracks_grad()) trainable.push_back(p);
  kiln::optim::AdamWOptions ao;
  ao.lr = o.lr;
  ao.weight_decay = o.lora > 0 ? 0.0 : o.weight_decay;
  kiln::optim::AdamW opt(trainable, ao);

  fs::create_directories(o.out);
  std::ofstream(o.out + "/config.txt") << config << "finetune_tokens " << ids.size() << "\nblock " << block << "\n";
  kiln::Rng eval_rng(o.seed, 0, 4);
  std::vector<kiln::data::TokenBatch> eval;
  for (int i = 0; i < 4; ++i) eval.push_back(data.batch(o.batch, eval_rng));
  const double before = mean_loss(model, eval);
  std::printf("fine-tuning on %s: %zu tokens, block %ld, batch %ld; loss before %.4f\n", o.finetune.c_str(), ids.size(),
              static_cast<long>(block), o.batch, before);
  kiln::io::CsvLog log(o.out + "/log.csv", {"step", "train_loss"}, false);
  kiln::io::ProgressBar bar("finetune", o.steps);
  long step = 0;
  while (step < o.steps && !example::stop_requested()) {
    const auto b = data.batch(o.batch, rng);
    opt.zero_grad();
    Tensor<float> loss = model.loss(b.x, b.y);
    loss.backward();
    opt.step();
    ++step;
    log.row({double(step), static_cast<double>(loss.item())});
    char status[64];
    std::snprintf(status, sizeof status, "loss %.3f", static_cast<double>(loss.item()));
    bar.update(step, status);
  }
  const double after = mean_loss(model, eval);
  std::printf("\nloss after %ld steps %.4f (before %.4f)\n", step, after, before);
  if (o.lora > 0) std::printf("merged %zu LoRA adapters into their weights\n", model.merge_lora());
  write_model(model, o.out);
  for (const std::string& f : tok.files) {  // the tokenizer goes with the weights
    const fs::path to = fs::path(o.out) / fs::path(f).filename();
    if (!fs::exists(to) || !fs::equivalent(f, to)) fs::copy_file(f, to, fs::copy_options::overwrite_existing);
  }
  std::ofstream(o.out + "/summary.txt") << "steps " << step << "\nloss_before " << before << "\nloss_after " << after << "\n";
  std::printf("wrote %s/ (model.safetensors, config.json, the tokenizer's files, log.csv, summary.txt)\n", o.out.c_str());
  return example::stop_requested() ? 130 : 0;
}

int run_loaded(const Options& o, const std::string& config) {
  kiln::models::PretrainedOptions po;
  if (o.n_head > 0) po.n_head = o.n_head;
  auto model = kiln::models::load_gpt2_safetensors<float>(o.load, po);
  const auto& c = model->config();
  const std::string tok_where = o.tokenizer.empty() ? fs::path(o.load).parent_path().string() : o.tokenizer;
  const Tokenizer tok = load_tokenizer(tok_where.empty() ? "." : tok_where);
  std::printf("loaded %s: %ld layers, %ld heads, width %ld, block %ld, vocab %ld (%ld parameters); tokenizer: %s, %ld tokens\n",
              o.load.c_str(), static_cast<long>(c.n_layer), static_cast<long>(c.n_head), static_cast<long>(c.n_embd),
              static_cast<long>(c.block_size), static_cast<long>(c.vocab_size), static_cast<long>(model->num_parameters()),
              tok.kind.c_str(), static_cast<long>(tok.vocab_size));
  if (tok.vocab_size > c.vocab_size)
    std::printf("warning: the tokenizer has more tokens (%ld) than the model's vocabulary (%ld)\n",
                static_cast<long>(tok.vocab_size), static_cast<long>(c.vocab_size));
  if (!o.finetune.empty()) {
    const int rc = finetune(*model, tok, o, config);
    if (rc != 0) return rc;
  }
  if (!o.prompt.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string text =
        generate_text(*model, tok, o.prompt, o.max_new, o.temperature, o.seed, o.top_k, o.top_p);
    const double s = seconds_since(t0);
    std::printf("%s%s\n", o.prompt.c_str(), text.c_str());
    std::fprintf(stderr, "(%ld new tokens in %.2f s)\n", o.max_new, s);
  } else if (o.finetune.empty()) {
    std::printf("nothing to do: give --prompt TEXT and/or --finetune TEXTFILE\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool steps_given = false;
  example::Cli cli("gpt", "trains a character-level GPT on the fortunes corpus, or generates from / fine-tunes a GPT-2 checkpoint");
  cli.add("--data", o.data, "fortunes folder (default /usr/share/games/fortunes, Debian's fortunes package)", "DIR");
  cli.add("--out", o.out, "output folder", "DIR");
  cli.add("--steps", o.steps, "training steps (fine-tuning: default 100)");
  cli.add("--batch", o.batch, "windows per batch");
  cli.add("--block", o.block, "context length (positions)");
  cli.add("--layers", o.layers, "transformer blocks");
  cli.add("--heads", o.heads, "attention heads");
  cli.add("--embd", o.embd, "model width");
  cli.add("--lr", o.lr, "AdamW learning rate (constant)");
  cli.add("--weight-decay", o.weight_decay, "AdamW decoupled weight decay (every parameter)");
  cli.add("--eval-every", o.eval_every, "steps between evaluations, samples and checkpoints");
  cli.add("--eval-batches", o.eval_batches, "fixed batches per split of each evaluation");
  cli.add("--sample-chars", o.sample_chars, "characters of the final samples");
  cli.add("--threads", o.threads, "CPU threads (0: KILN_NUM_THREADS or all cores)");
  cli.add("--seed", o.seed, "seed of the initialization, batches and sampling");
  cli.flag("--deterministic", o.deterministic, "one thread, so runs repeat bit for bit on any core count");
  cli.add("--resume", o.resume, "continue training from a checkpoint of an earlier run", "FILE");
  cli.add("--load", o.load, "a GPT-2 checkpoint in Hugging Face's layout (model.safetensors) to use instead of training", "FILE");
  cli.add("--n-head", o.n_head, "attention heads of --load's model when no config.json lies beside it");
  cli.add("--tokenizer", o.tokenizer, "folder with vocab.json + merges.txt, or kiln's tokenizer.json (default: --load's folder)", "DIR");
  cli.add("--prompt", o.prompt, "text to continue (with --load)");
  cli.add("--max-new", o.max_new, "tokens to generate after the prompt");
  cli.add("--temperature", o.temperature, "sampling temperature (0: greedy)");
  cli.add("--top-k", o.top_k, "sample among the k most likely tokens (0: all)");
  cli.add("--top-p", o.top_p, "sample among the most likely tokens holding this much probability (1: all)");
  cli.add("--finetune", o.finetune, "continue training --load's model on this text file", "FILE");
  cli.add("--lora", o.lora, "fine-tune LoRA adapters of this rank on every projection instead of all weights (0: off)");
  cli.add("--lora-alpha", o.lora_alpha, "LoRA scale numerator (0: 2 x rank)");
  try {
    for (int i = 1; i < argc; ++i)
      if (std::string(argv[i]) == "--steps") steps_given = true;
    cli.parse(argc, argv);
    if (!o.finetune.empty() && !steps_given) o.steps = 100;
    if (o.steps < 0 || o.batch < 1 || o.block < 1 || o.layers < 1 || o.heads < 1 || o.embd < 1 || o.eval_every < 1 ||
        o.eval_batches < 0 || o.max_new < 0 || o.lora < 0 || !(o.lr > 0))
      throw std::runtime_error("--steps, --batch, --block, --layers, --heads, --embd, --eval-every, --lr must be positive "
                               "(--max-new, --lora, --eval-batches non-negative)");
    if (!o.finetune.empty() && o.load.empty()) throw std::runtime_error("--finetune needs --load (the model to continue)");
    if (!o.prompt.empty() && o.load.empty())
      throw std::runtime_error("--prompt needs --load (training writes its own samples to samples.txt)");
    if (o.deterministic) kiln::set_num_threads(1);
    if (o.threads > 0 && !o.deterministic) kiln::set_num_threads(o.threads);
    return o.load.empty() ? train_chargpt(o, cli.config()) : run_loaded(o, cli.config());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpt: %s\n", e.what());
    return 1;
  }
}
