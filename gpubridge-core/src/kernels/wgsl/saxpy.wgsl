// kernels/blas/saxpy: out = alpha * x + y per item; item s spans [offsets[s], offsets[s + 1]).
// workgroup_id.y walks the items, x the elements of one item.
struct Params {
    segments: u32,
}

@group(0) @binding(0) var<storage, read> alpha: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> offsets: array<u32>;
@group(0) @binding(5) var<uniform> params: Params;

@compute @workgroup_size(256)
fn saxpy(@builtin(local_invocation_id) lid: vec3<u32>,
         @builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    var s = wid.y;
    while (s < params.segments) {
        let a = alpha[s];
        let end = offsets[s + 1u];
        var i = offsets[s] + wid.x * 256u + lid.x;
        while (i < end) {
            out[i] = fma(a, x[i], y[i]);
            if (end - i <= stride) {
                break;
            }
            i = i + stride;
        }
        s = s + groups.y;
    }
}
