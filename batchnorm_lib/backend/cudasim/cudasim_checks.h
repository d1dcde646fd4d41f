// cudasim_checks.h: calls nvcc refuses, refused here too (included by cudasim_runtime.h).
//
// The runtime's atomics are templates over any type, but CUDA overloads each atomic for a few
// types only; these more specialised overloads win for the types CUDA lacks and fail to compile
// with a message naming the call, so a kernel that builds for the simulator builds for the GPU.
#ifndef CUDASIM_CHECKS_H
#define CUDASIM_CHECKS_H

#define CUDASIM_NO_ATOMIC(NAME, T)                                                                \
    template <class U>                                                                            \
    static inline T NAME(T*, U) {                                                                 \
        static_assert(sizeof(U) == 0, #NAME "(" #T "*, ...) does not exist in CUDA: nvcc rejects " \
                      "it (see the CUDA Programming Guide, Atomic Functions)");                   \
        T r{}; return r;                                                                             \
    }
#define CUDASIM_NO_ATOMIC_WIDE(NAME)                                                              \
    CUDASIM_NO_ATOMIC(NAME, long) CUDASIM_NO_ATOMIC(NAME, unsigned long)
CUDASIM_NO_ATOMIC_WIDE(atomicAdd)
CUDASIM_NO_ATOMIC(atomicAdd, long long)
CUDASIM_NO_ATOMIC_WIDE(atomicSub)
CUDASIM_NO_ATOMIC(atomicSub, float)
CUDASIM_NO_ATOMIC(atomicSub, double)
CUDASIM_NO_ATOMIC(atomicSub, long long)
CUDASIM_NO_ATOMIC(atomicSub, unsigned long long)
CUDASIM_NO_ATOMIC(atomicSub, __half)
CUDASIM_NO_ATOMIC(atomicSub, __nv_bfloat16)
CUDASIM_NO_ATOMIC_WIDE(atomicExch)
CUDASIM_NO_ATOMIC(atomicExch, double)
CUDASIM_NO_ATOMIC(atomicExch, long long)
CUDASIM_NO_ATOMIC_WIDE(atomicMin)
CUDASIM_NO_ATOMIC(atomicMin, float)
CUDASIM_NO_ATOMIC(atomicMin, double)
CUDASIM_NO_ATOMIC(atomicMin, __half)
CUDASIM_NO_ATOMIC(atomicMin, __nv_bfloat16)
CUDASIM_NO_ATOMIC_WIDE(atomicMax)
CUDASIM_NO_ATOMIC(atomicMax, float)
CUDASIM_NO_ATOMIC(atomicMax, double)
CUDASIM_NO_ATOMIC(atomicMax, __half)
CUDASIM_NO_ATOMIC(atomicMax, __nv_bfloat16)
#define CUDASIM_NO_ATOMIC_BITS(NAME)                                                              \
    CUDASIM_NO_ATOMIC_WIDE(NAME) CUDASIM_NO_ATOMIC(NAME, float) CUDASIM_NO_ATOMIC(NAME, double)   \
    CUDASIM_NO_ATOMIC(NAME, __half) CUDASIM_NO_ATOMIC(NAME, __nv_bfloat16)
CUDASIM_NO_ATOMIC_BITS(atomicAnd)
CUDASIM_NO_ATOMIC_BITS(atomicOr)
CUDASIM_NO_ATOMIC_BITS(atomicXor)
#undef CUDASIM_NO_ATOMIC_BITS
#undef CUDASIM_NO_ATOMIC_WIDE
#undef CUDASIM_NO_ATOMIC

// atomicCAS(T*, compare, val) has three parameters
#define CUDASIM_NO_CAS(T)                                                                         \
    template <class U, class V>                                                                   \
    static inline T atomicCAS(T*, U, V) {                                                         \
        static_assert(sizeof(U) == 0, "atomicCAS(" #T "*, ...) does not exist in CUDA: nvcc "     \
                      "rejects it (compare and swap the bits through an unsigned type)");         \
        T r{}; return r;                                                                             \
    }
CUDASIM_NO_CAS(float)
CUDASIM_NO_CAS(double)
CUDASIM_NO_CAS(long long)
CUDASIM_NO_CAS(long)
CUDASIM_NO_CAS(unsigned long)
#undef CUDASIM_NO_CAS

#endif  // CUDASIM_CHECKS_H
