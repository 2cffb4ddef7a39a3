// kernels/graph/connected_components: ECL-CC-style connected components over an edge list (see
// the CUDA form for the algorithm). `parent[v] <= v` always and roots link under smaller roots,
// so each final label is the smallest node of its component. Every entry point loops over its
// range with a grid stride, so any count fits the workgroup limit.
struct Params {
    // Edges in this chunk (cc_hook) or nodes (cc_init, cc_flatten).
    count: u32,
    // Nodes (cc_hook's bound on endpoints).
    nodes: u32,
}

@group(0) @binding(0) var<storage, read_write> parent: array<atomic<u32>>;
@group(0) @binding(1) var<storage, read> edges: array<u32>;
// cc_init and cc_flatten bind no edges, so their scalars come right after `parent`; no entry
// point uses both this and `edges`.
@group(0) @binding(1) var<uniform> node_params: Params;
@group(0) @binding(2) var<uniform> edge_params: Params;

// The root of v's tree, halving the path on the way (each store replaces a parent by one of its
// ancestors, so racing stores cannot break a tree).
fn root(v: u32) -> u32 {
    var cur = atomicLoad(&parent[v]);
    if (cur == v) {
        return cur;
    }
    var prev = v;
    loop {
        let next = atomicLoad(&parent[cur]);
        if (next >= cur) {
            break;
        }
        atomicStore(&parent[prev], next);
        prev = cur;
        cur = next;
    }
    return cur;
}

@compute @workgroup_size(256)
fn cc_init(@builtin(global_invocation_id) gid: vec3<u32>,
           @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    var v = gid.x;
    while (v < node_params.count) {
        atomicStore(&parent[v], v);
        if (node_params.count - v <= stride) {
            break;
        }
        v = v + stride;
    }
}

@compute @workgroup_size(256)
fn cc_hook(@builtin(global_invocation_id) gid: vec3<u32>,
           @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    var i = gid.x;
    while (i < edge_params.count) {
        let u = edges[2u * i];
        let w = edges[2u * i + 1u];
        if (u < edge_params.nodes && w < edge_params.nodes) {
            var a = root(u);
            var b = root(w);
            // Link the larger root under the smaller; a failed exchange means `hi` stopped being
            // a root (or, the exchange being weak, failed spuriously): go on from what it holds.
            while (a != b) {
                let lo = min(a, b);
                let hi = max(a, b);
                let r = atomicCompareExchangeWeak(&parent[hi], hi, lo);
                if (r.exchanged) {
                    break;
                }
                a = lo;
                b = r.old_value;
            }
        }
        if (edge_params.count - i <= stride) {
            break;
        }
        i = i + stride;
    }
}

@compute @workgroup_size(256)
fn cc_flatten(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    var v = gid.x;
    while (v < node_params.count) {
        let first = atomicLoad(&parent[v]);
        var cur = first;
        loop {
            let next = atomicLoad(&parent[cur]);
            if (next >= cur) {
                break;
            }
            cur = next;
        }
        if (cur != first) {
            atomicStore(&parent[v], cur);
        }
        if (node_params.count - v <= stride) {
            break;
        }
        v = v + stride;
    }
}
