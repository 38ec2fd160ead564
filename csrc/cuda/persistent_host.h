// The host execution context of the persistent kernels: the step code of
// persistent_fwd.h / persistent_bwd.h run on the CPU, one CPU thread per CTA,
// so that the kernels' logic is tested without a GPU (ctest, pytest, and
// ThreadSanitizer). Plain C++20, no torch, no CUDA toolkit.
//
// What stands in for what (persistent_context.h describes the interface):
//   CTA                 one std::thread; its threads run one after another
//                       inside each() / each_warp(), which is one valid
//                       schedule (they only communicate across barriers)
//   thread registers    Reg<T>: kThreads values, indexed by Thread
//   warp shuffle        a permutation of the warp's 32 values
//   mma.sync m16n8k16   the fragments of all 32 lanes gathered into A, B and
//                       C by the PTX ISA's layout rules, multiplied in float
//   shared memory       one 16-byte aligned buffer per CTA, filled with 0xff
//                       bytes at launch (NaN in every format) so that a read
//                       of anything never written shows in the results
//   distributed shared  peers' buffers, written directly by the peer's
//   memory              thread: ThreadSanitizer sees every such write and
//                       reports it unless a barrier orders it
//   cluster barrier     a mutex + condition variable barrier; all CTAs must
//                       meet at the same named Barrier (checked); a timeout
//                       turns a hang into an error
//   CTA barrier         a new epoch of the shared-memory race check below
//   grid barrier        the grid tier's counter in global memory, through
//   (grid tier)         std::atomic_ref: a release add, an acquire spin
//                       (ThreadSanitizer sees the ordering it gives)
//
// The race check (HostOptions::racecheck) does for one CTA what
// compute-sanitizer's racecheck does on the device: every shared-memory byte
// remembers which thread last wrote it and which thread(s) read it since the
// last CTA barrier; a read of another thread's write, or a write over another
// thread's read or write, within one barrier epoch is a race, and a read of a
// byte that no thread ever wrote is an uninitialised read. Writes from peer
// CTAs are left to ThreadSanitizer.
//
// HostOptions::random_yields makes each CTA sleep or yield at random points
// (barriers, remote stores), so that repeated runs see different
// interleavings; drop_barrier removes every barrier of one kind, which the
// tests use to show that the checks catch a missing barrier.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "persistent_context.h"

namespace fusedlstm::persistent {

struct HostOptions {
  bool racecheck = true;
  bool random_yields = false;
  uint64_t seed = 1;
  int drop_barrier = -1;  // a Barrier value: its barriers are skipped
  double barrier_timeout_s = 120;
};

// Errors of one launch, from all CTA threads.
class HostErrors {
 public:
  void add(const std::string& message) {
    const std::lock_guard<std::mutex> lock(mutex_);
    ++count_;
    if (messages_.size() < 8) messages_.push_back(message);
  }
  bool empty() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return count_ == 0;
  }
  std::string summary() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::string s = std::to_string(count_) + " error(s) in the host emulation of a persistent kernel:";
    for (const std::string& m : messages_) s += "\n  " + m;
    return s;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> messages_;
  int64_t count_ = 0;
};

// Thrown inside CTA threads once the launch is broken (a barrier timed out,
// CTAs met at different barriers): unwinds every CTA.
struct HostLaunchBroken : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The cluster barrier: all S CTA threads arrive, then all continue.
class HostBarrier {
 public:
  HostBarrier(int count, HostErrors& errors, double timeout_s)
      : count_(count), errors_(errors), timeout_(timeout_s) {}

  void arrive_and_wait(Barrier label, int rank) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (broken_) throw HostLaunchBroken("launch broken");
    if (arrived_ == 0) {
      label_ = label;
    } else if (label != label_) {
      errors_.add("CTA " + std::to_string(rank) + " arrived at cluster barrier '" + barrier_name(label) +
                  "' while others wait at '" + barrier_name(label_) + "'");
      break_locked();
    }
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    const bool released = cv_.wait_for(lock, timeout_, [&] { return generation_ != generation || broken_; });
    if (broken_) throw HostLaunchBroken("launch broken");
    if (!released) {
      errors_.add("cluster barrier '" + std::string(barrier_name(label)) + "' timed out: " +
                  std::to_string(arrived_) + " of " + std::to_string(count_) + " CTAs arrived");
      break_locked();
      throw HostLaunchBroken("barrier timeout");
    }
  }

  // Releases every waiting CTA with an error (a CTA thread failed).
  void break_all() {
    const std::lock_guard<std::mutex> lock(mutex_);
    break_locked();
  }
  bool broken() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return broken_;
  }
  double timeout_s() const { return timeout_.count(); }

 private:
  void break_locked() {
    broken_ = true;
    cv_.notify_all();
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  const int count_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  Barrier label_ = Barrier::kStart;
  bool broken_ = false;
  HostErrors& errors_;
  std::chrono::duration<double> timeout_;
};

// The CTAs of one cluster: their shared memory and their barrier.
struct HostCluster {
  HostCluster(int size, size_t smem_bytes, const HostOptions& options, HostErrors& errors)
      : S(size), bytes(smem_bytes), barrier(size, errors, options.barrier_timeout_s) {
    const size_t chunks = (smem_bytes + sizeof(Chunk16) - 1) / sizeof(Chunk16);
    for (int r = 0; r < size; ++r) {
      smem.emplace_back(new Chunk16[chunks > 0 ? chunks : 1]);
      std::memset(smem.back().get(), 0xff, chunks * sizeof(Chunk16));
    }
  }
  unsigned char* base(int rank) const { return reinterpret_cast<unsigned char*>(smem[rank].get()); }

  const int S;
  const size_t bytes;
  std::vector<std::unique_ptr<Chunk16[]>> smem;
  HostBarrier barrier;
};

class HostContext {
 public:
  // One value per thread of the CTA.
  template <typename T>
  struct Reg {
    T v[kThreads];
    T& operator[](Thread t) { return v[t.tid]; }
    const T& operator[](Thread t) const { return v[t.tid]; }
  };

  class Warp {
   public:
    Warp(HostContext& ctx, int id) : ctx_(ctx), id(id) {}

    template <typename F>
    void each(F&& f) {
      for (int lane = 0; lane < kWarpSize; ++lane) f(Thread{id * kWarpSize + lane});
    }

    // out[lane] = in[lane ^ mask] within the warp (__shfl_xor_sync).
    template <typename T>
    void shfl_xor(Reg<T>& out, const Reg<T>& in, int mask) {
      for (int lane = 0; lane < kWarpSize; ++lane) {
        out.v[id * kWarpSize + lane] = in.v[id * kWarpSize + (lane ^ mask)];
      }
    }

    // d += A * B for the warp's fragments (mma.sync.aligned.m16n8k16.row.col
    // .f32.{bf16,f16}.{bf16,f16}.f32), read through the PTX ISA's rules.
    template <typename Num>
    void mma(Reg<Acc>& d, const Reg<AFrag>& a, const Reg<BFrag>& b) {
      float A[16][16], B[16][8], C[16][8];
      for (int lane = 0; lane < kWarpSize; ++lane) {
        const int t = id * kWarpSize + lane, g = lane >> 2, q = lane % 4;
        for (int i = 0; i < 8; ++i) {  // a0..a7: register i / 2, low half first
          const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
          const int col = q * 2 + (i & 1) + (i >= 4 ? 8 : 0);
          A[row][col] = Num::to_float(uint16_t(a.v[t].r[i / 2] >> (16 * (i & 1))));
        }
        for (int i = 0; i < 4; ++i) {  // b0..b3
          const int row = q * 2 + (i & 1) + (i >= 2 ? 8 : 0);
          B[row][g] = Num::to_float(uint16_t(b.v[t].r[i / 2] >> (16 * (i & 1))));
        }
        for (int i = 0; i < 4; ++i) C[i < 2 ? g : g + 8][q * 2 + (i & 1)] = d.v[t].v[i];
      }
      for (int lane = 0; lane < kWarpSize; ++lane) {
        const int t = id * kWarpSize + lane, g = lane >> 2, q = lane % 4;
        for (int i = 0; i < 4; ++i) {
          const int row = i < 2 ? g : g + 8, col = q * 2 + (i & 1);
          float sum = C[row][col];
          for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
          d.v[t].v[i] = sum;
        }
      }
    }

   private:
    HostContext& ctx_;

   public:
    const int id;
  };

  HostContext(HostCluster& cluster, int rank, int cluster_id, const HostOptions& options, HostErrors& errors)
      : cluster_(cluster), rank_(rank), cluster_id_(cluster_id), options_(options), errors_(errors),
        rng_(options.seed * 7919u + uint64_t(cluster_id) * 131u + uint64_t(rank)) {
    if (options_.racecheck) shadow_.assign(cluster.bytes, Shadow{});
  }

  int cta_rank() const { return rank_; }
  int cluster_size() const { return cluster_.S; }
  int cluster_id() const { return cluster_id_; }
  unsigned char* smem() const { return cluster_.base(rank_); }

  template <typename F>
  void each(F&& f) {
    for (int tid = 0; tid < kThreads; ++tid) f(Thread{tid});
  }

  template <typename F>
  void each_warp(F&& f) {
    for (int w = 0; w < kWarps; ++w) {
      Warp warp(*this, w);
      f(warp);
    }
  }

  void sync_cta(Barrier label) {
    if (int(label) == options_.drop_barrier) return;
    ++epoch_;
  }

  void sync_cluster(Barrier label) {
    if (int(label) == options_.drop_barrier) return;
    maybe_pause(2);
    cluster_.barrier.arrive_and_wait(label, rank_);
    ++epoch_;
  }

  // The grid tier's barrier: `counter` counts arrivals and only grows.
  // A dropped one still counts its arrival (so that later targets hold) but
  // orders nothing and waits for no one.
  void sync_grid(Barrier label, Counter* counter, Counter target) {
    std::atomic_ref<Counter> arrived(*counter);
    if (int(label) == options_.drop_barrier) {
      arrived.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    maybe_pause(2);
    arrived.fetch_add(1, std::memory_order_release);
    const auto start = std::chrono::steady_clock::now();
    while (arrived.load(std::memory_order_acquire) < target) {
      if (cluster_.barrier.broken()) throw HostLaunchBroken("launch broken");
      const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
      if (waited.count() > cluster_.barrier.timeout_s()) {
        errors_.add("grid barrier '" + std::string(barrier_name(label)) + "' timed out in CTA " +
                    std::to_string(rank_) + ": " + std::to_string(arrived.load()) + " arrivals of " +
                    std::to_string(target));
        cluster_.barrier.break_all();
        throw HostLaunchBroken("grid barrier timeout");
      }
      std::this_thread::yield();
    }
    ++epoch_;
  }

  // Global memory written by other CTAs (grid tier).
  template <typename T>
  T ld_global(Thread, const T* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }

  // Shared memory of this CTA.
  template <typename T>
  T ld(Thread t, const T* p) {
    check(t, p, sizeof(T), false);
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }
  template <typename T>
  void st(Thread t, T* p, const T& v) {
    check(t, p, sizeof(T), true);
    std::memcpy(p, &v, sizeof(T));
  }
  // The same address in the shared memory of CTA `rank` of the cluster.
  template <typename T>
  void st_peer(Thread t, int rank, T* p, const T& v) {
    const size_t offset = checked_offset(t, p, sizeof(T));
    maybe_pause(64);
    std::memcpy(cluster_.base(rank) + offset, &v, sizeof(T));
  }

 private:
  struct Shadow {
    uint32_t write_epoch = 0;
    uint32_t read_epoch = 0;
    int16_t writer = -1;
    int16_t reader = -1;  // kManyReaders: several threads read it in read_epoch
  };
  static constexpr int16_t kManyReaders = -2;

  size_t checked_offset(Thread t, const void* p, size_t size) {
    const auto* byte = static_cast<const unsigned char*>(p);
    if (byte < smem() || byte + size > smem() + cluster_.bytes) {
      race_error(t, "shared-memory access out of bounds", byte - smem(), -1);
      throw HostLaunchBroken("out of bounds");
    }
    return size_t(byte - smem());
  }

  void check(Thread t, const void* p, size_t size, bool write) {
    const size_t offset = checked_offset(t, p, size);
    if (!options_.racecheck) return;
    const auto me = int16_t(t.tid);
    for (size_t i = offset; i < offset + size; ++i) {
      Shadow& s = shadow_[i];
      if (write) {
        if (s.write_epoch == epoch_ && s.writer != me) {
          race_error(t, "write after another thread's write with no barrier between", i, s.writer);
        } else if (s.read_epoch == epoch_ && s.reader != me) {
          race_error(t, "write after another thread's read with no barrier between", i, s.reader);
        }
        s.write_epoch = epoch_;
        s.writer = me;
      } else {
        if (s.write_epoch == 0) {
          race_error(t, "read of shared memory that no thread wrote", i, -1);
        } else if (s.write_epoch == epoch_ && s.writer != me) {
          race_error(t, "read of another thread's write with no barrier between", i, s.writer);
        }
        if (s.read_epoch == epoch_ && s.reader != me) {
          s.reader = kManyReaders;
        } else if (s.read_epoch != epoch_) {
          s.read_epoch = epoch_;
          s.reader = me;
        }
      }
    }
  }

  void race_error(Thread t, const char* what, size_t byte, int other) {
    errors_.add(std::string("racecheck: ") + what + ": CTA " + std::to_string(rank_) + " of cluster " +
                std::to_string(cluster_id_) + ", thread " + std::to_string(t.tid) + ", byte " +
                std::to_string(byte) + (other >= 0 ? ", other thread " + std::to_string(other) : "") +
                (other == kManyReaders ? ", other threads" : "") + ", barrier epoch " +
                std::to_string(epoch_));
  }

  // With random_yields: sometimes (one time in `odds`) yield or sleep a little.
  void maybe_pause(uint32_t odds) {
    if (!options_.random_yields) return;
    const uint32_t draw = uint32_t(rng_());
    if (draw % odds != 0) return;
    if ((draw >> 8) % 2 == 0) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds((draw >> 9) % 200));
    }
  }

  HostCluster& cluster_;
  const int rank_, cluster_id_;
  const HostOptions& options_;
  HostErrors& errors_;
  std::mt19937_64 rng_;
  std::vector<Shadow> shadow_;
  uint32_t epoch_ = 1;
};

// Runs `body(ctx)` for every CTA of `clusters` clusters of `S` CTAs with
// `smem_bytes` of shared memory each: the clusters one after another, the
// CTAs of a cluster on S threads at once. Throws std::runtime_error with
// every error found (races, broken barriers).
template <typename Body>
void run_on_host(int clusters, int S, size_t smem_bytes, const HostOptions& options, Body&& body) {
  HostErrors errors;
  for (int c = 0; c < clusters; ++c) {
    HostCluster cluster(S, smem_bytes, options, errors);
    std::vector<std::thread> threads;
    threads.reserve(S);
    for (int r = 0; r < S; ++r) {
      threads.emplace_back([&, r] {
        try {
          HostContext ctx(cluster, r, c, options, errors);
          body(ctx);
        } catch (const HostLaunchBroken&) {
          cluster.barrier.break_all();
        } catch (const std::exception& e) {
          errors.add(std::string("CTA ") + std::to_string(r) + ": " + e.what());
          cluster.barrier.break_all();
        }
      });
    }
    for (std::thread& t : threads) t.join();
    if (!errors.empty()) break;
  }
  if (!errors.empty()) throw std::runtime_error(errors.summary());
}

}  // namespace fusedlstm::persistent
