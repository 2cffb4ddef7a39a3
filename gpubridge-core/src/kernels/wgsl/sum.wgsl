// kernels/sum: one f32 sum per vector; vector s spans [offsets[s], offsets[s + 1]) of `data`.
// One workgroup per vector (looping over vectors), tree reduction in workgroup memory.
struct Params {
    segments: u32,
}

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> params: Params;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn segmented_sum(@builtin(local_invocation_id) lid: vec3<u32>,
                 @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) groups: vec3<u32>) {
    var s = wid.x;
    loop {
        // Uniform across the workgroup, so barriers below are reached by all invocations.
        if (s >= params.segments) {
            break;
        }
        let begin = offsets[s];
        let end = offsets[s + 1u];
        var acc = 0.0;
        var i = begin + lid.x;
        while (i < end) {
            acc = acc + data[i];
            i = i + 256u;
        }
        partial[lid.x] = acc;
        workgroupBarrier();
        var width = 128u;
        while (width > 0u) {
            if (lid.x < width) {
                partial[lid.x] = partial[lid.x] + partial[lid.x + width];
            }
            workgroupBarrier();
            width = width / 2u;
        }
        if (lid.x == 0u) {
            out[s] = partial[0];
        }
        workgroupBarrier();
        s = s + groups.x;
    }
}
