// Dense-network kernels (float32): bias add and bias gradient, activations, softmax cross-entropy
// and the optimizer updates. GEMM is not here: it goes to cuBLAS (backend/cublas.py).
// Compiles standalone with nvcc; kernels/dense/cuda.py compiles it once per process and launches
// the extern "C" entries. The contract is in kernels/dense/__init__.py.
//
// Elementwise entries use grid-stride loops with 64-bit indices, so any launch size covers any n.
// Reductions (bias gradient, softmax rows) combine partial results in a fixed order through shared
// memory, without atomics: repeated runs give bitwise equal results.

namespace dense {

constexpr int kBlock = 256;        // threads per block of every entry
constexpr int kColTile = 32;       // bias_grad: columns per block (one per lane)
constexpr int kRowGroups = kBlock / kColTile;

__device__ __forceinline__ long long global_index()
{
    return static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride()
{
    return static_cast<long long>(gridDim.x) * blockDim.x;
}

// Activation kinds, in the order of kernels/dense/__init__.py ACTIVATIONS. a and b are the
// kind's parameters: leakyRelu's slope (a), elu's alpha (a), clip's bounds [a, b].
enum Act { kRelu = 0, kSigmoid = 1, kTanh = 2, kLeakyRelu = 3, kElu = 4, kSoftPlus = 5, kClip = 6 };

__device__ __forceinline__ float act_forward(int kind, float x, float a, float b)
{
    switch (kind) {
    // NaN stays NaN (as on the CPU backend and in PyTorch): compare so that NaN takes the x branch
    case kRelu: return x <= 0.f ? 0.f : x;
    // 0.5 + 0.5 tanh(x / 2) is the logistic function without exp overflow for very negative x
    case kSigmoid: return fmaf(0.5f, tanhf(0.5f * x), 0.5f);
    case kTanh: return tanhf(x);
    case kLeakyRelu: return x > 0.f ? x : a * x;
    case kElu: return x > 0.f ? x : a * expm1f(x);
    // log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for large x, no cancellation
    case kSoftPlus: return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x)));
    default: return x != x ? x : fminf(fmaxf(x, a), b);  // fmaxf would turn NaN into a
    }
}

// The derivative written through the forward output y (as PuzzleLib's modules do, so backward
// needs only the saved output). Built with -fmad=false, 1 - y * y rounds the product and the
// difference separately, as the CPU backend's numpy does; fmaf(-y, y, 1) would be the fused form.
__device__ __forceinline__ float act_derivative(int kind, float y, float a, float b)
{
    switch (kind) {
    case kRelu: return y <= 0.f ? 0.f : 1.f;  // a NaN output passes its gradient, as PyTorch's
    case kSigmoid: return y * (1.f - y);
    case kTanh: return 1.f - y * y;
    case kLeakyRelu: return y > 0.f ? 1.f : a;
    case kElu: return y > 0.f ? 1.f : y + a;
    case kSoftPlus: return -expm1f(-y);
    default: return (y > a && y < b) ? 1.f : 0.f;
    }
}

// Tree reduction of kBlock values in shared memory; every thread returns the total.
// isMax selects max instead of sum. The pairing is fixed, so the result is too.
__device__ __forceinline__ float block_reduce(float* buf, float v, bool isMax)
{
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int half = kBlock / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) {
            const float other = buf[threadIdx.x + half];
            buf[threadIdx.x] = isMax ? fmaxf(buf[threadIdx.x], other) : buf[threadIdx.x] + other;
        }
        __syncthreads();
    }
    const float total = buf[0];
    __syncthreads();  // buf is reused by the caller's next reduction
    return total;
}

}  // namespace dense

// out[i, j] += bias[j] for an (rows, cols) out.
extern "C" __global__ void dense_add_bias(float* out, const float* bias, long long rows, int cols)
{
    const long long n = rows * cols;
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        out[i] += bias[i % cols];
    }
}

// out[j] = alpha * sum_i grad[i, j] + beta * out[j]. Grid: ceil(cols / 32) blocks of 256 threads;
// lane tx owns column (block * 32 + tx) and row group ty sums rows ty, ty + 8, ...; the 8 group
// sums are then added in order. beta == 0 overwrites out.
extern "C" __global__ void dense_bias_grad(const float* grad, float* out, long long rows, int cols, float alpha, float beta)
{
    __shared__ float part[dense::kRowGroups][dense::kColTile];
    const int tx = threadIdx.x % dense::kColTile;
    const int ty = threadIdx.x / dense::kColTile;
    const int col = blockIdx.x * dense::kColTile + tx;

    float s = 0.f;
    if (col < cols) {
        for (long long r = ty; r < rows; r += dense::kRowGroups) {
            s += grad[r * cols + col];
        }
    }
    part[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && col < cols) {
        float total = 0.f;
        for (int g = 0; g < dense::kRowGroups; ++g) {
            total += part[g][tx];
        }
        out[col] = beta == 0.f ? alpha * total : fmaf(alpha, total, beta * out[col]);
    }
}

extern "C" __global__ void dense_activation_forward(const float* x, float* y, long long n, int kind, float a, float b)
{
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        y[i] = dense::act_forward(kind, x[i], a, b);
    }
}

extern "C" __global__ void dense_activation_backward(const float* grad, const float* y, float* dx, long long n, int kind, float a, float b)
{
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        dx[i] = grad[i] * dense::act_derivative(kind, y[i], a, b);
    }
}

// Scores (batch, cols, spatial), labels (batch, spatial); one block per (sample, position) row,
// grid-stride over the batch * spatial rows; class j of a row sits at stride spatial.
// p = softmax over the classes; grad = w[j] (onehot(label) - p) / batch, the negative gradient
// (PuzzleLib's convention, weights as PuzzleLib applies them); losses[row] = -w[label] log p[label].
// weights == nullptr means all ones.
extern "C" __global__ void dense_softmax_cross_entropy(const float* scores, const int* labels, const float* weights, float* grad, float* losses, long long rows, int cols, long long spatial, long long batch)
{
    __shared__ float buf[dense::kBlock];
    const float invBatch = 1.f / static_cast<float>(batch);

    for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long offset = (row / spatial) * cols * spatial + row % spatial;
        const float* s = scores + offset;
        float* g = grad + offset;
        const int label = labels[row];

        float m = -INFINITY;
        for (int j = threadIdx.x; j < cols; j += dense::kBlock) {
            m = fmaxf(m, s[j * spatial]);
        }
        m = dense::block_reduce(buf, m, true);

        float z = 0.f;
        for (int j = threadIdx.x; j < cols; j += dense::kBlock) {
            z += expf(s[j * spatial] - m);
        }
        z = dense::block_reduce(buf, z, false);

        const float logz = logf(z);
        for (int j = threadIdx.x; j < cols; j += dense::kBlock) {
            const float p = expf(s[j * spatial] - m - logz);
            const float w = weights ? weights[j] : 1.f;
            g[j * spatial] = w * ((j == label ? 1.f : 0.f) - p) * invBatch;
        }
        if (threadIdx.x == 0) {
            const float w = weights ? weights[label] : 1.f;
            losses[row] = w * (logz - (s[label * spatial] - m));
        }
    }
}

// MSE: grad = (target - pred) * scale (the negative gradient of sum(d^2) * scale / 2);
// partial[block] = the block's sum of (target - pred)^2, merged in a fixed order (the host adds
// the partials).
extern "C" __global__ void dense_mse(const float* pred, const float* target, float* grad, float* partial, long long n, float scale)
{
    __shared__ float buf[dense::kBlock];
    float acc = 0.f;
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        const float d = target[i] - pred[i];
        grad[i] = d * scale;
        acc = fmaf(d, d, acc);
    }
    acc = dense::block_reduce(buf, acc, false);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = acc;
    }
}

// param += lr * grad (grad is the negative gradient: PuzzleLib's convention)
extern "C" __global__ void dense_sgd_update(float* param, const float* grad, long long n, float lr)
{
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        param[i] = fmaf(lr, grad[i], param[i]);
    }
}

// mom = momRate * mom + lr * grad; param += mom
extern "C" __global__ void dense_momentum_update(float* param, const float* grad, float* mom, long long n, float lr, float momRate)
{
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        const float m = fmaf(momRate, mom[i], lr * grad[i]);
        mom[i] = m;
        param[i] += m;
    }
}

// mg = beta1 mg + (1 - beta1) g; ms = beta2 ms + (1 - beta2) g^2; param += lr mg / (sqrt(ms) + eps)
extern "C" __global__ void dense_adam_update(float* param, const float* grad, float* mg, float* ms, long long n, float lr, float beta1, float beta2, float epsilon)
{
    for (long long i = dense::global_index(); i < n; i += dense::grid_stride()) {
        const float g = grad[i];
        const float a = fmaf(beta1, mg[i], (1.f - beta1) * g);
        const float b = fmaf(beta2, ms[i], (1.f - beta2) * g * g);
        mg[i] = a;
        ms[i] = b;
        param[i] += lr * a / (sqrtf(b) + epsilon);
    }
}
