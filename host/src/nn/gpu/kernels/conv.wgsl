// Convolution as an implicit matrix product, NC(D)HW input, O I/g (D)HW kernel, with groups,
// strides, dilations and explicit padding (1-D and 2-D run as 3-D with unit leading axes).
// Per batch item and group: Y[o, q] = bias[o] + sum_r W[o, r] * X[r, q], where r walks the
// group's input channels and the kernel window and q the output positions; X is read from the
// input on the fly (zero in the padding). Tiles as in matmul.wgsl: 64 output channels x 64
// output positions per workgroup, 4x4 per invocation, r stepped 16 at a time.
// p: [n_out, N, C, O, groups, D, H, W, OD, OH, OW, KD, KH, KW,
//     stride[3], dilation[3], pad_before[3], bias_stride, epilogue (at 24)]

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> extra: array<f32>;
@group(0) @binding(5) var<storage, read> p: array<u32>;

const E: u32 = 24u;

var<workgroup> tile_w: array<f32, 1024>;
var<workgroup> tile_x: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c_len = p[2];
    let o_len = p[3];
    let groups = p[4];
    let d_len = i32(p[5]);
    let h_len = i32(p[6]);
    let w_len = i32(p[7]);
    let od_len = p[8];
    let oh_len = p[9];
    let ow_len = p[10];
    let kd_len = p[11];
    let kh_len = p[12];
    let kw_len = p[13];
    let c_per_group = c_len / groups;
    let o_per_group = o_len / groups;
    let window = kd_len * kh_len * kw_len;
    let r_len = c_per_group * window;
    let q_len = od_len * oh_len * ow_len;
    let n = wg.z / groups;
    let g = wg.z % groups;
    let o0 = wg.y * 64u;
    let q0 = wg.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var r0 = 0u; r0 < r_len; r0 += 16u) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            // Weights: 64 output channels x 16 of r.
            let wo = e / 16u;
            let wr = e % 16u;
            var vw = 0.0;
            if (o0 + wo < o_per_group && r0 + wr < r_len) {
                vw = w[(g * o_per_group + o0 + wo) * r_len + r0 + wr];
            }
            tile_w[wr * 64u + wo] = vw;
            // Input patches: 16 of r x 64 output positions.
            let xr = e / 64u;
            let xq = e % 64u;
            var vx = 0.0;
            let r = r0 + xr;
            let q = q0 + xq;
            if (r < r_len && q < q_len) {
                let c = r / window;
                let k = r % window;
                let kw = k % kw_len;
                let kh = (k / kw_len) % kh_len;
                let kd = k / (kw_len * kh_len);
                let ow = q % ow_len;
                let oh = (q / ow_len) % oh_len;
                let od = q / (ow_len * oh_len);
                let id = i32(od * p[14] + kd * p[17]) - i32(p[20]);
                let ih = i32(oh * p[15] + kh * p[18]) - i32(p[21]);
                let iw = i32(ow * p[16] + kw * p[19]) - i32(p[22]);
                if (id >= 0 && id < d_len && ih >= 0 && ih < h_len && iw >= 0 && iw < w_len) {
                    let channel = n * c_len + g * c_per_group + c;
                    vx = x[((channel * u32(d_len) + u32(id)) * u32(h_len) + u32(ih)) * u32(w_len) + u32(iw)];
                }
            }
            tile_x[xr * 64u + xq] = vx;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            var wv: array<f32, 4>;
            var xv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                wv[i] = tile_w[k * 64u + lid.y * 4u + i];
                xv[i] = tile_x[k * 64u + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += wv[i] * xv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let o = o0 + lid.y * 4u + i;
        if (o >= o_per_group) {
            continue;
        }
        let channel = g * o_per_group + o;
        let b = bias[channel * p[23]];
        for (var j = 0u; j < 4u; j++) {
            let q = q0 + lid.x * 4u + j;
            if (q < q_len) {
                let at = (n * o_len + channel) * q_len + q;
                y[at] = epilogue(acc[i * 4u + j] + b, at);
            }
        }
    }
}
