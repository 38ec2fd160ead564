// The device execution context of the persistent kernels: the step code of
// persistent_fwd.h / persistent_bwd.h on a real thread-block cluster (sm_90).
// persistent_context.h describes the interface; persistent_host.h is the
// CPU twin that the tests run.
//   Reg<T>          the calling thread's own T (a register)
//   each / warps    the calling thread / its warp
//   shfl_xor        __shfl_xor_sync over the full warp
//   mma             mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//   sync_cta        __syncthreads
//   sync_cluster    cluster.sync(): barrier.cluster.arrive (release) + wait (acquire)
//   st_peer         a store through cluster.map_shared_rank (mapa), i.e. into
//                   the peer CTA's shared memory (st.shared::cluster)
//   sync_grid       thread 0 adds 1 to the group's counter (release, device
//                   scope) and spins until it reaches the target (acquire),
//                   between two __syncthreads
//   ld_global       ld.global.cg: from L2, never a stale L1 line
// The CTA's place: in a cluster launch its cluster (rank, size, index); in a
// cooperative grid launch blockIdx.x = group * S + rank.
#pragma once

#include <cooperative_groups.h>
#include <cuda/atomic>
#include <cuda_runtime.h>

#include <type_traits>

#include "persistent_context.h"

namespace fusedlstm::persistent {

class DeviceContext {
 public:
  template <typename T>
  struct Reg {
    T v;
    __device__ __forceinline__ T& operator[](Thread) { return v; }
    __device__ __forceinline__ const T& operator[](Thread) const { return v; }
  };

  class Warp {
   public:
    __device__ __forceinline__ explicit Warp(int warp) : id(warp) {}

    template <typename F>
    __device__ __forceinline__ void each(F&& f) {
      f(Thread{int(threadIdx.x)});
    }

    template <typename T>
    __device__ __forceinline__ void shfl_xor(Reg<T>& out, const Reg<T>& in, int mask) {
      out.v = __shfl_xor_sync(0xffffffffu, in.v, mask);
    }

    template <typename Num>
    __device__ __forceinline__ void mma(Reg<Acc>& d, const Reg<AFrag>& a, const Reg<BFrag>& b) {
      static_assert(Num::kTensorCores, "mma.sync takes 16-bit inputs here");
      float* c = d.v.v;
      if constexpr (std::is_same_v<Num, BF16>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a.v.r[0]), "r"(a.v.r[1]), "r"(a.v.r[2]), "r"(a.v.r[3]), "r"(b.v.r[0]), "r"(b.v.r[1]));
      } else {  // float16
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a.v.r[0]), "r"(a.v.r[1]), "r"(a.v.r[2]), "r"(a.v.r[3]), "r"(b.v.r[0]), "r"(b.v.r[1]));
      }
    }

    const int id;
  };

  // This CTA in the kernel of a tier.
  template <bool kGrid>
  __device__ __forceinline__ static DeviceContext of_tier(unsigned char* smem, int size) {
    if constexpr (kGrid) {
      return in_grid(smem, size);
    } else {
      return in_cluster(smem);
    }
  }
  // A CTA of a cluster launch: clusters are consecutive CTAs along x.
  __device__ __forceinline__ static DeviceContext in_cluster(unsigned char* smem) {
    const auto cluster = cooperative_groups::this_cluster();
    const int size = int(cluster.num_blocks());
    return DeviceContext(smem, int(cluster.block_rank()), size, int(blockIdx.x) / size);
  }
  // A CTA of a cooperative grid launch of groups of `size` CTAs.
  __device__ __forceinline__ static DeviceContext in_grid(unsigned char* smem, int size) {
    return DeviceContext(smem, int(blockIdx.x) % size, size, int(blockIdx.x) / size);
  }

  __device__ __forceinline__ int cta_rank() const { return rank_; }
  __device__ __forceinline__ int cluster_size() const { return size_; }
  __device__ __forceinline__ int cluster_id() const { return id_; }
  __device__ __forceinline__ unsigned char* smem() const { return smem_; }

  template <typename F>
  __device__ __forceinline__ void each(F&& f) {
    f(Thread{int(threadIdx.x)});
  }
  template <typename F>
  __device__ __forceinline__ void each_warp(F&& f) {
    Warp w(int(threadIdx.x) / kWarpSize);
    f(w);
  }

  __device__ __forceinline__ void sync_cta(Barrier) { __syncthreads(); }
  __device__ __forceinline__ void sync_cluster(Barrier) { cooperative_groups::this_cluster().sync(); }

  template <typename T>
  __device__ __forceinline__ T ld(Thread, const T* p) {
    return *p;
  }
  template <typename T>
  __device__ __forceinline__ void st(Thread, T* p, const T& v) {
    *p = v;
  }
  template <typename T>
  __device__ __forceinline__ void st_peer(Thread, int rank, T* p, const T& v) {
    *cooperative_groups::this_cluster().map_shared_rank(p, unsigned(rank)) = v;
  }

  __device__ __forceinline__ void sync_grid(Barrier, Counter* counter, Counter target) {
    __syncthreads();
    if (threadIdx.x == 0) {
      cuda::atomic_ref<Counter, cuda::thread_scope_device> arrived(*counter);
      arrived.fetch_add(1, cuda::memory_order_release);
      while (arrived.load(cuda::memory_order_acquire) < target) {
      }
    }
    __syncthreads();
  }

  __device__ __forceinline__ Chunk16 ld_global(Thread, const Chunk16* p) {
    const uint4 v = __ldcg(reinterpret_cast<const uint4*>(p));
    return Chunk16{{v.x, v.y, v.z, v.w}};
  }
  __device__ __forceinline__ float ld_global(Thread, const float* p) { return __ldcg(p); }

 private:
  __device__ __forceinline__ DeviceContext(unsigned char* smem, int rank, int size, int id)
      : smem_(smem), rank_(rank), size_(size), id_(id) {}

  unsigned char* smem_;
  int rank_, size_, id_;
};

}  // namespace fusedlstm::persistent
