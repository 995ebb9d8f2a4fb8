// The CUDA kernels of charrnn: the GRU's gate arithmetic (training, forward and backward, and
// a fused per-character step for sampling), the output layer's softmax cross-entropy, Adam's
// in-place updates and the sampler's draw. Matrix products go to cuBLAS; these kernels do the
// elementwise and row-wise work around them. Compiled to PTX by build.rs.
//
// Layouts match src/ops/cells/gru.rs: gate order r, z, n; `gates` rows hold (r, z, n, W_hn h + b_hn).
// Every kernel works in f32.

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + __expf(-x)); }

__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, o));
    return x;
}

// One time step t of the forward pass, one thread per (row b, unit j).
// gh = h_prev · W_hhᵀ [B, 3H] (no bias); h_prev [B, H]; writes h_next [B, H], the batch-major
// output out[b, t, :] and, when `gates` is not null, this step's gates [B, 4H].
extern "C" __global__ void gru_gates_forward(
    int batch, int steps, int hidden, int t,
    const float* table, const unsigned* ids, const float* gh, const float* b_hh,
    const float* h_prev, float* h_next, float* gates, float* out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * hidden) return;
    int b = i / hidden, j = i % hidden, h3 = 3 * hidden;
    const float* x = table + (size_t)ids[b * steps + t] * h3;
    const float* g = gh + (size_t)b * h3;
    float r = sigmoidf(x[j] + g[j] + b_hh[j]);
    float z = sigmoidf(x[hidden + j] + g[hidden + j] + b_hh[hidden + j]);
    float ghn = g[2 * hidden + j] + b_hh[2 * hidden + j];
    float n = tanhf(x[2 * hidden + j] + r * ghn);
    float h = n + z * (h_prev[i] - n);
    h_next[i] = h;
    out[((size_t)b * steps + t) * hidden + j] = h;
    if (gates) {
        float* s = gates + (size_t)b * 4 * hidden;
        s[j] = r;
        s[hidden + j] = z;
        s[2 * hidden + j] = n;
        s[3 * hidden + j] = ghn;
    }
}

// One time step t of the backward pass, one thread per (b, j). On entry dh holds the gradient
// reaching h_t through the recurrence; grad_out is dL/dh for every output [B, T, H]. Writes
// this step's dL/d(W_hh h + b_hh) to dgh [B, 3H], the input-projection gradient to row
// b·T + t of dx [B·T, 3H], and leaves dh_t ⊙ z in dh (the part of dL/dh_prev that bypasses
// W_hh; the caller adds dgh · W_hh).
extern "C" __global__ void gru_gates_backward(
    int batch, int steps, int hidden, int t,
    const float* grad_out, const float* gates, const float* h_prev,
    float* dh, float* dgh, float* dx)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= batch * hidden) return;
    int b = i / hidden, j = i % hidden;
    size_t row = (size_t)b * steps + t;
    const float* s = gates + (size_t)b * 4 * hidden;
    float r = s[j], z = s[hidden + j], n = s[2 * hidden + j], ghn = s[3 * hidden + j];
    float d = dh[i] + grad_out[row * hidden + j];
    float dn = d * (1.0f - z) * (1.0f - n * n);
    float dz = d * (h_prev[i] - n) * z * (1.0f - z);
    float dr = dn * ghn * r * (1.0f - r);
    float* x = dx + row * 3 * hidden;
    x[j] = dr;
    x[hidden + j] = dz;
    x[2 * hidden + j] = dn;
    float* g = dgh + (size_t)b * 3 * hidden;
    g[j] = dr;
    g[hidden + j] = dz;
    g[2 * hidden + j] = dn * r;
    dh[i] = d * z;
}

// out[v, i] = 1 where ids[i] == v: the scatter of row gradients into a V-row table becomes
// one (deterministic) matrix product.
extern "C" __global__ void one_hot(int n, int vocab, const unsigned* ids, float* out) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n * vocab) return;
    int v = k / n, i = k % n;
    out[k] = ids[i] == (unsigned)v ? 1.0f : 0.0f;
}

extern "C" __global__ void copy(int n, const float* src, float* dst) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) dst[k] = src[k];
}

extern "C" __global__ void fill(int n, float value, float* out) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) out[k] = value;
}

// SplitMix64's output function, as src/model/mod.rs has it.
__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
    unsigned long long z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The inverted-dropout mask of src/model/mod.rs, made where it is used: element i is 0 when the
// top 32 bits of splitmix64(base ^ (first + i)) fall below `threshold`, else `keep` (bit for
// bit the CPU's mask; `first` places it in a larger tensor's).
extern "C" __global__ void dropout_mask(
    unsigned long long n, unsigned long long first, unsigned long long base, unsigned long long threshold,
    float keep, float* out)
{
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (splitmix64(base ^ (first + i)) >> 32) < threshold ? 0.0f : keep;
}

// Row-wise: logits + bias → softmax probabilities in place, and each row's cross-entropy
// against its target. One warp per row.
extern "C" __global__ void softmax_cross_entropy(
    int rows, int vocab, const float* bias, const unsigned* targets, float* logits, float* row_loss)
{
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float* l = logits + (size_t)row * vocab;
    float m = -INFINITY;
    for (int v = lane; v < vocab; v += 32) {
        float x = l[v] + bias[v];
        l[v] = x;
        m = fmaxf(m, x);
    }
    m = warp_max(m);
    __syncwarp();  // the other lanes' biased logits are visible from here
    float target = l[targets[row]];
    __syncwarp();  // every lane has read it before any lane overwrites it
    float sum = 0.0f;
    for (int v = lane; v < vocab; v += 32) {
        float e = __expf(l[v] - m);
        l[v] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    for (int v = lane; v < vocab; v += 32) l[v] /= sum;
    // (max − target) first: with logits near ±3e38, max + log(sum) would lose log(sum).
    if (lane == 0) row_loss[row] = (m - target) + logf(sum);
}

// out[0] = scale · Σ x, in one block, in a fixed order (so results repeat exactly).
extern "C" __global__ void sum_scaled(int n, const float* x, float scale, float* out) {
    __shared__ float part[1024];
    float s = 0.0f;
    for (int k = threadIdx.x; k < n; k += blockDim.x) s += x[k];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = part[0] * scale;
}

// dL/dlogits = (softmax − one-hot) · g / N, in place over the probabilities; g is the
// incoming gradient of the mean loss (a one-element device buffer).
extern "C" __global__ void cross_entropy_grad(
    int rows, int vocab, const unsigned* targets, const float* g, float* probs)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= rows * vocab) return;
    int row = k / vocab, v = k % vocab;
    float p = probs[k] - (targets[row] == (unsigned)v ? 1.0f : 0.0f);
    probs[k] = p * (g[0] / (float)rows);
}

// Adam, as in src/optim.rs: m ← β·m + (1 − β)·x with x = s·g, or (s·g)² for the second moment.
extern "C" __global__ void adam_moment(int n, float beta, float scale, int square, float* m, const float* g) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float x = g[k] * scale;
    m[k] = beta * m[k] + (1.0f - beta) * (square ? x * x : x);
}

// w ← decay·w − α·m / (√v + ε)
extern "C" __global__ void adam_step(
    int n, float alpha, float decay, float epsilon, float* w, const float* m, const float* v)
{
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    w[k] = decay * w[k] - alpha * m[k] / (sqrtf(v[k]) + epsilon);
}

// ---- Sampling: one kernel per layer and one for the draw, per character ----

// One GRU step for `batch` sequences, one warp per unit j: the three recurrent dot products
// (rows j, H + j, 2H + j of W_hh) and, for layers above the first, the three input ones, then
// the gates. Layer 0 (`below` null) takes its input projection from row ids[b] of the table.
extern "C" __global__ void gru_sample_step(
    int batch, int hidden, const float* table, const unsigned* ids,
    const float* below, const float* w_ih, const float* b_ih,
    const float* w_hh, const float* b_hh, const float* h_prev, float* h_next)
{
    int j = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (j >= hidden) return;
    const float* wr = w_hh + (size_t)j * hidden;
    const float* wz = w_hh + (size_t)(hidden + j) * hidden;
    const float* wn = w_hh + (size_t)(2 * hidden + j) * hidden;
    for (int b = 0; b < batch; ++b) {
        const float* h = h_prev + (size_t)b * hidden;
        float ar = 0.0f, az = 0.0f, an = 0.0f, xr = 0.0f, xz = 0.0f, xn = 0.0f;
        for (int k = lane; k < hidden; k += 32) {
            float hk = h[k];
            ar += wr[k] * hk;
            az += wz[k] * hk;
            an += wn[k] * hk;
        }
        if (below) {
            const float* x = below + (size_t)b * hidden;
            const float* ur = w_ih + (size_t)j * hidden;
            const float* uz = w_ih + (size_t)(hidden + j) * hidden;
            const float* un = w_ih + (size_t)(2 * hidden + j) * hidden;
            for (int k = lane; k < hidden; k += 32) {
                float xk = x[k];
                xr += ur[k] * xk;
                xz += uz[k] * xk;
                xn += un[k] * xk;
            }
        }
        ar = warp_sum(ar);
        az = warp_sum(az);
        an = warp_sum(an);
        xr = warp_sum(xr);
        xz = warp_sum(xz);
        xn = warp_sum(xn);
        if (lane == 0) {
            if (below) {
                xr += b_ih[j];
                xz += b_ih[hidden + j];
                xn += b_ih[2 * hidden + j];
            } else {
                const float* x = table + (size_t)ids[b] * 3 * hidden;
                xr = x[j];
                xz = x[hidden + j];
                xn = x[2 * hidden + j];
            }
            float r = sigmoidf(xr + ar + b_hh[j]);
            float z = sigmoidf(xz + az + b_hh[hidden + j]);
            float n = tanhf(xn + r * (an + b_hh[2 * hidden + j]));
            h_next[(size_t)b * hidden + j] = n + z * (h[j] - n);
        }
    }
}

// The output layer and the draw for sequence b = blockIdx.x, as src/model/sample.rs's Picker does
// it: weights exp((l − max)/T); with top-k or top-p, candidates by falling weight (ties: lower
// id first), the k best, then the shortest prefix whose mass reaches p; the draw walks the
// candidates with u·total. `uniform` holds one u per sequence; temperature 0 is argmax; top_k
// 0 and a negative top_p mean no such cut. The
// chosen id goes to ids[b] (the next input) and out[b]. Shared memory: 3·V words.
extern "C" __global__ void sample_draw(
    int hidden, int vocab, const float* w, const float* bias, const float* h,
    const float* uniform, float temperature, int top_k, float top_p,
    unsigned* ids, unsigned* out)
{
    extern __shared__ float shared[];
    float* logit = shared;
    float* sorted_w = shared + vocab;
    unsigned* sorted_id = (unsigned*)(shared + 2 * vocab);
    __shared__ float max_logit;
    int b = blockIdx.x, warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    const float* x = h + (size_t)b * hidden;
    for (int v = warp; v < vocab; v += warps) {
        const float* row = w + (size_t)v * hidden;
        float a = 0.0f;
        for (int k = lane; k < hidden; k += 32) a += row[k] * x[k];
        a = warp_sum(a);
        if (lane == 0) logit[v] = a + bias[v];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = -INFINITY;
        for (int v = 0; v < vocab; ++v) m = fmaxf(m, logit[v]);
        max_logit = m;
    }
    __syncthreads();
    float m = max_logit;
    if (temperature == 0.0f) {
        if (threadIdx.x == 0) {
            unsigned best = 0;
            for (int v = 0; v < vocab; ++v) if (logit[v] == m) { best = v; break; }
            ids[b] = best;
            out[b] = best;
        }
        return;
    }
    bool filter = top_k > 0 || top_p >= 0.0f;
    for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
        float wv = __expf((logit[v] - m) / temperature);
        if (!filter) {
            sorted_w[v] = wv;
            sorted_id[v] = v;
        } else {
            logit[v] = wv;  // weights replace logits once every thread has read m
        }
    }
    __syncthreads();
    if (filter) {
        for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
            float wv = logit[v];
            int rank = 0;
            for (int u = 0; u < vocab; ++u) {
                float wu = logit[u];
                rank += (wu > wv) || (wu == wv && u < v);
            }
            sorted_w[rank] = wv;
            sorted_id[rank] = v;
        }
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    int keep = vocab;
    if (top_k > 0 && top_k < keep) keep = top_k;
    if (top_p >= 0.0f) {
        // The nucleus's total, as the CPU's picker sums it: in id order when every character
        // is kept, in rank order within the top k.
        float total = 0.0f;
        if (keep == vocab) {
            for (int v = 0; v < vocab; ++v) total += logit[v];
        } else {
            for (int k = 0; k < keep; ++k) total += sorted_w[k];
        }
        float running = 0.0f;
        int nucleus = 0;
        while (nucleus < keep && running < top_p * total) running += sorted_w[nucleus++];
        keep = nucleus > 0 ? nucleus : 1;
    }
    float total = 0.0f;
    for (int k = 0; k < keep; ++k) total += sorted_w[k];
    float u = uniform[b] * total;
    unsigned chosen = sorted_id[0];
    bool found = false;
    for (int k = 0; k < keep; ++k) {
        u -= sorted_w[k];
        if (u < 0.0f) { chosen = sorted_id[k]; found = true; break; }
    }
    if (!found) {
        for (int k = keep - 1; k >= 0; --k) if (sorted_w[k] > 0.0f) { chosen = sorted_id[k]; break; }
    }
    ids[b] = chosen;
    out[b] = chosen;
}
