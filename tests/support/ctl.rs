//! `tenant-edge ctl` run to completion: the one runner of the catalogue's tests and the
//! end-to-end moves (included by `support/catalogue.rs` and `common`).

use tokio::io::AsyncWriteExt;

/// What one `ctl` run printed, and how it exited.
#[derive(Debug)]
pub struct Ran {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Whether `ctl` exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `tenant-edge ctl --catalogue <base> [--token <token>] <args>` with `stdin` as its
/// input, and prints what it printed (shown when a test fails).
pub async fn ctl(base: &str, token: Option<&str>, args: &[&str], stdin: &str) -> Ran {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenant-edge"));
    command.args(["ctl", "--catalogue", base]);
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // Written while the output is read, so neither side can fill its pipe and wait forever;
    // a ctl that exits without reading it all is judged by what it printed, not by the pipe.
    let write = async move {
        let _ = input.write_all(stdin.as_bytes()).await;
    };
    let ((), out) = tokio::join!(write, child.wait_with_output());
    let out = out.unwrap();
    let ran = Ran {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    println!("ctl {args:?}:\n{}{}", ran.stdout, ran.stderr);
    ran
}
