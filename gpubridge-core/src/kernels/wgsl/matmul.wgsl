// kernels/matrix/multiply: row-major C[m x n] = A[m x k] * B[k x n], 16 x 16 workgroup tiles.
struct Params {
    m: u32,
    k: u32,
    n: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> a_tile: array<array<f32, 16>, 16>;
var<workgroup> b_tile: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16)
fn matmul_f32(@builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.y * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    var acc = 0.0;
    var t = 0u;
    while (t < params.k) {
        var av = 0.0;
        if (row < params.m && t + lid.x < params.k) {
            av = a[row * params.k + t + lid.x];
        }
        a_tile[lid.y][lid.x] = av;
        var bv = 0.0;
        if (t + lid.y < params.k && col < params.n) {
            bv = b[(t + lid.y) * params.n + col];
        }
        b_tile[lid.y][lid.x] = bv;
        workgroupBarrier();
        for (var j = 0u; j < 16u; j = j + 1u) {
            acc = fma(a_tile[lid.y][j], b_tile[j][lid.x], acc);
        }
        workgroupBarrier();
        t = t + 16u;
    }
    if (row < params.m && col < params.n) {
        c[row * params.n + col] = acc;
    }
}
