// Batched matrix product with arbitrary strides: C[z, m, n] = sum_k A[z, m, k] * B[z, k, n].
// Each workgroup computes a 64x64 tile of C, each invocation a 4x4 block of it, stepping
// through K 16 at a time with both operand tiles staged in workgroup memory. The batch index z
// splits over up to three batch axes, each with its own stride in A, B and C (0 where an input
// is broadcast).
// p: [M, N, K, batch1, batch2,
//     a_batch[3], a_m, a_k, b_batch[3], b_k, b_n, c_batch[3], c_m, c_n, epilogue (at 20)]

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> extra: array<f32>;
@group(0) @binding(4) var<storage, read> p: array<u32>;

const E: u32 = 20u;

// [k][m] and [k][n], 16 x 64 each.
var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

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
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < k_len; k0 += 16u) {
        for (var i = 0u; i < 4u; i++) {
            let e = tid + i * 256u;
            // A: 64 rows x 16 columns of K; consecutive invocations read consecutive k.
            let am = e / 16u;
            let ak = e % 16u;
            var va = 0.0;
            if (row0 + am < m_len && k0 + ak < k_len) {
                va = a[a_base + (row0 + am) * p[8] + (k0 + ak) * p[9]];
            }
            tile_a[ak * 64u + am] = va;
            // B: 16 rows of K x 64 columns; consecutive invocations read consecutive n.
            let bk = e / 64u;
            let bn = e % 64u;
            var vb = 0.0;
            if (k0 + bk < k_len && col0 + bn < n_len) {
                vb = b[b_base + (k0 + bk) * p[13] + (col0 + bn) * p[14]];
            }
            tile_b[bk * 64u + bn] = vb;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = tile_a[k * 64u + lid.y * 4u + i];
                bv[i] = tile_b[k * 64u + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < m_len && col < n_len) {
                let at = c_base + row * p[18] + col * p[19];
                c[at] = epilogue(acc[i * 4u + j], at);
            }
        }
    }
}
