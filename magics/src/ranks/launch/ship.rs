//! Shipping the rank program to hosts that share no directory with the kernel. A launcher
//! starts a small bash script in place of the program on every rank; the script fetches the
//! program from the launch's channel (`PROGRAM`, with the launch's token from the
//! environment, so neither is on a command line), then runs it from an open descriptor after
//! deleting its copy: nothing is left on the host, whatever the rank does. Rank programs link
//! libstd statically (see `crate::build`), so the program is all that travels.
//!
//! Not Open MPI's `--preload-binary`: 4.1 copies the program but then runs it as `./name`
//! from the working directory, where it is not (seen on Debian's 4.1.4).

/// What a launcher runs on each rank in place of the program: `bash -c SCRIPT ranch-rank`.
pub fn command() -> Vec<String> {
    vec!["bash".into(), "-c".into(), SCRIPT.into(), "ranch-rank".into()]
}

/// The script: `RANCH_CHANNEL` is `host:port` (`[v6]:port`), `RANCH_TOKEN` the launch's token.
/// The kernel closes connections beyond its limit at once, so a refused or unanswered request
/// is tried again for 30 s. The program lands in a private directory under `TMPDIR` (else
/// /tmp), which must allow programs to run.
const SCRIPT: &str = r#"
fail() { echo "ranch: this rank cannot fetch its program from the kernel's channel at ${RANCH_CHANNEL:-?}: $1" >&2; exit 127; }
[ -n "${RANCH_CHANNEL:-}" ] && [ -n "${RANCH_TOKEN:-}" ] || fail "RANCH_CHANNEL and RANCH_TOKEN must be set"
host=${RANCH_CHANNEL%:*}; host=${host#[}; host=${host%]}; port=${RANCH_CHANNEL##*:}
dir=$(mktemp -d "${TMPDIR:-/tmp}/ranch-rank.XXXXXX") || fail "cannot make a directory in ${TMPDIR:-/tmp} (set TMPDIR)"
trap 'rm -rf "$dir"' EXIT
why="no answer within 30 s"
for attempt in $(seq 300); do
  if { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
    printf 'RANCH-CHANNEL1 %s PROGRAM\n' "$RANCH_TOKEN" >&3
    if IFS=' ' read -r -t 60 answer len <&3; then
      case "$answer" in
        OK)
          case "$len" in ''|*[!0-9]*) fail "it answered OK ${len}";; esac
          head -c "$len" <&3 >"$dir/rank" || fail "the program did not arrive"
          [ "$(stat -c %s "$dir/rank")" = "$len" ] || fail "$(stat -c %s "$dir/rank") of $len bytes of the program arrived"
          chmod 700 "$dir/rank"
          exec 3<&- 4<"$dir/rank"
          rm -rf "$dir"; trap - EXIT
          exec -a ranch-rank /proc/self/fd/4 "$@"
          fail "the program cannot run from ${TMPDIR:-/tmp} (mounted noexec? set TMPDIR)";;
        ERR) fail "$len";;
        *) fail "it answered \"$answer $len\"";;
      esac
    fi
    exec 3<&-
  else
    why="cannot connect"
  fi
  sleep 0.1
done
fail "$why"
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Channel;
    use std::process::Command;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ranch-ship-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        d
    }

    fn run_script(channel: &str, token: &str, tmp: &std::path::Path) -> std::process::Output {
        let argv = command();
        Command::new(&argv[0])
            .args(&argv[1..])
            .arg("shipped and run")
            .env("RANCH_CHANNEL", channel)
            .env("RANCH_TOKEN", token)
            .env("TMPDIR", tmp)
            .output()
            .unwrap()
    }

    #[test]
    fn a_shipped_program_runs_with_its_arguments_and_leaves_nothing() {
        let d = scratch("ok");
        let ch = Channel::start("127.0.0.1", "tok", &d, 1, Some(std::path::Path::new("/bin/echo"))).unwrap();
        let out = run_script(ch.addr(), "tok", &d.join("tmp"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "shipped and run\n", "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success());
        assert_eq!(std::fs::read_dir(d.join("tmp")).unwrap().count(), 0, "the copy is deleted before it runs");
        drop(ch);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_refusal_is_said_and_leaves_nothing() {
        let d = scratch("refused");
        // A launch with no program to ship answers ERR; a wrong token gets no answer at all.
        let ch = Channel::start("127.0.0.1", "tok", &d, 1, None).unwrap();
        let out = run_script(ch.addr(), "tok", &d.join("tmp"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(127));
        assert!(err.contains("cannot fetch its program") && err.contains("no program"), "{err}");
        let unset = Command::new("bash").args(&command()[1..]).env_remove("RANCH_CHANNEL").output().unwrap();
        assert!(String::from_utf8_lossy(&unset.stderr).contains("must be set"));
        assert_eq!(std::fs::read_dir(d.join("tmp")).unwrap().count(), 0);
        drop(ch);
        std::fs::remove_dir_all(d).unwrap();
    }
}
