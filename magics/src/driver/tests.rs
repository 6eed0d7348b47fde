//! The driver's pipeline against a fake session, pool and host: what is shipped, built,
//! run and bound, and what a failure leaves unchanged.

use super::px::{PoolRanks, PxRun};
use super::*;
use crate::args::Out;
use crate::magic_table::{Call, Lookup, lookup};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Mutex;

/// What the fake session and pool were asked to do.
#[derive(Default)]
struct Calls {
    exported: Vec<String>,
    toolchain_asked: bool,
    bound: Vec<(String, String, Vec<usize>)>,
    /// Code run in the session.
    executed: Vec<String>,
    brought_items: usize,
    /// Each pool run: its code and ranks.
    ran: Vec<(String, Vec<usize>)>,
    /// Each pool run: whether it showed a live status table.
    live: Vec<bool>,
}

struct FakeSession {
    vars: Vec<(String, String)>,
    /// Variables whose export fails, with why.
    unshippable: Vec<(String, String)>,
    dir: PathBuf,
    pool: Option<FakePool>,
    calls: Rc<RefCell<Calls>>,
}

impl FakeSession {
    fn new(name: &str, vars: &[(&str, &str)]) -> FakeSession {
        let dir = std::env::temp_dir().join(format!("ranch-driver-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakeSession {
            vars: vars.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect(),
            unshippable: Vec::new(),
            dir,
            pool: None,
            calls: Rc::default(),
        }
    }

    fn with_pool(mut self, n: usize, vars: &[(&str, &str)]) -> FakeSession {
        let vars = vars.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        self.pool = Some(FakePool { n, vars, calls: self.calls.clone() });
        self
    }

    /// What is left in the session's private directory.
    fn left(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect()
    }
}

impl Drop for FakeSession {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Session for FakeSession {
    fn variables(&mut self) -> Result<Vec<(String, String)>, Failure> {
        Ok(self.vars.clone())
    }
    fn export(&mut self, vars: &[Shipped], _dir: &Path) -> Result<Vec<String>, Failure> {
        self.calls.borrow_mut().exported.extend(vars.iter().map(|v| v.name.clone()));
        Ok(vars
            .iter()
            .filter_map(|v| {
                let (_, why) = self.unshippable.iter().find(|(n, _)| *n == v.name)?;
                Some(format!("`{}: {}` ({why})", v.name, v.ty))
            })
            .collect())
    }
    fn snapshot(&mut self) -> Result<SessionSnapshot, Failure> {
        Ok(SessionSnapshot::default())
    }
    fn execute(&mut self, code: &str) -> Result<(), Failure> {
        self.calls.borrow_mut().executed.push(code.to_string());
        Ok(())
    }
    fn bind(&mut self, name: &str, ty: &str, dir: &Path, ranks: &[usize]) -> Result<(), Failure> {
        if ty.contains("Unknown") {
            return Err(Failure::Session { ename: "Error".into(), evalue: "cannot find type `Unknown`".into(), traceback: Vec::new() });
        }
        // The values are there to read when the session binds them.
        for &r in ranks {
            assert!(ranch::__rt::result_path(dir, r).exists(), "rank {r}'s value is missing");
        }
        self.calls.borrow_mut().bound.push((name.into(), ty.into(), ranks.to_vec()));
        Ok(())
    }
    fn add_runtime(&mut self) -> Result<(), Failure> {
        Ok(())
    }
    fn toolchain(&mut self) -> Result<BuildTools, Failure> {
        self.calls.borrow_mut().toolchain_asked = true;
        Err(Failure::Session { ename: "NoToolchain".into(), evalue: "the fake session builds nothing".into(), traceback: Vec::new() })
    }
    fn private_dir(&self) -> PathBuf {
        self.dir.clone()
    }
    fn rank_crate_dir(&self) -> PathBuf {
        self.dir.join("crate")
    }
    fn pool(&mut self) -> Result<Box<dyn PoolRanks + '_>, Failure> {
        match &mut self.pool {
            Some(p) => Ok(Box::new(FakePoolRef(p))),
            None => Err(usage("no pool is running: start one with `%ranch_start N` (N ranks)")),
        }
    }
}

struct FakePool {
    n: usize,
    vars: Vec<(String, String)>,
    calls: Rc<RefCell<Calls>>,
}

struct FakePoolRef<'a>(&'a mut FakePool);

impl PoolRanks for FakePoolRef<'_> {
    fn size(&self) -> usize {
        self.0.n
    }
    fn variables(&mut self) -> Vec<(String, String)> {
        self.0.vars.clone()
    }
    fn bring_session_items(&mut self, _: &SessionSnapshot) -> Result<(), Failure> {
        self.0.calls.borrow_mut().brought_items += 1;
        Ok(())
    }
    /// Each rank "runs" the code: one that emits a value writes it where the code says.
    fn run(&mut self, code: &str, ranks: &[usize], how: &PxRun) -> Outcome {
        self.0.calls.borrow_mut().ran.push((code.to_string(), ranks.to_vec()));
        self.0.calls.borrow_mut().live.push(how.live_status);
        if let Some(rest) = code.split("emit_to(\"").nth(1) {
            let dir = Path::new(rest.split('"').next().unwrap());
            for &r in ranks {
                let result = ranch::__rt::RankResult { type_name: "alloc::vec::Vec<f32>".into(), debug: None, value: Some(vec![0x90]) };
                std::fs::write(ranch::__rt::result_path(dir, r), result.encode()).unwrap();
            }
        }
        Ok(None)
    }
}

#[derive(Default)]
struct FakeHost {
    interrupted: bool,
    gpus: crate::gpus::Discovery,
    out: Mutex<String>,
    err: Mutex<String>,
}

impl Host for FakeHost {
    fn stream(&self, stream: supervise::Stream, text: &str) {
        match stream {
            supervise::Stream::Stdout => self.out.lock().unwrap().push_str(text),
            supervise::Stream::Stderr => self.err.lock().unwrap().push_str(text),
        }
    }
    fn display(&self, _: Bundle, _: Option<usize>) {}
    fn interrupted(&self) -> bool {
        self.interrupted
    }
    fn stoppable(&self, _: Stoppable) {}
    fn watch(&self, _: i32, _: bool) {}
    fn children(&self) -> HashSet<i32> {
        HashSet::new()
    }
    fn end_new_orphans(&self, _: &HashSet<i32>) -> usize {
        0
    }
    fn log(&self, _: &str) {}
    fn gpus(&self) -> &crate::gpus::Discovery {
        &self.gpus
    }
}

/// Runs a driver's magic as the kernel does: looked up and parsed by the magic table.
fn run(s: &mut FakeSession, host: &FakeHost, code: &str) -> Outcome {
    let Lookup::Found(magic) = lookup(code) else { panic!("not a magic: {code}") };
    let mut driver = Driver::default();
    match magic.parse()? {
        Call::Help(text) => {
            host.stream(supervise::Stream::Stdout, &text);
            Ok(None)
        }
        Call::Ranch(launch) => driver.ranch(s, host, *launch),
        Call::Px { args, body } => driver.px(s, host, &args, body),
        Call::PxPush(args) => driver.px_push(s, host, &args),
        Call::PxPull(args) => driver.px_pull(s, host, &args),
        other => panic!("not a driver's magic: {other:?}"),
    }
}

#[test]
fn a_missing_shared_variable_is_a_usage_error_and_nothing_is_exported() {
    let mut s = FakeSession::new("share", &[("a", "u32")]);
    let e = run(&mut s, &FakeHost::default(), "%%ranch 2 --share nope\n1").unwrap_err();
    assert_eq!(e.ename(), "UsageError");
    assert!(e.to_string().contains("no variable `nope`"), "{}", e.to_string());
    assert!(s.calls.borrow().exported.is_empty());
    assert!(!s.calls.borrow().toolchain_asked);
}

#[test]
fn only_what_the_cell_uses_is_shipped_and_an_unshippable_variable_stops_the_launch() {
    let mut s = FakeSession::new("ship", &[("a", "Vec<u8>"), ("b", "u32"), ("c", "Foo"), ("unused", "u8")]);
    s.unshippable.push(("c".into(), "Foo is not Serialize".into()));
    let code = "%%ranch 2\nlet b = 1;\na.len() + c.0 + b";
    let e = run(&mut s, &FakeHost::default(), code).unwrap_err();
    assert_eq!(e.ename(), "UnshippableVariable");
    assert!(
        e.to_string().contains("`c: Foo` (Foo is not Serialize)") && e.to_string().contains("Nothing was launched"),
        "{}",
        e.to_string()
    );
    // `b` is the cell's own; `unused` is not mentioned.
    assert_eq!(s.calls.borrow().exported, ["a", "c"]);
    assert!(!s.calls.borrow().toolchain_asked, "nothing was built");
    assert!(s.left().is_empty(), "the launch's directory is removed: {:?}", s.left());
}

#[test]
fn an_interrupt_while_exporting_launches_nothing() {
    let mut s = FakeSession::new("interrupt", &[("a", "u32")]);
    let host = FakeHost { interrupted: true, ..Default::default() };
    let e = run(&mut s, &host, "%%ranch 2\na + 1").unwrap_err();
    assert_eq!(e.ename(), "Interrupted");
    assert!(e.to_string().contains("nothing was launched"));
    assert!(!s.calls.borrow().toolchain_asked);
}

#[test]
fn a_gpu_that_is_not_there_is_a_usage_error_before_anything_is_exported() {
    let mut s = FakeSession::new("gpus", &[("a", "u32")]);
    let e = run(&mut s, &FakeHost::default(), "%%ranch 2 --gpus 0,1\na + 1").unwrap_err();
    assert_eq!(e.ename(), "UsageError");
    assert!(e.to_string().contains("--gpus"), "{}", e.to_string());
    assert!(s.calls.borrow().exported.is_empty());
}

#[test]
fn help_is_shown_and_nothing_runs() {
    let mut s = FakeSession::new("help", &[]);
    let host = FakeHost::default();
    assert_eq!(run(&mut s, &host, "%%ranch --help\n1"), Ok(None));
    assert!(host.out.lock().unwrap().contains("Usage"));
    assert!(s.calls.borrow().exported.is_empty() && !s.calls.borrow().toolchain_asked);
}

#[test]
fn out_binds_a_vec_of_the_ranks_type_as_the_session_names_it() {
    let mut s = FakeSession::new("out", &[]);
    let dir = s.dir.clone();
    for r in 0..3 {
        std::fs::write(ranch::__rt::result_path(&dir, r), b"x").unwrap();
    }
    let out = Out { name: "v".into(), ty: None };
    ranch_cell::bind_out(&mut s, &out, &["alloc::vec::Vec<u64>".into()], &dir, 3).unwrap();
    assert_eq!(s.calls.borrow().bound, [("v".to_string(), "Vec<u64>".to_string(), vec![0, 1, 2])]);
    let given = Out { name: "w".into(), ty: Some("Unknown".into()) };
    let e = ranch_cell::bind_out(&mut s, &given, &[], &dir, 3).unwrap_err();
    assert!(e.to_string().contains("could not be bound as Vec<Unknown>") && e.to_string().contains("--out w: T"), "{}", e.to_string());
}

#[test]
fn px_without_a_pool_says_how_to_start_one() {
    let mut s = FakeSession::new("nopool", &[]);
    let e = run(&mut s, &FakeHost::default(), "%%px\n1").unwrap_err();
    assert!(e.to_string().contains("%ranch_start N"));
}

#[test]
fn a_px_cell_brings_the_session_items_then_runs_on_every_rank() {
    let mut s = FakeSession::new("px", &[]).with_pool(3, &[]);
    run(&mut s, &FakeHost::default(), "%%px\nlet x = ranch::rank();").unwrap();
    let calls = s.calls.borrow();
    assert_eq!(calls.brought_items, 1);
    assert_eq!(calls.ran, [("let x = ranch::rank();".to_string(), vec![0, 1, 2])]);
}

#[test]
fn a_targets_cell_may_not_define_variables_and_checks_its_ranks() {
    let mut s = FakeSession::new("targets", &[]).with_pool(3, &[]);
    let host = FakeHost::default();
    let e = run(&mut s, &host, "%%px --targets 0,2\nlet y = 1;").unwrap_err();
    assert!(e.to_string().contains("cannot define variables"), "{}", e.to_string());
    let e = run(&mut s, &host, "%px --targets 5 1").unwrap_err();
    assert!(e.to_string().contains("no rank 5"), "{}", e.to_string());
    assert!(s.calls.borrow().ran.is_empty());
    run(&mut s, &host, "%px --targets 2,0 { let y = 1; y }").unwrap();
    assert_eq!(s.calls.borrow().ran[0].1, [0, 2]);
}

#[test]
fn a_px_cell_with_bad_flags_copies_nothing_into_the_ranks() {
    let mut s = FakeSession::new("pxbad", &[("a", "u32")]).with_pool(3, &[]);
    let host = FakeHost::default();
    for (cell, says) in [
        ("%%px --share a --see 9\n1", "--see 9: the pool has ranks 0..2"),
        ("%%px --share a --targets 7\n1", "no rank 7"),
        ("%%px --share a --out w\nlet z = 1;", "--out needs the cell to end in an expression"),
    ] {
        let e = run(&mut s, &host, cell).unwrap_err();
        assert_eq!(e.ename(), "UsageError", "{cell}");
        assert!(e.to_string().contains(says), "{cell}: {e}");
    }
    assert!(s.calls.borrow().exported.is_empty() && s.calls.borrow().ran.is_empty());
}

#[test]
fn pull_gathers_a_rank_variable_into_the_session_and_names_what_exists() {
    let mut s = FakeSession::new("pull", &[]).with_pool(3, &[("w", "Vec<f32>")]);
    let host = FakeHost::default();
    let e = run(&mut s, &host, "%px_pull nope").unwrap_err();
    assert!(e.to_string().contains("no variable `nope` (they have: w)"), "{}", e.to_string());
    run(&mut s, &host, "%px_pull w --targets 0,2 --out ws").unwrap();
    assert_eq!(s.calls.borrow().bound, [("ws".to_string(), "Vec<f32>".to_string(), vec![0, 2])]);
    assert!(host.out.lock().unwrap().contains("Pulled `w` from ranks 0, 2 into `ws: Vec<Vec<f32>>`"));
    assert!(s.left().is_empty(), "the transfer's directory is removed: {:?}", s.left());
}

#[test]
fn push_ships_session_variables_as_mutable_rank_variables() {
    let mut s = FakeSession::new("push", &[("cfg", "Config"), ("other", "u8")]).with_pool(2, &[]);
    let host = FakeHost::default();
    let e = run(&mut s, &host, "%px_push cfg, missing").unwrap_err();
    assert!(e.to_string().contains("no variable `missing`"));
    assert!(s.calls.borrow().exported.is_empty());
    run(&mut s, &host, "%px_push cfg").unwrap();
    let calls = s.calls.borrow();
    assert_eq!(calls.exported, ["cfg"]);
    assert!(calls.ran[0].0.starts_with("let mut cfg: Config = ranch::__rt::load_from::<Config>("), "{}", calls.ran[0].0);
    assert_eq!(calls.ran[0].1, [0, 1]);
    drop(calls);
    // --share on a cell pushes first, to every rank, then runs the cell on its targets.
    run(&mut s, &host, "%%px --share cfg --targets 1\ncfg.len()").unwrap();
    let calls = s.calls.borrow();
    assert!(calls.ran[1].0.starts_with("let mut cfg: Config") && calls.ran[1].1 == [0, 1]);
    assert_eq!(calls.ran[2], ("cfg.len()".to_string(), vec![1]));
    // Moving variables shows no status table; the user's cells do, unless --quiet.
    assert_eq!(calls.live, [false, false, true]);
    drop(calls);
    run(&mut s, &host, "%%px --quiet\n1").unwrap();
    run(&mut s, &host, "%px --quiet 1").unwrap();
    assert_eq!(s.calls.borrow().live[3..], [false, false]);
}

#[test]
fn px_out_wraps_the_tail_and_binds_every_rank_value() {
    let mut s = FakeSession::new("pxout", &[]).with_pool(2, &[]);
    let host = FakeHost::default();
    let e = run(&mut s, &host, "%%px --out v\nlet z = 1;").unwrap_err();
    assert!(e.to_string().contains("end in an expression"));
    run(&mut s, &host, "%%px --out v\nvec![ranch::rank() as f32]").unwrap();
    let calls = s.calls.borrow();
    assert!(calls.ran[0].0.contains("let __ranch_out = vec![ranch::rank() as f32];"), "{}", calls.ran[0].0);
    assert_eq!(calls.bound, [("v".to_string(), "Vec<f32>".to_string(), vec![0, 1])]);
}

#[test]
fn failures_read_as_jupyter_errors() {
    let usage = usage("bad flag");
    assert_eq!((usage.ename(), usage.to_string(), usage.traceback()), ("UsageError", "bad flag".to_string(), vec!["bad flag".to_string()]));
    let failed = Failure::RankFailed { evalue: "rank 1 panicked".into(), traceback: vec!["table".into(), "rank 1 panicked".into()] };
    assert_eq!((failed.ename(), failed.traceback().len()), ("RankFailed", 2));
    let passed = Failure::Session { ename: "CompilationError".into(), evalue: "E0425".into(), traceback: vec![] };
    assert_eq!((passed.ename(), passed.traceback()), ("CompilationError", vec!["E0425".to_string()]));
    assert_eq!(Failure::interrupted("stopped").ename(), "Interrupted");
    assert_eq!(Failure::Unshippable("x".into()).ename(), "UnshippableVariable");
    assert_eq!(Failure::Pull("x".into()).ename(), "PullError");
}

#[test]
fn a_background_cell_where_the_host_runs_no_jobs_is_refused_before_anything_runs() {
    let mut s = FakeSession::new("bg-refused", &[("a", "u32")]);
    for code in ["%%ranch 2 --bg\na + 1", "%%ranch 2 --noblock\na + 1"] {
        let e = run(&mut s, &FakeHost::default(), code).unwrap_err();
        assert_eq!(e.ename(), "UsageError");
        assert!(e.to_string().contains("--bg"), "{e}");
    }
    assert!(s.calls.borrow().exported.is_empty() && !s.calls.borrow().toolchain_asked);
}

/// A job's way back to the kernel, recording the status tables it forwards.
#[derive(Default)]
struct FakeOutlet {
    statuses: Mutex<Vec<(String, bool)>>,
}

impl jobs::Outlet for FakeOutlet {
    fn status(&self, _: Bundle, _: Bundle, id: &str, update: bool) {
        self.statuses.lock().unwrap().push((id.to_string(), update));
    }
    fn watch(&self, _: i32, _: bool) {}
    fn children(&self) -> HashSet<i32> {
        HashSet::new()
    }
    fn end_orphans_in(&self, _: &HashSet<i32>, _: &[i32]) -> usize {
        0
    }
    fn log(&self, _: &str) {}
}

#[test]
fn a_job_forwards_only_its_table_keeps_a_bounded_record_and_wait_replays_it_and_binds() {
    let outlet = std::sync::Arc::new(FakeOutlet::default());
    let mut jobs = jobs::Jobs::default();
    let status_meta: Bundle = serde_json::from_value(serde_json::json!({"ranch": {"status": true}})).unwrap();
    let work: jobs::Work = Box::new(move |job: std::sync::Arc<jobs::JobHost>| {
        job.display_in_place(Bundle::new(), status_meta.clone(), "table", false);
        job.stream(supervise::Stream::Stdout, "[0] first\n");
        let big = "x".repeat(jobs::KEPT_BYTES);
        job.stream(supervise::Stream::Stdout, &big);
        job.display_in_place(Bundle::new(), status_meta, "table", true);
        let mut value = Bundle::new();
        value.insert("text/plain".into(), "[1, 2]".into());
        Ok((Some(value), vec!["u32".into()]))
    });
    let bound = std::sync::Arc::new(Mutex::new(Vec::new()));
    let record = bound.clone();
    let bind: jobs::Bind = Box::new(move |_: &mut dyn Session, types: &[String]| {
        record.lock().unwrap().extend(types.iter().cloned());
        Ok(())
    });
    assert_eq!(jobs.next_name(), "job-1");
    let name = jobs.start(outlet.clone(), 7, 2, 0, true, Some(bind), work, &|| false).unwrap();
    assert_eq!(name, "job-1");
    assert!(!outlet.statuses.lock().unwrap().is_empty(), "the cell returns once the table is up");
    let mut s = FakeSession::new("job", &[]);
    let host = FakeHost::default();
    let wait = |args: &str| match jobs::parse_wait(args).unwrap() {
        crate::pool::Parsed::Run(a) => a,
        crate::pool::Parsed::Help(_) => panic!(),
    };
    let shown = jobs.wait(&mut s, &host, &wait("job-1")).unwrap().unwrap();
    assert_eq!(shown["text/plain"], "[1, 2]");
    assert_eq!(*outlet.statuses.lock().unwrap(), [("table".into(), false), ("table".into(), true)], "the table, live");
    assert_eq!(*host.out.lock().unwrap(), "[0] first\n", "what came after the bound was not kept");
    assert!(host.err.lock().unwrap().contains("1 later outputs of job-1 (16.0 MiB) were not kept"), "{}", host.err.lock().unwrap());
    assert_eq!(*bound.lock().unwrap(), ["u32"], "--out bound with the ranks' types");
    let listing = jobs.listing()["text/plain"].as_str().unwrap().to_string();
    assert!(listing.contains("job-1  [7]   2      done"), "{listing}");
    assert_eq!(jobs.wait(&mut s, &host, &wait("job-9")).unwrap_err().ename(), "UsageError");
    assert!(jobs.cancel("job-1").unwrap().unwrap()["text/plain"].as_str().unwrap().contains("already ended"));
}
