//! Element-wise functions of one value (unary.wgsl): which of tract's element-wise ops the
//! unary kernel computes, by code.

use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;

/// The unary kernel's code for an element-wise op, and its parameter.
pub(super) fn unary_code(ew: &ElementWiseOp) -> Result<(u32, f32), String> {
    use tract_onnx::tract_core::ops::math::PowConst;
    use tract_onnx::tract_core::ops::nn::{GeluApproximate, LeakyRelu};
    let mini = &ew.0;
    if let Some(leaky) = mini.downcast_ref::<LeakyRelu>() {
        return Ok((12, leaky.alpha));
    }
    if let Some(pow) = mini.downcast_ref::<PowConst>() {
        return Ok((20, pow.exponent));
    }
    if let Some(gelu) = mini.downcast_ref::<GeluApproximate>() {
        return if gelu.fast_impl { Err("fast approximate GELU".into()) } else { Ok((11, 0.0)) };
    }
    let code = match mini.name().as_ref() {
        "Abs" => 0,
        "Neg" => 1,
        "Exp" => 2,
        "Ln" => 3,
        "Sqrt" => 4,
        "Rsqrt" => 5,
        "Recip" => 6,
        "Sigmoid" => 7,
        "Tanh" => 8,
        "Erf" => 9,
        "GeluExact" => 10,
        "Ceil" => 13,
        "Floor" => 14,
        "Square" => 15,
        "HardSwish" => 16,
        "Sin" => 17,
        "Cos" => 18,
        "Silu" => 19,
        "Round" => 21,
        "RoundHalfToEven" => 22,
        "Sign" => 23,
        other => return Err(format!("no GPU kernel for {other}")),
    };
    Ok((code, 0.0))
}
