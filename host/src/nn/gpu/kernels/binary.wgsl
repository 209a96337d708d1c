// Element-wise functions of two tensors with broadcasting: c[i] = f(a[.], b[.]), where the
// output index is split over the output shape and each input reads with its own strides
// (0 along a broadcast axis).
// p: [n, op, shape[6], a_strides[6], b_strides[6]]

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p[0]) {
        return;
    }
    var rest = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 5; d >= 0; d--) {
        let size = p[2 + d];
        let k = rest % size;
        rest = rest / size;
        ia += k * p[8 + d];
        ib += k * p[14 + d];
    }
    let u = a[ia];
    let v = b[ib];
    var r: f32;
    switch p[1] {
        case 0u: { r = u + v; }
        case 1u: { r = u - v; }
        case 2u: { r = u * v; }
        case 3u: { r = u / v; }
        case 4u: { r = max(u, v); }
        case 5u: { r = min(u, v); }
        case 6u: { r = pow_(u, v); }
        default: { r = u; }
    }
    c[i] = r;
}
