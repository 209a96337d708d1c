// Direct convolution, NC(D)HW input, O I/g (D)HW kernel, with groups, strides, dilations and
// explicit padding; 1-D and 2-D convolutions run as 3-D ones with unit leading axes.
// One invocation per output element.
// p: [n_out, N, C, O, groups, D, H, W, OD, OH, OW, KD, KH, KW,
//     stride[3], dilation[3], pad_before[3], bias_stride, epilogue (at 24)]

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> extra: array<f32>;
@group(0) @binding(5) var<storage, read> p: array<u32>;

const E: u32 = 24u;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p[0]) {
        return;
    }
    let c_len = p[2];
    let o_len = p[3];
    let d_len = i32(p[5]);
    let h_len = i32(p[6]);
    let w_len = i32(p[7]);
    let kd_len = p[11];
    let kh_len = p[12];
    let kw_len = p[13];
    var rest = i;
    let ow = rest % p[10];
    rest = rest / p[10];
    let oh = rest % p[9];
    rest = rest / p[9];
    let od = rest % p[8];
    rest = rest / p[8];
    let o = rest % o_len;
    let n = rest / o_len;
    let c_per_group = c_len / p[4];
    let o_per_group = o_len / p[4];
    let g = o / o_per_group;
    var acc = bias[o * p[23]];
    let d0 = i32(od * p[14]) - i32(p[20]);
    let h0 = i32(oh * p[15]) - i32(p[21]);
    let w0 = i32(ow * p[16]) - i32(p[22]);
    for (var c = 0u; c < c_per_group; c++) {
        let x_channel = (n * c_len + g * c_per_group + c) * p[5];
        let w_channel = (o * c_per_group + c) * kd_len;
        for (var kd = 0u; kd < kd_len; kd++) {
            let id = d0 + i32(kd * p[17]);
            if (id < 0 || id >= d_len) { continue; }
            for (var kh = 0u; kh < kh_len; kh++) {
                let ih = h0 + i32(kh * p[18]);
                if (ih < 0 || ih >= h_len) { continue; }
                let x_row = ((x_channel + u32(id)) * u32(h_len) + u32(ih)) * u32(w_len);
                let w_row = ((w_channel + kd) * kh_len + kh) * kw_len;
                for (var kw = 0u; kw < kw_len; kw++) {
                    let iw = w0 + i32(kw * p[19]);
                    if (iw < 0 || iw >= w_len) { continue; }
                    acc += x[x_row + u32(iw)] * w[w_row + kw];
                }
            }
        }
    }
    y[i] = epilogue(acc, i);
}
