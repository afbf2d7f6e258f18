//! A real AWS emulator for tests and the dev stack: `moto_server` (PyPI `moto[server]`, run as
//! `python3 -m moto.server`) on a free loopback port, ready when it says where it runs (nothing
//! polls it), stopped when dropped. SNS, SQS and KMS answer at its one endpoint.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{free_port, StackError};

/// How long the emulator may take to start (Python imports every service's model).
const WITHIN: Duration = Duration::from_secs(60);

/// A `moto_server` started by this process, killed when dropped.
#[derive(Debug)]
pub struct MotoServer {
    port: u16,
    child: std::process::Child,
}

impl MotoServer {
    /// Starts the emulator on a free loopback port and returns once it says it runs there.
    pub fn start() -> Result<Self, StackError> {
        Self::start_on(free_port())
    }

    /// Starts the emulator on `port` (a restart where the last one ran, for an outage test).
    pub fn start_on(port: u16) -> Result<Self, StackError> {
        let mut child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| StackError::Part(format!("cannot start moto_server (python3): {e}")))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| StackError::Part("moto_server: no stderr".into()))?;
        let said = super::ready_line(stderr, "moto", format!("Running on http://127.0.0.1:{port}"));
        let mut server = MotoServer { port, child };
        if said.recv_timeout(WITHIN).is_err() {
            server.stop();
            return Err(StackError::Part(format!(
                "moto_server on port {port} never said it runs (is `moto[server]` installed? \
                 `make deps` installs it; TEST_LOG=1 shows its log)"
            )));
        }
        Ok(server)
    }

    /// The endpoint URL every AWS client of the stack is pointed at.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops it now (as if the service went down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator answers an SNS call at its endpoint (the query protocol, unsigned: moto
    /// accepts any credentials), and is gone once dropped.
    #[tokio::test]
    async fn the_emulator_starts_answers_sns_and_stops() {
        let moto = MotoServer::start().unwrap();
        let http = reqwest::Client::new();
        let body = http
            .post(moto.endpoint())
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sns/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body("Action=CreateTopic&Name=tenant-edge-us-east-1")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("arn:aws:sns:us-east-1:"), "{body}");
        let endpoint = moto.endpoint();
        drop(moto);
        assert!(
            http.post(endpoint).send().await.is_err(),
            "still answering after drop"
        );
    }
}
