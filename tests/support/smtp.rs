//! A real SMTP server in the test process (mailin-embedded): optional STARTTLS with a
//! certificate from [`super::tls`] and AUTH PLAIN/LOGIN; it keeps every message it accepts.
//! Received messages are parsed by Python's `email` package ([`parse_mime`]), an independent
//! MIME parser.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command as StdCommand;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mailin_embedded::response::{AUTH_OK, INVALID_CREDENTIALS, OK};
use mailin_embedded::{AuthMechanism, Handler, Response, Server, SslConfig};

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
    /// The user name that authenticated in this session, if any.
    pub user: Option<String>,
}

#[derive(Clone)]
struct Collect {
    inbox: Arc<Mutex<Vec<Received>>>,
    /// Accepted (user, password) for AUTH.
    login: Option<(String, String)>,
    current: Option<Received>,
    user: Option<String>,
}

impl Handler for Collect {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Received {
            from: from.into(),
            to: to.to_vec(),
            data: vec![],
            user: self.user.clone(),
        });
        OK
    }
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(c) = &mut self.current {
            c.data.extend_from_slice(buf);
        }
        Ok(())
    }
    fn data_end(&mut self) -> Response {
        if let Some(c) = self.current.take() {
            self.inbox.lock().unwrap().push(c);
        }
        OK
    }
    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.check(user, password)
    }
    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check(user, password)
    }
}

impl Collect {
    fn check(&mut self, user: &str, password: &str) -> Response {
        match &self.login {
            Some((u, p)) if u == user && p == password => {
                self.user = Some(user.into());
                AUTH_OK
            }
            _ => INVALID_CREDENTIALS,
        }
    }
}

/// A running SMTP server; it lives until the test process ends (mailin has no stop).
pub struct Smtp {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Received>>>,
}

impl Smtp {
    pub fn start_on(
        listener: TcpListener,
        tls: Option<(&Path, &Path)>,
        login: Option<(&str, &str)>,
    ) -> Smtp {
        // rustls needs a process-wide crypto provider when more than one is compiled in.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = listener.local_addr().unwrap().port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let handler = Collect {
            inbox: inbox.clone(),
            login: login.map(|(u, p)| (u.into(), p.into())),
            current: None,
            user: None,
        };
        let mut server = Server::new(handler);
        server
            .with_name("test.smtp")
            .with_tcp_listener(listener)
            .with_num_threads(4);
        if let Some((cert, key)) = tls {
            server
                .with_ssl(SslConfig::SelfSigned {
                    cert_path: cert.display().to_string(),
                    key_path: key.display().to_string(),
                })
                .expect("TLS setup of the test SMTP server");
        }
        if login.is_some() {
            server
                .with_auth(AuthMechanism::Plain)
                .with_auth(AuthMechanism::Login);
        }
        std::thread::spawn(move || {
            if let Err(e) = server.serve() {
                eprintln!("test SMTP server stopped: {e}");
            }
        });
        Smtp { port, inbox }
    }

    pub fn start(tls: Option<(&Path, &Path)>, login: Option<(&str, &str)>) -> Smtp {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), tls, login)
    }

    pub fn count(&self) -> usize {
        self.inbox.lock().unwrap().len()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().clone()
    }

    /// Waits (10 s at most) until `n` messages have arrived; the caller asserts the count.
    pub fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Message-ID header of every message received.
    pub fn message_ids(&self) -> Vec<String> {
        self.messages()
            .iter()
            .filter_map(|m| {
                String::from_utf8_lossy(&m.data)
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
                    .map(|l| l[11..].trim().to_string())
            })
            .collect()
    }
}

/// Parses a raw message with Python's `email` package: subject, headers and the parts.
pub fn parse_mime(raw: &[u8]) -> serde_json::Value {
    let script = r#"
import email, json, sys
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
parts = [{"type": p.get_content_type(), "body": p.get_content()} for p in m.walk() if not p.is_multipart()]
print(json.dumps({"subject": str(m["subject"]), "to": str(m["to"]), "from": str(m["from"]),
  "message_id": str(m["message-id"]), "date": str(m["date"]), "type": m.get_content_type(), "parts": parts}))
"#;
    let mut child = StdCommand::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to parse the received message");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(raw).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python could not parse the message");
    serde_json::from_slice(&out.stdout).unwrap()
}
