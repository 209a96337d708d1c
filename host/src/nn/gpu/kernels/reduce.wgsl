// Reductions over any set of axes: one invocation per output element walks the reduced axes.
// The output keeps the reduced axes with size 1.
// p: [n_out, op (0 sum, 1 max, 2 min, 3 prod, 4 mean of squares), kept_shape[6],
//     kept_strides[6], reduced_shape[6], reduced_strides[6], reduced_count]

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p[0]) {
        return;
    }
    var rest = i;
    var base = 0u;
    for (var d = 5; d >= 0; d--) {
        let size = p[2 + d];
        base += (rest % size) * p[8 + d];
        rest = rest / size;
    }
    let op = p[1];
    let count = p[26];
    var acc = 0.0;
    switch op {
        case 1u: { acc = -bitcast<f32>(0x7f800000u); }
        case 2u: { acc = bitcast<f32>(0x7f800000u); }
        case 3u: { acc = 1.0; }
        default: { acc = 0.0; }
    }
    for (var r = 0u; r < count; r++) {
        var at = base;
        var left = r;
        for (var d = 5; d >= 0; d--) {
            let size = p[14 + d];
            at += (left % size) * p[20 + d];
            left = left / size;
        }
        let v = x[at];
        switch op {
            case 1u: { acc = max(acc, v); }
            case 2u: { acc = min(acc, v); }
            case 3u: { acc = acc * v; }
            case 4u: { acc += v * v; }
            default: { acc += v; }
        }
    }
    if (op == 4u) {
        acc = acc / f32(count);
    }
    y[i] = acc;
}
