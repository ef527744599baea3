// kiln/io/progress.hpp — training-loop output: a progress bar with loss, rate and ETA that redraws
// one line on a terminal and prints plain periodic lines otherwise, and a CSV log writer.
// Builds on the standard library only (isatty through <unistd.h> on POSIX).
#pragma once

#include <chrono>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace kiln::io {

// True when `stream` is an interactive terminal.
inline bool is_terminal(std::FILE* stream) {
#if defined(__unix__) || defined(__APPLE__)
  return ::isatty(::fileno(stream)) != 0;
#else
  (void)stream;
  return false;
#endif
}

// "1:05:09", "4:07", "0:03".
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

// Progress over `total` steps: update(step, text) redraws "label [#####.....] 42/100 text
// 12.3 it/s ETA 0:05" in place on a terminal, or prints a plain line every `plain_every`
// seconds (and at the end) when the output is not a terminal.
class ProgressBar {
 public:
  ProgressBar(std::string label, long total, std::FILE* out = stdout, double plain_every = 10.0)
      : label_(std::move(label)), total_(total), out_(out), tty_(is_terminal(out)), plain_every_(plain_every),
        start_(Clock::now()), last_print_(start_) {}

  void update(long done, const std::string& text) {
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done - first_) / elapsed : 0.0;
    const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : -1.0;
    const bool finished = done >= total_;
    if (tty_) {
      const int width = 24;
      const int filled = total_ > 0 ? static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total_)) : 0;
      std::string bar(static_cast<std::size_t>(filled < width ? filled : width), '#');
      bar.resize(width, '.');
      std::fprintf(out_, "\r%s [%s] %ld/%ld %s %.1f it/s ETA %s\x1b[K", label_.c_str(), bar.c_str(), done, total_,
                   text.c_str(), rate, format_duration(eta).c_str());
      if (finished) std::fprintf(out_, "\n");
      std::fflush(out_);
    } else if (finished || std::chrono::duration<double>(now - last_print_).count() >= plain_every_) {
      std::fprintf(out_, "%s %ld/%ld %s %.1f it/s elapsed %s ETA %s\n", label_.c_str(), done, total_, text.c_str(), rate,
                   format_duration(elapsed).c_str(), format_duration(eta).c_str());
      std::fflush(out_);
      last_print_ = now;
    }
  }
  // Steps already done before this bar started (a resumed run), so the rate counts new ones only.
  void set_start(long done) { first_ = done; }

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  long total_;
  long first_ = 0;
  std::FILE* out_;
  bool tty_;
  double plain_every_;
  Clock::time_point start_, last_print_;
};

// Appends rows to a CSV file with a fixed header (written when the file is new or empty).
class CsvLog {
 public:
  CsvLog(const std::string& path, std::vector<std::string> columns, bool append = true)
      : columns_(std::move(columns)) {
    bool fresh = true;
    if (append) {
      std::ifstream probe(path);
      fresh = !probe || probe.peek() == std::ifstream::traits_type::eof();
    }
    file_.open(path, append ? std::ios::app : std::ios::trunc);
    if (!file_) throw std::runtime_error("kiln::CsvLog: cannot open " + path + " for writing");
    if (fresh) {
      for (std::size_t i = 0; i < columns_.size(); ++i) file_ << (i ? "," : "") << columns_[i];
      file_ << "\n";
    }
  }
  void row(std::initializer_list<double> values) {
    std::size_t i = 0;
    for (double v : values) {
      char buf[40];
      std::snprintf(buf, sizeof buf, "%.9g", v);
      file_ << (i++ ? "," : "") << buf;
    }
    file_ << "\n";
    file_.flush();
  }

 private:
  std::vector<std::string> columns_;
  std::ofstream file_;
};

}  // namespace kiln::io
