// Max and sum/average pooling over up to three spatial axes (NC(D)HW).
// p: [n_out, D, H, W, OD, OH, OW, KD, KH, KW, stride[3], dilation[3], pad_before[3],
//     pad_after[3], op (0 max, 1 sum), normalize, count_include_pad]

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p[0]) {
        return;
    }
    let d_len = i32(p[1]);
    let h_len = i32(p[2]);
    let w_len = i32(p[3]);
    var rest = i;
    let ow = rest % p[6];
    rest = rest / p[6];
    let oh = rest % p[5];
    rest = rest / p[5];
    let od = rest % p[4];
    let nc = rest / p[4];
    let d0 = i32(od * p[10]) - i32(p[16]);
    let h0 = i32(oh * p[11]) - i32(p[17]);
    let w0 = i32(ow * p[12]) - i32(p[18]);
    let is_max = p[22] == 0u;
    var acc = 0.0;
    if (is_max) {
        acc = -3.4028235e38;
    }
    var valid = 0u;
    var padded = 0u;
    for (var kd = 0u; kd < p[7]; kd++) {
        let id = d0 + i32(kd * p[13]);
        let d_in = id >= 0 && id < d_len;
        let d_pad = id >= -i32(p[16]) && id < d_len + i32(p[19]);
        for (var kh = 0u; kh < p[8]; kh++) {
            let ih = h0 + i32(kh * p[14]);
            let h_in = ih >= 0 && ih < h_len;
            let h_pad = ih >= -i32(p[17]) && ih < h_len + i32(p[20]);
            for (var kw = 0u; kw < p[9]; kw++) {
                let iw = w0 + i32(kw * p[15]);
                let w_in = iw >= 0 && iw < w_len;
                let w_pad = iw >= -i32(p[18]) && iw < w_len + i32(p[21]);
                if (d_pad && h_pad && w_pad) {
                    padded += 1u;
                }
                if (d_in && h_in && w_in) {
                    valid += 1u;
                    let v = x[((nc * u32(d_len) + u32(id)) * u32(h_len) + u32(ih)) * u32(w_len) + u32(iw)];
                    if (is_max) {
                        acc = max(acc, v);
                    } else {
                        acc += v;
                    }
                }
            }
        }
    }
    if (!is_max && p[23] == 1u) {
        var count = valid;
        if (p[24] == 1u) {
            count = padded;
        }
        acc = acc / f32(max(count, 1u));
    }
    y[i] = acc;
}
