// A small persistent std::thread pool for the quantized CPU kernels.
//
// Decode calls the kernels ~100 times per token, so threads are created once and
// parked on a condition variable; Run(tasks, threads, fn) hands out task indices
// 0..tasks-1 to at most `threads` participants (the calling thread is one of them) and
// returns when all are done. One job at a time: a concurrent caller (XLA may run two
// custom calls at once) simply runs its tasks on its own thread.
#ifndef HIERARCHOS_FFI_QUANT_POOL_H_
#define HIERARCHOS_FFI_QUANT_POOL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hierarchos {
namespace quant {

class ThreadPool {
 public:
  static ThreadPool& Get() {
    static ThreadPool* pool = new ThreadPool();  // never destroyed: no join at exit
    return *pool;
  }

  static int HardwareThreads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
  }

  void Run(int64_t tasks, int threads, const std::function<void(int64_t)>& fn) {
    threads = static_cast<int>(std::min<int64_t>(std::max(threads, 1), tasks));
    std::unique_lock<std::mutex> job_guard(job_mu_, std::try_to_lock);
    if (threads <= 1 || !job_guard.owns_lock()) {
      for (int64_t i = 0; i < tasks; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(workers_.size()) < threads - 1) {
        workers_.emplace_back([this, id = static_cast<int>(workers_.size())] { WorkerLoop(id); });
      }
      job_ = &fn;
      tasks_ = tasks;
      helpers_ = threads - 1;
      next_.store(0);
      remaining_.store(tasks);
      ++generation_;
    }
    cv_.notify_all();
    Work(fn, tasks);
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [this] { return remaining_.load() == 0 && busy_ == 0; });
    job_ = nullptr;
  }

 private:
  ThreadPool() = default;

  void Work(const std::function<void(int64_t)>& fn, int64_t tasks) {
    for (int64_t i = next_.fetch_add(1); i < tasks; i = next_.fetch_add(1)) {
      fn(i);
      if (remaining_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mu_);
        done_cv_.notify_all();
      }
    }
  }

  void WorkerLoop(int id) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t)>* job;
      int64_t tasks;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (job_ == nullptr || id >= helpers_) continue;  // finished already, or not needed
        job = job_;
        tasks = tasks_;
        ++busy_;
      }
      Work(*job, tasks);
      std::lock_guard<std::mutex> lock(mu_);
      --busy_;
      done_cv_.notify_all();
    }
  }

  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t tasks_ = 0;
  int helpers_ = 0;
  int busy_ = 0;
  uint64_t generation_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> remaining_{0};
};

}  // namespace quant
}  // namespace hierarchos

#endif  // HIERARCHOS_FFI_QUANT_POOL_H_
