// kernels/vector/add: out[i] = a[i] + b[i] over the concatenation of every pair in the batch.
struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

@compute @workgroup_size(256)
fn vector_add(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    var i = gid.x;
    loop {
        if (i >= params.n) {
            break;
        }
        out[i] = a[i] + b[i];
        // Stop before the index wraps around.
        if (params.n - i <= stride) {
            break;
        }
        i = i + stride;
    }
}
