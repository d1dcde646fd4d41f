// Elementwise arithmetic and reductions behind the gpuarray shim's operators (a + b, a * 2,
// a > 0, abs, **, astype, fill, arange, sum, dot, max, min, ...) on the simulated GPU, the way
// pycuda's GPUArray runs them as kernels. Compiles standalone with nvcc; the Python side is
// kernels/elementwise/cuda.py, the contract kernels/elementwise/__init__.py.
//
// Types: float (f32) and int (i32); float16 only in the conversions (Cast). Arrays are contiguous
// (the shim refuses views here, as pycuda does). Elementwise entries use grid-stride loops with
// 64-bit indices. Reductions are two-phase without atomics: each block writes one partial, then
// one block reduces the partials in a fixed order, so results are bitwise repeatable.
#include <cuda_fp16.h>

namespace ew {

constexpr int kBlock = 256;

__device__ __forceinline__ long long first() { return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ long long stride() { return static_cast<long long>(gridDim.x) * blockDim.x; }

// Comparison codes, in the order of kernels/elementwise/__init__.py COMPARISONS.
template <typename T>
__device__ __forceinline__ T compare(int op, T x, T y)
{
    bool r;
    switch (op) {
    case 0: r = x == y; break;
    case 1: r = x != y; break;
    case 2: r = x < y; break;
    case 3: r = x <= y; break;
    case 4: r = x > y; break;
    default: r = x >= y; break;
    }
    return r ? T(1) : T(0);
}

// maximum/minimum as pycuda's: fmaxf/fminf for float (a NaN operand yields the other one)
__device__ __forceinline__ float vmax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float vmin(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ int vmax(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ int vmin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ float vabs(float a) { return fabsf(a); }
__device__ __forceinline__ int vabs(int a) { return a < 0 ? -a : a; }

template <typename T> __device__ __forceinline__ T lowest();
template <> __device__ __forceinline__ float lowest<float>() { return -INFINITY; }
template <> __device__ __forceinline__ int lowest<int>() { return -2147483647 - 1; }
template <typename T> __device__ __forceinline__ T highest();
template <> __device__ __forceinline__ float highest<float>() { return INFINITY; }
template <> __device__ __forceinline__ int highest<int>() { return 2147483647; }

template <typename T>
__device__ __forceinline__ T combine(int op, T a, T b)
{
    return op == 2 ? vmax(a, b) : op == 3 ? vmin(a, b) : a + b;
}

template <typename T>
__device__ __forceinline__ T identity(int op)
{
    return op == 2 ? lowest<T>() : op == 3 ? highest<T>() : T(0);
}

template <typename T> __device__ void axpbyz(const T* x, const T* y, T* z, T a, T b, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = a * x[i] + b * y[i];
}
template <typename T> __device__ void axpbz(const T* x, T* z, T a, T b, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = a * x[i] + b;
}
template <typename T> __device__ void mul(const T* x, const T* y, T* z, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = x[i] * y[i];
}
template <typename T> __device__ void div(const T* x, const T* y, T* z, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = x[i] / y[i];
}
template <typename T> __device__ void rdiv(const T* x, T* z, T a, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = a / x[i];
}
template <typename T> __device__ void absval(const T* x, T* z, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = vabs(x[i]);
}
template <typename T> __device__ void cmp(const T* x, const T* y, T* z, int op, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = compare(op, x[i], y[i]);
}
template <typename T> __device__ void cmps(const T* x, T* z, T b, int op, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = compare(op, x[i], b);
}
template <typename T> __device__ void maxmin(const T* x, const T* y, T* z, int isMax, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = isMax ? vmax(x[i], y[i]) : vmin(x[i], y[i]);
}
template <typename T> __device__ void ifpos(const T* c, const T* a, const T* b, T* z, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = c[i] > T(0) ? a[i] : b[i];
}
template <typename T> __device__ void fill(T* z, T v, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = v;
}
template <typename T> __device__ void arange(T* z, T start, T step, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = start + static_cast<T>(i) * step;
}

// op: 0 sum of x, 1 sum of x * y (dot), 2 max, 3 min. Each block reduces a grid-strided share
// through a fixed shared-memory tree and writes partial[blockIdx.x].
template <typename T> __device__ void reduce(const T* x, const T* y, T* partial, int op, long long n)
{
    __shared__ T buf[kBlock];
    T acc = identity<T>(op);
    for (long long i = first(); i < n; i += stride()) {
        acc = combine(op, acc, op == 1 ? x[i] * y[i] : x[i]);
    }
    buf[threadIdx.x] = acc;
    __syncthreads();
    for (int half = kBlock / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) buf[threadIdx.x] = combine(op, buf[threadIdx.x], buf[threadIdx.x + half]);
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

template <typename A, typename B> __device__ __forceinline__ B cast(A a) { return static_cast<B>(a); }
template <> __device__ __forceinline__ __half cast<float, __half>(float a) { return __float2half_rn(a); }
template <> __device__ __forceinline__ float cast<__half, float>(__half a) { return __half2float(a); }
// float -> int truncates toward zero as numpy's astype does; out-of-range values are undefined
// there too

template <typename A, typename B> __device__ void convert(const A* x, B* z, long long n)
{
    for (long long i = first(); i < n; i += stride()) z[i] = cast<A, B>(x[i]);
}

}  // namespace ew

extern "C" __global__ void ew_axpbyz_f32(const float* x, const float* y, float* z, float a, float b, long long n) { ew::axpbyz(x, y, z, a, b, n); }
extern "C" __global__ void ew_axpbz_f32(const float* x, float* z, float a, float b, long long n) { ew::axpbz(x, z, a, b, n); }
extern "C" __global__ void ew_mul_f32(const float* x, const float* y, float* z, long long n) { ew::mul(x, y, z, n); }
extern "C" __global__ void ew_div_f32(const float* x, const float* y, float* z, long long n) { ew::div(x, y, z, n); }
extern "C" __global__ void ew_rdiv_f32(const float* x, float* z, float a, long long n) { ew::rdiv(x, z, a, n); }
extern "C" __global__ void ew_abs_f32(const float* x, float* z, long long n) { ew::absval(x, z, n); }
extern "C" __global__ void ew_cmp_f32(const float* x, const float* y, float* z, int op, long long n) { ew::cmp(x, y, z, op, n); }
extern "C" __global__ void ew_cmps_f32(const float* x, float* z, float b, int op, long long n) { ew::cmps(x, z, b, op, n); }
extern "C" __global__ void ew_maxmin_f32(const float* x, const float* y, float* z, int isMax, long long n) { ew::maxmin(x, y, z, isMax, n); }
extern "C" __global__ void ew_ifpos_f32(const float* c, const float* a, const float* b, float* z, long long n) { ew::ifpos(c, a, b, z, n); }
extern "C" __global__ void ew_fill_f32(float* z, float v, long long n) { ew::fill(z, v, n); }
extern "C" __global__ void ew_arange_f32(float* z, float start, float step, long long n) { ew::arange(z, start, step, n); }
extern "C" __global__ void ew_reduce_f32(const float* x, const float* y, float* partial, int op, long long n) { ew::reduce(x, y, partial, op, n); }
extern "C" __global__ void ew_axpbyz_i32(const int* x, const int* y, int* z, int a, int b, long long n) { ew::axpbyz(x, y, z, a, b, n); }
extern "C" __global__ void ew_axpbz_i32(const int* x, int* z, int a, int b, long long n) { ew::axpbz(x, z, a, b, n); }
extern "C" __global__ void ew_mul_i32(const int* x, const int* y, int* z, long long n) { ew::mul(x, y, z, n); }
extern "C" __global__ void ew_div_i32(const int* x, const int* y, int* z, long long n) { ew::div(x, y, z, n); }
extern "C" __global__ void ew_rdiv_i32(const int* x, int* z, int a, long long n) { ew::rdiv(x, z, a, n); }
extern "C" __global__ void ew_abs_i32(const int* x, int* z, long long n) { ew::absval(x, z, n); }
extern "C" __global__ void ew_cmp_i32(const int* x, const int* y, int* z, int op, long long n) { ew::cmp(x, y, z, op, n); }
extern "C" __global__ void ew_cmps_i32(const int* x, int* z, int b, int op, long long n) { ew::cmps(x, z, b, op, n); }
extern "C" __global__ void ew_maxmin_i32(const int* x, const int* y, int* z, int isMax, long long n) { ew::maxmin(x, y, z, isMax, n); }
extern "C" __global__ void ew_ifpos_i32(const int* c, const int* a, const int* b, int* z, long long n) { ew::ifpos(c, a, b, z, n); }
extern "C" __global__ void ew_fill_i32(int* z, int v, long long n) { ew::fill(z, v, n); }
extern "C" __global__ void ew_arange_i32(int* z, int start, int step, long long n) { ew::arange(z, start, step, n); }
extern "C" __global__ void ew_reduce_i32(const int* x, const int* y, int* partial, int op, long long n) { ew::reduce(x, y, partial, op, n); }
extern "C" __global__ void ew_pow_f32(const float* x, const float* y, float* z, long long n) { for (long long i = ew::first(); i < n; i += ew::stride()) z[i] = powf(x[i], y[i]); }
extern "C" __global__ void ew_pows_f32(const float* x, float* z, float b, long long n) { for (long long i = ew::first(); i < n; i += ew::stride()) z[i] = powf(x[i], b); }
extern "C" __global__ void ew_rpow_f32(const float* x, float* z, float a, long long n) { for (long long i = ew::first(); i < n; i += ew::stride()) z[i] = powf(a, x[i]); }
extern "C" __global__ void ew_convert_f32_i32(const float* x, int* z, long long n) { ew::convert<float, int>(x, z, n); }
extern "C" __global__ void ew_convert_f32_f16(const float* x, __half* z, long long n) { ew::convert<float, __half>(x, z, n); }
extern "C" __global__ void ew_convert_i32_f32(const int* x, float* z, long long n) { ew::convert<int, float>(x, z, n); }
extern "C" __global__ void ew_convert_f16_f32(const __half* x, float* z, long long n) { ew::convert<__half, float>(x, z, n); }
