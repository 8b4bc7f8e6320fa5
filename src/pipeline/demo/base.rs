//! The base model: the world's tiny checkpoint, made from nothing, pretrained to answer questions about pictures and
//! videos by first saying what it sees ("one red circle. yes.") before the judge and the policy are fine-tuned from
//! it. A model that has never been asked to say what it sees learns the answers' priors and does not find the
//! picture behind them (measured: BENCHMARKS.md); LLaVA's models are pretrained on captions for the same reason
//! before they learn instructions.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::DemoConfig;
use crate::pipeline::world::{DemoFiles, FRAMES};
use crate::runtime::Device;
use crate::train::run::{latest_checkpoint, TrainOptions};
use crate::train::sft::SftRun;
use crate::Result;

/// Pretrains (or continues, from its latest checkpoint) the base model of `files` on its described answers under
/// `out`; `on_step(done, total)` as it trains. The pretrained checkpoint, or `None` when `stop` ended the training
/// (run again to continue; a finished run is not redone).
pub fn pretrain_base(
    config: &DemoConfig,
    files: &DemoFiles,
    out: &Path,
    stop: &AtomicBool,
    on_step: impl FnMut(usize, usize),
) -> Result<Option<PathBuf>> {
    let train = config.base_training.options("base_training", Device::Cpu)?;
    fine_tune(files, &files.base, &files.base_answers, out, train, stop, on_step)
}

/// Fine-tunes `model` on the world's conversations in `data` under `out` with `train`, continuing from the latest
/// checkpoint there; the final checkpoint, or `None` when `stop` ended the training.
pub(super) fn fine_tune(
    files: &DemoFiles,
    model: &Path,
    data: &Path,
    out: &Path,
    mut train: TrainOptions,
    stop: &AtomicBool,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Option<PathBuf>> {
    train.resume = latest_checkpoint(out).is_some();
    let run = SftRun {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        train,
        media_folder: Some(files.dir.clone()),
        video_frames: FRAMES,
        eval: None,
        eval_bench: None,
        eval_every: 0,
        data_parallel: 1,
    };
    let outcome = run.run(stop, |m, total| on_step(m.step as usize, total))?;
    Ok((!outcome.interrupted).then_some(outcome.checkpoint))
}
