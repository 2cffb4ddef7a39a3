// kernels/graph/connected_components: ECL-CC-style connected components over an edge list.
// `parent` holds one u32 per node; a node is a root when parent[v] == v, and parent[v] <= v always,
// so every tree's root is its smallest node and the final label of a node is the smallest node of
// its component, whatever the order in which threads ran. Three entry points, launched in order:
// cc_init (parent[v] = v), cc_hook once per chunk of edges (lock-free union with atomicCAS on
// roots, intermediate pointer jumping while finding them), cc_flatten (every node points at its
// root). Labels stay on the device between chunks, so a chunked edge list gives the labels of one
// pass. Reads and writes of `parent` outside the CAS are volatile: another thread may shorten a
// path at the same time, and only ever to an ancestor, which keeps every read correct.

// The root of v's tree, halving the path to it on the way up (each write replaces a parent by one
// of its ancestors, so racing writes cannot break a tree).
__device__ __forceinline__ unsigned int cc_root(volatile unsigned int* parent, unsigned int v) {
    unsigned int cur = parent[v];
    if (cur != v) {
        unsigned int next;
        unsigned int prev = v;
        while (cur > (next = parent[cur])) {
            parent[prev] = next;
            prev = cur;
            cur = next;
        }
    }
    return cur;
}

// cc_init and cc_flatten take the node count twice, so that every entry point has the same
// scalars as the WGSL form's (`count`, `nodes`).
extern "C" __global__ void cc_init(unsigned int* __restrict__ parent,
                                   unsigned int count,
                                   unsigned int nodes) {
    (void)nodes;
    const size_t stride = (size_t)blockDim.x * gridDim.x;
    for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < count; v += stride) {
        parent[v] = (unsigned int)v;
    }
}

// `edges` holds `count` (src, dst) pairs; pairs naming a node outside [0, nodes) are skipped (the
// kernel's validation rejects them before a plan is made), self-loops change nothing.
extern "C" __global__ void cc_hook(unsigned int* parent,
                                   const unsigned int* __restrict__ edges,
                                   unsigned int count,
                                   unsigned int nodes) {
    volatile unsigned int* p = parent;
    const size_t stride = (size_t)blockDim.x * gridDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        const unsigned int u = edges[2 * i];
        const unsigned int w = edges[2 * i + 1];
        if (u >= nodes || w >= nodes) {
            continue;
        }
        unsigned int a = cc_root(p, u);
        unsigned int b = cc_root(p, w);
        // Link the larger root under the smaller. A failed CAS means `hi` stopped being a root:
        // carry on from its new parent, which is smaller, so the loop ends.
        while (a != b) {
            const unsigned int lo = a < b ? a : b;
            const unsigned int hi = a < b ? b : a;
            const unsigned int seen = atomicCAS(parent + hi, hi, lo);
            if (seen == hi) {
                break;
            }
            a = lo;
            b = seen;
        }
    }
}

extern "C" __global__ void cc_flatten(unsigned int* parent,
                                      unsigned int count,
                                      unsigned int nodes) {
    (void)nodes;
    volatile unsigned int* p = parent;
    const size_t stride = (size_t)blockDim.x * gridDim.x;
    for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < count; v += stride) {
        const unsigned int first = p[v];
        unsigned int cur = first;
        unsigned int next;
        while (cur > (next = p[cur])) {
            cur = next;
        }
        if (cur != first) {
            p[v] = cur;
        }
    }
}
