// Normalizations along one axis: softmax, log-softmax and RMS normalization. The tensor is
// seen as [outer, len, inner]; one invocation per (outer, inner) row.
// p: [rows, len, inner, op (0 softmax, 1 log-softmax, 2 rms norm), eps (f32 bits)]

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let r = gid.x + gid.y * groups.x * 64u;
    if (r >= p[0]) {
        return;
    }
    let len = p[1];
    let inner = p[2];
    let base = (r / inner) * len * inner + r % inner;
    if (p[3] == 2u) {
        var squares = 0.0;
        for (var k = 0u; k < len; k++) {
            let v = x[base + k * inner];
            squares += v * v;
        }
        let scale = inverseSqrt(squares / f32(len) + bitcast<f32>(p[4]));
        for (var k = 0u; k < len; k++) {
            y[base + k * inner] = x[base + k * inner] * scale;
        }
        return;
    }
    var m = -bitcast<f32>(0x7f800000u);
    for (var k = 0u; k < len; k++) {
        m = max(m, x[base + k * inner]);
    }
    var sum = 0.0;
    for (var k = 0u; k < len; k++) {
        sum += exp(x[base + k * inner] - m);
    }
    if (p[3] == 1u) {
        let shift = m + log(sum);
        for (var k = 0u; k < len; k++) {
            y[base + k * inner] = x[base + k * inner] - shift;
        }
    } else {
        for (var k = 0u; k < len; k++) {
            y[base + k * inner] = exp(x[base + k * inner] - m) / sum;
        }
    }
}
