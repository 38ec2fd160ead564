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
#pragma once

#include <cooperative_groups.h>
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

  __device__ __forceinline__ explicit DeviceContext(unsigned char* smem) : smem_(smem) {}

  __device__ __forceinline__ int cta_rank() const {
    return int(cooperative_groups::this_cluster().block_rank());
  }
  __device__ __forceinline__ int cluster_size() const {
    return int(cooperative_groups::this_cluster().num_blocks());
  }
  // Clusters are consecutive CTAs along x (the launch is 1-D).
  __device__ __forceinline__ int cluster_id() const { return int(blockIdx.x) / cluster_size(); }
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

 private:
  unsigned char* smem_;
};

}  // namespace fusedlstm::persistent
