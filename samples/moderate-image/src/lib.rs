//! `moderate-image`: content moderation with Yahoo's open_nsfw (ResNet-50).
//!
//! Body: a JPEG or PNG image. The guest decodes it, resizes it to 256x256, crops the center
//! 224x224, converts it to BGR with the Caffe means subtracted, lays it out NHWC (all in the
//! sandbox), runs the tenant's `open-nsfw` model on the host through wasi:nn and answers
//! `{"probabilities": {"sfw": p, "nsfw": q}}`. A body that is not an image is a 400.

use infercell_guest::image::{Channels, Image, Layout};
use infercell_guest::nn::{Graph, Tensor};
use infercell_guest::{Error, Handler, Request, Response};
use serde_json::json;

/// open_nsfw's Caffe means, in RGB order, and the scale that makes `to_tensor` subtract them
/// from raw 0..255 values.
const MEAN_RGB: [f32; 3] = [123.0 / 255.0, 117.0 / 255.0, 104.0 / 255.0];
const RAW: [f32; 3] = [1.0 / 255.0; 3];

struct ModerateImage;

impl Handler for ModerateImage {
    fn handle(req: Request) -> Result<Response, Error> {
        if req.body.is_empty() {
            return Err(Error::BadRequest("expected a JPEG or PNG image as the request body".into()));
        }
        let pixels = Image::decode(&req.body)?.resize(256, 256).center_crop(224, 224).to_tensor(
            Layout::Nhwc,
            Channels::Bgr,
            MEAN_RGB,
            RAW,
        );
        let input = Tensor::from_f32(&[1, 224, 224, 3], &pixels)?;
        let graph = Graph::load_by_name("open-nsfw")?;
        let outputs = graph.run(&[("input:0", &input)])?;
        let scores = outputs.get("outputs")?.to_f32()?;
        let [sfw, nsfw] = scores[..] else {
            return Err(Error::Internal(format!("open-nsfw returned {} scores, expected 2", scores.len())));
        };
        Response::json(&json!({ "probabilities": { "sfw": sfw, "nsfw": nsfw } }))
    }
}

infercell_guest::export!(ModerateImage);
