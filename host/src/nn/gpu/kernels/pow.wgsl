// Shared by the unary and binary kernels (compiled after this text, kernels/mod.rs).

// x^e for any sign of x when e is an integer (WGSL's pow is undefined for x < 0).
fn pow_(b: f32, e: f32) -> f32 {
    if (b >= 0.0 || e != floor(e)) {
        if (b == 0.0 && e == 0.0) { return 1.0; }
        return pow(b, e);
    }
    let m = pow(-b, e);
    if (abs(e % 2.0) == 1.0) { return -m; }
    return m;
}
