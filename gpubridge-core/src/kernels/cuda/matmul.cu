// kernels/matrix/multiply: row-major C[m x n] = A[m x k] * B[k x n], 16 x 16 shared-memory tiles.
// Used where cuBLAS is not loaded; the CUDA backend prefers cuBLAS for this kernel.
#define GB_TILE 16
extern "C" __global__ void matmul_f32(const float* __restrict__ a,
                                      const float* __restrict__ b,
                                      float* __restrict__ c,
                                      unsigned int m,
                                      unsigned int k,
                                      unsigned int n) {
    __shared__ float as[GB_TILE][GB_TILE];
    __shared__ float bs[GB_TILE][GB_TILE + 1];
    const unsigned int tx = threadIdx.x;
    const unsigned int ty = threadIdx.y;
    const unsigned int row = blockIdx.y * GB_TILE + ty;
    const unsigned int col = blockIdx.x * GB_TILE + tx;
    float acc = 0.0f;
    for (unsigned int t = 0; t < k; t += GB_TILE) {
        as[ty][tx] = (row < m && t + tx < k) ? a[(size_t)row * k + t + tx] : 0.0f;
        bs[ty][tx] = (t + ty < k && col < n) ? b[(size_t)(t + ty) * n + col] : 0.0f;
        __syncthreads();
#pragma unroll
        for (unsigned int j = 0; j < GB_TILE; ++j) {
            acc = fmaf(as[ty][j], bs[j][tx], acc);
        }
        __syncthreads();
    }
    if (row < m && col < n) {
        c[(size_t)row * n + col] = acc;
    }
}
