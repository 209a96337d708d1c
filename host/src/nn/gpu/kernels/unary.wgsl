// Element-wise functions of one tensor: y[i] = f(x[i]).
// p: [n, op, alpha (f32 bits)]

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> p: array<u32>;

// Abramowitz and Stegun 7.1.26: absolute error at most 1.5e-7.
fn erf_(v: f32) -> f32 {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return sign(v) * (1.0 - poly * exp(-a * a));
}

// tanh without the overflow of exp for large |v|.
fn tanh_(v: f32) -> f32 {
    return tanh(clamp(v, -15.0, 15.0));
}

fn sigmoid_(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 256u;
    if (i >= p[0]) {
        return;
    }
    let v = x[i];
    let alpha = bitcast<f32>(p[2]);
    var r: f32;
    switch p[1] {
        case 0u: { r = abs(v); }
        case 1u: { r = -v; }
        case 2u: { r = exp(v); }
        case 3u: { r = log(v); }
        case 4u: { r = sqrt(v); }
        case 5u: { r = inverseSqrt(v); }
        case 6u: { r = 1.0 / v; }
        case 7u: { r = sigmoid_(v); }
        case 8u: { r = tanh_(v); }
        case 9u: { r = erf_(v); }
        case 10u: { r = 0.5 * v * (1.0 + erf_(v * 0.70710678118654752)); }
        case 11u: { r = 0.5 * v * (1.0 + tanh_(0.79788456080286536 * (v + 0.044715 * v * v * v))); }
        case 12u: { r = select(alpha * v, v, v >= 0.0); }
        case 13u: { r = ceil(v); }
        case 14u: { r = floor(v); }
        case 15u: { r = v * v; }
        case 16u: { r = v * clamp(v + 3.0, 0.0, 6.0) / 6.0; }
        case 17u: { r = sin(v); }
        case 18u: { r = cos(v); }
        case 19u: { r = v * sigmoid_(v); }
        case 20u: { r = pow_(v, alpha); }
        // Half away from zero, as Rust's f32::round (no `abs(v) + 0.5`, which rounds up
        // 0.49999997 and odd integers past 2^23).
        case 21u: {
            let t = trunc(v);
            r = select(t, t + sign(v), abs(v - t) >= 0.5);
        }
        case 22u: { r = round(v); }
        case 23u: { r = sign(v); }
        default: { r = v; }
    }
    y[i] = r;
}
