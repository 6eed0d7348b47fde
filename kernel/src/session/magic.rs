//! Runs ranch's magics. `ranch_magics::magic_table` names and parses them; here each parsed
//! call meets its handler (the match is exhaustive: a new magic cannot go unhandled).

use super::EvcxrSession;
use crate::interpreter::{CellContext, CellOutcome, Completions, Stream};
use ranch_magics::magic_table::{self, Call};

impl EvcxrSession {
    pub(super) fn run_magic(&mut self, call: Call<'_>, cx: &CellContext) -> CellOutcome {
        match call {
            Call::Help(text) => {
                cx.sink.stream(Stream::Stdout, &text);
                Ok(None)
            }
            Call::Ranch(launch) => self.drive(cx, |d, s, h| d.ranch(s, h, *launch)),
            Call::RanchStart(args) => self.ranch_start(*args, cx),
            Call::Px { args, body } => self.drive(cx, |d, s, h| d.px(s, h, &args, body)),
            Call::PxPush(args) => self.drive(cx, |d, s, h| d.px_push(s, h, &args)),
            Call::PxPull(args) => self.drive(cx, |d, s, h| d.px_pull(s, h, &args)),
            Call::Autopx => self.toggle_autopx(cx),
            Call::RanchStatus => self.pool_status(),
            Call::RanchStop => self.ranch_stop(cx),
            Call::RanchRestart(args) => self.ranch_restart(args, cx),
            Call::RanchJobs => self.drive(cx, |d, _, _| Ok(Some(d.jobs.listing()))),
            Call::RanchWait(args) => self.drive(cx, |d, s, h| d.jobs.wait(s, h, &args)),
            Call::RanchOutput(args) => self.drive(cx, |d, _, h| d.ranch_output(h, &args)),
            Call::RanchCancel(args) => self.drive(cx, |d, _, _| d.jobs.cancel(&args.job)),
            Call::RanchShare(name) => self.drive(cx, |d, s, h| d.ranch_share(s, h, &name)),
            Call::RanchGpus => Ok(ranch_magics::driver::ranch_gpus()?),
            Call::RanchClean { all } => self.ranch_clean(all, cx),
        }
    }
}

/// A magic's name being typed at the start of the cell (`%ra`, `%%`): the table's names.
pub(super) fn complete_name(code: &str, cursor: usize) -> Option<Completions> {
    let c = magic_table::complete_name(code, cursor)?;
    Some(Completions { matches: c.matches, start: c.start, end: c.end })
}
