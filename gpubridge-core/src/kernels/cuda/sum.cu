// kernels/sum: one f32 sum per vector. The vectors are concatenated in `data`; vector s spans
// [offsets[s], offsets[s + 1]). One block per vector (grid-stride over vectors), warp shuffles then
// one shared-memory step to combine the warps.
extern "C" __global__ void segmented_sum(const float* __restrict__ data,
                                         const unsigned long long* __restrict__ offsets,
                                         float* __restrict__ out,
                                         unsigned int segments) {
    __shared__ float warp_sums[32];
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warp = threadIdx.x >> 5;
    const unsigned int warps = (blockDim.x + 31u) >> 5;
    for (unsigned int s = blockIdx.x; s < segments; s += gridDim.x) {
        const unsigned long long begin = offsets[s];
        const unsigned long long end = offsets[s + 1];
        float acc = 0.0f;
        for (unsigned long long i = begin + threadIdx.x; i < end; i += blockDim.x) {
            acc += data[i];
        }
        for (int o = 16; o > 0; o >>= 1) {
            acc += __shfl_down_sync(0xffffffffu, acc, o);
        }
        if (lane == 0) {
            warp_sums[warp] = acc;
        }
        __syncthreads();
        if (warp == 0) {
            float v = lane < warps ? warp_sums[lane] : 0.0f;
            for (int o = 16; o > 0; o >>= 1) {
                v += __shfl_down_sync(0xffffffffu, v, o);
            }
            if (lane == 0) {
                out[s] = v;
            }
        }
        __syncthreads();
    }
}

// The same for short vectors (the dynamic batcher's typical item): one warp per vector, so a
// block of 256 threads sums 8 vectors with no block-wide synchronisation.
extern "C" __global__ void segmented_sum_warp(const float* __restrict__ data,
                                              const unsigned long long* __restrict__ offsets,
                                              float* __restrict__ out,
                                              unsigned int segments) {
    const unsigned int lane = threadIdx.x & 31u;
    const unsigned int warps_per_block = blockDim.x >> 5;
    const unsigned long long first = (unsigned long long)blockIdx.x * warps_per_block + (threadIdx.x >> 5);
    const unsigned long long stride = (unsigned long long)gridDim.x * warps_per_block;
    for (unsigned long long s = first; s < segments; s += stride) {
        const unsigned long long begin = offsets[s];
        const unsigned long long end = offsets[s + 1];
        float acc = 0.0f;
        // Up to four loads in flight before the first add: when `data` is mapped host memory
        // (tiny batches run zero-copy) every load is a bus round trip, and four in flight cost
        // about one. A missing element adds 0, so the sums are those of the plain loop.
        for (unsigned long long i = begin + lane; i < end; i += 128u) {
            const float a = data[i];
            const float b = i + 32u < end ? data[i + 32u] : 0.0f;
            const float c = i + 64u < end ? data[i + 64u] : 0.0f;
            const float d = i + 96u < end ? data[i + 96u] : 0.0f;
            acc += a;
            acc += b;
            acc += c;
            acc += d;
        }
        for (int o = 16; o > 0; o >>= 1) {
            acc += __shfl_down_sync(0xffffffffu, acc, o);
        }
        if (lane == 0) {
            out[s] = acc;
        }
    }
}
