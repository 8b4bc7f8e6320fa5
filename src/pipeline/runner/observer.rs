//! What a run tells its caller as it goes: one event when a stage starts, is skipped (its record matches) or
//! finishes, and its progress in between — enough for one progress bar per stage. Any `FnMut(StageEvent)` is an
//! observer.

/// One event of a run; `stage` is the stage's folder under `out` (`sample`, `online/round-2/dpo`).
#[derive(Clone, Debug, PartialEq)]
pub enum StageEvent<'a> {
    /// The stage starts (`resumed`: it continues an unfinished run of the same inputs and options).
    Started { stage: &'a str, resumed: bool },
    /// The stage's record matches what it would run on: its outputs are kept.
    Skipped { stage: &'a str },
    /// `done` of `total` `unit`s (steps, prompts, questions); `message` the latest figures.
    Progress { stage: &'a str, done: usize, total: usize, unit: &'static str, message: String },
    /// The stage finished after `seconds` (of this run; a resumed stage's earlier time not included).
    Finished { stage: &'a str, seconds: f64 },
    /// The stop flag ended the stage after its current step; a rerun continues it.
    Interrupted { stage: &'a str },
}

/// Receives a run's events.
pub trait Observer {
    fn event(&mut self, event: StageEvent<'_>);
}

impl<F: FnMut(StageEvent<'_>)> Observer for F {
    fn event(&mut self, event: StageEvent<'_>) {
        self(event)
    }
}
