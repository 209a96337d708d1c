// Strided copies: transposes, slices, strided and reversed slices, broadcasts, concatenation
// (one copy per input into its place) and constant padding. Over the copied shape, output
// axis d reads input position start[d] + k * step[d] of an axis with `extent[d]` positions
// and stride in_stride[d]; positions outside [0, extent) read `fill`. The output element is
// written at out_offset + sum of k * out_stride[d].
// p: [n, out_offset, fill (f32 bits), shape[6], start[6] (i32), step[6] (i32), extent[6],
//     in_stride[6], out_stride[6]]

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
    var at = 0u;
    var out = p[1];
    var inside = true;
    for (var d = 5; d >= 0; d--) {
        let size = p[3 + d];
        let k = rest % size;
        rest = rest / size;
        let position = bitcast<i32>(p[9 + d]) + i32(k) * bitcast<i32>(p[15 + d]);
        if (position < 0 || position >= i32(p[21 + d])) {
            inside = false;
        } else {
            at += u32(position) * p[27 + d];
        }
        out += k * p[33 + d];
    }
    var v = bitcast<f32>(p[2]);
    if (inside) {
        v = x[at];
    }
    y[out] = v;
}
