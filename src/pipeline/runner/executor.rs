//! Runs one stage at a time with its record: skipped when its finished record matches, continued (`resume`) when
//! its unfinished record matches, otherwise started over in an emptied folder. The records chain (each names the
//! digest of the one before), so a changed input or option reruns its stage and every stage after it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::observer::{Observer, StageEvent};
use super::record::StageRecord;
use crate::{Error, Result};

/// Whether the stages went on to the end or were stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Done,
    Stopped,
}

/// What a stage's body gets: its folder, whether it continues an unfinished run, the stop flag and its progress.
pub struct StageContext<'a> {
    pub dir: PathBuf,
    pub resume: bool,
    pub stop: &'a AtomicBool,
    name: &'a str,
    observer: &'a mut dyn Observer,
}

impl StageContext<'_> {
    /// Reports `done` of `total` `unit`s.
    pub fn progress(&mut self, done: usize, total: usize, unit: &'static str, message: String) {
        self.observer.event(StageEvent::Progress { stage: self.name, done, total, unit, message });
    }
}

/// The stages of one run, in order.
pub struct Executor<'a> {
    out: PathBuf,
    stop: &'a AtomicBool,
    observer: &'a mut dyn Observer,
    /// `--rerun`: this stage and every one after it start over.
    rerun: Option<String>,
    forced: bool,
    upstream: String,
    /// Each stage run by this run, with its seconds.
    pub timings: Vec<(String, f64)>,
}

impl<'a> Executor<'a> {
    pub fn new(out: &Path, stop: &'a AtomicBool, observer: &'a mut dyn Observer, rerun: Option<String>) -> Self {
        Executor {
            out: out.to_path_buf(),
            stop,
            observer,
            rerun,
            forced: false,
            upstream: String::new(),
            timings: Vec::new(),
        }
    }

    /// The folder of stage `name`.
    pub fn dir(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// The digest the next stage's record names as its upstream.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Runs stage `name`, whose record is `record` (made with [`Self::upstream`]), unless it is done. `body`
    /// returns false when the stop flag ended it early.
    pub fn stage(
        &mut self,
        name: &str,
        record: StageRecord,
        body: impl FnOnce(&mut StageContext<'_>) -> Result<bool>,
    ) -> Result<Flow> {
        let dir = self.dir(name);
        self.forced |= self.rerun.as_deref() == Some(name);
        let digest = record.digest();
        self.upstream = digest.clone();
        let existing = if self.forced { None } else { StageRecord::read(&dir)?.filter(|r| r.digest() == digest) };
        if existing.as_ref().is_some_and(|r| r.complete) {
            self.observer.event(StageEvent::Skipped { stage: name });
            return Ok(Flow::Done);
        }
        let resume = existing.is_some();
        if !resume {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| Error::InvalidArgument(format!("emptying {}: {e}", dir.display())))?;
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::InvalidArgument(format!("creating {}: {e}", dir.display())))?;
            record.write(&dir)?;
        }
        self.observer.event(StageEvent::Started { stage: name, resumed: resume });
        let start = Instant::now();
        let mut context =
            StageContext { dir: dir.clone(), resume, stop: self.stop, name, observer: &mut *self.observer };
        if !body(&mut context)? {
            self.observer.event(StageEvent::Interrupted { stage: name });
            return Ok(Flow::Stopped);
        }
        StageRecord { complete: true, ..record }.write(&dir)?;
        let seconds = start.elapsed().as_secs_f64();
        self.timings.push((name.to_string(), seconds));
        self.observer.event(StageEvent::Finished { stage: name, seconds });
        Ok(Flow::Done)
    }
}
