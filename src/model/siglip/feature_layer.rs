//! Which encoder layer's output a LLaVA model reads, and how many layers the tower must run for it.
//!
//! transformers (`LlavaOnevisionModel.get_image_features`) runs the tower with `output_hidden_states=True` and takes
//! `hidden_states[vision_feature_layer]`, where `hidden_states` has `num_hidden_layers + 1` entries: index 0 is the
//! embeddings (patches plus positions) and index `i` the output of encoder layer `i` (before `post_layernorm`,
//! which only `last_hidden_state` gets). A negative index counts from the end, as in Python. The Hugging Face
//! conversions of LLaVA-OneVision store a 26-layer tower (`vision_config.num_hidden_layers = 26`, the checkpoint's
//! last so400m layer already dropped) and keep the default `vision_feature_layer = -1`: 26 layers run.
//!
//! The original LLaVA-NeXT code (`llava/model/multimodal_encoder/siglip_encoder.py`, `SigLipVisionTower`) loads the
//! 27-layer so400m config, deletes the last encoder layer (`del encoder.layers[-1:]`) and the pooling head, and
//! returns `hidden_states[-1]` of the remaining 26: its `mm_vision_select_layer` (`-2` in the released configs) is
//! not read by that tower. Those checkpoints therefore hold encoder layers 0..=25 only, and the features are the
//! output of layer 26 of 27, which is also what `hidden_states[-2]` of the full tower selects:
//! `layers_for_feature_layer(27, -2) = 26`. Neither layout applies `post_layernorm` or the head.

use crate::{Error, Result};

/// How many encoder layers produce `hidden_states[feature_layer]` of a tower with `num_hidden_layers` layers
/// (0 means the embeddings themselves). An index outside `-(num_hidden_layers + 1) ..= num_hidden_layers` is an
/// error naming it.
pub fn layers_for_feature_layer(num_hidden_layers: usize, feature_layer: i64) -> Result<usize> {
    let states = num_hidden_layers as i64 + 1;
    let index = if feature_layer < 0 { states + feature_layer } else { feature_layer };
    if !(0..states).contains(&index) {
        return Err(Error::InvalidArgument(format!(
            "vision feature layer {feature_layer} is outside the {states} hidden states of a {num_hidden_layers}-layer \
             tower (valid: {} to {})",
            -states,
            states - 1
        )));
    }
    Ok(index as usize)
}

#[cfg(test)]
mod tests {
    use super::layers_for_feature_layer;

    #[test]
    fn negative_indices_count_from_the_last_hidden_state() {
        // The Hugging Face layout: 26 stored layers, vision_feature_layer = -1.
        assert_eq!(layers_for_feature_layer(26, -1).unwrap(), 26);
        // The original layout: the 27-layer so400m config, select layer -2.
        assert_eq!(layers_for_feature_layer(27, -2).unwrap(), 26);
        assert_eq!(layers_for_feature_layer(27, -28).unwrap(), 0);
        assert_eq!(layers_for_feature_layer(3, 0).unwrap(), 0);
        assert_eq!(layers_for_feature_layer(3, 3).unwrap(), 3);
        assert_eq!(layers_for_feature_layer(3, 2).unwrap(), 2);
    }

    #[test]
    fn indices_outside_the_hidden_states_are_refused_by_value() {
        for bad in [4, -5, i64::MAX, i64::MIN] {
            let err = layers_for_feature_layer(3, bad).unwrap_err().to_string();
            assert!(err.contains(&bad.to_string()) && err.contains("-4 to 3"), "{err}");
        }
    }
}
