// Batched matrix product with arbitrary strides: C[z, m, n] = sum_k A[z, m, k] * B[z, k, n],
// in 16x16 tiles staged through workgroup memory. The batch index z splits over up to three
// batch axes, each with its own stride in A, B and C (0 where an input is broadcast).
// p: [M, N, K, batch1, batch2,
//     a_batch[3], a_m, a_k, b_batch[3], b_k, b_n, c_batch[3], c_m, c_n]

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

var<workgroup> tile_a: array<array<f32, 16>, 16>;
var<workgroup> tile_b: array<array<f32, 16>, 16>;

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_len = p[0];
    let n_len = p[1];
    let k_len = p[2];
    let z2 = wg.z % p[4];
    let z01 = wg.z / p[4];
    let z1 = z01 % p[3];
    let z0 = z01 / p[3];
    let a_base = z0 * p[5] + z1 * p[6] + z2 * p[7];
    let b_base = z0 * p[10] + z1 * p[11] + z2 * p[12];
    let c_base = z0 * p[15] + z1 * p[16] + z2 * p[17];
    let row = wg.y * 16u + lid.y;
    let col = wg.x * 16u + lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < k_len; k0 += 16u) {
        let ka = k0 + lid.x;
        var va = 0.0;
        if (row < m_len && ka < k_len) {
            va = a[a_base + row * p[8] + ka * p[9]];
        }
        tile_a[lid.y][lid.x] = va;
        let kb = k0 + lid.y;
        var vb = 0.0;
        if (kb < k_len && col < n_len) {
            vb = b[b_base + kb * p[13] + col * p[14]];
        }
        tile_b[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            acc += tile_a[lid.y][k] * tile_b[k][lid.x];
        }
        workgroupBarrier();
    }
    if (row < m_len && col < n_len) {
        c[c_base + row * p[18] + col * p[19]] = acc;
    }
}
