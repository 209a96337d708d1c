// Gather along one axis: data seen as [outer, len, inner], indices (already checked to lie in
// [-len, len) for every gather that reads them) as a flat list; a negative index counts from
// the end: y[o, j, i] = data[o, indices[j] (+ len if negative), i].
// p: [n, len, count (of indices), inner]

@group(0) @binding(0) var<storage, read> data: array<f32>;
@group(0) @binding(1) var<storage, read> indices: array<i32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> p: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p[0]) {
        return;
    }
    let inner = p[3];
    let count = p[2];
    let within = i % inner;
    let j = (i / inner) % count;
    let o = i / (inner * count);
    var index = indices[j];
    if (index < 0) {
        index += i32(p[1]);
    }
    y[i] = data[(o * p[1] + u32(index)) * inner + within];
}
