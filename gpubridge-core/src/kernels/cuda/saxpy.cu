// kernels/blas/saxpy: out = alpha * x + y per item, fused multiply-add. Items are concatenated;
// item s spans [offsets[s], offsets[s + 1]) and has its own alpha[s]. blockIdx.y walks the items,
// blockIdx.x the elements of one item.
extern "C" __global__ void saxpy(const float* __restrict__ alpha,
                                 const float* __restrict__ x,
                                 const float* __restrict__ y,
                                 float* __restrict__ out,
                                 const unsigned long long* __restrict__ offsets,
                                 unsigned int segments) {
    for (unsigned int s = blockIdx.y; s < segments; s += gridDim.y) {
        const float a = alpha[s];
        const unsigned long long end = offsets[s + 1];
        const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
        for (unsigned long long i = offsets[s] + (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
             i < end; i += stride) {
            out[i] = fmaf(a, x[i], y[i]);
        }
    }
}
