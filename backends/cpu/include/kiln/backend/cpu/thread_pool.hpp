// kiln/backend/cpu/thread_pool.hpp — the library's thread pool and parallel_for.
// Builds on <thread>; the size comes from KILN_NUM_THREADS or set_num_threads().
#pragma once

#include <kiln/core/config.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::backend::cpu {

namespace detail {

// One parallel job: `chunks` pieces of [begin, end), each handed to `run`.
struct Job {
  void (*run)(void* ctx, index_t begin, index_t end) = nullptr;
  void* ctx = nullptr;
  index_t begin = 0, end = 0, chunks = 0;
  std::atomic<index_t> next{0};
  std::atomic<index_t> done{0};
  std::exception_ptr error;
  std::mutex error_mutex;

  void work() {
    for (;;) {
      const index_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const index_t n = end - begin;
      const index_t b = begin + n * c / chunks;
      const index_t e = begin + n * (c + 1) / chunks;
      try {
        run(ctx, b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

inline thread_local bool in_worker = false;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : size_(std::max(1, threads)) {
    workers_.reserve(static_cast<std::size_t>(size_ - 1));
    for (int i = 0; i + 1 < size_; ++i) workers_.emplace_back([this] { loop(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return size_; }

  // Runs job->run over `job->chunks` pieces on the pool, the caller taking part; returns when
  // every piece is done and rethrows the first exception a piece threw.
  void run(Job* job) {
    std::lock_guard<std::mutex> serial(submit_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
      ++generation_;
    }
    wake_.notify_all();
    const bool was_worker = in_worker;
    in_worker = true;
    job->work();
    in_worker = was_worker;
    while (job->done.load(std::memory_order_acquire) < job->chunks) std::this_thread::yield();
    {
      // Wait until no worker still holds a pointer to the job.
      std::unique_lock<std::mutex> lock(mutex_);
      job_ = nullptr;
      idle_.wait(lock, [this] { return active_ == 0; });
    }
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  void loop() {
    in_worker = true;
    std::uint64_t seen = 0;
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || (generation_ != seen && job_ != nullptr); });
        if (stop_) return;
        seen = generation_;
        job = job_;
        ++active_;
      }
      job->work();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --active_;
      }
      idle_.notify_all();
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::mutex mutex_, submit_mutex_;
  std::condition_variable wake_, idle_;
  Job* job_ = nullptr;
  std::uint64_t generation_ = 0;
  int active_ = 0;
  bool stop_ = false;
};

inline int default_thread_count() {
  if (const char* env = std::getenv("KILN_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

struct PoolHolder {
  std::mutex mutex;
  std::shared_ptr<ThreadPool> pool;
};

inline PoolHolder& pool_holder() {
  static PoolHolder holder;
  return holder;
}

inline std::shared_ptr<ThreadPool> current_pool() {
  auto& h = pool_holder();
  std::lock_guard<std::mutex> lock(h.mutex);
  if (!h.pool) h.pool = std::make_shared<ThreadPool>(default_thread_count());
  return h.pool;
}

}  // namespace detail

// Number of threads kiln's CPU kernels use (the calling thread included).
inline int num_threads() { return detail::current_pool()->size(); }

// Sets the number of threads (>= 1) kiln's CPU kernels use from now on.
inline void set_num_threads(int n) {
  auto& h = detail::pool_holder();
  std::shared_ptr<detail::ThreadPool> old;
  {
    std::lock_guard<std::mutex> lock(h.mutex);
    if (h.pool && h.pool->size() == std::max(1, n)) return;
    old = std::move(h.pool);
    h.pool = std::make_shared<detail::ThreadPool>(std::max(1, n));
  }
}

// Calls f(b, e) on disjoint pieces covering [begin, end), in parallel when the range holds
// at least two grains of work. `grain` is the smallest piece worth a thread. Calls made from
// inside a parallel region run serially.
template <class F>
void parallel_for(index_t begin, index_t end, index_t grain, F&& f) {
  const index_t n = end - begin;
  if (n <= 0) return;
  grain = std::max<index_t>(grain, 1);
  if (detail::in_worker || n < 2 * grain) {
    f(begin, end);
    return;
  }
  auto pool = detail::current_pool();
  const index_t chunks = std::min<index_t>(pool->size(), n / grain);
  if (chunks <= 1) {
    f(begin, end);
    return;
  }
  detail::Job job;
  using Fn = std::remove_reference_t<F>;
  job.run = [](void* ctx, index_t b, index_t e) { (*static_cast<Fn*>(ctx))(b, e); };
  job.ctx = const_cast<void*>(static_cast<const void*>(std::addressof(f)));
  job.begin = begin;
  job.end = end;
  job.chunks = chunks;
  pool->run(&job);
}

// Calls f(i) for each of `count` tasks in parallel (one task per thread at most at a time);
// for work that is split by hand into per-thread pieces.
template <class F>
void parallel_tasks(index_t count, F&& f) {
  parallel_for(0, count, 1, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i) f(i);
  });
}

}  // namespace kiln::backend::cpu
