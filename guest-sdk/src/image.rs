//! Image preprocessing in the sandbox (feature `image`): decode JPEG or PNG, resize, crop,
//! normalize, lay out as NCHW or NHWC. Preprocessing belongs to the guest: it is the tenant's
//! code, metered as guest time, and never runs with the host's privileges.
//!
//! ```
//! use infercell_guest::image::{Channels, Image, Layout};
//! # fn f(body: &[u8]) -> Result<Vec<f32>, infercell_guest::Error> {
//! let input = Image::decode(body)?             // 400 "not a JPEG or PNG image: ..." otherwise
//!     .resize_shorter_side(256)
//!     .center_crop(224, 224)
//!     .to_tensor(Layout::Nchw, Channels::Rgb, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
//! # Ok(input) }
//! ```

use image::imageops::FilterType;
use image::{ImageReader, RgbImage};

use crate::Error;

/// An 8-bit RGB image.
#[derive(Debug, Clone)]
pub struct Image(RgbImage);

/// Where the channel axis goes in the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[1, 3, height, width]` (PyTorch, most ONNX exports).
    Nchw,
    /// `[1, height, width, 3]` (TensorFlow, Caffe ports).
    Nhwc,
}

/// Channel order of the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    Rgb,
    Bgr,
}

impl Image {
    /// Decodes JPEG or PNG bytes (the format is sniffed); anything else is a `BadRequest`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let reader = ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::BadRequest(format!("not a JPEG or PNG image: {e}")))?;
        let image = reader.decode().map_err(|e| Error::BadRequest(format!("not a JPEG or PNG image: {e}")))?;
        Ok(Self(image.to_rgb8()))
    }

    /// An image from raw RGB8 pixels, row-major.
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self, Error> {
        RgbImage::from_raw(width, height, rgb)
            .map(Self)
            .ok_or_else(|| Error::BadRequest(format!("{width}x{height} RGB needs {} bytes", width * height * 3)))
    }

    pub fn width(&self) -> u32 {
        self.0.width()
    }

    pub fn height(&self) -> u32 {
        self.0.height()
    }

    /// Resized to exactly `width` x `height` (bilinear).
    pub fn resize(self, width: u32, height: u32) -> Self {
        Self(image::imageops::resize(&self.0, width.max(1), height.max(1), FilterType::Triangle))
    }

    /// Resized so that the shorter side is `side`, keeping the aspect ratio.
    pub fn resize_shorter_side(self, side: u32) -> Self {
        let (w, h) = (self.width().max(1), self.height().max(1));
        let (nw, nh) = if w <= h {
            (side, (u64::from(h) * u64::from(side) / u64::from(w)) as u32)
        } else {
            ((u64::from(w) * u64::from(side) / u64::from(h)) as u32, side)
        };
        self.resize(nw, nh)
    }

    /// The centered `width` x `height` region (clamped to the image).
    pub fn center_crop(self, width: u32, height: u32) -> Self {
        let (w, h) = (width.min(self.width()), height.min(self.height()));
        let (x, y) = ((self.width() - w) / 2, (self.height() - h) / 2);
        Self(image::imageops::crop_imm(&self.0, x, y, w, h).to_image())
    }

    /// The pixels as f32 in `layout` and channel `order`: `(value / 255 - mean) / std` per
    /// channel (means and stds given in RGB order). For Caffe-style models that subtract raw
    /// means, pass `mean = m / 255` and `std = 1 / 255`.
    pub fn to_tensor(&self, layout: Layout, order: Channels, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
        let (w, h) = (self.width() as usize, self.height() as usize);
        let mut out = vec![0.0f32; w * h * 3];
        for (x, y, pixel) in self.0.enumerate_pixels() {
            let (x, y) = (x as usize, y as usize);
            for rgb_channel in 0..3 {
                let value = (f32::from(pixel[rgb_channel]) / 255.0 - mean[rgb_channel]) / std[rgb_channel];
                let c = match order {
                    Channels::Rgb => rgb_channel,
                    Channels::Bgr => 2 - rgb_channel,
                };
                let index = match layout {
                    Layout::Nchw => c * h * w + y * w + x,
                    Layout::Nhwc => (y * w + x) * 3 + c,
                };
                out[index] = value;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 10) as u8, (y * 10) as u8, 200]));
        let mut bytes = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .expect("encoding a PNG in memory");
        bytes
    }

    #[test]
    fn decodes_resizes_crops_and_lays_out() {
        let image = Image::decode(&png(20, 10)).expect("a PNG decodes");
        assert_eq!((image.width(), image.height()), (20, 10));
        let image = image.resize_shorter_side(5);
        assert_eq!((image.width(), image.height()), (10, 5));
        let image = image.center_crop(4, 4);
        assert_eq!((image.width(), image.height()), (4, 4));

        let exact = Image::from_rgb(2, 1, vec![255, 0, 51, 0, 255, 102]).expect("raw pixels");
        let nchw = exact.to_tensor(Layout::Nchw, Channels::Rgb, [0.0; 3], [1.0; 3]);
        assert_eq!(nchw, vec![1.0, 0.0, 0.0, 1.0, 0.2, 0.4]);
        let nhwc_bgr = exact.to_tensor(Layout::Nhwc, Channels::Bgr, [0.0; 3], [1.0; 3]);
        assert_eq!(nhwc_bgr, vec![0.2, 0.0, 1.0, 0.4, 1.0, 0.0]);
        let normalized = exact.to_tensor(Layout::Nchw, Channels::Rgb, [0.5; 3], [0.5; 3]);
        assert_eq!(normalized[0], 1.0);
        assert_eq!(normalized[1], -1.0);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        match Image::decode(b"definitely not an image") {
            Err(Error::BadRequest(m)) => assert!(m.starts_with("not a JPEG or PNG image"), "{m}"),
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }
}
