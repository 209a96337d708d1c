// Shared by the kernels that take an epilogue (matmul, conv, conv_direct): each declares
// `p` (its parameters), `extra` (the added value's buffer) and `E` (where the epilogue's
// parameters start), and is compiled after this text (kernels/mod.rs).
// Epilogue, fused from the nodes that followed this one (see plan.rs): at parameter E,
// [flags (1: add `extra`, 2: ReLU), layout of `extra` (1: the output's own shape, 2: a vector
// along one axis), that axis' length, the elements after it]. `extra` is read at the output
// element's position.
fn epilogue(v: f32, i: u32) -> f32 {
    let flags = p[E];
    var r = v;
    if ((flags & 1u) != 0u) {
        var at = i;
        if (p[E + 1u] == 2u) {
            at = (i / p[E + 3u]) % p[E + 2u];
        }
        r += extra[at];
    }
    if ((flags & 2u) != 0u) {
        r = max(r, 0.0);
    }
    return r;
}
